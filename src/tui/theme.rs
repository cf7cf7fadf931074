//! Colours and styles in one place. Heatmaps use the 256-colour indexed palette by default
//! (it survives SSH and tmux), true colour only when `COLORTERM` says so, the 16 ANSI
//! colours on plain terminals, and no colour under `NO_COLOR`. Every heatmap cell also
//! carries a shade glyph, so values stay readable whatever the palette.

use ratatui::style::{Color, Modifier, Style};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorDepth {
    Mono,
    Ansi16,
    Indexed256,
    TrueColor,
}

impl ColorDepth {
    /// What the terminal we run in can show, from the usual environment variables.
    pub fn detect() -> Self {
        let var = |k: &str| std::env::var(k).unwrap_or_default().to_ascii_lowercase();
        if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
            return ColorDepth::Mono;
        }
        let colorterm = var("COLORTERM");
        if colorterm == "truecolor" || colorterm == "24bit" {
            return ColorDepth::TrueColor;
        }
        let term = var("TERM");
        if term.contains("256") || term.starts_with("tmux") || term.starts_with("screen") || !colorterm.is_empty() {
            ColorDepth::Indexed256
        } else {
            ColorDepth::Ansi16
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Theme {
    pub depth: ColorDepth,
}

/// Shade glyphs from low to high: the value is readable without colour.
const SHADES: [&str; 5] = [" ", "░", "▒", "▓", "█"];

/// A blue → green → yellow ramp (viridis-like) in the xterm 256 palette.
const RAMP_256: [u8; 10] = [17, 18, 25, 31, 37, 36, 71, 113, 185, 226];
/// The same ramp in true colour (viridis stops).
const RAMP_RGB: [(u8, u8, u8); 10] = [
    (68, 1, 84),
    (72, 40, 120),
    (62, 74, 137),
    (49, 104, 142),
    (38, 130, 142),
    (31, 158, 137),
    (53, 183, 121),
    (109, 205, 89),
    (180, 222, 44),
    (253, 231, 37),
];
const RAMP_16: [Color; 5] = [Color::Blue, Color::Cyan, Color::Green, Color::LightGreen, Color::Yellow];

/// Diverging blue ← grey → red for differences, negative first.
const DIV_256: [u8; 9] = [21, 27, 33, 75, 250, 210, 203, 197, 196];
const DIV_RGB: [(u8, u8, u8); 9] = [
    (33, 102, 172),
    (67, 147, 195),
    (146, 197, 222),
    (209, 229, 240),
    (235, 235, 235),
    (253, 219, 199),
    (244, 165, 130),
    (214, 96, 77),
    (178, 24, 43),
];
const DIV_16: [Color; 5] = [Color::Blue, Color::LightBlue, Color::Gray, Color::LightRed, Color::Red];

/// The series colours of checkpoint A and B (and the layers of training curves).
const SERIES_256: [u8; 2] = [39, 208];

impl Theme {
    pub fn detect() -> Self {
        Self { depth: ColorDepth::detect() }
    }

    pub fn new(depth: ColorDepth) -> Self {
        Self { depth }
    }

    fn color(&self, idx: u8, rgb: (u8, u8, u8), ansi: Color) -> Color {
        match self.depth {
            ColorDepth::Mono => Color::Reset,
            ColorDepth::Ansi16 => ansi,
            ColorDepth::Indexed256 => Color::Indexed(idx),
            ColorDepth::TrueColor => Color::Rgb(rgb.0, rgb.1, rgb.2),
        }
    }

    /// Colour and glyph of a value in `[0, 1]` on the sequential ramp.
    pub fn heat(&self, t: f64) -> (Style, &'static str) {
        let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
        let i = ((t * RAMP_256.len() as f64) as usize).min(RAMP_256.len() - 1);
        let a = ((t * RAMP_16.len() as f64) as usize).min(RAMP_16.len() - 1);
        let s = ((t * SHADES.len() as f64) as usize).min(SHADES.len() - 1);
        // The lowest shade is a blank: give it a faint dot so empty-looking cells still read
        // as "low" rather than "missing".
        let glyph = if s == 0 { "·" } else { SHADES[s] };
        (Style::new().fg(self.color(RAMP_256[i], RAMP_RGB[i], RAMP_16[a])), glyph)
    }

    /// Colour and glyph of a value in `[-1, 1]` on the diverging ramp.
    pub fn diverging(&self, t: f64) -> (Style, &'static str) {
        let t = if t.is_finite() { t.clamp(-1.0, 1.0) } else { 0.0 };
        let u = (t + 1.0) / 2.0;
        let i = ((u * DIV_256.len() as f64) as usize).min(DIV_256.len() - 1);
        let a = ((u * DIV_16.len() as f64) as usize).min(DIV_16.len() - 1);
        let mag = t.abs();
        let glyph = if mag < 0.1 {
            "·"
        } else if t < 0.0 {
            if mag < 0.5 { "-" } else { "=" }
        } else if mag < 0.5 {
            "+"
        } else {
            "#"
        };
        (Style::new().fg(self.color(DIV_256[i], DIV_RGB[i], DIV_16[a])), glyph)
    }

    /// The line colour of checkpoint column `i` (A, B).
    pub fn series(&self, i: usize) -> Style {
        let (idx, rgb, ansi) = match i {
            0 => (SERIES_256[0], (0, 175, 255), Color::Cyan),
            _ => (SERIES_256[1], (255, 135, 0), Color::Yellow),
        };
        Style::new().fg(self.color(idx, rgb, ansi))
    }

    /// Colour of layer `l` of `n` in per-layer curves: cold (shallow) to warm (deep).
    pub fn layer_color(&self, l: usize, n: usize) -> Style {
        let t = if n <= 1 { 1.0 } else { l as f64 / (n - 1) as f64 };
        self.heat(0.15 + 0.85 * t).0
    }

    pub fn title(&self) -> Style {
        Style::new().add_modifier(Modifier::BOLD)
    }

    pub fn dim(&self) -> Style {
        match self.depth {
            ColorDepth::Mono => Style::new(),
            _ => Style::new().fg(Color::DarkGray),
        }
    }

    pub fn key(&self) -> Style {
        match self.depth {
            ColorDepth::Mono => Style::new().add_modifier(Modifier::BOLD),
            _ => Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
        }
    }

    /// The current layer / selected position.
    pub fn selected(&self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD)
    }

    /// A lens cell whose prediction equals the actual next token.
    pub fn hit(&self) -> Style {
        match self.depth {
            ColorDepth::Mono => Style::new().add_modifier(Modifier::UNDERLINED),
            _ => Style::new().fg(Color::Green).add_modifier(Modifier::BOLD),
        }
    }

    /// A line drawn over others (the current layer's curve).
    pub fn emphasis(&self) -> Style {
        match self.depth {
            ColorDepth::Mono => Style::new().add_modifier(Modifier::BOLD),
            _ => Style::new().fg(Color::White).add_modifier(Modifier::BOLD),
        }
    }

    pub fn error(&self) -> Style {
        match self.depth {
            ColorDepth::Mono => Style::new().add_modifier(Modifier::BOLD),
            _ => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        }
    }

    pub fn ok(&self) -> Style {
        match self.depth {
            ColorDepth::Mono => Style::new(),
            _ => Style::new().fg(Color::Green),
        }
    }

    pub fn busy(&self) -> Style {
        match self.depth {
            ColorDepth::Mono => Style::new(),
            _ => Style::new().fg(Color::Yellow),
        }
    }

    pub fn bar(&self) -> Style {
        match self.depth {
            ColorDepth::Mono => Style::new(),
            _ => Style::new().fg(Color::Blue),
        }
    }

    pub fn tab_active(&self) -> Style {
        Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED)
    }

    /// The background that marks the selected row and column of a grid (the layer and the
    /// position the explorer is at).
    pub fn crosshair(&self) -> Style {
        match self.depth {
            ColorDepth::Mono => Style::new(),
            ColorDepth::Ansi16 => Style::new().bg(Color::DarkGray),
            _ => Style::new().bg(Color::Indexed(237)),
        }
    }

    pub fn border(&self) -> Style {
        self.dim()
    }
}
