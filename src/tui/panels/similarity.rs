//! The (L+1)×(L+1) layer-similarity heatmaps of the prompt: one per checkpoint and their
//! difference, with the current layer's row and column highlighted and a colour legend.
//! Cells are as wide as the screen allows: numbers when there is room, shade glyphs in
//! two columns (or one) when there is not.

use super::{column_placeholder, column_title, columns, fit, message, panel, text_width};
use crate::tui::app::App;
use crate::tui::theme::Theme;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

/// Width of the row labels ("12 ").
const LABEL: usize = 3;

/// The widest cell (1..=6 columns) that fits `n` cells in a panel `panel_w` wide; 0 if none.
/// Cells of 4 or more show the value, of 6 with two decimals.
pub fn cell_width(panel_w: u16, n: usize) -> usize {
    let inner = (panel_w as usize).saturating_sub(2 + LABEL);
    (1..=6).rev().find(|&w| w * n <= inner).unwrap_or(0)
}

enum MapKind {
    /// A similarity matrix on the sequential ramp `[0, 1]`.
    Similarity,
    /// A difference on the diverging ramp `[-scale, scale]`.
    Difference { scale: f64 },
}

struct Map<'a> {
    title: Line<'a>,
    /// `None` where the similarity is undefined (centered COS and CKA of one token).
    matrix: Vec<Vec<Option<f64>>>,
    kind: MapKind,
    /// The layer highlighted (clamped to this matrix).
    layer: usize,
}

/// Which heatmaps to draw: A, B and A−B when the screen is wide enough for all three with
/// cells of two columns; otherwise A and B, or A and A−B after `d`.
fn plan(app: &App, width: u16, n: usize) -> (bool, bool) {
    // (show B, show difference)
    if app.columns.len() < 2 {
        return (false, false);
    }
    let three_fit = cell_width(width / 3, n) >= 2;
    match (three_fit, app.diff_toggled) {
        (true, false) => (true, true),
        (true, true) => (true, false),
        (false, false) => (true, false),
        (false, true) => (false, true),
    }
}

pub fn render(app: &App, theme: &Theme, frame: &mut Frame, area: Rect) {
    let n = app.max_layer() + 1;
    let [maps_area, legend_area, profile_area] =
        Layout::vertical([Constraint::Max(n as u16 + 4), Constraint::Length(1), Constraint::Min(0)]).areas(area);
    let (show_b, show_diff) = plan(app, maps_area.width, n);
    let mut maps: Vec<Result<Map, (Line, String, bool)>> = Vec::new();
    let shown: Vec<usize> = if show_b { (0..app.columns.len()).collect() } else { vec![0] };
    for &i in &shown {
        let title = column_title(app, i, theme);
        match column_placeholder(app, i) {
            Some((msg, err)) => maps.push(Err((title, msg, err))),
            None => {
                let a = app.columns[i].analysis.as_ref().unwrap();
                maps.push(Ok(Map {
                    title,
                    matrix: app.metric.matrix(a).to_vec(),
                    kind: MapKind::Similarity,
                    layer: app.columns[i].layer_at(app.layer),
                }));
            }
        }
    }
    let mut diff_scale = None;
    if show_diff {
        let title = Line::from(vec![Span::styled(" A−B ", theme.title()), Span::styled(format!("{} ", app.metric.label()), theme.dim())]);
        match (&app.columns[0].analysis, &app.columns[1].analysis) {
            (Some(a), Some(b)) if a.layers == b.layers => {
                let (ma, mb) = (app.metric.matrix(a), app.metric.matrix(b));
                let matrix: Vec<Vec<Option<f64>>> =
                    ma.iter().zip(mb).map(|(ra, rb)| ra.iter().zip(rb).map(|(x, y)| Some((*x)? - (*y)?)).collect()).collect();
                let max = matrix.iter().flatten().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
                // Round the scale up to a tenth so that the legend reads cleanly.
                let scale = ((max * 10.0).ceil() / 10.0).max(0.1);
                diff_scale = Some(scale);
                maps.push(Ok(Map { title, matrix, kind: MapKind::Difference { scale }, layer: app.layer.min(a.layers) }));
            }
            (Some(a), Some(b)) => maps.push(Err((title, format!("A has {} layers and B {}: no difference", a.layers, b.layers), false))),
            _ => maps.push(Err((title, "waiting for both analyses…".into(), false))),
        }
    }
    let areas = columns(maps_area, maps.len());
    for (map, r) in maps.into_iter().zip(areas) {
        match map {
            Ok(m) => draw_map(&m, theme, frame, r),
            Err((title, msg, err)) => {
                let block = panel(title, theme);
                let inner = block.inner(r);
                frame.render_widget(block, r);
                message(frame, inner, &msg, if err { theme.error() } else { theme.busy() });
            }
        }
    }
    frame.render_widget(Paragraph::new(legend(app, theme, diff_scale, legend_area.width as usize)), legend_area);
    let profile = profile_lines(app, theme, profile_area.width as usize);
    if !profile.is_empty() && profile.len() <= profile_area.height as usize {
        frame.render_widget(Paragraph::new(profile), profile_area);
    }
}

/// A profile entry: nothing to show (outer `None`: layer 0 has no previous layer), or a
/// value that may be undefined (inner `None`).
type Cell = Option<Option<f64>>;

/// Below the maps when there is room: per layer, similarity to the previous and to the
/// last layer, and the residual step size ‖h‖/‖Δh‖ into the layer, for each checkpoint.
fn profile_lines<'a>(app: &App, theme: &Theme, width: usize) -> Vec<Line<'a>> {
    const CELL: usize = 6;
    const LABEL_W: usize = 11;
    let n = app.max_layer() + 1;
    if LABEL_W + n * CELL > width {
        return vec![]; // too narrow: leave it out
    }
    let mut lines = vec![Line::raw("")];
    let mut header = vec![Span::styled(format!("{:<w$}", " layer", w = LABEL_W), theme.dim())];
    for l in 0..n {
        let style = if l == app.layer { theme.selected() } else { theme.dim() };
        header.push(Span::styled(format!("{l:>w$}", w = CELL), style));
    }
    lines.push(Line::from(header));
    for (i, c) in app.columns.iter().enumerate() {
        let Some(a) = &c.analysis else { continue };
        let m = app.metric.matrix(a);
        let last = m.len() - 1;
        let rows: [(&str, Vec<Cell>, usize); 3] = [
            ("↔prev", (0..=last).map(|l| (l > 0).then(|| m[l][l - 1])).collect(), 2),
            ("↔last", (0..=last).map(|l| Some(m[l][last])).collect(), 2),
            ("‖h‖/‖Δh‖", (0..=last).map(|l| if l > 0 { a.steps.norm_ratio.get(l - 1).copied() } else { None }).collect(), 1),
        ];
        for (name, values, decimals) in rows {
            let mut spans = vec![
                Span::styled(format!(" {} ", crate::tui::app::column_tag(i)), theme.series(i)),
                Span::styled(format!("{:<w$}", name, w = LABEL_W - 3), theme.dim()),
            ];
            for (l, v) in values.iter().enumerate() {
                let text = match v {
                    Some(Some(v)) => format!("{v:>w$.d$}", w = CELL, d = decimals),
                    Some(None) => format!("{:>w$}", "n/a", w = CELL),
                    None => " ".repeat(CELL),
                };
                let style = if l == app.layer { theme.title() } else { Style::new() };
                spans.push(Span::styled(text, style));
            }
            lines.push(Line::from(spans));
        }
    }
    lines
}

/// A value in three characters: ".93", "1.0", "-.2".
fn short_value(v: f64) -> String {
    if !v.is_finite() {
        return "nan".into();
    }
    // Rounding noise around zero (a diagonal of differences) must not flicker as "-.0".
    if v.abs() < 0.005 {
        return ".00".into();
    }
    if v >= 0.995 {
        "1.0".into()
    } else if v >= 0.0 {
        format!(".{:02}", (v * 100.0).round() as i64)
    } else if v > -0.95 {
        format!("-.{}", (-v * 10.0).round() as i64)
    } else {
        "-1.".into()
    }
}

fn draw_map(m: &Map, theme: &Theme, frame: &mut Frame, area: Rect) {
    let block = panel(m.title.clone(), theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let n = m.matrix.len();
    let cw = cell_width(area.width, n);
    if cw == 0 || inner.height < 3 {
        message(frame, inner, "too narrow for this heatmap", theme.dim());
        return;
    }
    // Header, rows, and the info line; when rows do not all fit, a window around the layer.
    let rows_fit = (inner.height as usize).saturating_sub(2).max(1);
    let first = if rows_fit >= n { 0 } else { m.layer.saturating_sub(rows_fit / 2).min(n - rows_fit) };
    let last = (first + rows_fit).min(n);
    let cross = theme.crosshair();
    let mut lines = Vec::new();
    let mut header = vec![Span::raw(" ".repeat(LABEL))];
    for j in 0..n {
        let label = if cw == 1 { format!("{}", j % 10) } else { format!("{:>w$}", j, w = cw) };
        let style = if j == m.layer { theme.selected() } else { theme.dim() };
        header.push(Span::styled(fit(&label, cw), style));
    }
    lines.push(Line::from(header));
    for i in first..last {
        let row_style = if i == m.layer { theme.selected() } else { theme.dim() };
        let mut spans = vec![Span::styled(format!("{i:>2}"), row_style), Span::raw(" ")];
        for j in 0..n {
            let Some(v) = m.matrix[i][j] else {
                // Undefined: no colour, and never a number that reads as a similarity.
                let text = if cw >= 4 { format!("{:>w$}", "n/a", w = cw) } else { "×".repeat(cw) };
                let style = if i == m.layer || j == m.layer { theme.dim().patch(cross) } else { theme.dim() };
                spans.push(Span::styled(text, style));
                continue;
            };
            let (style, glyph) = match m.kind {
                MapKind::Similarity => theme.heat(v),
                MapKind::Difference { scale } => theme.diverging(v / scale),
            };
            let v = if v.abs() < 0.005 { 0.0 } else { v };
            let text = match cw {
                6.. => format!("{v:>w$.2}", w = cw),
                4.. => format!("{:>w$}", short_value(v), w = cw),
                _ => glyph.repeat(cw),
            };
            let style = if i == m.layer || j == m.layer { style.patch(cross) } else { style };
            spans.push(Span::styled(text, style));
        }
        lines.push(Line::from(spans));
    }
    lines.push(info_line(m, theme, inner.width as usize));
    frame.render_widget(Paragraph::new(lines), inner);
}

/// The current layer's similarity to its neighbours and to the last layer.
fn info_line<'a>(m: &Map, theme: &Theme, width: usize) -> Line<'a> {
    let l = m.layer;
    let last = m.matrix.len() - 1;
    // Rounding noise around zero shows as 0, not as a flickering -0.00.
    let value = |j: usize| match m.matrix[l][j] {
        Some(v) => format!("{:+.2}", if v.abs() < 0.005 { 0.0 } else { v }),
        None => "n/a".to_string(),
    };
    let mut parts = Vec::new();
    if l > 0 {
        parts.push(format!("{l}↔{} {}", l - 1, value(l - 1)));
    }
    if l < last {
        parts.push(format!("{l}↔{} {}", l + 1, value(l + 1)));
        if l + 1 < last {
            parts.push(format!("{l}↔{last} {}", value(last)));
        }
    }
    if parts.is_empty() {
        parts.push(format!("layer {l}"));
    }
    Line::styled(super::clip(&parts.join("  "), width), theme.dim())
}

fn legend<'a>(app: &App, theme: &Theme, diff_scale: Option<f64>, width: usize) -> Line<'a> {
    let mut spans = vec![Span::styled(format!(" {} ", app.metric.label()), theme.title()), Span::raw("0 ")];
    for k in 0..10 {
        let t = (k as f64 + 0.5) / 10.0;
        let (style, glyph) = theme.heat(t);
        spans.push(Span::styled(glyph.repeat(2), style));
    }
    spans.push(Span::raw(" 1"));
    if let Some(s) = diff_scale {
        spans.push(Span::raw(format!("   A−B  -{s:.1} ")));
        for k in 0..9 {
            let t = -1.0 + 2.0 * (k as f64 + 0.5) / 9.0;
            let (style, glyph) = theme.diverging(t);
            spans.push(Span::styled(glyph.repeat(2), style));
        }
        spans.push(Span::raw(format!(" +{s:.1}")));
    }
    let used: usize = spans.iter().map(|s| s.width()).sum();
    let undefined =
        app.columns.iter().filter_map(|c| c.analysis.as_ref()).any(|a| app.metric.matrix(a).iter().flatten().any(Option::is_none));
    let note = if undefined { "  n/a: undefined for one token (centered features are 0)" } else { "  (≤0 as ·)" };
    if used + text_width(note) < width {
        spans.push(Span::styled(note, theme.dim()));
    } else if undefined {
        spans.push(Span::styled("  n/a: undefined", theme.dim()));
    }
    Line::from(spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirteen_layers_get_two_column_cells_in_half_of_80_columns() {
        assert_eq!(cell_width(40, 13), 2);
        assert_eq!(cell_width(26, 5), 4);
        assert_eq!(cell_width(100, 5), 6);
        assert_eq!(cell_width(26, 13), 1);
    }

    #[test]
    fn short_values_are_three_characters() {
        for v in [1.0, 0.999, 0.93, 0.05, 0.0, -0.04, -0.5, -1.0] {
            assert_eq!(short_value(v).chars().count(), 3, "{v}");
        }
    }
}
