//! `w` in the explorer: what the current view shows, saved as a picture (SVG and PNG,
//! drawn by the report's plotting code) and as data (CSV or JSON) into a folder.
//!
//! [`snapshot`] reads the state only (the app's `update` calls it); [`write()`] does the
//! file work and runs off the UI thread in the runtime.

use super::app::{App, column_tag};
use super::column::EvalState;
use super::panels::show_token;
use super::view::View;
use crate::report::plot::{COLOR_A, COLOR_B, ColorScale, Figure, GridCell, Panel, Series, layer_color, write_figure};
use anyhow::{Result, anyhow};
use plotters::prelude::{RGBColor, SeriesLabelPosition};
use serde_json::json;
use std::path::{Path, PathBuf};

/// The data beside the picture.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportData {
    Json(serde_json::Value),
    /// A CSV document with its header line.
    Csv(String),
}

/// Everything one export writes, computed from the state.
#[derive(Debug, Clone)]
pub struct ExportJob {
    /// The file names' stem (`similarity`, `lens`, ...); a number is added so nothing is
    /// overwritten.
    pub slug: String,
    pub figure: Figure,
    pub data: ExportData,
}

// A figure is a plotting description, not state: comparing jobs compares what they write.
impl PartialEq for ExportJob {
    fn eq(&self, other: &Self) -> bool {
        self.slug == other.slug && self.data == other.data && self.figure.title == other.figure.title
    }
}

fn color(i: usize) -> RGBColor {
    if i == 0 { COLOR_A } else { COLOR_B }
}

fn label(app: &App, i: usize) -> String {
    format!("{} {}", column_tag(i), app.columns[i].short_name())
}

/// What the current view shows, or why there is nothing to save yet.
pub fn snapshot(app: &App) -> std::result::Result<ExportJob, String> {
    match app.view {
        View::Similarity => similarity(app),
        View::Predictions => lens(app),
        View::Generation => generations(app),
        View::Metrics => metrics(app),
        View::Training => training(app),
    }
}

fn similarity(app: &App) -> std::result::Result<ExportJob, String> {
    let shown: Vec<(usize, &[Vec<Option<f64>>])> =
        app.columns.iter().enumerate().filter_map(|(i, c)| c.analysis.as_ref().map(|a| (i, app.metric.matrix(a)))).collect();
    if shown.is_empty() {
        return Err("nothing to save yet: the analysis is still running".into());
    }
    let metric = app.metric.label();
    let min = shown.iter().flat_map(|(_, m)| m.iter().flatten()).flatten().copied().fold(0.0f64, f64::min);
    let scale = ColorScale::Sequential { min: (min * 10.0).floor() / 10.0, max: 1.0 };
    let mut panels: Vec<Panel> = shown
        .iter()
        .map(|(i, m)| Panel::Heatmap { title: label(app, *i), matrix: m.to_vec(), scale, axis: "layer".into(), bar: metric.into() })
        .collect();
    let mut data = json!({
        "view": "similarity",
        "metric": metric,
        "prompt": app.prompt,
        "tokens": app.tokens(),
        "checkpoints": shown.iter().map(|(i, m)| json!({"column": column_tag(*i), "checkpoint": app.columns[*i].name(), "matrix": m})).collect::<Vec<_>>(),
    });
    if let [(_, a), (_, b)] = shown.as_slice()
        && a.len() == b.len()
    {
        let diff: Vec<Vec<Option<f64>>> =
            a.iter().zip(b.iter()).map(|(r, s)| r.iter().zip(s).map(|(p, q)| Some((*p)? - (*q)?)).collect()).collect();
        panels.push(Panel::difference(diff.clone(), metric));
        data["difference"] = json!(diff);
    }
    let n = app.tokens().map_or(0, |t| t.len());
    Ok(ExportJob {
        slug: format!("similarity-{}", metric.replace(' ', "-").to_lowercase()),
        figure: Figure {
            title: format!("{metric} between layers over the {n} positions of the prompt"),
            columns: panels.len(),
            panels,
            panel_size: (400, 360),
        },
        data: ExportData::Json(data),
    })
}

/// Text on one line for a picture: line breaks as ⏎, spaces kept.
fn one_line(s: &str) -> String {
    s.replace("\r\n", "⏎").replace(['\n', '\r'], "⏎")
}

/// A CSV field, quoted when it needs to be.
fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

fn lens(app: &App) -> std::result::Result<ExportJob, String> {
    let mut panels = vec![];
    let mut rows = String::from("column,checkpoint,layer,position,input_token,next_token,rank,token_id,token,prob,is_next\n");
    for (i, c) in app.columns.iter().enumerate() {
        let Some(a) = &c.analysis else { continue };
        let n = a.input_ids.len();
        let mut cells = vec![];
        for l in 0..=c.n_layer() {
            let mut row = vec![];
            for p in 0..n {
                let next = a.input_ids.get(p + 1).copied();
                let top = a.lens_at(l, p).unwrap_or(&[]);
                for (rank, t) in top.iter().enumerate() {
                    rows += &format!(
                        "{},{},{l},{p},{},{},{},{},{},{:.6},{}\n",
                        column_tag(i),
                        csv(c.name()),
                        csv(&a.tokens[p]),
                        next.map(|id| id.to_string()).unwrap_or_default(),
                        rank + 1,
                        t.id,
                        csv(&t.token),
                        t.prob,
                        Some(t.id) == next
                    );
                }
                row.push(top.first().map(|t| GridCell { text: show_token(&t.token), value: t.prob, marked: Some(t.id) == next }));
            }
            cells.push(row);
        }
        panels.push(Panel::Grid {
            title: format!("{}: lens top-1 (red frame: the actual next token)", label(app, i)),
            rows: (0..=c.n_layer()).map(|l| l.to_string()).collect(),
            cols: a.tokens.iter().map(|t| show_token(t)).collect(),
            cells,
            row_label: "layer".into(),
            col_label: "input token at each position".into(),
            bar: "p(top-1)".into(),
        });
    }
    if panels.is_empty() {
        return Err("nothing to save yet: the analysis is still running".into());
    }
    let n = app.n_positions().max(1);
    Ok(ExportJob {
        slug: "lens".into(),
        figure: Figure {
            title: "Logit lens: the shared classifier's top-1 at every layer and position".into(),
            columns: 1,
            panel_size: ((60 * n as u32 + 140).max(600), 26 * (app.max_layer() as u32 + 1) + 110),
            panels,
        },
        data: ExportData::Csv(rows),
    })
}

fn generations(app: &App) -> std::result::Result<ExportJob, String> {
    let mut panels = vec![];
    let mut outputs = vec![];
    for (i, c) in app.columns.iter().enumerate() {
        if c.outputs.is_empty() {
            continue;
        }
        let lines: Vec<(String, RGBColor)> = c
            .outputs
            .iter()
            .map(|(l, o)| (format!("{l:>2}  {}", one_line(&o.text)), layer_color(*l, c.n_layer().max(1))))
            .map(|(t, col)| (t, RGBColor(col.0 / 2, col.1 / 2, col.2 / 2)))
            .collect();
        panels.push(Panel::Text { title: format!("{} · {}", label(app, i), app.decoding.label()), lines });
        outputs.push(json!({
            "column": column_tag(i),
            "checkpoint": c.name(),
            "layers": c.outputs.iter().map(|(l, o)| json!({
                "exit_layer": l,
                "text": o.text,
                "tokens": o.tokens,
                "stop": o.stop,
                "complete": o.stop.is_some(),
            })).collect::<Vec<_>>(),
        }));
    }
    if panels.is_empty() {
        return Err("nothing to save yet: no generation has arrived".into());
    }
    let rows = app.columns.iter().map(|c| c.outputs.len()).max().unwrap_or(1) as u32;
    Ok(ExportJob {
        slug: "generations".into(),
        figure: Figure {
            title: format!("Generations by exit layer: {}", one_line(&app.prompt)).chars().take(110).collect(),
            columns: 1,
            panel_size: (1100, 18 * rows + 70),
            panels,
        },
        data: ExportData::Json(json!({
            "view": "generation",
            "prompt": app.prompt,
            "sampling": app.decoding.sampling(),
            "max_new_tokens": app.decoding.max_new_tokens,
            "outputs": outputs,
        })),
    })
}

fn metrics(app: &App) -> std::result::Result<ExportJob, String> {
    let done: Vec<(usize, &crate::analysis::eval::EvalReport, &Path)> = app
        .columns
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match &c.eval {
            EvalState::Done { report, data } => Some((i, report, data.as_path())),
            _ => None,
        })
        .collect();
    if done.is_empty() {
        return Err("nothing to save yet: the evaluation is still running".into());
    }
    let mut csv_rows = String::from("column,checkpoint,data,layer,ce,ppl,acc,cos_last,cka_last,predictions\n");
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
    for (i, r, data) in &done {
        for l in 0..=r.layers {
            csv_rows += &format!(
                "{},{},{},{l},{:.6},{:.4},{:.6},{},{},{}\n",
                column_tag(*i),
                csv(app.columns[*i].name()),
                csv(&crate::paths::display_path(data)),
                r.ce[l],
                r.ppl[l],
                r.acc[l],
                opt(r.cos_last[l]),
                opt(r.cka_last[l]),
                r.tokens
            );
        }
    }
    let panel = |title: &str, y: &str, log: bool, get: &dyn Fn(&crate::analysis::eval::EvalReport, usize) -> Option<f64>| Panel::Lines {
        title: title.into(),
        x_label: "layer".into(),
        y_label: y.into(),
        log_y: log,
        integer_x: true,
        series: done
            .iter()
            .map(|(i, r, _)| Series::line(label(app, *i), color(*i), (0..=r.layers).map(|l| (l as f64, get(r, l))).collect()))
            .collect(),
        legend: Some(if log { SeriesLabelPosition::UpperRight } else { SeriesLabelPosition::LowerRight }),
        diagonal: false,
    };
    let panels = vec![
        panel("next-token accuracy", "accuracy %", false, &|r, l| Some(100.0 * r.acc[l])),
        panel("perplexity (layers 1..L)", "perplexity (log)", true, &|r, l| (l > 0).then_some(r.ppl[l])),
        panel("COS with the last layer", "centered COS", false, &|r, l| r.cos_last[l]),
        panel("CKA with the last layer", "linear CKA", false, &|r, l| r.cka_last[l]),
    ];
    let (_, r0, data0) = done[0];
    Ok(ExportJob {
        slug: "metrics".into(),
        figure: Figure {
            title: format!(
                "Per-layer metrics on {} ({} predictions per layer)",
                crate::paths::short_name(&data0.display().to_string()),
                r0.tokens
            ),
            columns: 2,
            panels,
            panel_size: (420, 320),
        },
        data: ExportData::Csv(csv_rows),
    })
}

fn training(app: &App) -> std::result::Result<ExportJob, String> {
    let t = &app.training;
    if t.loss_curves.iter().all(|(_, c)| c.is_empty()) {
        return Err("nothing to save yet: no training step has been reported".into());
    }
    let palette = [COLOR_A, COLOR_B, RGBColor(44, 160, 44)];
    let loss = Panel::Lines {
        title: "training loss by objective".into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        log_y: false,
        integer_x: false,
        series: t
            .loss_curves
            .iter()
            .enumerate()
            .map(|(k, (kind, pts))| Series::curve(kind.to_string(), palette[k % 3], pts.iter().map(|&(x, y)| (x, Some(y))).collect()))
            .collect(),
        legend: Some(SeriesLabelPosition::UpperRight),
        diagonal: false,
    };
    let n = t.layer_curves.len();
    let layers = Panel::Lines {
        title: "per-layer training CE of the shared classifier".into(),
        x_label: "step".into(),
        y_label: "cross-entropy (nats)".into(),
        log_y: false,
        integer_x: false,
        series: t
            .layer_curves
            .iter()
            .enumerate()
            .map(|(i, pts)| {
                let l = i + 1;
                let lab = if l == 1 || l == n || l == n / 2 { format!("layer {l}") } else { String::new() };
                Series::curve(lab, layer_color(l, n), pts.iter().map(|&(x, y)| (x, Some(y))).collect())
            })
            .collect(),
        legend: Some(SeriesLabelPosition::UpperRight),
        diagonal: false,
    };
    let data = json!({
        "view": "training",
        "run": t.description,
        "out": t.out,
        "total_steps": t.total_steps,
        "loss": t.loss_curves.iter().map(|(k, pts)| json!({"objective": k.to_string(), "points": pts})).collect::<Vec<_>>(),
        "layer_ce": t.layer_curves.iter().enumerate().map(|(i, pts)| json!({"layer": i + 1, "points": pts})).collect::<Vec<_>>(),
        "last_eval": t.last_eval,
    });
    Ok(ExportJob {
        slug: "training".into(),
        figure: Figure { title: format!("Training: {}", t.description), columns: 2, panels: vec![loss, layers], panel_size: (520, 360) },
        data: ExportData::Json(data),
    })
}

/// Writes the job into `dir` (created when missing) under the first free `slug-N` stem:
/// `slug-N.svg`, `slug-N.png` and `slug-N.json` or `.csv`. Returns the files.
pub fn write(job: &ExportJob, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow!("cannot create {}: {e}", dir.display()))?;
    let ext = match job.data {
        ExportData::Json(_) => "json",
        ExportData::Csv(_) => "csv",
    };
    let taken = |stem: &str| ["svg", "png", ext].iter().any(|e| dir.join(format!("{stem}.{e}")).exists());
    let stem = (1..).map(|n| format!("{}-{n}", job.slug)).find(|s| !taken(s)).expect("a free name");
    let written = write_figure(&job.figure, &dir.join(&stem), crate::report::plot::PNG_SCALE)?;
    let data_path = dir.join(format!("{stem}.{ext}"));
    let text = match &job.data {
        ExportData::Json(v) => serde_json::to_string_pretty(v)?,
        ExportData::Csv(s) => s.clone(),
    };
    std::fs::write(&data_path, text).map_err(|e| anyhow!("cannot write {}: {e}", data_path.display()))?;
    Ok(vec![written.svg, written.png, data_path])
}

/// The status line's words for what was written: `saved NAME.svg, NAME.png, NAME.csv in DIR/`.
pub fn saved_message(files: &[PathBuf]) -> String {
    let dir = files.first().and_then(|f| f.parent()).map(crate::paths::display_path).unwrap_or_default();
    let names: Vec<String> = files.iter().filter_map(|f| f.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
    format!("saved {} in {dir}/", names.join(", "))
}
