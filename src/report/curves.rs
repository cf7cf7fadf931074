//! Curves read from files next to a checkpoint: the training history (`metrics.jsonl`)
//! and an early-exit sweep (the JSON of `alignscope exits --json`).

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

/// One optimizer step of the training history.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepPoint {
    pub step: usize,
    /// The loss optimized at this step.
    pub loss: f64,
    /// Which loss that was (aligned, standard, ce-reg).
    pub objective: String,
    /// Training CE of the last layer through the shared classifier (comparable across
    /// objectives).
    pub last_layer_ce: Option<f64>,
}

/// One held-out evaluation during training; per-layer arrays indexed 0..L (layer 0 is
/// not evaluated during training: null).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalPoint {
    pub step: usize,
    pub ce: Vec<Option<f64>>,
    pub acc: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct TrainingCurves {
    pub steps: Vec<StepPoint>,
    pub evals: Vec<EvalPoint>,
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

/// Per-layer values of layers 1..=L as an array indexed 0..L.
fn from_layer_one(v: &Value) -> Vec<Option<f64>> {
    let mut out = vec![None];
    out.extend(v.as_array().map(|a| a.iter().map(num).collect::<Vec<_>>()).unwrap_or_default());
    out
}

/// Reads the training history in `dir/metrics.jsonl`; `None` when there is none. Lines it
/// does not understand are an error naming the file and line.
pub fn read_training(dir: &Path) -> Result<Option<TrainingCurves>> {
    let path = dir.join(crate::train::save::METRICS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => bail!("cannot read {}: {e}", path.display()),
    };
    let mut curves = TrainingCurves::default();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).with_context(|| format!("{} line {} is not JSON", path.display(), i + 1))?;
        let step = v.get("step").and_then(Value::as_u64).ok_or_else(|| anyhow!("{} line {} has no step", path.display(), i + 1))? as usize;
        if let Some(e) = v.get("eval") {
            curves.evals.push(EvalPoint { step, ce: from_layer_one(&e["layer_losses"]), acc: from_layer_one(&e["layer_acc"]) });
        } else {
            let loss = num(&v["loss"]).ok_or_else(|| anyhow!("{} line {} has no loss", path.display(), i + 1))?;
            curves.steps.push(StepPoint {
                step,
                loss,
                objective: v.get("objective").and_then(Value::as_str).unwrap_or("").to_string(),
                last_layer_ce: v["layer_losses"].as_array().and_then(|a| a.last()).and_then(num),
            });
        }
    }
    Ok(if curves.steps.is_empty() && curves.evals.is_empty() { None } else { Some(curves) })
}

/// One threshold of an early-exit sweep.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExitPoint {
    pub threshold: Option<f64>,
    /// Next-token accuracy of the early-exit prediction.
    pub accuracy: f64,
    /// Layer speedup (L / mean exit layer).
    pub speedup: f64,
    /// Measured wall-clock speedup of generation, when the sweep has it.
    pub wall_speedup: Option<f64>,
}

/// The accuracy-vs-speedup curve of one checkpoint, and its full-model accuracy.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExitCurve {
    pub checkpoint: String,
    pub points: Vec<ExitPoint>,
    pub full_accuracy: Option<f64>,
}

fn first_num(v: &Value, keys: &[&str]) -> Option<f64> {
    keys.iter().find_map(|k| v.get(*k).and_then(num))
}

fn rows_of(v: &Value) -> Option<&Vec<Value>> {
    ["thresholds", "rows", "sweep", "points"].iter().find_map(|k| v.get(*k).and_then(Value::as_array))
}

fn curve_of(v: &Value, fallback_name: &str) -> Result<ExitCurve> {
    let name = ["checkpoint", "ckpt", "name", "model"].iter().find_map(|k| v.get(*k).and_then(Value::as_str)).unwrap_or(fallback_name);
    let rows = rows_of(v).ok_or_else(|| anyhow!("no rows of thresholds"))?;
    let mut points = vec![];
    let mut full_accuracy =
        first_num(v, &["full_accuracy", "full_acc"]).or_else(|| v.get("full").and_then(|f| first_num(f, &["accuracy", "acc"])));
    for r in rows {
        let accuracy = first_num(r, &["accuracy", "acc"]).ok_or_else(|| anyhow!("a row has no accuracy"))?;
        let threshold = first_num(r, &["threshold", "tau"]);
        let speedup = first_num(r, &["layer_speedup", "speedup"]).ok_or_else(|| anyhow!("a row has no speedup"))?;
        // A row without a threshold (or marked full) is the full model.
        if threshold.is_none() || r.get("full").and_then(Value::as_bool) == Some(true) {
            full_accuracy = full_accuracy.or(Some(accuracy));
            continue;
        }
        points.push(ExitPoint { threshold, accuracy, speedup, wall_speedup: first_num(r, &["wall_speedup", "measured_speedup"]) });
    }
    if points.is_empty() {
        bail!("no thresholds")
    }
    Ok(ExitCurve { checkpoint: name.to_string(), points, full_accuracy })
}

/// Reads an exit sweep file: one checkpoint's sweep, or several under `models` /
/// `checkpoints` (as `alignscope exits --compare` writes them).
pub fn read_exit_sweep(path: &Path) -> Result<Vec<ExitCurve>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("cannot read exit sweep {}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| anyhow!("exit sweep {} is not JSON: {e}", path.display()))?;
    let fallback = crate::paths::short_name(&path.display().to_string());
    let many = ["models", "checkpoints", "sweeps"].iter().find_map(|k| v.get(*k).and_then(Value::as_array));
    let curves = match (many, v.as_array()) {
        (Some(list), _) | (None, Some(list)) => list.iter().map(|m| curve_of(m, &fallback)).collect::<Result<Vec<_>>>(),
        (None, None) => curve_of(&v, &fallback).map(|c| vec![c]),
    };
    curves.map_err(|e| anyhow!("exit sweep {} is not one alignscope understands: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_history_of_a_shipped_checkpoint() {
        let dir = crate::paths::project_dir().join("checkpoints/austen-aligned");
        let c = read_training(&dir).unwrap().unwrap();
        assert_eq!(c.steps.len(), 600);
        assert_eq!(c.steps[0].objective, "aligned");
        assert_eq!(c.steps[1].objective, "standard");
        assert_eq!(c.evals.len(), 6);
        assert_eq!(c.evals[0].ce.len(), 13);
        assert_eq!(c.evals[0].ce[0], None);
        assert!(c.evals[0].ce[12].unwrap() > 3.0);
        assert!(read_training(std::path::Path::new("/nonexistent")).unwrap().is_none());
    }

    #[test]
    fn exit_sweeps_in_either_shape() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one.json");
        std::fs::write(
            &one,
            r#"{"checkpoint":"a","rows":[{"threshold":0.5,"accuracy":0.2,"layer_speedup":1.5},{"threshold":null,"accuracy":0.25,"layer_speedup":1.0}]}"#,
        )
        .unwrap();
        let c = read_exit_sweep(&one).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].points.len(), 1);
        assert_eq!(c[0].full_accuracy, Some(0.25));
        let two = dir.path().join("two.json");
        std::fs::write(&two, r#"{"models":[{"name":"a","thresholds":[{"tau":0.9,"acc":0.3,"speedup":1.2}]},{"name":"b","thresholds":[{"tau":0.9,"acc":0.1,"speedup":2.0}]}]}"#).unwrap();
        let c = read_exit_sweep(&two).unwrap();
        assert_eq!((c[0].checkpoint.as_str(), c[1].checkpoint.as_str()), ("a", "b"));
        std::fs::write(&two, r#"{"rows":[]}"#).unwrap();
        assert!(read_exit_sweep(&two).unwrap_err().to_string().contains("not one alignscope understands"));
    }
}
