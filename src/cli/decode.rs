//! The decoding side of the command line: `generate --early-exit`, `generate --speculative`
//! and `exits` (the early-exit sweep, the paper's Table 1 for a language model).

use super::{GenerateArgs, out};
use crate::analysis::decode as decode_ids;
use crate::analysis::early_exit::{EarlyExitGeneration, EarlyExitOptions, ExitMeasure, generate_early_exit};
use crate::analysis::generate::{GenerateOptions, Sampling, generate};
use crate::analysis::quality::{coherence, diversity};
use crate::analysis::speculative::{Calibration, SpeculativeOptions, TokenOrigin, calibrate, generate_speculative};
use crate::model::Checkpoint;
use anyhow::{Result, bail};
use serde_json::json;
use std::ops::ControlFlow;
use std::time::Instant;

/// Tokens of the full model's continuation `--speculative auto` calibrates on.
pub const CALIBRATION_TOKENS: usize = 128;
/// Default most tokens drafted per verification.
pub const DEFAULT_DRAFT: usize = 4;

/// Checks the decoding flags of `generate` that do not need the model (before it loads).
pub fn check_generate_flags(a: &GenerateArgs) -> Result<()> {
    if a.early_exit.is_some() && a.exit_layer.is_some() {
        bail!("--early-exit and --exit-layer cannot be used together")
    }
    if a.speculative.is_some() && a.exit_layer.is_some() {
        bail!("--speculative and --exit-layer cannot be used together (speculative decoding always outputs the full model's tokens)")
    }
    if a.speculative.is_some() && a.early_exit.is_some() {
        bail!("--speculative and --early-exit cannot be used together")
    }
    if a.exit_measure.is_some() && a.early_exit.is_none() {
        bail!("--exit-measure needs --early-exit")
    }
    if let Some(th) = a.early_exit {
        if !(0.0..=1.0).contains(&th) {
            bail!("--early-exit is a threshold in [0, 1], got {th}")
        }
    }
    if a.speculative.is_none() {
        if a.draft.is_some() {
            bail!("--draft needs --speculative")
        }
        if a.draft_confidence.is_some() {
            bail!("--draft-confidence needs --speculative")
        }
    }
    if let Some(s) = &a.speculative {
        if s != "auto" && s.parse::<usize>().is_err() {
            bail!("--speculative must be a draft layer (a number) or auto, got {s:?}")
        }
    }
    if a.draft == Some(0) {
        bail!("--draft must be at least 1")
    }
    if let Some(g) = a.draft_confidence {
        if !(0.0..=1.0).contains(&g) {
            bail!("--draft-confidence is a probability in [0, 1], got {g}")
        }
    }
    Ok(())
}

/// Best of `reps` wall-clock timings of `f`.
fn best_time(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Wall-clock seconds of early-exit generation and of full-depth generation of as many
/// tokens (same prompt and sampling), each the best of three alternating runs.
pub fn time_against_full(ck: &Checkpoint, ids: &[u32], opts: &EarlyExitOptions, tokens: usize) -> Result<(f64, f64)> {
    let m = &ck.model;
    let ee = EarlyExitOptions { max_new_tokens: tokens, eos: None, ..opts.clone() };
    let full = GenerateOptions { exit_layer: m.n_layer(), max_new_tokens: tokens, sampling: opts.sampling, eos: None };
    let (mut t_ee, mut t_full) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..3 {
        t_ee = t_ee.min(best_time(1, || generate_early_exit(m, ids, &ee, |_, _| ControlFlow::Continue(())).map(|_| ()))?);
        t_full = t_full.min(best_time(1, || generate(m, ids, &full, |_| ControlFlow::Continue(())).map(|_| ()))?);
    }
    Ok((t_ee, t_full))
}

pub fn early_exit_cmd(a: &GenerateArgs, ck: &Checkpoint, ids: &[u32], sampling: Sampling, eos: Option<u32>) -> Result<()> {
    let th = a.early_exit.expect("checked by the caller");
    let measure = a.exit_measure.unwrap_or(ExitMeasure::MaxProb);
    let n_layer = ck.model.n_layer();
    let opts = EarlyExitOptions { threshold: th, measure, max_new_tokens: a.max_new_tokens, sampling, eos };
    let g: EarlyExitGeneration = generate_early_exit(&ck.model, ids, &opts, |_, _| ControlFlow::Continue(()))?;
    let text = decode_ids(&ck.tokenizer, &g.ids);
    // The wall-clock speedup, measured here against full-depth decoding of as many tokens.
    let (wall, full) = if g.ids.is_empty() { (None, None) } else { Some(time_against_full(ck, ids, &opts, g.ids.len())?).unzip() };
    let wall_speedup = wall.zip(full).map(|(w, f)| f / w);
    if a.common.json {
        out(&json!({
            "prompt": a.prompt,
            "input_ids": ids,
            "sampling": sampling,
            "threshold": th,
            "measure": measure,
            "ids": g.ids,
            "text": text,
            "exit_layers": g.exit_layers,
            "speedup": g.speedup,
            "layer_speedup": g.speedup,
            "wall_speedup": wall_speedup,
            "seconds": wall,
            "full_depth_seconds": full,
            "tok_per_s": wall.map(|w| g.ids.len() as f64 / w),
            "stop": g.stop,
        })
        .to_string());
    } else {
        out(&format!("{}{}", a.prompt, text));
        out(&format!("-- exit layers {:?} ({}, threshold {th})", g.exit_layers, measure.name()));
        out(&format!("-- {}", speedup_line(g.speedup, wall_speedup, n_layer, measure)));
    }
    Ok(())
}

/// The layer and wall-clock speedups in words, saying so when early exit does not pay.
pub fn speedup_line(layer: f64, wall: Option<f64>, n_layer: usize, measure: ExitMeasure) -> String {
    let mut s = format!("layer speedup {layer:.2}x over {n_layer} layers");
    match wall {
        None => s += "; wall-clock speedup n/a (no tokens)",
        Some(w) => {
            s += &format!("; wall-clock speedup {w:.2}x over full-depth decoding of as many tokens");
            if w < 1.0 {
                s += match measure {
                    ExitMeasure::MaxProb => {
                        " — slower: the max-prob check runs the shared classifier at every layer it tries (try --exit-measure saturation)"
                    }
                    ExitMeasure::Saturation => " — slower: too few tokens leave early to pay for the checks and the copied states",
                };
            }
        }
    }
    s
}

fn origin_name(o: &TokenOrigin) -> &'static str {
    match o {
        TokenOrigin::Accepted => "accepted",
        TokenOrigin::Corrected { .. } => "corrected",
        TokenOrigin::Bonus => "bonus",
        TokenOrigin::Full => "full",
    }
}

pub fn speculative_cmd(a: &GenerateArgs, ck: &Checkpoint, ids: &[u32], sampling: Sampling, eos: Option<u32>) -> Result<()> {
    let m = &ck.model;
    let n_layer = m.n_layer();
    let spec = a.speculative.as_deref().expect("checked by the caller");
    let calibration: Option<Calibration> = if spec == "auto" { Some(calibrate(m, ids, CALIBRATION_TOKENS)?) } else { None };
    let draft_layer = match (&calibration, spec.parse::<usize>()) {
        (Some(c), _) => c.draft_layer,
        (None, Ok(e)) if e >= 1 && e < n_layer => e,
        (None, Ok(e)) => bail!("--speculative {e} is out of range: the draft layer must be in 1..={} (the model has {n_layer} layers)", n_layer - 1),
        (None, Err(_)) => bail!("--speculative must be a draft layer (a number) or auto, got {spec:?}"),
    };
    let draft_len = a.draft.or(calibration.as_ref().map(|c| c.draft_len)).unwrap_or(DEFAULT_DRAFT);
    let draft_confidence = a.draft_confidence.or(calibration.as_ref().map(|c| c.draft_confidence)).unwrap_or(0.0);
    let opts = SpeculativeOptions { draft_layer, draft_len, draft_confidence, max_new_tokens: a.max_new_tokens, sampling, eos };
    let g = generate_speculative(m, ids, &opts, |_, _| ControlFlow::Continue(()))?;
    let text = decode_ids(&ck.tokenizer, &g.ids);
    let acceptance = g.acceptance();
    let tok_per_s = g.tokens_per_second();
    if a.common.json {
        let mut v = json!({
            "prompt": a.prompt,
            "input_ids": ids,
            "sampling": sampling,
            "ids": g.ids,
            "text": text,
            "stop": g.stop,
            "draft_layer": draft_layer,
            "draft": draft_len,
            "draft_confidence": draft_confidence,
            "drafted": g.drafted,
            "accepted": g.accepted,
            "acceptance": acceptance,
            "forward_passes": g.forward_passes,
            "origins": g.origins.iter().map(origin_name).collect::<Vec<_>>(),
            "seconds": g.seconds,
            "tok_per_s": tok_per_s,
            "diversity": diversity(&g.ids),
            "coherence": coherence(m, ids, &g.ids)?,
        });
        if let Some(c) = &calibration {
            v["calibration"] = json!({
                "positions": c.positions,
                "agreement": c.agreement,
                "block_ms": c.block_ms[0],
                "head_ms": c.head_ms[0],
                "draft_layer": c.draft_layer,
                "draft": c.draft_len,
                "draft_confidence": c.draft_confidence,
                "predicted_acceptance": c.predicted_acceptance,
                "predicted_speedup": c.predicted_speedup,
            });
        }
        out(&v.to_string());
    } else {
        out(&format!("{}{}", a.prompt, text));
        if let Some(c) = &calibration {
            out(&format!(
                "-- auto: draft layer {}, up to {} drafts, draft confidence {} (calibrated on {} positions of the full model's continuation; predicted speedup {:.2}x{})",
                c.draft_layer,
                c.draft_len,
                c.draft_confidence,
                c.positions,
                c.predicted_speedup,
                if c.predicted_speedup < 1.0 { ": speculation is not expected to pay on this model" } else { "" }
            ));
        }
        out(&format!(
            "-- speculative: draft layer {draft_layer} of {n_layer}, up to {draft_len} drafts; {} drafted, {} accepted ({}); {} full-depth passes for {} tokens; {}",
            g.drafted,
            g.accepted,
            acceptance.map_or("acceptance n/a".into(), |v| format!("{:.1}%", 100.0 * v)),
            g.forward_passes,
            g.ids.len(),
            tok_per_s.map_or("tokens/s n/a".into(), |v| format!("{v:.0} tokens/s")),
        ));
    }
    Ok(())
}
