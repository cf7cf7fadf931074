//! `alignscope bench --compare-torch`: the PyTorch/transformers counterpart of each
//! measurement, run by the same command right after alignscope's own, so that every ratio
//! comes from one run on one machine; and the machine's memory read bandwidth, the ceiling
//! of batch-1 decoding (every token reads all the weights).
//!
//! The counterparts are `scripts/pytorch_train_bench.py` (the same GPT-2 shapes, batch,
//! context and thread count, the same two losses) and `scripts/pytorch_decode_bench.py`
//! (random GPT-2-124M, greedy, KV cache), run with the Python of the PyTorch engine
//! ([`crate::paths::torch_python`]).

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Floats summed by [`read_bandwidth`]: 512 MiB, far beyond any cache.
const BANDWIDTH_FLOATS: usize = 128 << 20;

/// The machine's memory read bandwidth in GB/s: the best of five parallel sums (all rayon
/// threads) over 512 MiB.
pub fn read_bandwidth() -> f64 {
    use rayon::prelude::*;
    // Non-zero, so every page is written (and mapped) before the timing.
    let data = vec![1f32; BANDWIDTH_FLOATS];
    let mut best = f64::INFINITY;
    let mut total = 0f32;
    for _ in 0..5 {
        let t = Instant::now();
        let s: f32 = data.par_chunks(1 << 16).map(sum_chunk).sum();
        best = best.min(t.elapsed().as_secs_f64());
        total += s;
    }
    std::hint::black_box(total);
    (4 * BANDWIDTH_FLOATS) as f64 / best / 1e9
}

/// Sum of one chunk with 32 independent partial sums, so that the adds vectorise and
/// memory, not the latency of one chain of additions, sets the pace.
#[inline(never)]
fn sum_chunk(c: &[f32]) -> f32 {
    let mut acc = [0f32; 32];
    for block in c.chunks_exact(32) {
        acc.iter_mut().zip(block).for_each(|(a, v)| *a += v);
    }
    acc.iter().sum::<f32>()
}

/// Runs one of the PyTorch scripts with `--json` and returns the JSON object it prints.
pub(super) fn run_script(script: &str, args: &[String]) -> Result<Value> {
    let python = crate::paths::torch_python();
    let path = crate::paths::resolve_asset(Path::new(script));
    if !path.is_file() {
        bail!("--compare-torch needs {script} (run alignscope from its source tree)")
    }
    let out = Command::new(&python).arg(&path).args(args).arg("--json").output().with_context(|| {
        format!("--compare-torch: cannot run {} (set ALIGNSCOPE_PYTHON to a Python with torch and transformers)", python.display())
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
        bail!("--compare-torch: {} {script} failed: {last}", python.display())
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("--compare-torch: {script} printed no JSON result"))
}

/// `ours / theirs`, or `None` when either is missing or not positive.
pub(super) fn ratio(ours: Option<f64>, theirs: Option<f64>) -> Option<f64> {
    match (ours, theirs) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt(x: Option<f64>, digits: usize) -> String {
    x.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "n/a".into())
}

/// Runs the counterparts of the measurements in `inference` and `training` (the JSON
/// objects `bench` built), prints the ratios, and returns them as JSON.
pub fn torch(
    threads: usize,
    decode_tokens: usize,
    inference: &[Value],
    training: &[Value],
    bandwidth: Option<f64>,
    say: &dyn Fn(&str),
) -> Result<Value> {
    say("PyTorch counterpart, same run (ratio = alignscope / PyTorch; > 1: alignscope is faster)");
    let mut train_out = vec![];
    for t in training {
        let get = |k: &str| t[k].as_u64().map(|v| v.to_string()).with_context(|| format!("bench result lacks {k}"));
        let steps = t["losses"][0]["steps"].as_u64().unwrap_or(5).min(20);
        let args: Vec<String> = vec![
            "--threads".into(),
            threads.to_string(),
            "--layers".into(),
            get("layers")?,
            "--d".into(),
            get("n_embd")?,
            "--heads".into(),
            get("n_head")?,
            "--vocab".into(),
            get("vocab")?,
            "--ctx".into(),
            get("ctx")?,
            "--batch".into(),
            get("batch")?,
            "--steps".into(),
            steps.to_string(),
        ];
        let theirs = run_script("scripts/pytorch_train_bench.py", &args)?;
        let label = t["label"].as_str().unwrap_or("?");
        say(&format!("  training, {label}, batch {} x ctx {} (PyTorch {})", t["batch"], t["ctx"], theirs["torch"].as_str().unwrap_or("?")));
        let mut losses = vec![];
        for ours in t["losses"].as_array().into_iter().flatten() {
            let name = ours["loss"].as_str().unwrap_or("?");
            let their = theirs["losses"].as_array().into_iter().flatten().find(|l| l["loss"].as_str() == Some(name));
            let (a, b) = (ours["tokens_per_sec"].as_f64(), their.and_then(|l| l["tokens_per_sec"].as_f64()));
            let r = ratio(a, b);
            say(&format!("    {name:>8} loss: alignscope {} tokens/s, PyTorch {} tokens/s → ratio {}", fmt(a, 0), fmt(b, 0), fmt(r, 2)));
            losses.push(json!({ "loss": name, "alignscope_tokens_per_sec": a, "torch_tokens_per_sec": b, "ratio": r }));
        }
        train_out.push(json!({ "model": t["model"], "label": t["label"], "torch": theirs, "losses": losses }));
    }
    let mut decode_out = vec![];
    for inf in inference {
        // The decode counterpart is random GPT-2-124M; other models have none.
        if !matches!(inf["model"].as_str(), Some("gpt2" | "gpt2-124m")) {
            continue;
        }
        let layers = inf["layers"].as_u64();
        let Some(full) = inf["decode"].as_array().into_iter().flatten().find(|d| d["exit_layer"].as_u64() == layers) else { continue };
        let theirs = run_script(
            "scripts/pytorch_decode_bench.py",
            &["--threads".into(), threads.to_string(), "--tokens".into(), decode_tokens.to_string()],
        )?;
        let (a, b) = (full["tokens_per_sec"].as_f64(), theirs["tokens_per_sec"].as_f64());
        let r = ratio(a, b);
        say(&format!(
            "  GPT-2-124M greedy decode, batch 1: alignscope {} tokens/s, transformers {} tokens/s ({}) → ratio {}",
            fmt(a, 1),
            fmt(b, 1),
            theirs["transformers"].as_str().unwrap_or("?"),
            fmt(r, 2)
        ));
        let gb = full["gb_per_sec"].as_f64();
        let share = ratio(gb, bandwidth);
        if let Some(s) = share {
            say(&format!("    alignscope reads its weights at {} GB/s: {:.0}% of the measured read bandwidth", fmt(gb, 1), 100.0 * s));
        }
        decode_out.push(json!({
            "model": inf["model"],
            "alignscope_tokens_per_sec": a,
            "torch_tokens_per_sec": b,
            "ratio": r,
            "alignscope_gb_per_sec": gb,
            "share_of_read_bandwidth": share,
            "torch": theirs,
        }));
    }
    if train_out.is_empty() && decode_out.is_empty() {
        say("  nothing to compare: training compares every trained model, decoding only GPT-2-124M (--model gpt2)");
    }
    Ok(json!({ "training": train_out, "decode": decode_out }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_undefined_without_both_numbers() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), None), None);
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(fmt(None, 2), "n/a");
    }
}
