//! Layer metrics from a held-out text: per-layer accuracy, perplexity and COS with the
//! last layer for each checkpoint, the current layer marked, and the shallowest layer
//! reaching 95% of the best accuracy.

use super::{clip, panel, spinner};
use crate::analysis::eval::EvalReport;
use crate::tui::app::{App, column_tag};
use crate::tui::column::EvalState;
use crate::tui::theme::Theme;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Chart, Dataset, GraphType, LineGauge, Paragraph};

/// The fraction of the best accuracy that the marked minimal depth reaches.
pub const DEPTH_FRACTION: f64 = 0.95;

#[derive(Clone, Copy)]
enum Metric {
    Accuracy,
    Perplexity,
    CosLast,
}

impl Metric {
    fn title(&self) -> &'static str {
        match self {
            Metric::Accuracy => " accuracy % ",
            Metric::Perplexity => " perplexity (log) ",
            Metric::CosLast => " COS with last ",
        }
    }

    /// The plotted value (perplexity on a log10 scale); NaN where undefined, which the
    /// chart leaves out.
    fn values(&self, r: &EvalReport) -> Vec<f64> {
        match self {
            Metric::Accuracy => r.acc.iter().map(|a| a * 100.0).collect(),
            Metric::Perplexity => r.ppl.iter().map(|p| p.max(1.0).log10()).collect(),
            Metric::CosLast => r.cos_last.iter().map(|c| c.unwrap_or(f64::NAN)).collect(),
        }
    }
}

pub fn render(app: &App, theme: &Theme, frame: &mut Frame, area: Rect) {
    let n_cols = app.columns.len() as u16;
    let [head, charts, table] = Layout::vertical([Constraint::Length(1), Constraint::Min(6), Constraint::Length(n_cols)]).areas(area);
    frame.render_widget(Paragraph::new(headline(app, theme, head.width as usize)), head);
    let reports: Vec<Option<&EvalReport>> = app
        .columns
        .iter()
        .map(|c| match &c.eval {
            EvalState::Done { report, .. } => Some(report),
            _ => None,
        })
        .collect();
    let chart_areas = super::columns(charts, 3);
    for (m, r) in [Metric::Accuracy, Metric::Perplexity, Metric::CosLast].into_iter().zip(chart_areas) {
        draw_chart(app, &reports, m, theme, frame, r);
    }
    let lines: Vec<Line> = (0..app.columns.len()).map(|i| table_row(app, i, theme, table.width as usize)).collect();
    frame.render_widget(Paragraph::new(lines), table);
    // A running evaluation shows as a gauge in its row.
    for (i, c) in app.columns.iter().enumerate() {
        if let EvalState::Running { done, total } = c.eval {
            let row = Rect { x: table.x + 4, y: table.y + i as u16, width: table.width.saturating_sub(4), height: 1 };
            let ratio = if total == 0 { 0.0 } else { done as f64 / total as f64 };
            let gauge = LineGauge::default()
                .filled_style(theme.series(i))
                .label(format!("{} evaluating {done}/{total} chunks", spinner(app.ticks)))
                .ratio(ratio.clamp(0.0, 1.0));
            frame.render_widget(gauge, row);
        }
    }
}

fn headline<'a>(app: &App, theme: &Theme, width: usize) -> Line<'a> {
    let file = app.eval_data.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| app.eval_data.display().to_string());
    let done = app.columns.iter().find_map(|c| match &c.eval {
        EvalState::Done { report, .. } => Some(report),
        _ => None,
    });
    let text = match done {
        Some(r) => format!(" {file}: {} × {} tokens = {} predictions per layer", crate::util::count_of(r.chunks, "chunk"), r.ctx, r.tokens),
        None => format!(" {file}"),
    };
    Line::styled(clip(&text, width), theme.title())
}

fn bounds(values: &[Vec<f64>], m: Metric) -> [f64; 2] {
    // The embedding layer's lens perplexity is orders of magnitude above the rest; scaling
    // to it would flatten layers 1..L, so perplexity is scaled to those (layer 0 is
    // clipped to the top edge).
    let skip = if matches!(m, Metric::Perplexity) { 1 } else { 0 };
    let all = values.iter().flat_map(|v| v.iter().skip(skip)).copied().filter(|v| v.is_finite());
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return [0.0, 1.0];
    }
    match m {
        Metric::Accuracy => [0.0, (hi * 1.1).clamp(1.0, 100.0)],
        Metric::Perplexity => [lo.floor().max(0.0), hi.ceil().max(lo.floor() + 1.0)],
        Metric::CosLast => [lo.min(0.0), 1.0],
    }
}

fn axis_label(m: Metric, v: f64) -> String {
    match m {
        Metric::Accuracy => format!("{v:.0}"),
        Metric::Perplexity => {
            let p = 10f64.powf(v);
            if p >= 1000.0 { format!("{:.0}k", p / 1000.0) } else { format!("{p:.0}") }
        }
        Metric::CosLast => format!("{v:.1}"),
    }
}

fn draw_chart(app: &App, reports: &[Option<&EvalReport>], m: Metric, theme: &Theme, frame: &mut Frame, area: Rect) {
    let block = panel(Span::styled(m.title(), theme.title()), theme);
    let values: Vec<Vec<f64>> = reports.iter().map(|r| r.map(|r| m.values(r)).unwrap_or_default()).collect();
    if values.iter().all(Vec::is_empty) {
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let msg = if app.columns.iter().any(|c| matches!(c.eval, EvalState::Running { .. })) {
            "evaluating…"
        } else {
            "no evaluation yet (e runs it)"
        };
        super::message(frame, inner, msg, theme.dim());
        return;
    }
    let y = bounds(&values, m);
    let x_max = app.max_layer().max(1) as f64;
    let points: Vec<Vec<(f64, f64)>> = values
        .iter()
        .map(|v| v.iter().enumerate().filter(|(_, val)| !val.is_nan()).map(|(l, &val)| (l as f64, val.clamp(y[0], y[1]))).collect())
        .collect();
    let cursor = [(app.layer as f64, y[0]), (app.layer as f64, y[1])];
    let depth_points: Vec<Vec<(f64, f64)>> = reports
        .iter()
        .zip(&values)
        .map(|(r, v)| match (r.and_then(|r| r.min_depth_reaching(DEPTH_FRACTION)), m) {
            (Some(d), Metric::Accuracy) => vec![(d as f64, v[d])],
            _ => vec![],
        })
        .collect();
    let mut datasets = vec![Dataset::default().graph_type(GraphType::Line).marker(Marker::Braille).style(theme.dim()).data(&cursor)];
    for (i, p) in points.iter().enumerate() {
        datasets.push(Dataset::default().graph_type(GraphType::Line).marker(Marker::Braille).style(theme.series(i)).data(p));
    }
    for (i, p) in depth_points.iter().enumerate() {
        if !p.is_empty() {
            datasets.push(
                Dataset::default()
                    .graph_type(GraphType::Scatter)
                    .marker(Marker::Dot)
                    .style(theme.series(i).add_modifier(ratatui::style::Modifier::BOLD))
                    .data(p),
            );
        }
    }
    let chart = Chart::new(datasets)
        .block(block)
        .legend_position(None)
        .x_axis(Axis::default().bounds([0.0, x_max]).labels(["0".to_string(), format!("{}", x_max as usize)]).style(theme.dim()))
        .y_axis(Axis::default().bounds(y).labels([axis_label(m, y[0]), axis_label(m, y[1])]).style(theme.dim()));
    frame.render_widget(chart, area);
}

fn table_row<'a>(app: &App, i: usize, theme: &Theme, width: usize) -> Line<'a> {
    let c = &app.columns[i];
    let tag = Span::styled(format!(" {} ", column_tag(i)), theme.series(i).add_modifier(ratatui::style::Modifier::BOLD));
    let text = match &c.eval {
        EvalState::Done { report: r, .. } => {
            let l = app.layer.min(r.layers);
            let depth = match r.min_depth_reaching(DEPTH_FRACTION) {
                Some(d) => format!("95% of best acc at L{d}"),
                None => "no layer reaches 95% of best".to_string(),
            };
            let cos = crate::util::fmt_opt(r.cos_last[l], 5, 2);
            format!("L{l:<2} acc {:>5.1}%  ppl {:>8.1}  COS_last {cos}  │ {depth}", r.acc[l] * 100.0, r.ppl[l])
        }
        EvalState::Failed(e) => e.clone(),
        EvalState::NotStarted => "not evaluated yet".to_string(),
        EvalState::Running { .. } => String::new(),
    };
    let style = if matches!(c.eval, EvalState::Failed(_)) { theme.error() } else { ratatui::style::Style::new() };
    Line::from(vec![tag, Span::styled(clip(&text, width.saturating_sub(4)), style)])
}
