//! Generation that exits at any layer: blocks `1..=l`, then the shared classifier
//! `lm_head(ln_f(h^l))`, with a KV cache. Also per-token early exit by confidence.

use crate::model::decoder::{self, CpuModel, Decoder};
use crate::model::{Gpt2, KvCache};
use anyhow::{Result, bail};
use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling as CandleSampling};
use serde::Serialize;
use std::ops::ControlFlow;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum Sampling {
    Greedy,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches `p`.
    TopP {
        p: f64,
        temperature: f64,
        seed: u64,
    },
}

impl Sampling {
    pub(crate) fn processor(&self) -> LogitsProcessor {
        match *self {
            Sampling::Greedy => LogitsProcessor::from_sampling(0, CandleSampling::ArgMax),
            Sampling::TopP { p, temperature, seed } => LogitsProcessor::from_sampling(seed, CandleSampling::TopP { p, temperature }),
        }
    }

    pub fn validate(&self) -> Result<()> {
        if let Sampling::TopP { p, temperature, .. } = *self {
            if !(p > 0.0 && p <= 1.0) {
                bail!("--top-p must be in (0, 1], got {p}")
            }
            if !(temperature > 0.0 && temperature.is_finite()) {
                bail!("--temperature must be positive, got {temperature}")
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub exit_layer: usize,
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Stop when this token is produced (it is kept in the output).
    pub eos: Option<u32>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    MaxTokens,
    EndOfText,
    /// The model's context (n_positions) is full.
    ContextFull,
    Cancelled,
}

#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub exit_layer: usize,
    pub ids: Vec<u32>,
    pub stop: StopReason,
}

pub(crate) fn check_prompt(model: &Gpt2, prompt: &[u32]) -> Result<()> {
    if prompt.is_empty() {
        bail!("the prompt is empty")
    }
    if prompt.len() > model.config.n_positions {
        bail!("the prompt is {} tokens long but the model's context is {} tokens", prompt.len(), model.config.n_positions)
    }
    Ok(())
}

/// Generates from `prompt`, exiting at `opts.exit_layer`. `on_token` sees each new token as
/// it is produced and may cancel.
pub fn generate(model: &Gpt2, prompt: &[u32], opts: &GenerateOptions, on_token: impl FnMut(u32) -> ControlFlow<()>) -> Result<Generation> {
    check_prompt(model, prompt)?;
    opts.sampling.validate()?;
    let l = opts.exit_layer;
    if l == 0 || l > model.n_layer() {
        bail!("exit layer {l} is out of range: choose 1..={}", model.n_layer())
    }
    if decoder::supported(model) {
        decoder::with_cpu_model(model, |m| generate_cpu(m, prompt, opts, on_token))
    } else {
        generate_tensor(model, prompt, opts, on_token)
    }
}

/// The next token from a row of logits: greedy is [`decoder::argmax`] (the same function
/// the speculative decoder compares with), sampling goes through candle's processor.
pub(crate) struct TokenPicker {
    proc: Option<LogitsProcessor>,
}

impl TokenPicker {
    pub(crate) fn new(sampling: &Sampling) -> Self {
        Self { proc: matches!(sampling, Sampling::TopP { .. }).then(|| sampling.processor()) }
    }

    pub(crate) fn pick(&mut self, logits: &[f32]) -> Result<u32> {
        match &mut self.proc {
            None => Ok(decoder::argmax(logits)),
            Some(p) => Ok(p.sample(&Tensor::from_slice(logits, logits.len(), &candle_core::Device::Cpu)?)?),
        }
    }
}

/// [`generate`] on the CPU engine: the prompt in one pass, then one row per token.
fn generate_cpu(
    m: &CpuModel,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<Generation> {
    let l = opts.exit_layer;
    let mut dec = Decoder::new(m);
    let mut picker = TokenPicker::new(&opts.sampling);
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    let mut pos = 0;
    let mut logits = Vec::new();
    let mut stop = StopReason::MaxTokens;
    while out.len() < opts.max_new_tokens {
        if pos + input.len() > m.n_positions {
            stop = StopReason::ContextFull;
            break;
        }
        let mut x = dec.embed(&input, pos)?;
        dec.blocks(0, l, &mut x, pos)?;
        pos += input.len();
        dec.logits(&x[x.len() - m.d..], &mut logits);
        let next = picker.pick(&logits)?;
        out.push(next);
        if on_token(next).is_break() {
            stop = StopReason::Cancelled;
            break;
        }
        if Some(next) == opts.eos {
            stop = StopReason::EndOfText;
            break;
        }
        input = vec![next];
    }
    Ok(Generation { exit_layer: l, ids: out, stop })
}

/// [`generate`] with candle tensors, for devices the CPU engine does not cover.
fn generate_tensor(
    model: &Gpt2,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<Generation> {
    let l = opts.exit_layer;
    let mut proc = opts.sampling.processor();
    let mut cache = KvCache::new(model.n_layer());
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    let mut stop = StopReason::MaxTokens;
    while out.len() < opts.max_new_tokens {
        if cache.len() + input.len() > model.config.n_positions {
            stop = StopReason::ContextFull;
            break;
        }
        let ids = Tensor::from_vec(input.clone(), (1, input.len()), model.device())?;
        let h = model.forward_cached(&ids, &mut cache, l)?;
        let last = h.narrow(1, input.len() - 1, 1)?.squeeze(1)?; // [1, d]
        let logits = model.head(&last)?.squeeze(0)?;
        let next = proc.sample(&logits)?;
        out.push(next);
        if on_token(next).is_break() {
            stop = StopReason::Cancelled;
            break;
        }
        if Some(next) == opts.eos {
            stop = StopReason::EndOfText;
            break;
        }
        input = vec![next];
    }
    Ok(Generation { exit_layer: l, ids: out, stop })
}

/// Per-token early exit: each new token leaves at the first layer whose shared-classifier
/// confidence (max softmax probability) reaches `threshold`, or at the last layer.
#[derive(Debug, Clone, Serialize)]
pub struct EarlyExitGeneration {
    pub ids: Vec<u32>,
    /// Exit layer of each generated token.
    pub exit_layers: Vec<usize>,
    /// `sum L*m_i / sum i*m_i` over exit counts `m_i`: the speedup over running all layers.
    pub speedup: f64,
    pub stop: StopReason,
}

/// Speedup of exiting at the given layers instead of always at layer `n_layer`.
pub fn exit_speedup(exit_layers: &[usize], n_layer: usize) -> f64 {
    let used: usize = exit_layers.iter().sum();
    if used == 0 { 1.0 } else { (n_layer * exit_layers.len()) as f64 / used as f64 }
}

/// Generates with per-token early exit. Blocks above a token's exit layer still need that
/// position's keys and values for later tokens: they are computed from the exit layer's
/// hidden state (state copying, as in CALM), which costs only the k/v projection.
pub fn generate_early_exit(
    model: &Gpt2,
    prompt: &[u32],
    threshold: f64,
    max_new_tokens: usize,
    sampling: Sampling,
    eos: Option<u32>,
    mut on_token: impl FnMut(u32, usize) -> ControlFlow<()>,
) -> Result<EarlyExitGeneration> {
    check_prompt(model, prompt)?;
    sampling.validate()?;
    let n_layer = model.n_layer();
    let mut proc = sampling.processor();
    let mut cache = KvCache::new(n_layer);
    // The prompt runs through every layer.
    let ids = Tensor::from_vec(prompt.to_vec(), (1, prompt.len()), model.device())?;
    let mut h = model.forward_cached(&ids, &mut cache, n_layer)?;
    let mut ids_out = Vec::new();
    let mut exits = Vec::new();
    let mut stop = StopReason::MaxTokens;
    let mut exit_layer = n_layer;
    loop {
        let last = h.narrow(1, h.dim(1)? - 1, 1)?.squeeze(1)?;
        let logits = model.head(&last)?.squeeze(0)?;
        let next = proc.sample(&logits)?;
        ids_out.push(next);
        exits.push(exit_layer);
        if on_token(next, exit_layer).is_break() {
            stop = StopReason::Cancelled;
            break;
        }
        if Some(next) == eos {
            stop = StopReason::EndOfText;
            break;
        }
        if ids_out.len() >= max_new_tokens {
            break;
        }
        if cache.len() + 1 > model.config.n_positions {
            stop = StopReason::ContextFull;
            break;
        }
        // Run the new token layer by layer until the classifier is confident.
        let ids = Tensor::from_vec(vec![next], (1, 1), model.device())?;
        let offset = cache.len();
        let mut x = model.embed(&ids, offset)?;
        exit_layer = n_layer;
        for l in 1..=n_layer {
            x = model.block_step(l - 1, &x, &mut cache)?;
            if l < n_layer {
                let conf = max_prob(&model.head(&x.squeeze(1)?)?.squeeze(0)?)?;
                if conf >= threshold {
                    exit_layer = l;
                    for j in l..n_layer {
                        model.fill_kv(j, &x, &mut cache)?;
                    }
                    break;
                }
            }
        }
        h = x;
    }
    let speedup = exit_speedup(&exits, n_layer);
    Ok(EarlyExitGeneration { ids: ids_out, exit_layers: exits, speedup, stop })
}

fn max_prob(logits: &Tensor) -> Result<f64> {
    let v: Vec<f32> = logits.to_vec1()?;
    let p = super::lens::softmax(&v);
    Ok(p.into_iter().fold(0.0, f64::max))
}
