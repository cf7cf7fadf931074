//! The decoding side of the command line: `generate --early-exit`, `generate --speculative`
//! and `exits` (the early-exit sweep, the paper's Table 1 for a language model).

use super::{CommonArgs, GenerateArgs, open, out};
use crate::analysis::decode as decode_ids;
use crate::analysis::early_exit::{EarlyExitGeneration, EarlyExitOptions, ExitMeasure, exit_speedup, generate_early_exit};
use crate::analysis::embedder::{EmbedderChoice, EmbedderInfo, SentenceEncoder};
use crate::analysis::exits::{ExitRow, trace_exits};
use crate::analysis::generate::{GenerateOptions, Sampling, generate};
use crate::analysis::quality::{coherence, diversity};
use crate::analysis::speculative::{
    Calibration, DEFAULT_LOOKAHEAD, SpeculativeOptions, TokenOrigin, calibrate, default_int8_draft, generate_pipelined,
    generate_speculative, pipelining_pays,
};
use crate::model::Checkpoint;
use crate::paths::DEFAULT_EVAL_TEXT;
use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

/// Tokens of the full model's continuation `--speculative auto` calibrates on.
pub const CALIBRATION_TOKENS: usize = 128;
/// Default most tokens drafted per verification.
pub const DEFAULT_DRAFT: usize = 4;

/// Checks the decoding flags of `generate` that do not need the model (before it loads).
pub fn check_generate_flags(a: &GenerateArgs) -> Result<()> {
    super::check_sampling_settings(a.top_p.is_some() || a.sample, a.temperature, a.seed)?;
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
    if let Some(th) = a.early_exit
        && !(0.0..=1.0).contains(&th)
    {
        bail!("--early-exit is a threshold in [0, 1], got {th}")
    }
    if a.speculative.is_none() && a.early_exit.is_none() && a.pipelined {
        bail!("--pipelined needs --speculative or --early-exit")
    }
    if a.early_exit.is_some() && a.pipelined && a.exit_measure == Some(ExitMeasure::Saturation) {
        bail!("--pipelined runs the max-prob checks on a second thread; saturation costs nothing to check")
    }
    if a.speculative.is_none() {
        if a.draft.is_some() {
            bail!("--draft needs --speculative")
        }
        if a.draft_confidence.is_some() {
            bail!("--draft-confidence needs --speculative")
        }
        if a.lookup {
            bail!("--lookup needs --speculative (it drafts from the text's repeats)")
        }
    }
    if a.lookup && (a.top_p.is_some() || a.sample) {
        bail!("--lookup drafts for greedy decoding: it cannot be used with --top-p or --sample")
    }
    if let Some(s) = &a.speculative
        && s != "auto"
        && s != "int8"
        && s.parse::<usize>().is_err()
    {
        bail!("--speculative must be a draft layer (a number), auto or int8, got {s:?}")
    }
    if a.speculative.as_deref() == Some("int8") {
        if a.top_p.is_some() || a.sample {
            bail!("--speculative int8 decodes greedily: it cannot be used with --top-p or --sample")
        }
        if a.draft_confidence.is_some_and(|g| g > 0.0) {
            bail!("--speculative int8 drafts every token: it cannot be used with --draft-confidence")
        }
    }
    if a.pipelined && (a.top_p.is_some() || a.sample) {
        bail!("--pipelined decodes greedily: it cannot be used with --top-p or --sample")
    }
    if a.pipelined && a.draft_confidence.is_some_and(|g| g > 0.0) {
        bail!("--pipelined drafts every token: it cannot be used with --draft-confidence")
    }
    if a.draft == Some(0) {
        bail!("--draft must be at least 1")
    }
    if let Some(g) = a.draft_confidence
        && !(0.0..=1.0).contains(&g)
    {
        bail!("--draft-confidence is a probability in [0, 1], got {g}")
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
/// tokens (same prompt and sampling), each the best of three alternating runs; and the
/// early-exit generation's exit layers.
pub fn time_against_full(ck: &Checkpoint, ids: &[u32], opts: &EarlyExitOptions, tokens: usize) -> Result<(f64, f64, Vec<usize>)> {
    let m = &ck.model;
    let ee = EarlyExitOptions { max_new_tokens: tokens, eos: None, ..opts.clone() };
    let full = GenerateOptions { exit_layer: m.n_layer(), max_new_tokens: tokens, sampling: opts.sampling, eos: None };
    let (mut t_ee, mut t_full) = (f64::INFINITY, f64::INFINITY);
    let mut exits = Vec::new();
    for _ in 0..3 {
        t_ee = t_ee.min(best_time(1, || {
            exits = generate_early_exit(m, ids, &ee, |_, _| ControlFlow::Continue(()))?.exit_layers;
            Ok(())
        })?);
        t_full = t_full.min(best_time(1, || generate(m, ids, &full, |_| ControlFlow::Continue(())).map(|_| ()))?);
    }
    Ok((t_ee, t_full, exits))
}

/// Diversity and coherence of a continuation, and the encoder behind coherence, as plain
/// generation reports them (`--embedder` chooses the encoder; one named but not found is
/// an error).
fn continuation_quality(a: &GenerateArgs, ck: &Checkpoint, ids: &[u32], text: &str) -> Result<(Option<f64>, Option<f64>, EmbedderInfo)> {
    let choice = EmbedderChoice::from_arg(a.embedder.as_deref());
    let encoder = SentenceEncoder::open(&choice, &ck.name, &ck.model, &ck.tokenizer, ck.model.device())?;
    Ok((diversity(ids), coherence(&encoder, &a.prompt, text)?, encoder.info(&choice)))
}

/// The text output's quality lines, as plain generation prints them on a terminal when an
/// encoder is named.
fn quality_lines(quality: &(Option<f64>, Option<f64>, EmbedderInfo)) {
    let (div, coh, embedder) = quality;
    out(&format!("-- diversity {}, coherence {}", crate::util::fmt_opt(*div, 0, 3), crate::util::fmt_opt(*coh, 0, 3)));
    out(&format!("-- {}", super::embedder_line(embedder)));
}

pub fn early_exit_cmd(a: &GenerateArgs, ck: &Checkpoint, ids: &[u32], sampling: Sampling, eos: Option<u32>) -> Result<()> {
    let th = a.early_exit.expect("checked by the caller");
    let measure = a.exit_measure.unwrap_or(ExitMeasure::MaxProb);
    let n_layer = ck.model.n_layer();
    let opts = EarlyExitOptions { threshold: th, measure, max_new_tokens: a.max_new_tokens, sampling, eos, pipelined: a.pipelined };
    let g: EarlyExitGeneration = generate_early_exit(&ck.model, ids, &opts, |_, _| ControlFlow::Continue(()))?;
    let text = decode_ids(&ck.tokenizer, &g.ids);
    // The wall-clock speedup, measured here against full-depth decoding of as many tokens.
    let (wall, full) = if g.ids.is_empty() {
        (None, None)
    } else {
        let (w, f, _) = time_against_full(ck, ids, &opts, g.ids.len())?;
        (Some(w), Some(f))
    };
    let wall_speedup = wall.zip(full).map(|(w, f)| f / w);
    // No token, no exit layers: neither speedup is defined.
    let layer_speedup = (!g.exit_layers.is_empty()).then_some(g.speedup);
    let quality = match a.common.json || a.embedder.is_some() {
        true => Some(continuation_quality(a, ck, &g.ids, &text)?),
        false => None,
    };
    if a.common.json {
        let (div, coh, embedder) = quality.as_ref().expect("computed for --json");
        out(&json!({
            "prompt": a.prompt,
            "input_ids": ids,
            "sampling": sampling,
            "threshold": th,
            "measure": measure,
            "pipelined": a.pipelined,
            "ids": g.ids,
            "text": text,
            "exit_layers": g.exit_layers,
            "speedup": layer_speedup,
            "layer_speedup": layer_speedup,
            "wall_speedup": wall_speedup,
            "seconds": wall,
            "full_depth_seconds": full,
            "tok_per_s": wall.map(|w| g.ids.len() as f64 / w),
            "stop": g.stop,
            "diversity": div,
            "coherence": coh,
            "embedder": embedder,
        })
        .to_string());
    } else {
        out(&format!("{}{}", a.prompt, text));
        let how = if a.pipelined { ", checked on a second thread" } else { "" };
        out(&format!("-- exit layers {:?} ({}, threshold {th}{how})", g.exit_layers, measure.name()));
        out(&format!("-- {}", speedup_line(layer_speedup, wall_speedup, n_layer, measure, a.pipelined)));
        if let Some(q) = &quality {
            quality_lines(q);
        }
    }
    Ok(())
}

/// The layer and wall-clock speedups in words, saying so when early exit does not pay.
pub fn speedup_line(layer: Option<f64>, wall: Option<f64>, n_layer: usize, measure: ExitMeasure, pipelined: bool) -> String {
    let mut s = match layer {
        Some(l) => format!("layer speedup {l:.2}x over {n_layer} layers"),
        None => format!("layer speedup n/a over {n_layer} layers"),
    };
    match wall {
        None => s += "; wall-clock speedup n/a (no tokens)",
        Some(w) => {
            s += &format!("; wall-clock speedup {w:.2}x over full-depth decoding of as many tokens");
            if w < 1.0 {
                s += match measure {
                    ExitMeasure::MaxProb if pipelined => {
                        " — slower: too few tokens leave early to pay for the copied states and the second thread's checks"
                    }
                    ExitMeasure::MaxProb => {
                        " — slower: the max-prob check at every layer a token passes costs more than the blocks it skips (try --pipelined, the checks on a second thread, or --exit-measure saturation)"
                    }
                    ExitMeasure::Saturation => " — slower: too few tokens leave early to pay for the checks and the copied states",
                };
            }
        }
    }
    s
}

/// With `--lookup`, how much of the calibration's continuation the repeats drafted.
fn repeats_share(c: &Calibration) -> String {
    c.lookup_share.map_or(String::new(), |s| format!(", {:.0}% of them drafted from repeats", 100.0 * s))
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
    // The 8-bit drafter drafts from the embeddings, on two threads where a row keeps to one
    // core (as the explorer decodes), else in one-thread rounds.
    let int8 = spec == "int8";
    let pipelined = a.pipelined || int8 && pipelining_pays(m);
    let greedy_tokens = sampling.greedy_tokens(a.max_new_tokens);
    let calibration: Option<Calibration> =
        if spec == "auto" { Some(calibrate(m, ids, CALIBRATION_TOKENS, greedy_tokens, a.lookup)?) } else { None };
    let draft_layer = match (&calibration, spec.parse::<usize>()) {
        _ if int8 => 0,
        (Some(c), _) if pipelined => c.pipelined_layer,
        (Some(c), _) => c.draft_layer,
        (None, Ok(e)) if e >= 1 && e < n_layer => e,
        (None, Ok(e)) => {
            bail!("--speculative {e} is out of range: the draft layer must be in 1..={} (the model has {n_layer} layers)", n_layer - 1)
        }
        (None, Err(_)) => bail!("--speculative must be a draft layer (a number), auto or int8, got {spec:?}"),
    };
    let (draft_len, draft_confidence) = match pipelined {
        _ if int8 => (a.draft.unwrap_or(default_int8_draft(pipelined)), 0.0),
        true => (a.draft.unwrap_or(DEFAULT_LOOKAHEAD), 0.0),
        false => (
            a.draft.or(calibration.as_ref().map(|c| c.draft_len)).unwrap_or(DEFAULT_DRAFT),
            a.draft_confidence.or(calibration.as_ref().map(|c| c.draft_confidence)).unwrap_or(0.0),
        ),
    };
    let opts = SpeculativeOptions {
        draft_layer,
        draft_len,
        draft_confidence,
        max_new_tokens: a.max_new_tokens,
        sampling,
        eos,
        lookup: a.lookup,
        int8,
    };
    let g = match pipelined {
        true => generate_pipelined(m, ids, &opts, |_, _, _| ControlFlow::Continue(()))?,
        false => generate_speculative(m, ids, &opts, |_, _, _| ControlFlow::Continue(()))?,
    };
    let text = decode_ids(&ck.tokenizer, &g.ids);
    let acceptance = g.acceptance();
    let tok_per_s = g.tokens_per_second();
    let quality = match a.common.json || a.embedder.is_some() {
        true => Some(continuation_quality(a, ck, &g.ids, &text)?),
        false => None,
    };
    if a.common.json {
        let (div, coh, embedder) = quality.as_ref().expect("computed for --json");
        let mut v = json!({
            "prompt": a.prompt,
            "input_ids": ids,
            "sampling": sampling,
            "ids": g.ids,
            "text": text,
            "stop": g.stop,
            "draft_layer": draft_layer,
            "int8": int8,
            "pipelined": pipelined,
            "draft": draft_len,
            "draft_confidence": draft_confidence,
            "drafted": g.drafted,
            "accepted": g.accepted,
            "acceptance": acceptance,
            "lookup": g.lookup,
            "lookup_drafted": g.lookup.then_some(g.lookup_drafted),
            "lookup_accepted": g.lookup.then_some(g.lookup_accepted),
            "lookup_acceptance": g.lookup_acceptance(),
            "layer_acceptance": g.layer_acceptance(),
            "forward_passes": g.forward_passes,
            "origins": g.origins.iter().map(origin_name).collect::<Vec<_>>(),
            "seconds": g.seconds,
            "tok_per_s": tok_per_s,
            "diversity": div,
            "coherence": coh,
            "embedder": embedder,
        });
        if let Some(c) = &calibration {
            v["calibration"] = json!({
                "positions": c.positions,
                "agreement": c.agreement,
                "lookup_agreement": c.lookup_agreement,
                "lookup_share": c.lookup_share,
                "block_ms": c.block_ms[0],
                "head_ms": c.head_ms[0],
                "greedy_ms": c.greedy_ms,
                "draft_layer": c.draft_layer,
                "draft": c.draft_len,
                "draft_confidence": c.draft_confidence,
                "predicted_acceptance": c.predicted_acceptance,
                "predicted_speedup": c.predicted_speedup,
                "pipelined_layer": c.pipelined_layer,
                "pipelined_speedup": c.pipelined_speedup,
            });
        }
        out(&v.to_string());
    } else {
        out(&format!("{}{}", a.prompt, text));
        if let Some(c) = calibration.as_ref().filter(|_| pipelined) {
            out(&format!(
                "-- auto: draft layer {} (calibrated on {} positions of the full model's continuation{}; predicted speedup {:.2}x{})",
                c.pipelined_layer,
                c.positions,
                repeats_share(c),
                c.pipelined_speedup,
                if c.pipelined_speedup < 1.0 { ": speculation is not expected to pay on this model" } else { "" }
            ));
        } else if let Some(c) = &calibration {
            // Pipelined decoding is greedy only; where it is predicted to beat the rounds,
            // the user learns how to get it.
            let hint = match sampling {
                Sampling::Greedy if c.pipelined_speedup > c.predicted_speedup.max(1.0) => format!(
                    "; pipelined decoding is predicted {:.2}x from draft layer {}: add --pipelined",
                    c.pipelined_speedup, c.pipelined_layer
                ),
                _ => String::new(),
            };
            // What runs is what the line says: a --draft or --draft-confidence given wins
            // over the calibration's pick, which the prediction is for.
            let given = match (
                a.draft.is_some() || a.draft_confidence.is_some(),
                c.draft_len != draft_len || c.draft_confidence != draft_confidence,
            ) {
                (true, true) => format!(
                    "; as given: the calibration picked up to {} drafts, draft confidence {}, and predicted for that",
                    c.draft_len, c.draft_confidence
                ),
                _ => String::new(),
            };
            out(&format!(
                "-- auto: draft layer {}, up to {} drafts, draft confidence {} (calibrated on {} positions of the full model's continuation{}; predicted speedup {:.2}x{}{given}){hint}",
                c.draft_layer,
                draft_len,
                draft_confidence,
                c.positions,
                repeats_share(c),
                c.predicted_speedup,
                match (c.predicted_speedup < 1.0, hint.is_empty()) {
                    (true, true) => ": speculation is not expected to pay on this model",
                    (true, false) => ": these one-thread rounds are not expected to pay on this model",
                    (false, _) => "",
                }
            ));
        }
        let drafter = match int8 {
            true => "the 8-bit copy".to_string(),
            false => format!("layer {draft_layer}"),
        };
        let mode = match pipelined {
            true if int8 => {
                format!("pipelined, the model's 8-bit copy drafting, up to {} ahead", crate::util::count_of(draft_len, "draft"))
            }
            false if int8 => format!("the model's 8-bit copy drafting, up to {}", crate::util::count_of(draft_len, "draft")),
            true => format!("pipelined, draft layer {draft_layer} of {n_layer}, up to {} ahead", crate::util::count_of(draft_len, "draft")),
            false => format!("draft layer {draft_layer} of {n_layer}, up to {}", crate::util::count_of(draft_len, "draft")),
        };
        let pct = crate::util::percent;
        let sources = match g.lookup {
            true => format!(
                " — {} from repeats ({} accepted, {}), {} from {drafter} ({})",
                g.lookup_drafted,
                g.lookup_accepted,
                pct(g.lookup_acceptance()),
                g.drafted - g.lookup_drafted,
                pct(g.layer_acceptance())
            ),
            false => String::new(),
        };
        out(&format!(
            "-- speculative: {mode}; {} drafted, {} accepted ({}{sources}); {} full-depth passes for {} tokens; {}",
            g.drafted,
            g.accepted,
            acceptance.map_or("acceptance n/a".into(), |v| format!("{:.1}%", 100.0 * v)),
            g.forward_passes,
            g.ids.len(),
            tok_per_s.map_or("tokens/s n/a".into(), |v| format!("{v:.0} tokens/s")),
        ));
        if let Some(q) = &quality {
            quality_lines(q);
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ExitsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// A second checkpoint, swept on the same text
    #[arg(long)]
    pub compare: Option<String>,
    /// UTF-8 text (teacher-forced; held-out text for an honest table)
    #[arg(long, default_value = DEFAULT_EVAL_TEXT)]
    pub data: PathBuf,
    /// Comma-separated thresholds (default: 0.1,...,0.9 for max-prob; 0.9,0.95,0.97,0.98,0.99,0.995 for saturation)
    #[arg(long)]
    pub thresholds: Option<String>,
    /// Exit measure: max-prob or saturation
    #[arg(long, value_parser = super::exit_measure_parser(), default_value = "max-prob")]
    pub measure: ExitMeasure,
    /// Tokens per chunk (default: 256, or the model's context if shorter)
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Evaluate at most this many chunks (default: the whole text)
    #[arg(long)]
    pub max_chunks: Option<usize>,
    /// Wall clock: greedy tokens generated per prompt at each threshold (0: skip the timing)
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Wall clock: prompts (of 32 tokens, spread over the text) per threshold
    #[arg(long, default_value_t = 4)]
    pub gen_prompts: usize,
    /// Wall clock: generate with the max-prob checks on a second thread (`generate
    /// --early-exit τ --pipelined`)
    #[arg(long)]
    pub pipelined: bool,
}

fn parse_thresholds(s: Option<&str>, measure: ExitMeasure) -> Result<Vec<f64>> {
    let Some(s) = s else {
        return Ok(match measure {
            ExitMeasure::MaxProb => (1..=9).map(|i| i as f64 / 10.0).collect(),
            ExitMeasure::Saturation => vec![0.9, 0.95, 0.97, 0.98, 0.99, 0.995],
        });
    };
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        match part.parse::<f64>() {
            Ok(v) if (0.0..=1.0).contains(&v) => out.push(v),
            Ok(v) => bail!("--thresholds: {v} is outside [0, 1]"),
            Err(_) => bail!("--thresholds must be numbers in [0, 1] separated by commas, got {part:?}"),
        }
    }
    if out.is_empty() {
        bail!("--thresholds is empty")
    }
    Ok(out)
}

/// One model's sweep: the table rows, with the wall-clock speedup of generation.
struct Sweep {
    name: String,
    n_layer: usize,
    tokens: usize,
    chunks: usize,
    ctx: usize,
    rows: Vec<(ExitRow, Option<Timed>)>,
}

/// The timed generations at one threshold: wall-clock speedup over full depth, and the
/// layer speedup of those same generations (their exits differ from teacher-forced ones).
#[derive(Clone, Copy)]
struct Timed {
    wall_speedup: f64,
    layer_speedup: f64,
}

fn sweep(ck: &Checkpoint, docs: &[String], data: &str, ctx: usize, a: &ExitsArgs, thresholds: &[f64], show: bool) -> Result<Sweep> {
    let ids = crate::corpus::tokens::held_out_ids(&ck.tokenizer, ck.eos_id(), docs, data, None)?;
    let trace = trace_exits(&ck.model, &ids, ctx, a.max_chunks, a.measure, |done, total| {
        if show {
            eprint!("\r{}: {done}/{total} chunks", ck.name);
        }
        ControlFlow::Continue(())
    })?;
    if show {
        eprintln!();
    }
    // Wall clock: greedy generation from prompts spread over the text.
    let plen = 32.min(ck.model.config.n_positions.saturating_sub(a.gen_tokens).max(1));
    let prompts: Vec<&[u32]> = if a.gen_tokens == 0 || ids.len() < plen {
        vec![]
    } else {
        let step = (ids.len() - plen) / a.gen_prompts.max(1);
        (0..a.gen_prompts).map(|i| &ids[i * step..i * step + plen]).collect()
    };
    let mut rows = Vec::new();
    for th in thresholds.iter().map(|&t| Some(t)).chain([None]) {
        let row = trace.row(th);
        let wall = match th {
            Some(t) if !prompts.is_empty() => {
                let opts = EarlyExitOptions {
                    threshold: t,
                    measure: a.measure,
                    max_new_tokens: a.gen_tokens,
                    sampling: Sampling::Greedy,
                    eos: None,
                    pipelined: a.pipelined,
                };
                let (mut ee, mut full, mut exits) = (0.0, 0.0, vec![]);
                for p in &prompts {
                    let (e, f, x) = time_against_full(ck, p, &opts, a.gen_tokens)?;
                    ee += e;
                    full += f;
                    exits.extend(x);
                }
                Some(Timed { wall_speedup: full / ee, layer_speedup: exit_speedup(&exits, ck.model.n_layer()) })
            }
            Some(_) => None,
            None => Some(Timed { wall_speedup: 1.0, layer_speedup: 1.0 }),
        };
        rows.push((row, wall));
    }
    Ok(Sweep { name: ck.name.clone(), n_layer: trace.n_layer, tokens: trace.positions(), chunks: trace.chunks, ctx, rows })
}

pub fn exits_cmd(a: ExitsArgs) -> Result<()> {
    let thresholds = parse_thresholds(a.thresholds.as_deref(), a.measure)?;
    if a.gen_tokens > 0 && a.gen_prompts == 0 {
        bail!("--gen-prompts must be at least 1 to time generation (--gen-tokens 0 skips the wall clock)")
    }
    let (docs, data) = super::held_out_documents(&a.data)?; // before the models load: bad data fails fast
    let show = !a.common.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut models = vec![open(&a.common)?];
    if let Some(other) = &a.compare {
        models.push(open(&CommonArgs { ckpt: other.clone(), device: a.common.device.clone(), json: a.common.json })?);
    }
    // One chunk length for both columns, so they are over the same predictions.
    let ctx = a.ctx.unwrap_or_else(|| models.iter().map(|m| m.model.config.default_ctx()).min().expect("one model"));
    for m in &models {
        // A prompt of at least one token, then the timed tokens, in the context.
        if a.gen_tokens >= m.model.config.n_positions {
            bail!(
                "--gen-tokens {} does not fit in {}'s context of {} tokens with a prompt",
                a.gen_tokens,
                m.name,
                m.model.config.n_positions
            )
        }
    }
    let sweeps = models.iter().map(|ck| sweep(ck, &docs, &data, ctx, &a, &thresholds, show)).collect::<Result<Vec<_>>>()?;
    if a.common.json {
        let models: Vec<_> = sweeps
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "layers": s.n_layer,
                    "tokens": s.tokens,
                    "chunks": s.chunks,
                    "ctx": s.ctx,
                    "rows": s.rows.iter().map(|(r, w)| json!({
                        "threshold": r.threshold,
                        "accuracy": r.accuracy,
                        "agreement": r.agreement,
                        "mean_exit_layer": r.mean_exit_layer,
                        "layer_speedup": r.layer_speedup,
                        "generation_layer_speedup": w.map(|w| w.layer_speedup),
                        "wall_speedup": w.map(|w| w.wall_speedup),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        out(&json!({
            "data": data,
            "measure": a.measure,
            "gen_tokens": a.gen_tokens,
            "gen_prompts": a.gen_prompts,
            "pipelined": a.pipelined,
            "models": models,
        })
        .to_string());
        return Ok(());
    }
    out(&format_exits(&sweeps, &data, a.measure, a.gen_prompts, a.gen_tokens, a.pipelined));
    Ok(())
}

fn format_exits(sweeps: &[Sweep], data: &str, measure: ExitMeasure, prompts: usize, tokens: usize, pipelined: bool) -> String {
    let s0 = &sweeps[0];
    let checks = if pipelined { " (checks on a second thread)" } else { "" };
    let wall = if tokens == 0 {
        "wall clock not measured (--gen-tokens 0)".to_string()
    } else {
        format!("wall clock: greedy generation of {prompts} x {tokens} tokens{checks} vs full depth, same run")
    };
    let mut s = format!(
        "early exit by {} on {data}: {} of {} tokens, {} predictions (teacher-forced); {wall}\n",
        measure.name(),
        crate::util::count_of(s0.chunks, "chunk"),
        s0.ctx,
        s0.tokens,
    );
    s += "(teacher-forced: accuracy, agreement with the last layer, mean exit layer, layer speedup | generation: layer and wall-clock speedup)\n";
    s += "threshold";
    for sw in sweeps {
        s += &format!(" | {:<56}", sw.name);
    }
    s += "\n         ";
    for _ in sweeps {
        s += " |    acc   agree  exit  layer x | gen layer x   wall x";
    }
    for i in 0..s0.rows.len() {
        let th = s0.rows[i].0.threshold;
        s += &format!("\n{:>9}", th.map_or("full".to_string(), |t| format!("{t}")));
        for sw in sweeps {
            let (r, w) = &sw.rows[i];
            let na = || "n/a".to_string();
            s += &format!(
                " | {:>5.1}% {:>6.1}% {:>5.2} {:>7.2}x | {:>11} {:>8}",
                100.0 * r.accuracy,
                100.0 * r.agreement,
                r.mean_exit_layer,
                r.layer_speedup,
                w.map_or_else(na, |w| format!("{:.2}x", w.layer_speedup)),
                w.map_or_else(na, |w| format!("{:.2}x", w.wall_speedup)),
            );
        }
    }
    s
}
