//! The frame: view tabs with the current layer and position, the prompt's tokens, the
//! active view, the status line and the footer of key hints; overlays on top. Reads the
//! state only.

use super::app::{App, Mode, column_tag};
use super::input::InputPurpose;
use super::keymap::footer_hints;
use super::panels::{self, clip, show_token, spinner, text_width};
use super::theme::Theme;
use super::view::View;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Position};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

/// Below this the views cannot be drawn legibly; a message asks for a larger terminal.
pub const MIN_WIDTH: u16 = 72;
pub const MIN_HEIGHT: u16 = 20;

pub fn render(app: &App, theme: &Theme, frame: &mut Frame) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let text = format!(
            "The terminal is {}×{}; alignscope needs at least {MIN_WIDTH}×{MIN_HEIGHT}. Enlarge it, or q quits.",
            area.width, area.height
        );
        panels::message(frame, area, &text, theme.title());
        return;
    }
    let [tabs, prompt, body, status, footer] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(1), Constraint::Min(10), Constraint::Length(1), Constraint::Length(1)])
            .areas(area);
    frame.render_widget(Paragraph::new(tab_line(app, theme, tabs.width as usize)), tabs);
    frame.render_widget(Paragraph::new(prompt_line(app, theme, prompt.width as usize)), prompt);
    match app.view {
        View::Similarity => panels::similarity::render(app, theme, frame, body),
        View::Predictions => panels::predictions::render(app, theme, frame, body),
        View::Generation => panels::generation::render(app, theme, frame, body),
        View::Metrics => panels::metrics::render(app, theme, frame, body),
        View::Training => panels::training::render(app, theme, frame, body),
    }
    frame.render_widget(Paragraph::new(status_line(app, theme, status.width as usize)), status);
    match &app.mode {
        Mode::Input(line) => {
            let label = match line.purpose {
                InputPurpose::Prompt => " prompt› ",
                InputPurpose::EvalFile => " eval file› ",
            };
            let w = (footer.width as usize).saturating_sub(label.len());
            let (shown, col) = line.field.window(w);
            frame.render_widget(Paragraph::new(Line::from(vec![Span::styled(label, theme.key()), Span::raw(shown)])), footer);
            frame.set_cursor_position(Position { x: footer.x + (text_width(label) + col) as u16, y: footer.y });
            // The input line's own keys replace the status line while typing, unless it
            // says what went wrong (an empty prompt, a file that is not there). Cleared
            // first: a shorter line left the status line's end on screen.
            frame.render_widget(ratatui::widgets::Clear, status);
            let line = match &app.status {
                Some(msg) if msg.error => Line::from(vec![
                    Span::raw(" "),
                    Span::styled(clip(&msg.text, (status.width as usize).saturating_sub(1)), theme.error()),
                ]),
                _ => hints(app, theme, status.width as usize),
            };
            frame.render_widget(Paragraph::new(line), status);
        }
        _ => frame.render_widget(Paragraph::new(hints(app, theme, footer.width as usize)), footer),
    }
    match &app.mode {
        Mode::Help { scroll } => panels::help::render(*scroll, theme, frame, body.union(status)),
        Mode::TrainMenu(menu) => panels::train_menu::render(menu.as_ref(), theme, frame, body),
        _ => {}
    }
}

fn tab_line<'a>(app: &App, theme: &Theme, width: usize) -> Line<'a> {
    let short = width < 100;
    let mut spans = Vec::new();
    for (i, v) in View::ALL.iter().enumerate() {
        let name = if short { v.short_title() } else { v.title() };
        let style = if *v == app.view { theme.tab_active() } else { Style::new() };
        spans.push(Span::styled(format!(" {} {name} ", i + 1), style));
    }
    let (l, pos) = if short { ("L", "pos ") } else { ("layer ", "position ") };
    // No tokens (a prompt the models refused, or still loading): no position to show.
    let position = match app.n_positions() {
        0 => "–".to_string(),
        n => format!("{}/{}", app.position, n - 1),
    };
    let right = format!("{l}{}/{} · {pos}{position} ", app.layer, app.max_layer());
    let used: usize = spans.iter().map(|s| s.width()).sum();
    let gap = width.saturating_sub(used + right.len());
    spans.push(Span::raw(" ".repeat(gap)));
    spans.push(Span::styled(right, theme.title()));
    Line::from(spans)
}

/// The prompt as its tokens, the selected one highlighted, scrolled so that it shows.
fn prompt_line<'a>(app: &App, theme: &Theme, width: usize) -> Line<'a> {
    let Some(tokens) = app.tokens() else {
        return Line::from(vec![Span::styled(" › ", theme.dim()), Span::raw(clip(&app.prompt, width.saturating_sub(3)))]);
    };
    let shown: Vec<String> = tokens.iter().map(|t| show_token(t).replace('␣', " ")).collect();
    let sel = app.position.min(shown.len().saturating_sub(1));
    // Scroll so that the selected token ends within the line.
    let avail = width.saturating_sub(3);
    let mut start = 0;
    let upto = |s: usize, e: usize| shown[s..=e].iter().map(|t| text_width(t)).sum::<usize>();
    while start < sel && upto(start, sel) + 1 > avail {
        start += 1;
    }
    let mut spans = vec![Span::styled(if start > 0 { " …" } else { " ›" }, theme.dim()), Span::raw(" ")];
    let mut used = 3;
    for (i, t) in shown.iter().enumerate().skip(start) {
        let w = text_width(t);
        if used + w > width {
            break;
        }
        // Alternate shades so that token boundaries show.
        let style = if i == sel {
            theme.selected()
        } else if i % 2 == 0 {
            Style::new()
        } else {
            theme.dim().remove_modifier(Modifier::BOLD)
        };
        spans.push(Span::styled(t.clone(), style));
        used += w;
    }
    Line::from(spans)
}

fn status_line<'a>(app: &App, theme: &Theme, width: usize) -> Line<'a> {
    let mut right = String::new();
    let t = &app.training;
    if t.is_active() {
        right = match &t.last {
            Some(m) => format!("train {}/{} · loss {:.3} ", m.step, m.total_steps, m.loss),
            None => "train starting… ".to_string(),
        };
    }
    let mut left: Vec<Span> = vec![Span::raw(" ")];
    let busy = app.busy_text();
    if app.busy() {
        left.push(Span::styled(format!("{} ", spinner(app.ticks)), theme.busy()));
    }
    if let Some(msg) = &app.status {
        let style = if msg.error { theme.error() } else { Style::new() };
        left.push(Span::styled(msg.text.clone(), style));
        if !busy.is_empty() {
            left.push(Span::styled(format!(" · {busy}"), theme.busy()));
        }
    } else if !busy.is_empty() {
        left.push(Span::styled(busy, theme.busy()));
    } else {
        let names: Vec<String> = app.columns.iter().enumerate().map(|(i, c)| format!("{} {}", column_tag(i), c.short_name())).collect();
        left.push(Span::styled(format!("{} · {}", names.join(" vs "), app.device), theme.dim()));
    }
    if !right.is_empty() {
        right = format!(" │ {right}");
    }
    let right_w = text_width(&right);
    let left_w = width.saturating_sub(right_w);
    // Cut the left part to its room, keeping its styles.
    let mut out = Vec::new();
    let mut used = 0;
    for s in left {
        let w = s.width();
        if used + w <= left_w {
            used += w;
            out.push(s);
        } else {
            let rest = left_w.saturating_sub(used);
            out.push(Span::styled(clip(&s.content, rest), s.style));
            used = left_w;
            break;
        }
    }
    out.push(Span::raw(" ".repeat(left_w.saturating_sub(used))));
    out.push(Span::styled(right, theme.busy()));
    Line::from(out)
}

/// The key hints of the current context, as many as fit; `? help` always shows.
fn hints<'a>(app: &App, theme: &Theme, width: usize) -> Line<'a> {
    let mut spans = vec![Span::raw(" ")];
    let mut used = 1;
    let all = footer_hints(&app.scopes());
    let help_w = 8;
    let mut help_shown = false;
    for (key, hint) in &all {
        let w = text_width(key) + 1 + text_width(hint) + 2;
        let is_help = *hint == "help";
        let reserve = if is_help || help_shown { 0 } else { help_w };
        if used + w + reserve > width {
            continue;
        }
        help_shown |= is_help;
        spans.push(Span::styled(key.to_string(), theme.key()));
        spans.push(Span::raw(format!(" {hint}  ")));
        used += w;
    }
    Line::from(spans)
}

/// The screen as text, drawn off-screen at `width`×`height`: for tests and README
/// screenshots. Trailing spaces are kept, so columns line up.
pub fn render_to_text(app: &App, theme: &Theme, width: u16, height: u16) -> String {
    let mut term = ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, height)).expect("a test terminal");
    term.draw(|f| render(app, theme, f)).expect("drawing to a test terminal");
    buffer_text(term.backend().buffer())
}

/// The symbols of a buffer, row by row (wide characters once).
pub fn buffer_text(buf: &ratatui::buffer::Buffer) -> String {
    let mut out = String::new();
    for y in 0..buf.area.height {
        let mut skip = 0usize;
        for x in 0..buf.area.width {
            let cell = &buf[(x, y)];
            if skip > 0 {
                skip -= 1;
                continue;
            }
            out.push_str(cell.symbol());
            skip = text_width(cell.symbol()).saturating_sub(1);
        }
        out.push('\n');
    }
    out
}
