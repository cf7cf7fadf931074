//! The logit lens: top-k next tokens with probability bars at the current layer and
//! selected position, and the layer × position grid of top-1 tokens, for each checkpoint.
//! Cells whose prediction equals the prompt's actual next token are marked.

use super::{clip, column_placeholder, column_title, columns, fit, message, panel, show_token};
use crate::tui::app::{App, TOP_K};
use crate::tui::theme::Theme;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

/// Width of the layer labels in the grid ("12 ").
const LABEL: usize = 3;

pub fn render(app: &App, theme: &Theme, frame: &mut Frame, area: Rect) {
    for (i, r) in columns(area, app.columns.len()).into_iter().enumerate() {
        render_column(app, i, theme, frame, r);
    }
}

/// How many of the top-k fit beside a grid of `n_layers + 1` rows in `height` rows.
pub fn top_rows(height: u16, n_layers: usize) -> usize {
    let grid = n_layers + 1 + 3; // header and borders
    (height as usize).saturating_sub(grid + 2).clamp(3, TOP_K)
}

fn render_column(app: &App, i: usize, theme: &Theme, frame: &mut Frame, area: Rect) {
    let c = &app.columns[i];
    if let Some((msg, err)) = column_placeholder(app, i) {
        let block = panel(column_title(app, i, theme), theme);
        let inner = block.inner(area);
        frame.render_widget(block, area);
        message(frame, inner, &msg, if err { theme.error() } else { theme.busy() });
        return;
    }
    let a = c.analysis.as_ref().unwrap();
    let layer = c.layer_at(app.layer);
    let pos = c.position_at(app.position);
    // The deepest column sets the split, so that side-by-side columns line up.
    let k = top_rows(area.height, app.max_layer());
    let [top_area, grid_area] = Layout::vertical([Constraint::Length(k as u16 + 2), Constraint::Min(3)]).areas(area);

    // Top-k at (layer, position).
    let next_id = a.input_ids.get(pos + 1).copied();
    let mut title = column_title(app, i, theme);
    title.spans.push(Span::styled(format!("L{layer} @{pos} "), theme.title()));
    let block = panel(title, theme);
    let inner = block.inner(top_area);
    frame.render_widget(block, top_area);
    let w = inner.width as usize;
    let tok_w = 10.min(w / 3);
    let pct_w = 6;
    let bar_w = w.saturating_sub(tok_w + pct_w + 2);
    let mut lines = Vec::new();
    for t in a.lens_at(layer, pos).unwrap_or(&[]).iter().take(k) {
        let hit = Some(t.id) == next_id;
        let name_style = if hit { theme.hit() } else { Style::new() };
        let mark = if hit { "✓" } else { " " };
        lines.push(Line::from(vec![
            Span::styled(fit(&show_token(&t.token), tok_w), name_style),
            Span::styled(mark, theme.hit()),
            Span::styled(bar(t.prob, bar_w), theme.bar()),
            Span::raw(format!(" {:>5.1}%", t.prob * 100.0)),
        ]));
    }
    frame.render_widget(Paragraph::new(lines), inner);

    // The grid of top-1 tokens.
    let next = match a.tokens.get(pos + 1) {
        Some(t) => format!("next {}", show_token(t)),
        None => "last token".to_string(),
    };
    let title = Line::from(vec![
        Span::styled(" lens top-1 ", theme.title()),
        Span::styled(format!("@{pos} {} · {next} ", show_token(&a.tokens[pos])), theme.dim()),
    ]);
    let block = panel(title, theme);
    let inner = block.inner(grid_area);
    frame.render_widget(block, grid_area);
    frame.render_widget(Paragraph::new(grid_lines(app, i, theme, inner)), inner);
}

/// A probability bar of `width` columns with eighth-block resolution.
pub fn bar(p: f64, width: usize) -> String {
    const PARTS: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    let eighths = (p.clamp(0.0, 1.0) * width as f64 * 8.0).round() as usize;
    let mut s = "█".repeat(eighths / 8);
    s += PARTS[eighths % 8];
    fit(&s, width)
}

/// The first of `count` items shown in a window of `fit` around `selected`.
pub fn window_start(selected: usize, count: usize, fit: usize) -> usize {
    if fit >= count { 0 } else { selected.saturating_sub(fit / 2).min(count - fit) }
}

fn grid_lines<'a>(app: &App, i: usize, theme: &Theme, inner: Rect) -> Vec<Line<'a>> {
    let c = &app.columns[i];
    let a = c.analysis.as_ref().unwrap();
    let layer = c.layer_at(app.layer);
    let pos = c.position_at(app.position);
    let n_pos = a.input_ids.len();
    let avail = (inner.width as usize).saturating_sub(LABEL);
    // Cells of 6 columns (5 for the token), wider when every position fits anyway.
    let cw = if n_pos * 6 <= avail { (avail / n_pos.max(1)).clamp(6, 10) } else { 6 };
    let n_cols = (avail / cw).max(1);
    let first_pos = window_start(pos, n_pos, n_cols);
    let positions: Vec<usize> = (first_pos..(first_pos + n_cols).min(n_pos)).collect();
    let rows_fit = (inner.height as usize).saturating_sub(1).max(1);
    let n_rows = a.layers + 1;
    let first_layer = window_start(layer, n_rows, rows_fit);
    let cross = theme.crosshair();

    let mut lines = Vec::new();
    let mut header = vec![Span::raw(" ".repeat(LABEL))];
    for &p in &positions {
        let style = if p == pos { theme.selected() } else { theme.dim() };
        header.push(Span::styled(fit(&show_token(&a.tokens[p]), cw - 1), style));
        header.push(Span::raw(" "));
    }
    lines.push(Line::from(header));
    for l in first_layer..(first_layer + rows_fit).min(n_rows) {
        let label_style = if l == layer { theme.selected() } else { theme.dim() };
        let mut spans = vec![Span::styled(format!("{l:>2}"), label_style), Span::raw(" ")];
        for &p in &positions {
            let top = a.lens_at(l, p).and_then(|v| v.first());
            let (text, hit) = match top {
                Some(t) => (show_token(&t.token), a.input_ids.get(p + 1) == Some(&t.id)),
                None => ("?".to_string(), false),
            };
            let mut style = if hit { theme.hit() } else { Style::new() };
            if l == layer || p == pos {
                style = style.patch(cross);
            }
            spans.push(Span::styled(fit(&text, cw - 1), style));
            // The mark keeps hits readable without colour.
            let mark = if hit { "✓" } else { " " };
            spans.push(Span::styled(mark, if l == layer { theme.hit().patch(cross) } else { theme.hit() }));
        }
        lines.push(Line::from(spans));
    }
    if positions.len() < n_pos && inner.height as usize > n_rows + 1 {
        let note = format!("positions {}–{} of 0–{}", positions[0], positions.last().unwrap(), n_pos - 1);
        lines.push(Line::styled(clip(&note, inner.width as usize), theme.dim()));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_have_eighth_resolution_and_fixed_width() {
        assert_eq!(bar(1.0, 4), "████");
        assert_eq!(bar(0.0, 4), "    ");
        assert_eq!(bar(0.5 + 1.0 / 16.0, 4), "██▎ ");
    }

    #[test]
    fn window_keeps_the_selection_inside() {
        assert_eq!(window_start(0, 20, 5), 0);
        assert_eq!(window_start(19, 20, 5), 15);
        assert_eq!(window_start(10, 20, 5), 8);
        assert_eq!(window_start(3, 4, 5), 0);
    }
}
