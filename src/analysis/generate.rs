//! Generation that exits at any layer: blocks `1..=l`, then the shared classifier
//! `lm_head(ln_f(h^l))`, with a KV cache (per-token early exit: [`super::early_exit`]).

use super::sampling::{LogitsSampler, Strategy};
use crate::model::decoder::{self, CpuModel, Decoder};
use crate::model::{Gpt2, KvCache};
use anyhow::{Result, bail};
use candle_core::Tensor;
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
    /// Temperature when none is given.
    pub const DEFAULT_TEMPERATURE: f64 = 1.0;

    /// Nucleus sampling with `p`, the temperature and seed where given, else 1 and 0.
    pub fn top_p(p: f64, temperature: Option<f64>, seed: Option<u64>) -> Self {
        Sampling::TopP { p, temperature: temperature.unwrap_or(Self::DEFAULT_TEMPERATURE), seed: seed.unwrap_or(0) }
    }

    pub(crate) fn processor(&self) -> LogitsSampler {
        match *self {
            Sampling::Greedy => LogitsSampler::new(0, Strategy::ArgMax),
            Sampling::TopP { p, temperature, seed } => LogitsSampler::new(seed, Strategy::TopP { p, temperature }),
        }
    }

    /// Whether a generation of `max_new_tokens` finds its tokens with
    /// [`Decoder::greedy_token`](crate::model::decoder::Decoder::greedy_token) — through the
    /// classifier's 8-bit copy where it has one, the same tokens as the argmax of every
    /// logit — rather than from the logits: greedy, and long enough to repay the copy.
    pub fn greedy_tokens(&self, max_new_tokens: usize) -> bool {
        matches!(self, Sampling::Greedy) && max_new_tokens >= decoder::REDUCED_HEAD_MIN_TOKENS
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
/// the speculative decoder compares with), sampling through [`LogitsSampler`].
pub(crate) struct TokenPicker {
    proc: Option<LogitsSampler>,
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
    let greedy_tokens = opts.sampling.greedy_tokens(opts.max_new_tokens);
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
        let row = &x[x.len() - m.d..];
        let next = if greedy_tokens {
            dec.greedy_token(row)
        } else {
            dec.logits(row, &mut logits);
            picker.pick(&logits)?
        };
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

/// [`generate`] with candle tensors: what runs on devices the CPU engine does not cover, and
/// the path the engine is benchmarked against (`alignscope bench --what decode`).
pub fn generate_tensor(
    model: &Gpt2,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<Generation> {
    check_prompt(model, prompt)?;
    let l = opts.exit_layer;
    if l == 0 || l > model.n_layer() {
        bail!("exit layer {l} is out of range: choose 1..={}", model.n_layer())
    }
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
