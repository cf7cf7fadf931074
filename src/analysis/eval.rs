//! Per-layer evaluation over a text: the shared classifier's cross-entropy, perplexity and
//! next-token accuracy at every layer, plus each layer's COS and CKA with the last layer.

use super::similarity::StreamingCka;
use crate::model::Gpt2;
use anyhow::{Result, bail};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;

#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Tokens per chunk.
    pub ctx: usize,
    /// Evaluate at most this many chunks.
    pub max_chunks: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalReport {
    pub layers: usize,
    /// Number of predicted tokens (each chunk of `ctx` tokens predicts `ctx - 1`).
    pub tokens: usize,
    pub chunks: usize,
    pub ctx: usize,
    /// Per layer 0..=L: mean cross-entropy (nats), perplexity, top-1 accuracy.
    pub ce: Vec<f64>,
    pub ppl: Vec<f64>,
    pub acc: Vec<f64>,
    /// Per layer: centered COS and linear CKA with the last layer, over all positions of
    /// the evaluated chunks (`None` where undefined: features that do not vary).
    pub cos_last: Vec<Option<f64>>,
    pub cka_last: Vec<Option<f64>>,
}

impl EvalReport {
    /// The shallowest layer whose accuracy reaches `frac` of the best accuracy over layers.
    pub fn min_depth_reaching(&self, frac: f64) -> Option<usize> {
        let best = self.acc.iter().copied().fold(0.0, f64::max);
        if best <= 0.0 {
            return None;
        }
        (1..self.acc.len()).find(|&l| self.acc[l] >= frac * best)
    }
}

/// The chunks of `ids` that a pass over a text runs ([`chunk_ranges`]), after checking that
/// the model can take them: `ctx` in 2..=its context, every id in its vocabulary, and at
/// least one chunk (`what` names the pass in the error, e.g. "evaluate").
pub fn checked_chunks(model: &Gpt2, ids: &[u32], ctx: usize, max_chunks: Option<usize>, what: &str) -> Result<Vec<std::ops::Range<usize>>> {
    if ctx < 2 {
        bail!("--ctx must be at least 2 tokens")
    }
    if ctx > model.config.n_positions {
        bail!("--ctx {ctx} is longer than the model's context of {} tokens", model.config.n_positions)
    }
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= model.config.vocab_size) {
        bail!("token id {bad} is outside the model's vocabulary of {}", model.config.vocab_size)
    }
    if max_chunks == Some(0) {
        bail!("--max-chunks 0 leaves nothing to {what}")
    }
    let ranges = chunk_ranges(ids.len(), ctx, max_chunks);
    if ranges.is_empty() {
        bail!("the text has fewer than 2 tokens: nothing to {what}")
    }
    Ok(ranges)
}

/// Consecutive non-overlapping chunks of `ctx` tokens from the start. A text shorter than
/// one chunk (but with at least two tokens) is evaluated as a single shorter chunk.
pub fn chunk_ranges(n_tokens: usize, ctx: usize, max_chunks: Option<usize>) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<_> = (0..n_tokens / ctx).map(|i| i * ctx..(i + 1) * ctx).collect();
    if out.is_empty() && n_tokens >= 2 {
        out.push(0..n_tokens);
    }
    if let Some(m) = max_chunks {
        out.truncate(m);
    }
    out
}

/// Sum of cross-entropies and number of correct top-1 predictions for rows of logits.
fn ce_and_hits(logits: &[f32], vocab: usize, targets: &[(usize, u32)]) -> (f64, usize) {
    let per_row: Vec<(f64, usize)> = targets
        .par_iter()
        .map(|&(row, target)| {
            let r = &logits[row * vocab..(row + 1) * vocab];
            let (mut best, mut arg) = (f32::NEG_INFINITY, 0usize);
            for (i, &x) in r.iter().enumerate() {
                if x > best {
                    best = x;
                    arg = i;
                }
            }
            let sum: f64 = r.iter().map(|&x| ((x - best) as f64).exp()).sum();
            let ce = sum.ln() + best as f64 - r[target as usize] as f64;
            (ce, (arg == target as usize) as usize)
        })
        .collect();
    // Summed in order: the same text gives the same numbers however rayon splits the work.
    per_row.iter().fold((0.0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// [`ce_and_hits`] of a logits tensor `[.., vocab]`. Off the CPU fast path (on a GPU) it is
/// computed where the logits are, in f32, and only a value per predicted row comes back:
/// one batch's logits are hundreds of MB at GPT-2's vocabulary.
fn ce_and_hits_of(logits: &Tensor, vocab: usize, targets: &[(usize, u32)]) -> Result<(f64, usize)> {
    if crate::ops::cpu_fast_path(logits.device()) {
        return Ok(ce_and_hits(&logits.flatten_all()?.to_vec1::<f32>()?, vocab, targets));
    }
    let device = logits.device();
    let n = targets.len();
    let rows = Tensor::from_vec(targets.iter().map(|&(r, _)| r as u32).collect::<Vec<_>>(), n, device)?;
    let want = Tensor::from_vec(targets.iter().map(|&(_, t)| t).collect::<Vec<_>>(), (n, 1), device)?;
    let x = logits.reshape(((), vocab))?.index_select(&rows, 0)?;
    let max = x.max_keepdim(1)?;
    let lse = (x.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?.log()? + max)?;
    let ce: Vec<f32> = (lse - x.gather(&want, 1)?)?.flatten_all()?.to_vec1()?;
    let best: Vec<u32> = x.argmax_keepdim(1)?.flatten_all()?.to_vec1()?;
    // Summed in order on the host, in f64, like the CPU path.
    let ce_sum = ce.iter().map(|&c| c as f64).sum();
    let hits = best.iter().zip(targets).filter(|(b, t)| **b == t.1).count();
    Ok((ce_sum, hits))
}

/// Chunk-centered moments of one layer's features `x` (`[n, d]`): its mean, `Xc^T Xc` and
/// the co-moment `Xc^T Rc` with the reference features `r` (both `d x d`, row-major).
struct Moments {
    mean: Vec<f64>,
    c_self: Vec<f64>,
    c_ref: Vec<f64>,
}

fn moments(x: &Tensor, r: &Tensor) -> Result<Moments> {
    let mean = x.mean_keepdim(0)?;
    let xc = x.broadcast_sub(&mean)?;
    let rc = r.broadcast_sub(&r.mean_keepdim(0)?)?;
    let xt = xc.t()?.contiguous()?;
    let c_self = xt.matmul(&xc)?.flatten_all()?.to_vec1::<f32>()?;
    let c_ref = xt.matmul(&rc)?.flatten_all()?.to_vec1::<f32>()?;
    let f = |v: Vec<f32>| v.into_iter().map(|x| x as f64).collect::<Vec<f64>>();
    Ok(Moments { mean: f(mean.flatten_all()?.to_vec1()?), c_self: f(c_self), c_ref: f(c_ref) })
}

/// Evaluates `model` on the token sequence `ids`. `progress(done, total)` is called after
/// each batch of chunks and may cancel the evaluation.
pub fn evaluate(
    model: &Gpt2,
    ids: &[u32],
    opts: &EvalOptions,
    mut progress: impl FnMut(usize, usize) -> ControlFlow<()>,
) -> Result<EvalReport> {
    let ranges = checked_chunks(model, ids, opts.ctx, opts.max_chunks, "evaluate")?;
    let n_layer = model.n_layer();
    let (d, vocab) = (model.config.n_embd, model.config.vocab_size);
    // Batch chunks so that one layer's logits stay under ~128 MB, and so that progress
    // comes in eight steps or more (a progress bar that jumps from 0 to done shows nothing).
    let t_chunk = ranges[0].len();
    let batch = (32_000_000 / (t_chunk * vocab)).clamp(1, 64).min(ranges.len().div_ceil(8));
    let mut ce_sum = vec![0.0f64; n_layer + 1];
    let mut hits = vec![0usize; n_layer + 1];
    let mut n_pred = 0usize;
    let mut cka = StreamingCka::new(n_layer + 1, d, n_layer);
    // Centered COS needs the global means first; keep the features for a second pass while
    // they fit in ~1 GB, recompute the rest.
    let budget = 250_000_000usize;
    let mut kept: Vec<Option<Vec<Tensor>>> = Vec::new();
    let mut kept_floats = 0usize;
    let batches: Vec<&[std::ops::Range<usize>]> = ranges.chunks(batch).collect();
    let run = |rs: &[std::ops::Range<usize>]| -> Result<Vec<Tensor>> {
        let flat: Vec<u32> = rs.iter().flat_map(|r| ids[r.clone()].iter().copied()).collect();
        let x = Tensor::from_vec(flat, (rs.len(), rs[0].len()), model.device())?;
        model.residuals(&x)
    };
    let mut done = 0;
    for rs in &batches {
        let t = rs[0].len();
        let hs = run(rs)?;
        let targets: Vec<(usize, u32)> =
            rs.iter().enumerate().flat_map(|(b, r)| (0..t - 1).map(move |p| (b * t + p, ids[r.start + p + 1]))).collect();
        n_pred += targets.len();
        let feats: Vec<Tensor> = hs.iter().map(|h| h.reshape((rs.len() * t, d))).collect::<candle_core::Result<_>>()?;
        let reference = &feats[n_layer];
        let (mut means, mut c_self, mut c_ref) = (vec![], vec![], vec![]);
        for (l, h) in hs.iter().enumerate() {
            let (ce, hit) = ce_and_hits_of(&model.head(h)?, vocab, &targets)?;
            ce_sum[l] += ce;
            hits[l] += hit;
            let m = moments(&feats[l], reference)?;
            means.push(m.mean);
            c_self.push(m.c_self);
            c_ref.push(m.c_ref);
        }
        cka.add_chunk(rs.len() * t, &means, &c_self, &c_ref);
        let floats = feats.len() * rs.len() * t * d;
        if kept_floats + floats <= budget {
            kept_floats += floats;
            kept.push(Some(feats.into_iter().map(|f| f.to_device(&Device::Cpu)).collect::<candle_core::Result<_>>()?));
        } else {
            kept.push(None);
        }
        done += rs.len();
        if progress(done, ranges.len()).is_break() {
            bail!("evaluation cancelled")
        }
    }
    // Second pass: centered COS of each layer with the last, around the global means.
    let means: Vec<Tensor> = cka
        .means()
        .iter()
        .map(|m| Tensor::from_vec(m.iter().map(|&x| x as f32).collect::<Vec<_>>(), (1, d), &Device::Cpu))
        .collect::<candle_core::Result<_>>()?;
    // Per layer: the sum of the defined per-sample cosines and how many there are (a sample
    // at the mean has no centered direction, and no cosine).
    let mut cos_sum = vec![0.0f64; n_layer + 1];
    let mut cos_count = vec![0usize; n_layer + 1];
    for (rs, k) in batches.iter().zip(kept) {
        let feats = match k {
            Some(f) => f,
            None => run(rs)?
                .iter()
                .map(|h| h.reshape((rs.len() * rs[0].len(), d))?.to_device(&Device::Cpu))
                .collect::<candle_core::Result<_>>()?,
        };
        let centered: Vec<Tensor> = feats.iter().zip(&means).map(|(f, m)| f.broadcast_sub(m)).collect::<candle_core::Result<_>>()?;
        let norms = |x: &Tensor| -> candle_core::Result<Vec<f32>> { x.sqr()?.sum(1)?.sqrt()?.to_vec1::<f32>() };
        let last = &centered[n_layer];
        let last_norms = norms(last)?;
        for (l, c) in centered.iter().enumerate() {
            let dots = (c * last)?.sum(1)?.to_vec1::<f32>()?;
            for ((dot, n), nl) in dots.iter().zip(norms(c)?).zip(&last_norms) {
                if n > 0.0 && *nl > 0.0 {
                    cos_sum[l] += (dot / (n * nl)) as f64;
                    cos_count[l] += 1;
                }
            }
        }
    }
    let ce: Vec<f64> = ce_sum.iter().map(|s| s / n_pred as f64).collect();
    Ok(EvalReport {
        layers: n_layer,
        tokens: n_pred,
        chunks: ranges.len(),
        ctx: opts.ctx,
        ppl: ce.iter().map(|c| c.exp()).collect(),
        acc: hits.iter().map(|&h| h as f64 / n_pred as f64).collect(),
        ce,
        cos_last: cos_sum.iter().zip(&cos_count).map(|(s, &n)| (n > 0).then(|| s / n as f64)).collect(),
        cka_last: cka.cka(),
    })
}

/// Reads a UTF-8 text file for evaluation or training; a clear error otherwise.
pub fn read_text(path: &std::path::Path) -> Result<String> {
    crate::corpus::read_text(path)
}
