//! The training menu: the run's settings prefilled from the loaded checkpoint.

use super::panel;
use crate::tui::theme::Theme;
use crate::tui::train::{Field, TrainMenu};
use ratatui::Frame;
use ratatui::layout::{Position, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph};

const LABEL: usize = 15;

pub fn render(menu: &TrainMenu, theme: &Theme, frame: &mut Frame, area: Rect) {
    let fields = menu.fields();
    let w = area.width.saturating_sub(4).min(90);
    let inner_w = w.saturating_sub(2) as usize;
    let note = menu.note.as_deref().map(|n| wrap(n, inner_w, 2)).unwrap_or_default();
    let note_rows = if note.is_empty() { 0 } else { note.len() as u16 + 1 };
    let h = (fields.len() as u16 + 4 + note_rows).min(area.height);
    let r = Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h };
    let value_w = inner_w.saturating_sub(LABEL + 4);
    let selected = menu.selected_field();
    let mut lines = Vec::new();
    let mut cursor = None;
    if !note.is_empty() {
        lines.extend(note.into_iter().map(|l| Line::styled(l, theme.title())));
        lines.push(Line::raw(""));
    }
    for (row, f) in fields.iter().enumerate() {
        let row = row + note_rows as usize;
        let is_sel = *f == selected;
        let marker = if is_sel { "▸ " } else { "  " };
        let label = Span::styled(format!("{marker}{:<w$}", f.label(), w = LABEL), if is_sel { theme.title() } else { theme.dim() });
        let value = match menu.text(*f) {
            Some(t) if is_sel => {
                let (shown, col) = t.window(value_w);
                cursor = Some((LABEL + 2 + col, row));
                shown
            }
            Some(t) => super::clip(&t.text, value_w),
            // Choices: ← → cycle.
            None => format!("◂ {} ▸", menu.value(*f)),
        };
        let style = if is_sel { theme.selected() } else { ratatui::style::Style::new() };
        lines.push(Line::from(vec![
            label,
            Span::styled(
                value,
                if matches!(f, Field::Kind | Field::Run) && is_sel {
                    theme.key()
                } else {
                    style.remove_modifier(ratatui::style::Modifier::REVERSED)
                },
            ),
        ]));
    }
    lines.push(Line::raw(""));
    match &menu.error {
        Some(e) => lines.push(Line::styled(e.clone(), theme.error())),
        None => lines.push(Line::styled("Enter starts · Esc closes · ↑↓ fields · ←→ choices", theme.dim())),
    }
    let title = Line::from(vec![Span::styled(" Train ", theme.title()), Span::styled("runs in the background ", theme.dim())]);
    let block = panel(title, theme);
    let inner = block.inner(r);
    frame.render_widget(Clear, r);
    frame.render_widget(Paragraph::new(lines).block(block), r);
    if let Some((x, y)) = cursor {
        frame.set_cursor_position(Position { x: inner.x + x as u16, y: inner.y + y as u16 });
    }
}

/// Words into at most `max_lines` lines of `width` columns (the last one clipped).
fn wrap(text: &str, width: usize, max_lines: usize) -> Vec<String> {
    let mut lines: Vec<String> = vec![String::new()];
    for word in text.split(' ') {
        let room = lines.len() < max_lines;
        let last = lines.last_mut().expect("one line");
        let used = unicode_width::UnicodeWidthStr::width(last.as_str());
        if used > 0 && used + 1 + unicode_width::UnicodeWidthStr::width(word) > width && room {
            lines.push(word.to_string());
        } else {
            if used > 0 {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines.into_iter().map(|l| super::clip(&l, width)).collect()
}
