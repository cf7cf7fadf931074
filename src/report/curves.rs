//! Curves read from files next to a checkpoint: the training history (`metrics.jsonl`)
//! and an early-exit sweep (the JSON of `alignscope exits --json`).

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
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
    /// Whether the sweep timed generation with the max-prob checks on a second thread
    /// (`exits --pipelined`).
    pub pipelined: bool,
}

/// One checkpoint's sweep as `alignscope exits --json` writes it (`models[]`).
#[derive(Deserialize)]
struct SweepJson {
    name: String,
    rows: Vec<SweepRowJson>,
}

/// One row: a threshold, or (threshold null) the full model.
#[derive(Deserialize)]
struct SweepRowJson {
    threshold: Option<f64>,
    accuracy: f64,
    layer_speedup: f64,
    #[serde(default)]
    wall_speedup: Option<f64>,
}

#[derive(Deserialize)]
struct SweepFileJson {
    models: Vec<SweepJson>,
    #[serde(default)]
    pipelined: bool,
}

fn curve_of(m: SweepJson, pipelined: bool) -> Result<ExitCurve> {
    let full_accuracy = m.rows.iter().find(|r| r.threshold.is_none()).map(|r| r.accuracy);
    let points: Vec<ExitPoint> = m
        .rows
        .iter()
        .filter_map(|r| {
            r.threshold.map(|t| ExitPoint {
                threshold: Some(t),
                accuracy: r.accuracy,
                speedup: r.layer_speedup,
                wall_speedup: r.wall_speedup,
            })
        })
        .collect();
    if points.is_empty() {
        bail!("{} has no thresholds", m.name)
    }
    Ok(ExitCurve { checkpoint: m.name, points, full_accuracy, pipelined })
}

/// Reads an exit sweep file: the JSON of `alignscope exits --json` (one checkpoint, or two
/// with `--compare`).
pub fn read_exit_sweep(path: &Path) -> Result<Vec<ExitCurve>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("cannot read exit sweep {}: {e}", path.display()))?;
    let file: SweepFileJson = serde_json::from_str(&text).map_err(|e| {
        anyhow!("exit sweep {} is not one alignscope understands (the JSON of `alignscope exits --json`): {e}", path.display())
    })?;
    let curves = file.models.into_iter().map(|m| curve_of(m, file.pipelined)).collect::<Result<Vec<_>>>();
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
    fn exit_sweeps_as_alignscope_exits_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let two = dir.path().join("two.json");
        std::fs::write(
            &two,
            r#"{"data":"t.txt","measure":"max-prob","models":[
                {"name":"a","layers":4,"rows":[{"threshold":0.5,"accuracy":0.2,"layer_speedup":1.5,"wall_speedup":null},
                                               {"threshold":null,"accuracy":0.25,"layer_speedup":1.0,"wall_speedup":1.0}]},
                {"name":"b","layers":4,"rows":[{"threshold":0.5,"accuracy":0.1,"layer_speedup":2.0,"wall_speedup":1.3}]}]}"#,
        )
        .unwrap();
        let c = read_exit_sweep(&two).unwrap();
        assert_eq!((c[0].checkpoint.as_str(), c[1].checkpoint.as_str()), ("a", "b"));
        assert_eq!(c[0].points, vec![ExitPoint { threshold: Some(0.5), accuracy: 0.2, speedup: 1.5, wall_speedup: None }]);
        assert_eq!((c[0].full_accuracy, c[1].full_accuracy), (Some(0.25), None));
        assert_eq!(c[1].points[0].wall_speedup, Some(1.3));
        assert!(!c[0].pipelined && !c[1].pipelined, "sweeps written before --pipelined read as one-thread");
        std::fs::write(&two, r#"{"pipelined":true,"models":[{"name":"a","rows":[{"threshold":0.5,"accuracy":0.2,"layer_speedup":1.5}]}]}"#)
            .unwrap();
        assert!(read_exit_sweep(&two).unwrap()[0].pipelined);
        std::fs::write(&two, r#"{"models":[{"name":"a","rows":[]}]}"#).unwrap();
        assert!(read_exit_sweep(&two).unwrap_err().to_string().contains("not one alignscope understands"));
        std::fs::write(&two, r#"{"rows":[]}"#).unwrap();
        assert!(read_exit_sweep(&two).unwrap_err().to_string().contains("not one alignscope understands"));
    }
}
