//! The background training run: progress gauge, speed, ETA, the total and per-layer loss
//! curves, the last held-out evaluation, and the saved checkpoint that `r` loads.

use super::{clip, panel, spinner};
use crate::train::follow::LOG_FILE;
use crate::tui::app::App;
use crate::tui::theme::Theme;
use crate::tui::train::{RunSource, TrainStatus};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Chart, Dataset, GraphType, LineGauge, Paragraph, Wrap};

/// "1h02m", "3m05s", "42s".
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// "850", "3.2k".
pub fn rate(x: f64) -> String {
    if x >= 1000.0 { format!("{:.1}k", x / 1000.0) } else { format!("{x:.0}") }
}

pub fn render(app: &App, theme: &Theme, frame: &mut Frame, area: Rect) {
    let t = &app.training;
    if t.status == TrainStatus::Idle {
        let text = vec![
            Line::styled("No training run.", theme.title()),
            Line::raw(""),
            Line::raw(
                "t or F2 opens the training menu: an aligned (or standard) fine-tune of the loaded checkpoint, or continue a saved run, on alignscope's engine in the background or on PyTorch's (torchrun, as a child process); or follow a run already training, of either engine, by its folder.",
            ),
            Line::raw(
                "You keep exploring while it trains; x stops it (saving first), and r loads the saved checkpoint into column A, next to the checkpoint it started from, to watch the layers align.",
            ),
        ];
        let block = panel(Span::styled(" Training ", theme.title()), theme);
        frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }).block(block), area);
        return;
    }
    let [head, gauge_area, info_area, charts, foot] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(1), Constraint::Length(1), Constraint::Min(6), Constraint::Length(2)])
            .areas(area);
    let (state, style) = match &t.status {
        TrainStatus::Idle => ("", theme.dim()),
        TrainStatus::Starting => ("starting", theme.busy()),
        TrainStatus::Running => ("running", theme.ok()),
        TrainStatus::Stopping => ("stopping", theme.busy()),
        TrainStatus::Finished { stopped_early: true } => ("stopped", theme.dim()),
        TrainStatus::Finished { stopped_early: false } => ("finished", theme.ok()),
        TrainStatus::Failed(_) => ("failed", theme.error()),
    };
    let spin = if t.is_active() { format!("{} ", spinner(app.ticks)) } else { String::new() };
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(format!(" {spin}{state} "), style.add_modifier(ratatui::style::Modifier::BOLD)),
            Span::raw(clip(&t.description, (head.width as usize).saturating_sub(state.len() + 4))),
        ])),
        head,
    );

    let step = t.step();
    let ratio = if t.total_steps == 0 { 0.0 } else { step as f64 / t.total_steps as f64 };
    let gauge = LineGauge::default()
        .filled_style(theme.series(0))
        .unfilled_style(theme.dim())
        // Until the run says how many steps it has, there is no step count to show.
        .label(match t.total_steps {
            0 => " step –".to_string(),
            total => format!(" step {step}/{total} "),
        })
        .ratio(ratio.clamp(0.0, 1.0));
    frame.render_widget(gauge, gauge_area);
    let info = match &t.last {
        Some(m) => format!(
            " {} tok/s · ETA {} · loss {:.3} ({}) · lr {:.1e} · grad {:.2}",
            rate(m.tokens_per_sec),
            duration(m.eta_secs),
            m.loss,
            m.objective,
            m.lr,
            m.grad_norm
        ),
        None => match &t.source {
            RunSource::InProcess => " loading the data and the model…".to_string(),
            RunSource::Child { .. } => match &t.out {
                Some(out) => format!(" the PyTorch engine is starting (output: {})…", out.join(LOG_FILE).display()),
                None => " starting the PyTorch engine…".to_string(),
            },
            RunSource::Attached => " waiting for the run's first step…".to_string(),
        },
    };
    match &t.status {
        TrainStatus::Failed(e) => {
            frame.render_widget(Paragraph::new(Line::styled(clip(&format!(" {e}"), info_area.width as usize), theme.error())), info_area)
        }
        _ => frame.render_widget(Paragraph::new(clip(&info, info_area.width as usize)), info_area),
    }

    let [left, right] = Layout::horizontal([Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)]).areas(charts);
    draw_total_loss(app, theme, frame, left);
    draw_layer_losses(app, theme, frame, right);

    let mut lines = Vec::new();
    match &t.last_eval {
        Some(e) => {
            let mut spans = vec![Span::styled(format!(" eval @{} acc: ", e.step), theme.dim())];
            for (l, a) in e.layer_acc.iter().enumerate() {
                let style = if l + 1 == app.layer { theme.selected() } else { ratatui::style::Style::new() };
                spans.push(Span::styled(format!("{}:{:.0}%", l + 1, a * 100.0), style));
                spans.push(Span::raw(" "));
            }
            lines.push(Line::from(spans));
        }
        None => lines.push(Line::styled(" no held-out evaluation yet", theme.dim())),
    }
    match &t.saved {
        Some((s, dir)) => lines.push(Line::from(vec![
            Span::styled(format!(" saved step {s}: "), theme.ok()),
            Span::raw(clip(&dir.display().to_string(), (foot.width as usize).saturating_sub(30))),
            Span::styled("  r loads it", theme.key()),
        ])),
        None => lines.push(Line::styled(" no checkpoint saved yet", theme.dim())),
    }
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), foot);
}

fn y_bounds<'a>(curves: impl Iterator<Item = &'a (f64, f64)>) -> [f64; 2] {
    let (lo, hi) =
        curves.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &(_, y)| if y.is_finite() { (a.min(y), b.max(y)) } else { (a, b) });
    if !lo.is_finite() {
        return [0.0, 1.0];
    }
    let pad = ((hi - lo) * 0.05).max(0.01);
    [(lo - pad).max(0.0), hi + pad]
}

fn x_bounds(app: &App) -> [f64; 2] {
    let t = &app.training;
    [t.start_step as f64, (t.total_steps.max(t.start_step + 1)) as f64]
}

fn axes<'a>(x: [f64; 2], y: [f64; 2], theme: &Theme) -> (Axis<'a>, Axis<'a>) {
    (
        Axis::default().bounds(x).labels([format!("{:.0}", x[0]), format!("{:.0}", x[1])]).style(theme.dim()),
        Axis::default().bounds(y).labels([format!("{:.2}", y[0]), format!("{:.2}", y[1])]).style(theme.dim()),
    )
}

/// A chart's panel with no points yet: a line saying so instead of empty 0–1 axes.
fn no_points(title: Line, theme: &Theme, frame: &mut Frame, area: Rect) {
    let text = Line::styled(" no steps yet", theme.dim());
    frame.render_widget(Paragraph::new(text).block(panel(title, theme)), area);
}

fn draw_total_loss(app: &App, theme: &Theme, frame: &mut Frame, area: Rect) {
    let t = &app.training;
    if t.loss_curves.iter().all(|(_, c)| c.is_empty()) {
        return no_points(Line::styled(" loss ", theme.title()), theme, frame, area);
    }
    let (x, y) = axes(x_bounds(app), y_bounds(t.loss_curves.iter().flat_map(|(_, c)| c)), theme);
    let data: Vec<Dataset> = t
        .loss_curves
        .iter()
        .enumerate()
        .map(|(i, (_, c))| Dataset::default().graph_type(GraphType::Line).marker(Marker::Braille).style(theme.series(i)).data(c))
        .collect();
    let mut title = vec![Span::styled(" loss ", theme.title())];
    for (i, (objective, _)) in t.loss_curves.iter().enumerate() {
        title.push(Span::styled(format!("{objective} "), theme.series(i)));
    }
    let chart = Chart::new(data).block(panel(Line::from(title), theme)).legend_position(None).x_axis(x).y_axis(y);
    frame.render_widget(chart, area);
}

fn draw_layer_losses(app: &App, theme: &Theme, frame: &mut Frame, area: Rect) {
    let t = &app.training;
    if t.layer_curves.iter().all(|c| c.is_empty()) {
        return no_points(Line::styled(" per-layer loss ", theme.title()), theme, frame, area);
    }
    let n = t.layer_curves.len();
    let (x, y) = axes(x_bounds(app), y_bounds(t.layer_curves.iter().flatten()), theme);
    // Deep layers are warm, shallow ones cold; the current layer is drawn last, on top.
    let current = app.layer.clamp(1, n.max(1)) - 1;
    let mut datasets: Vec<Dataset> = t
        .layer_curves
        .iter()
        .enumerate()
        .filter(|(l, _)| *l != current)
        .map(|(l, c)| Dataset::default().graph_type(GraphType::Line).marker(Marker::Braille).style(theme.layer_color(l, n)).data(c))
        .collect();
    if let Some(c) = t.layer_curves.get(current) {
        datasets.push(Dataset::default().graph_type(GraphType::Line).marker(Marker::Braille).style(theme.emphasis()).data(c));
    }
    let title =
        Line::from(vec![Span::styled(" per-layer loss ", theme.title()), Span::styled(format!("L{} bright ", current + 1), theme.dim())]);
    let chart = Chart::new(datasets).block(panel(title, theme)).legend_position(None).x_axis(x).y_axis(y);
    frame.render_widget(chart, area);
}
