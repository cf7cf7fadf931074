//! One file per view, plus the overlays (help, training menu). Panels only read the
//! state: rendering never changes it.

pub mod decoding;
pub mod generation;
pub mod help;
pub mod metrics;
pub mod predictions;
pub mod similarity;
pub mod train_menu;
pub mod training;

use super::theme::Theme;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Span;
use ratatui::widgets::{Block, BorderType, Borders};
use unicode_width::UnicodeWidthChar;

/// A token as it is shown in a narrow cell: whitespace made visible.
pub fn show_token(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ' ' => '␣',
            '\n' => '⏎',
            '\t' => '⇥',
            '\r' => '↵',
            c if c.is_control() => '�',
            c => c,
        })
        .collect()
}

/// `s` cut to `width` display columns (with `…` when cut) and padded to exactly `width`.
pub fn fit(s: &str, width: usize) -> String {
    let mut out = String::new();
    let mut w = 0;
    let total: usize = s.chars().map(|c| c.width().unwrap_or(0)).sum();
    if total <= width {
        out.push_str(s);
        w = total;
    } else if width > 0 {
        for c in s.chars() {
            let cw = c.width().unwrap_or(0);
            if w + cw > width - 1 {
                break;
            }
            out.push(c);
            w += cw;
        }
        out.push('…');
        w += 1;
    }
    while w < width {
        out.push(' ');
        w += 1;
    }
    out
}

/// `s` cut to `width` columns without padding.
pub fn clip(s: &str, width: usize) -> String {
    fit(s, width).trim_end().to_string()
}

pub fn text_width(s: &str) -> usize {
    s.chars().map(|c| c.width().unwrap_or(0)).sum()
}

/// Splits an area into `n` equal columns side by side.
pub fn columns(area: Rect, n: usize) -> Vec<Rect> {
    let n = n.max(1);
    Layout::horizontal(vec![Constraint::Ratio(1, n as u32); n]).split(area).to_vec()
}

pub fn panel<'a>(title: impl Into<ratatui::text::Line<'a>>, theme: &Theme) -> Block<'a> {
    Block::new().borders(Borders::ALL).border_type(BorderType::Rounded).border_style(theme.border()).title(title)
}

/// The spinner frame for the busy indicator.
pub fn spinner(ticks: u64) -> &'static str {
    const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
    FRAMES[(ticks % FRAMES.len() as u64) as usize]
}

/// The title of column `i`: "A tiny-gpt2 · 4 layers".
pub fn column_title<'a>(app: &'a super::app::App, i: usize, theme: &Theme) -> ratatui::text::Line<'a> {
    let c = &app.columns[i];
    let tag = super::app::column_tag(i);
    let mut spans = vec![
        Span::styled(format!(" {tag} "), theme.series(i).add_modifier(ratatui::style::Modifier::BOLD)),
        Span::styled(c.short_name().to_string(), theme.title()),
    ];
    if let Some(info) = &c.info {
        spans.push(Span::styled(format!(" · {}L ", info.n_layer), theme.dim()));
    } else if c.error.is_some() {
        spans.push(Span::styled(" · failed ", theme.error()));
    } else {
        spans.push(Span::styled(" · loading… ", theme.busy()));
    }
    ratatui::text::Line::from(spans)
}

/// A message centred in an area (waiting, errors).
pub fn message(frame: &mut ratatui::Frame, area: Rect, text: &str, style: ratatui::style::Style) {
    let p = ratatui::widgets::Paragraph::new(text.to_string())
        .style(style)
        .wrap(ratatui::widgets::Wrap { trim: true })
        .alignment(ratatui::layout::Alignment::Center);
    let h = 2.min(area.height);
    let y = area.y + area.height.saturating_sub(h) / 2;
    frame.render_widget(p, Rect { x: area.x, y, width: area.width, height: h });
}

/// Draws a column's frame titled `title` and returns the area inside it; while the column
/// has no content, draws its placeholder there instead and returns `None`.
pub fn column_frame(
    app: &super::app::App,
    i: usize,
    title: ratatui::text::Line<'_>,
    theme: &Theme,
    frame: &mut ratatui::Frame,
    area: Rect,
) -> Option<Rect> {
    let block = panel(title, theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if let Some((msg, err)) = column_placeholder(app, i) {
        message(frame, inner, &msg, if err { theme.error() } else { theme.busy() });
        return None;
    }
    Some(inner)
}

/// The last line of the prompt, as much of it as fits before a continuation in `width`
/// columns (cut at the front with `…`), dimmed: where a generation's text starts.
pub fn prompt_tail_span(prompt: &str, width: u16, theme: &Theme) -> ratatui::text::Span<'static> {
    let chars: Vec<char> = prompt.chars().collect();
    let keep = (width as usize * 2).max(20);
    let tail =
        if chars.len() > keep { format!("…{}", chars[chars.len() - keep..].iter().collect::<String>()) } else { prompt.to_string() };
    ratatui::text::Span::styled(tail.rsplit('\n').next().unwrap_or("").to_string(), theme.dim())
}

/// What a column shows instead of its content while it has none.
pub fn column_placeholder(app: &super::app::App, i: usize) -> Option<(String, bool)> {
    let c = &app.columns[i];
    if let Some(e) = &c.error
        && (c.analysis.is_none() || c.info.is_none())
    {
        return Some((e.clone(), true));
    }
    if c.loading() {
        return Some(("loading the checkpoint…".into(), false));
    }
    if c.analysis.is_none() {
        return Some(("analyzing the prompt…".into(), false));
    }
    None
}
