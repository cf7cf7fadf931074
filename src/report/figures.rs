//! The report's figures, as data for [`super::plot`].

use super::plot::{COLOR_A, COLOR_B, ColorScale, Figure, Panel, Series, layer_color};
use super::{ModelReport, Report};
use crate::analysis::similarity::defined_pairs;
use plotters::prelude::{RGBColor, SeriesLabelPosition};

fn color(role: &str) -> RGBColor {
    if role == "A" { COLOR_A } else { COLOR_B }
}

fn label(m: &ModelReport) -> String {
    format!("{} {}", m.role, crate::paths::short_name(&m.checkpoint))
}

/// The colour range shared by the heatmaps of one metric, so A and B compare by eye.
fn shared_scale(ms: &[&Vec<Vec<Option<f64>>>]) -> ColorScale {
    let min = ms.iter().flat_map(|m| m.iter().flatten()).flatten().copied().filter(|x| x.is_finite()).fold(0.0f64, f64::min);
    ColorScale::Sequential { min: (min * 10.0).floor() / 10.0, max: 1.0 }
}

fn similarity_figure(r: &Report, cka: bool) -> Figure {
    let metric = if cka { "linear CKA" } else { "centered COS" };
    let mats: Vec<&Vec<Vec<Option<f64>>>> = r.models.iter().map(|m| if cka { &m.similarity.cka } else { &m.similarity.cos }).collect();
    let scale = shared_scale(&mats);
    let mut panels: Vec<Panel> = r
        .models
        .iter()
        .zip(&mats)
        .map(|(m, mat)| Panel::Heatmap { title: label(m), matrix: (*mat).clone(), scale, axis: "layer".into(), bar: metric.into() })
        .collect();
    if let Some(d) = &r.difference {
        let diff = if cka { &d.cka } else { &d.cos };
        panels.push(Panel::difference(diff.clone(), metric));
    }
    Figure {
        title: format!("{metric} between layers over {} positions of {}", r.models[0].similarity.positions, file_name(&r.data)),
        columns: panels.len(),
        panels,
        panel_size: (400, 360),
    }
}

fn file_name(p: &str) -> String {
    crate::paths::short_name(p)
}

fn agreement_figure(r: &Report) -> Figure {
    let series: Vec<Series> = r
        .models
        .iter()
        .map(|m| {
            let pts = defined_pairs(&m.similarity.cka, &m.similarity.cos);
            let r = m.agreement.pearson.map(|p| format!("r = {p:.3}")).unwrap_or_else(|| "r n/a".into());
            Series::points(format!("{} ({r})", label(m)), color(&m.role), pts.into_iter().map(|(x, y)| (x, Some(y))).collect())
        })
        .collect();
    Figure {
        title: "COS tracks CKA: every layer pair (i < j)".into(),
        panels: vec![Panel::Lines {
            title: "off-diagonal entries".into(),
            x_label: "linear CKA".into(),
            y_label: "centered COS".into(),
            log_y: false,
            integer_x: false,
            series,
            legend: Some(SeriesLabelPosition::UpperLeft),
            diagonal: true,
        }],
        columns: 1,
        panel_size: (460, 420),
    }
}

fn per_layer_panel(
    r: &Report,
    title: &str,
    y_label: &str,
    log_y: bool,
    get: impl Fn(&ModelReport) -> Vec<Option<f64>>,
    legend: SeriesLabelPosition,
) -> Panel {
    let series = r
        .models
        .iter()
        .map(|m| Series::line(label(m), color(&m.role), get(m).into_iter().enumerate().map(|(l, v)| (l as f64, v)).collect()))
        .collect();
    Panel::Lines {
        title: title.into(),
        x_label: "layer".into(),
        y_label: y_label.into(),
        log_y,
        integer_x: true,
        series,
        legend: Some(legend),
        diagonal: false,
    }
}

fn quality_figure(r: &Report) -> Figure {
    use SeriesLabelPosition::*;
    let coh = if r.embedder.kind == "self-embedding" { "coherence (self-embedding)" } else { "coherence" };
    let panels = vec![
        per_layer_panel(
            r,
            "next-token accuracy",
            "accuracy %",
            false,
            |m| m.per_layer.acc.iter().map(|a| Some(100.0 * a)).collect(),
            LowerRight,
        ),
        // Layer 0 (the embeddings) is far off the scale of the others; it is in the table.
        per_layer_panel(
            r,
            "perplexity (layers 1..L)",
            "perplexity (log)",
            true,
            |m| m.per_layer.ppl.iter().enumerate().map(|(l, &p)| (l > 0).then_some(p)).collect(),
            UpperRight,
        ),
        per_layer_panel(r, "COS with the last layer", "centered COS", false, |m| m.per_layer.cos_last.clone(), LowerRight),
        per_layer_panel(r, "CKA with the last layer", "linear CKA", false, |m| m.per_layer.cka_last.clone(), LowerRight),
        per_layer_panel(r, "diversity of generations", "diversity", false, |m| m.per_layer.diversity.clone(), LowerRight),
        per_layer_panel(r, coh, "cosine(prompt, continuation)", false, |m| m.per_layer.coherence.clone(), LowerRight),
    ];
    Figure {
        title: format!("Per-layer quality through the shared classifier on {}", file_name(&r.data)),
        panels,
        columns: 3,
        panel_size: (400, 320),
    }
}

fn exits_figure(r: &Report) -> Option<Figure> {
    let with: Vec<&ModelReport> = r.models.iter().filter(|m| m.exits.is_some()).collect();
    if with.is_empty() {
        return None;
    }
    let mut series = vec![];
    for m in &with {
        let c = m.exits.as_ref().expect("filtered");
        let mut pts: Vec<(f64, Option<f64>)> = c.points.iter().map(|p| (p.speedup, Some(100.0 * p.accuracy))).collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        series.push(Series::line(label(m), color(&m.role), pts));
        if let Some(full) = c.full_accuracy {
            series.push(Series::points(format!("{} full model", m.role), color(&m.role), vec![(1.0, Some(100.0 * full))]));
        }
    }
    Some(Figure {
        title: "Early exit: accuracy vs speedup (confidence thresholds)".into(),
        panels: vec![Panel::Lines {
            title: "teacher-forced on the text".into(),
            x_label: "layer speedup (×)".into(),
            y_label: "next-token accuracy %".into(),
            log_y: false,
            integer_x: false,
            series,
            legend: Some(SeriesLabelPosition::UpperRight),
            diagonal: false,
        }],
        columns: 1,
        panel_size: (460, 400),
    })
}

/// A centered moving average over an even `w` points (shorter at the ends): with
/// alternating objectives every window holds as many steps of each, so the curve does not
/// zigzag with the alternation.
fn smooth(v: &[(f64, f64)], w: usize) -> Vec<(f64, Option<f64>)> {
    let h = (w / 2).max(1);
    (0..v.len())
        .map(|i| {
            let lo = i.saturating_sub(h);
            let hi = (i + h).min(v.len());
            let s: f64 = v[lo..hi].iter().map(|p| p.1).sum();
            (v[i].0, Some(s / (hi - lo) as f64))
        })
        .collect()
}

fn training_figure(r: &Report) -> Option<Figure> {
    let with: Vec<&ModelReport> = r.models.iter().filter(|m| m.training.is_some()).collect();
    if with.is_empty() {
        return None;
    }
    const W: usize = 50;
    let mut series = vec![];
    for m in &with {
        let t = m.training.as_ref().expect("filtered");
        let pts: Vec<(f64, f64)> = t.steps.iter().filter_map(|s| s.last_layer_ce.map(|c| (s.step as f64, c))).collect();
        if !pts.is_empty() {
            series.push(Series::curve(label(m), color(&m.role), smooth(&pts, W)));
        }
    }
    let mut panels = vec![Panel::Lines {
        title: format!("training CE of the last layer ({W}-step mean)"),
        x_label: "step".into(),
        y_label: "cross-entropy (nats)".into(),
        log_y: false,
        integer_x: false,
        series,
        legend: Some(SeriesLabelPosition::UpperRight),
        diagonal: false,
    }];
    for m in &with {
        let t = m.training.as_ref().expect("filtered");
        if t.evals.is_empty() {
            continue;
        }
        let layers = t.evals[0].ce.len().saturating_sub(1);
        let series = (1..=layers)
            .map(|l| {
                let pts = t.evals.iter().map(|e| (e.step as f64, e.ce.get(l).copied().flatten())).collect();
                let lab = if l == 1 || l == layers || l == layers / 2 { format!("layer {l}") } else { String::new() };
                Series::line(lab, layer_color(l, layers), pts)
            })
            .collect();
        panels.push(Panel::Lines {
            title: format!("held-out CE per layer: {}", label(m)),
            x_label: "step".into(),
            y_label: "cross-entropy (nats)".into(),
            log_y: false,
            integer_x: false,
            series,
            legend: Some(SeriesLabelPosition::UpperRight),
            diagonal: false,
        });
    }
    Some(Figure { title: "Training curves (metrics.jsonl)".into(), columns: panels.len(), panels, panel_size: (420, 340) })
}

/// The file stems of every figure a report can have; the last two only with an exit
/// sweep or training curves.
pub const FIGURE_STEMS: [&str; 6] = ["similarity_cos", "similarity_cka", "agreement", "quality", "early_exit", "training"];

/// Every figure of the report: `(file stem, figure)`.
pub fn report_figures(r: &Report) -> Vec<(String, Figure)> {
    let [cos, cka, agreement, quality, exits, training] = FIGURE_STEMS.map(String::from);
    let mut out = vec![
        (cos, similarity_figure(r, false)),
        (cka, similarity_figure(r, true)),
        (agreement, agreement_figure(r)),
        (quality, quality_figure(r)),
    ];
    if let Some(f) = exits_figure(r) {
        out.push((exits, f));
    }
    if let Some(f) = training_figure(r) {
        out.push((training, f));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_is_centered_and_shorter_at_the_ends() {
        let v: Vec<(f64, f64)> = (0..5).map(|i| (i as f64, i as f64)).collect();
        // Windows [i-1, i+1): two points each, one at the start.
        let s = smooth(&v, 2);
        assert_eq!(s, vec![(0.0, Some(0.0)), (1.0, Some(0.5)), (2.0, Some(1.5)), (3.0, Some(2.5)), (4.0, Some(3.5))]);
    }
}
