//! Per-token early exit: each new token leaves at the first layer whose exit measure
//! reaches a threshold, or at the last layer; the blocks above still need that position's
//! keys and values for later tokens, and get them computed from the exit state (state
//! copying, as in CALM), which costs the k/v columns of their projection (1/6 of a block).
//!
//! Two exit measures:
//! - `max-prob`: the shared classifier's largest softmax probability at the layer — the
//!   paper's confidence. Exact; on the f32 logits it would cost a whole classifier per
//!   checked layer (on the Austen models the head, 4096 x 128, is 2.5 blocks of weights; on
//!   GPT-2, 50257 x 768, 5.4 blocks), so the engine decides it through a reduced copy of
//!   the classifier and a bound (`CpuModel::max_prob_check`: about 0.6 of a block on the
//!   Austen models), going to the logits only when the probability is next to the
//!   threshold. Checking every layer on the decoding thread still costs more than the
//!   blocks it saves unless tokens leave early; with `pipelined` the checks run on a
//!   second thread while the blocks run on (`early_exit/pipelined.rs`). The wall-clock
//!   speedup is measured and reported next to the layer speedup.
//! - `saturation`: CALM's hidden-state saturation, `cos(h^l, h^{l-1})`: O(d) per layer,
//!   free next to a block; the classifier then runs once, at the exit layer. Here the
//!   measured wall-clock speedup tracks the layer speedup (less the fixed costs: the head,
//!   and the k/v projections of the skipped blocks).

mod pipelined;

use super::generate::{Sampling, StopReason, TokenPicker, check_prompt};
use crate::model::decoder::{self, CpuModel, Decoder, MaxProbCheck};
use crate::model::{Gpt2, KvCache};
use anyhow::{Result, bail};
use candle_core::Tensor;
use serde::Serialize;
use std::ops::ControlFlow;
use std::time::Instant;

/// What decides that a token may leave at a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitMeasure {
    /// The shared classifier's largest softmax probability (exact; a classifier per layer).
    MaxProb,
    /// Cosine between the layer's residual and the previous layer's (free).
    Saturation,
}

impl ExitMeasure {
    pub const ALL: [ExitMeasure; 2] = [ExitMeasure::MaxProb, ExitMeasure::Saturation];

    /// The measure a name (as [`Self::name`] writes it) stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            ExitMeasure::MaxProb => "max-prob",
            ExitMeasure::Saturation => "saturation",
        }
    }
}

#[derive(Debug, Clone)]
pub struct EarlyExitOptions {
    /// Exit at the first layer whose measure reaches this (in [0, 1]; 1 never exits early
    /// in practice).
    pub threshold: f64,
    pub measure: ExitMeasure,
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub eos: Option<u32>,
    /// Check max-prob on a second thread while the blocks run on
    /// (`early_exit/pipelined.rs`; greedy, CPU engine).
    pub pipelined: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct EarlyExitGeneration {
    pub ids: Vec<u32>,
    /// Exit layer of each generated token (the first comes from the prompt's full pass).
    pub exit_layers: Vec<usize>,
    /// `sum L*m_i / sum i*m_i` over exit counts `m_i`: the speedup in layers over running
    /// all of them.
    pub speedup: f64,
    pub stop: StopReason,
    /// Wall-clock seconds of the generation (prompt included).
    pub seconds: f64,
}

/// Speedup of exiting at the given layers instead of always at layer `n_layer`.
pub fn exit_speedup(exit_layers: &[usize], n_layer: usize) -> f64 {
    let used: usize = exit_layers.iter().sum();
    if used == 0 { 1.0 } else { (n_layer * exit_layers.len()) as f64 / used as f64 }
}

pub fn validate(opts: &EarlyExitOptions) -> Result<()> {
    if !(0.0..=1.0).contains(&opts.threshold) {
        bail!("--early-exit is a threshold in [0, 1], got {}", opts.threshold)
    }
    if opts.pipelined && !matches!(opts.sampling, Sampling::Greedy) {
        bail!("pipelined early exit decodes greedily: it cannot be used with --top-p or --sample")
    }
    if opts.pipelined && opts.measure != ExitMeasure::MaxProb {
        bail!("pipelined early exit checks max-prob on a second thread; saturation costs nothing to check")
    }
    opts.sampling.validate()
}

/// Generates with per-token early exit. `on_token` sees each token and its exit layer, and
/// may cancel.
pub fn generate_early_exit(
    model: &Gpt2,
    prompt: &[u32],
    opts: &EarlyExitOptions,
    on_token: impl FnMut(u32, usize) -> ControlFlow<()>,
) -> Result<EarlyExitGeneration> {
    check_prompt(model, prompt)?;
    validate(opts)?;
    let start = Instant::now();
    let mut g = if decoder::supported(model) {
        match opts.pipelined {
            true => decoder::with_cpu_model(model, |m| pipelined::run(m, prompt, opts, on_token))?,
            false => decoder::with_cpu_model(model, |m| run_cpu(m, prompt, opts, on_token))?,
        }
    } else if opts.pipelined {
        bail!("pipelined early exit runs on the CPU engine; this model is on {:?} (use --device cpu)", model.device().location())
    } else {
        run_tensor(model, prompt, opts, on_token)?
    };
    g.speedup = exit_speedup(&g.exit_layers, model.n_layer());
    g.seconds = start.elapsed().as_secs_f64();
    Ok(g)
}

/// CALM's hidden-state saturation `cos(h^l, h^{l-1})` of one position, summed in f64.
pub(crate) fn saturation(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(f64::MIN_POSITIVE)
}

/// Emits tokens for the generation loop; returns false when generation ends.
struct Emitter<'a, F: FnMut(u32, usize) -> ControlFlow<()>> {
    g: EarlyExitGeneration,
    opts: &'a EarlyExitOptions,
    on_token: F,
}

impl<F: FnMut(u32, usize) -> ControlFlow<()>> Emitter<'_, F> {
    fn emit(&mut self, t: u32, layer: usize) -> bool {
        self.g.ids.push(t);
        self.g.exit_layers.push(layer);
        if (self.on_token)(t, layer).is_break() {
            self.g.stop = StopReason::Cancelled;
            return false;
        }
        if Some(t) == self.opts.eos {
            self.g.stop = StopReason::EndOfText;
            return false;
        }
        self.g.ids.len() < self.opts.max_new_tokens
    }
}

fn empty() -> EarlyExitGeneration {
    EarlyExitGeneration { ids: vec![], exit_layers: vec![], speedup: 1.0, stop: StopReason::MaxTokens, seconds: 0.0 }
}

/// The max-prob decision at one layer.
enum MaxProbExit {
    /// The confidence stays below the threshold.
    Stays,
    /// It reaches the threshold; decided through the reduced copy, which also gives the
    /// greedy token.
    LeavesWith(u32),
    /// It reaches the threshold; decided on the f32 logits, which `logits` now holds.
    LeavesOnLogits,
}

/// The max-prob check of residual `h` against `threshold`: through the classifier's reduced
/// copy where `reduced` (`CpuModel::max_prob_check`), else, or where its bound cannot tell,
/// on the f32 logits (written into `logits`). One-thread and pipelined early exit both
/// decide through this, so they take the same decisions.
fn max_prob_exit(m: &CpuModel, h: &[f32], threshold: f64, reduced: bool, logits: &mut Vec<f32>) -> MaxProbExit {
    let check = if reduced { m.max_prob_check(h, threshold) } else { MaxProbCheck::Undecided };
    match check {
        MaxProbCheck::Reaches(t) => MaxProbExit::LeavesWith(t),
        MaxProbCheck::Below => MaxProbExit::Stays,
        MaxProbCheck::Undecided => {
            m.head(h, logits);
            match crate::kernels::max_prob(logits) as f64 >= threshold {
                true => MaxProbExit::LeavesOnLogits,
                false => MaxProbExit::Stays,
            }
        }
    }
}

/// What the exit check left for picking the token at the exit layer.
enum Picked {
    Nothing,
    /// `logits` hold the exit layer's.
    Logits,
    /// The greedy token.
    Token(u32),
}

fn run_cpu(
    m: &CpuModel,
    prompt: &[u32],
    opts: &EarlyExitOptions,
    on_token: impl FnMut(u32, usize) -> ControlFlow<()>,
) -> Result<EarlyExitGeneration> {
    let (n_layer, d) = (m.n_layer, m.d);
    let mut out = Emitter { g: empty(), opts, on_token };
    if opts.max_new_tokens == 0 {
        return Ok(out.g);
    }
    let mut dec = Decoder::new(m);
    let mut picker = TokenPicker::new(&opts.sampling);
    let mut logits = Vec::new();
    // The prompt runs through every layer.
    let mut x = dec.embed(prompt, 0)?;
    dec.blocks(0, n_layer, &mut x, 0)?;
    dec.logits(&x[x.len() - d..], &mut logits);
    let mut next = picker.pick(&logits)?;
    let mut layer = n_layer;
    let mut pos = prompt.len();
    let mut prev = vec![0f32; d];
    // Where only the exit layer's classifier runs (saturation, or a token that reached the
    // last layer), a greedy token is found as plain greedy decoding finds it: through the
    // classifier's 8-bit copy, in generations long enough to repay it.
    let greedy_tokens = opts.sampling.greedy_tokens(opts.max_new_tokens);
    // The same for the max-prob check at each layer, sampling or not: decided through the
    // classifier's 8-bit copy where it has one (see `CpuModel::max_prob_check`).
    let reduced_checks = opts.max_new_tokens >= decoder::REDUCED_HEAD_MIN_TOKENS;
    while out.emit(next, layer) {
        if pos >= m.n_positions {
            out.g.stop = StopReason::ContextFull;
            break;
        }
        // The new token, layer by layer, until the measure says it may leave.
        let mut x = dec.embed(&[next], pos)?;
        layer = n_layer;
        // Where the check already computed it: the logits, or the greedy token.
        let mut picked = Picked::Nothing;
        for l in 0..n_layer - 1 {
            if opts.measure == ExitMeasure::Saturation {
                prev.copy_from_slice(&x);
            }
            dec.block(l, &mut x, pos)?;
            let leaves = match opts.measure {
                ExitMeasure::MaxProb => match max_prob_exit(m, &x, opts.threshold, reduced_checks, &mut logits) {
                    MaxProbExit::LeavesWith(t) => {
                        picked = if greedy_tokens { Picked::Token(t) } else { Picked::Nothing };
                        true
                    }
                    MaxProbExit::LeavesOnLogits => {
                        picked = Picked::Logits;
                        true
                    }
                    MaxProbExit::Stays => false,
                },
                ExitMeasure::Saturation => saturation(&x, &prev) >= opts.threshold,
            };
            if leaves {
                layer = l + 1;
                for j in layer..n_layer {
                    dec.fill_kv(j, &x, pos)?;
                }
                break;
            }
            picked = Picked::Nothing;
        }
        if layer == n_layer {
            dec.block(n_layer - 1, &mut x, pos)?;
        }
        next = match picked {
            Picked::Token(t) => t,
            Picked::Logits => picker.pick(&logits)?,
            Picked::Nothing if greedy_tokens => dec.greedy_token(&x),
            Picked::Nothing => {
                dec.logits(&x, &mut logits);
                picker.pick(&logits)?
            }
        };
        pos += 1;
    }
    Ok(out.g)
}

/// [`generate_early_exit`] with candle tensors, for devices the CPU engine does not cover.
fn run_tensor(
    model: &Gpt2,
    prompt: &[u32],
    opts: &EarlyExitOptions,
    on_token: impl FnMut(u32, usize) -> ControlFlow<()>,
) -> Result<EarlyExitGeneration> {
    let n_layer = model.n_layer();
    let mut out = Emitter { g: empty(), opts, on_token };
    if opts.max_new_tokens == 0 {
        return Ok(out.g);
    }
    let mut proc = opts.sampling.processor();
    let mut cache = KvCache::new(n_layer);
    let ids = Tensor::from_vec(prompt.to_vec(), (1, prompt.len()), model.device())?;
    let h = model.forward_cached(&ids, &mut cache, n_layer)?;
    let mut h = h.narrow(1, prompt.len() - 1, 1)?;
    let mut layer = n_layer;
    loop {
        let logits = model.head(&h.squeeze(1)?)?.squeeze(0)?;
        let next = proc.sample(&logits)?;
        if !out.emit(next, layer) {
            break;
        }
        if cache.len() >= model.config.n_positions {
            out.g.stop = StopReason::ContextFull;
            break;
        }
        let ids = Tensor::from_vec(vec![next], (1, 1), model.device())?;
        let offset = cache.len();
        let mut x = model.embed(&ids, offset)?;
        layer = n_layer;
        for l in 1..=n_layer {
            let before = x.clone();
            x = model.block_step(l - 1, &x, &mut cache)?;
            if l < n_layer {
                let conf = match opts.measure {
                    ExitMeasure::MaxProb => {
                        let v: Vec<f32> = model.head(&x.squeeze(1)?)?.flatten_all()?.to_vec1()?;
                        crate::kernels::max_prob(&v) as f64
                    }
                    ExitMeasure::Saturation => saturation(&x.flatten_all()?.to_vec1()?, &before.flatten_all()?.to_vec1()?),
                };
                if conf >= opts.threshold {
                    layer = l;
                    for j in l..n_layer {
                        model.fill_kv(j, &x, &mut cache)?;
                    }
                    break;
                }
            }
        }
        h = x;
    }
    Ok(out.g)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU engine and the tensor path (other devices) apply the same rule: the same
    /// tokens leave at the same layers, with either measure (the engine's max-prob checks
    /// through the classifier's 8-bit copy).
    #[test]
    fn engine_and_tensor_paths_agree() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2");
        let ck = crate::model::Checkpoint::load_dir(&dir, &candle_core::Device::Cpu).unwrap();
        let prompt = ck.tokenizer.encode("Mr. Darcy looked at Elizabeth and said", false).unwrap().get_ids().to_vec();
        for (measure, threshold) in [(ExitMeasure::MaxProb, 0.3), (ExitMeasure::MaxProb, 0.15), (ExitMeasure::Saturation, 0.9)] {
            // Long enough for the max-prob check through the classifier's 8-bit copy.
            let max_new_tokens = decoder::REDUCED_HEAD_MIN_TOKENS + 8;
            let opts = EarlyExitOptions { threshold, measure, max_new_tokens, sampling: Sampling::Greedy, eos: None, pipelined: false };
            let a = decoder::with_cpu_model(&ck.model, |m| run_cpu(m, &prompt, &opts, |_, _| ControlFlow::Continue(()))).unwrap();
            let b = run_tensor(&ck.model, &prompt, &opts, |_, _| ControlFlow::Continue(())).unwrap();
            assert_eq!(a.ids, b.ids, "{measure:?} {threshold}");
            assert_eq!(a.exit_layers, b.exit_layers, "{measure:?} {threshold}");
            assert!(a.exit_layers.iter().any(|&l| l < 4), "{measure:?} {threshold}: some token leaves early");
        }
    }

    /// Pipelined early exit (checks on a second thread) gives the one-thread path's tokens
    /// and exit layers, on the fixture at thresholds where tokens leave at every layer, with
    /// the f32 logits (short generations) and the reduced copy (long ones), to the end of
    /// the context; several times, since the threads' timing differs from run to run. It
    /// refuses sampling and the saturation measure, and stops when the caller cancels.
    #[test]
    fn pipelined_checks_exit_where_one_thread_does() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2");
        let ck = crate::model::Checkpoint::load_dir(&dir, &candle_core::Device::Cpu).unwrap();
        let prompt = ck.tokenizer.encode("Mr. Darcy looked at Elizabeth and said", false).unwrap().get_ids().to_vec();
        let n_positions = ck.model.config.n_positions;
        let mut layers = std::collections::HashSet::new();
        for threshold in [0.05, 0.1, 0.15, 0.2, 0.3, 1.0] {
            for max_new_tokens in [1, 5, decoder::REDUCED_HEAD_MIN_TOKENS + 8, n_positions] {
                let opts = EarlyExitOptions {
                    threshold,
                    measure: ExitMeasure::MaxProb,
                    max_new_tokens,
                    sampling: Sampling::Greedy,
                    eos: None,
                    pipelined: false,
                };
                let serial = generate_early_exit(&ck.model, &prompt, &opts, |_, _| ControlFlow::Continue(())).unwrap();
                layers.extend(serial.exit_layers.iter().copied());
                for _ in 0..3 {
                    let opts = EarlyExitOptions { pipelined: true, ..opts.clone() };
                    let mut seen = Vec::new();
                    let piped = generate_early_exit(&ck.model, &prompt, &opts, |t, l| {
                        seen.push((t, l));
                        ControlFlow::Continue(())
                    })
                    .unwrap();
                    let at = format!("threshold {threshold}, {max_new_tokens} tokens");
                    assert_eq!(piped.ids, serial.ids, "{at}");
                    assert_eq!(piped.exit_layers, serial.exit_layers, "{at}");
                    assert_eq!(piped.stop, serial.stop, "{at}");
                    assert_eq!(seen, piped.ids.iter().copied().zip(piped.exit_layers.iter().copied()).collect::<Vec<_>>());
                }
            }
        }
        assert_eq!(layers.len(), ck.model.n_layer(), "tokens leave at every layer over the thresholds: {layers:?}");
        let base = EarlyExitOptions {
            threshold: 0.1,
            measure: ExitMeasure::MaxProb,
            max_new_tokens: 40,
            sampling: Sampling::Greedy,
            eos: None,
            pipelined: true,
        };
        let mut n = 0;
        let g = generate_early_exit(&ck.model, &prompt, &base, |_, _| {
            n += 1;
            if n == 7 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })
        .unwrap();
        assert_eq!((g.ids.len(), g.stop), (7, StopReason::Cancelled));
        // A callback that panics ends the generation with its panic: the checking thread is
        // told to stop, not left spinning.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            generate_early_exit(&ck.model, &prompt, &base, |_, _| panic!("the callback gives up"))
        }));
        assert!(r.is_err());
        let sampled = EarlyExitOptions { sampling: Sampling::TopP { p: 0.9, temperature: 1.0, seed: 1 }, ..base.clone() };
        assert!(generate_early_exit(&ck.model, &prompt, &sampled, |_, _| ControlFlow::Continue(())).is_err());
        let saturation = EarlyExitOptions { measure: ExitMeasure::Saturation, threshold: 0.9, ..base };
        assert!(generate_early_exit(&ck.model, &prompt, &saturation, |_, _| ControlFlow::Continue(())).is_err());
    }

    /// The same with a wide classifier large enough for greedy tokens to come through its
    /// 8-bit copy (random weights, GPT-2's shape at a smaller size): a token that leaves by
    /// saturation, or reaches the last layer, runs only that classifier; max-prob checks
    /// are decided through the copy.
    #[test]
    fn engine_and_tensor_paths_agree_through_a_wide_int8_head() {
        let model = crate::model::Gpt2::random(crate::model::Gpt2Config::new(3, 512, 8, 8192, 96), 5, &candle_core::Device::Cpu).unwrap();
        let prompt: Vec<u32> = (0..6).map(|i| (i * 919 + 17) % 8192).collect();
        let (mut layers, mut max_prob_early) = (std::collections::HashSet::new(), false);
        let cases = [0.3, 0.6, 0.9, 0.99]
            .map(|t| (ExitMeasure::Saturation, t))
            .into_iter()
            .chain([0.002, 0.01, 0.3].map(|t| (ExitMeasure::MaxProb, t)));
        for (measure, threshold) in cases {
            let opts = EarlyExitOptions {
                threshold,
                measure,
                max_new_tokens: decoder::REDUCED_HEAD_MIN_TOKENS + 8,
                sampling: Sampling::Greedy,
                eos: None,
                pipelined: false,
            };
            let a = decoder::with_cpu_model(&model, |m| run_cpu(m, &prompt, &opts, |_, _| ControlFlow::Continue(()))).unwrap();
            let b = run_tensor(&model, &prompt, &opts, |_, _| ControlFlow::Continue(())).unwrap();
            assert_eq!(a.ids, b.ids, "{measure:?} {threshold}");
            assert_eq!(a.exit_layers, b.exit_layers, "{measure:?} {threshold}");
            match measure {
                ExitMeasure::Saturation => layers.extend(a.exit_layers.iter().skip(1).copied()),
                ExitMeasure::MaxProb => max_prob_early |= a.exit_layers.iter().skip(1).any(|&l| l < 3),
            }
        }
        assert!(layers.len() > 1, "tokens leave early and late over the thresholds: {layers:?}");
        assert!(max_prob_early, "some token leaves early by max-prob");
    }
}
