//! The training menu: the run's settings prefilled from the loaded checkpoint, the engine
//! that trains it (with the exact command when it is the PyTorch engine), or the folder of
//! a run to follow.

use super::panel;
use crate::tui::theme::Theme;
use crate::tui::train::{Engine, Field, RunKind, TrainMenu};
use ratatui::Frame;
use ratatui::layout::{Position, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph};

const LABEL: usize = 15;

pub fn render(menu: &TrainMenu, theme: &Theme, frame: &mut Frame, area: Rect) {
    let fields = menu.fields();
    let w = area.width.saturating_sub(4).min(90);
    let inner_w = w.saturating_sub(2) as usize;
    // Above the fields: why the menu opened by itself (at most two lines).
    let mut note = menu.note.as_deref().map(|n| wrap(n, inner_w)).unwrap_or_default();
    if note.len() > 2 {
        note[1] = super::clip(&note[1..].join(" "), inner_w);
        note.truncate(2);
    }
    let note_rows = if note.is_empty() { 0 } else { note.len() as u16 + 1 };
    let value_w = inner_w.saturating_sub(LABEL + 4);
    // Below the fields: the command the PyTorch engine will run, or what following does.
    let base_h = fields.len() as u16 + 4 + note_rows;
    let room = area.height.saturating_sub(base_h + 1) as usize;
    let below = below_fields(menu, inner_w.saturating_sub(2), room);
    let extra = if below.is_empty() { 0 } else { below.len() as u16 + 1 };
    let h = (base_h + extra).min(area.height);
    let r = Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h };
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
                if matches!(f, Field::Kind | Field::Run | Field::Engine) && is_sel {
                    theme.key()
                } else {
                    style.remove_modifier(ratatui::style::Modifier::REVERSED)
                },
            ),
        ]));
    }
    if !below.is_empty() {
        lines.push(Line::raw(""));
        for (i, l) in below.into_iter().enumerate() {
            let style = if i == 0 { theme.dim() } else { ratatui::style::Style::new() };
            lines.push(Line::styled(format!("  {l}"), style));
        }
    }
    lines.push(Line::raw(""));
    match &menu.error {
        Some(e) => lines.push(Line::styled(e.clone(), theme.error())),
        None => {
            let enter = if menu.run_kind() == RunKind::Attach { "Enter follows" } else { "Enter starts" };
            lines.push(Line::styled(format!("{enter} · Esc closes · ↑↓ fields · ←→ choices"), theme.dim()))
        }
    }
    let (name, how) = match (menu.run_kind(), menu.engine()) {
        (RunKind::Attach, _) => (" Follow ", "a run of either engine, by its folder "),
        (_, Engine::InProcess) => (" Train ", "runs in the background "),
        (_, Engine::Torch) => (" Train ", "on PyTorch, in a process of its own "),
    };
    let title = Line::from(vec![Span::styled(name, theme.title()), Span::styled(how, theme.dim())]);
    let block = panel(title, theme);
    let inner = block.inner(r);
    frame.render_widget(Clear, r);
    frame.render_widget(Paragraph::new(lines).block(block), r);
    if let Some((x, y)) = cursor {
        frame.set_cursor_position(Position { x: inner.x + x as u16, y: inner.y + y as u16 });
    }
}

/// The lines under the fields (a heading, then text wrapped to `width`), at most `room`;
/// a command cut short ends with "…" and says where it is written in full.
fn below_fields(menu: &TrainMenu, width: usize, room: usize) -> Vec<String> {
    let (heading, text) = match (&menu.preview, menu.run_kind()) {
        (Some(cmd), _) => ("Command (its output goes to RUN/train.log):", cmd.clone()),
        (None, RunKind::Attach) => (
            "Follows the run in this folder live, whichever engine trains it:",
            "x stops it (through its stop file, saving first) and r loads its saves; it goes on when you quit.".to_string(),
        ),
        _ => return vec![],
    };
    if room < 2 || width < 10 {
        return vec![];
    }
    let mut lines = vec![heading.to_string()];
    let wrapped = wrap(&text, width);
    let fit = room - 1;
    if wrapped.len() <= fit {
        lines.extend(wrapped);
    } else {
        lines.extend(wrapped[..fit - 1].iter().cloned());
        lines.push(super::clip(&format!("{}… (in full: RUN/train.log)", wrapped[fit - 1].trim_end()), width));
    }
    lines
}

/// Breaks text at spaces (a word longer than `width` is cut) into lines of at most `width`.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![];
    let mut line = String::new();
    for word in text.split(' ') {
        let mut word = word.to_string();
        loop {
            let need = if line.is_empty() { super::text_width(&word) } else { super::text_width(&line) + 1 + super::text_width(&word) };
            if need <= width {
                if !line.is_empty() {
                    line.push(' ');
                }
                line.push_str(&word);
                break;
            }
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
                continue;
            }
            // A word longer than a line: cut it.
            let cut: String = word.chars().take(width).collect();
            word = word[cut.len()..].to_string();
            lines.push(cut);
            if word.is_empty() {
                break;
            }
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrapping_keeps_every_character_and_the_width() {
        let text = "python scripts/torch/train.py --ckpt a-very-long-checkpoint-name-that-does-not-fit --out x";
        let lines = super::wrap(text, 20);
        assert!(lines.iter().all(|l| l.chars().count() <= 20), "{lines:?}");
        assert_eq!(lines.join(" ").replace(' ', ""), text.replace(' ', ""));
        assert_eq!(lines[0], "python");
    }
}
