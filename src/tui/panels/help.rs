//! The help screen, generated from the keymap (the same table as the footer hints).

use super::panel;
use crate::tui::keymap::{BINDINGS, all_scopes};
use crate::tui::theme::Theme;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph};

/// The help text: one section per scope, one line per binding.
pub fn lines<'a>(theme: &Theme) -> Vec<Line<'a>> {
    let mut out = Vec::new();
    for scope in all_scopes() {
        out.push(Line::styled(scope.title().to_string(), theme.title()));
        for b in BINDINGS.iter().filter(|b| b.scope == scope) {
            out.push(Line::from(vec![Span::styled(format!("  {:<8}", b.label), theme.key()), Span::raw(b.help)]));
        }
        out.push(Line::raw(""));
    }
    // Lines short enough for the 80-column box (it does not wrap: the scroll counts lines).
    for l in [
        "In the input line and the training menu other keys edit the text:",
        "  ←→ Home End move, Backspace Delete erase, Ctrl-U erases to the start,",
        "  Alt-Enter inserts a line break; a paste is inserted as text.",
        "Ctrl-C quits from anywhere.",
    ] {
        out.push(Line::styled(l, theme.dim()));
    }
    out
}

pub fn render(scroll: u16, theme: &Theme, frame: &mut Frame, area: Rect) {
    // Over the whole body, so that no view shows through at the sides.
    frame.render_widget(Clear, area);
    let w = area.width.min(80);
    let r = Rect { x: area.x + (area.width - w) / 2, width: w, ..area };
    let h = r.height;
    let text = lines(theme);
    let max_scroll = (text.len() as u16).saturating_sub(h.saturating_sub(2));
    let title = Line::from(vec![Span::styled(" Keys ", theme.title()), Span::styled("↑↓ scroll · ? or Esc closes ", theme.dim())]);
    frame.render_widget(Clear, r);
    frame.render_widget(Paragraph::new(text).block(panel(title, theme)).scroll((scroll.min(max_scroll), 0)), r);
}
