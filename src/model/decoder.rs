//! A lean CPU engine for incremental decoding: the same GPT-2 as [`Gpt2`], computed straight
//! on the checkpoint's f32 weights (borrowed from candle's storage, no copy), with a KV
//! cache grown in place.
//!
//! Batch-1 decoding of small models is dominated by per-token overheads, not arithmetic:
//! the Austen models do ~3M multiply-adds per token, which candle spreads over a few hundred
//! tensor ops, each with its own allocation and dispatch, and the tensor KV cache is
//! concatenated anew at every step. Here a token costs one pass over the weights.
//!
//! Every computation is per row: a row's result does not depend on how many rows are
//! processed together, nor on how the work is split among threads (each output of a linear
//! layer sums its inputs in an order fixed by the layer's shape; the classifier splits its
//! outputs; attention runs row by row). So verifying K drafted tokens in one batched pass gives bit for bit what decoding
//! them one at a time gives — what makes self-speculative decoding lossless by construction.

use super::config::Activation;
use super::gpt2::Gpt2;
use crate::kernels::HeadCache;
use anyhow::{Result, bail};
use candle_core::{CpuStorage, Layout, Storage, StorageRef, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// Linear layers and the classifier with at least this many weights are split among the
/// threads; smaller ones (the Austen blocks: 16k-65k weights) run on one core, where a
/// rayon fork-join would cost more than the arithmetic. GPT-2-124M's attention projection
/// (590k weights) is above it: on one core it read its weights at 10-12 GB/s, split 16-17
/// (1.7 instead of 2.3-2.8 ms per token over three alternating pairs).
const PAR_MIN_WEIGHTS: usize = 1 << 18;
/// Attention is split among threads (by row and head) above this many multiply-adds: from
/// the 43rd position on when decoding GPT-2-124M one row at a time (where it took 7% of a
/// step at 128 positions on one thread); on the Austen models only for passes over several
/// rows (a verification of 4 drafts from the 47th position on), never for a single row.
const PAR_MIN_ATTENTION: usize = 1 << 15;

/// Whether the engine can run this model: f32 weights on the CPU, and the CPU fast paths
/// not switched off ([`crate::ops::with_portable_ops`] makes the callers take the tensor
/// path that other devices run).
pub fn supported(model: &Gpt2) -> bool {
    crate::ops::cpu_fast_path(model.device()) && model.wte.dtype() == candle_core::DType::F32
}

/// Runs `f` with the model's weights borrowed as plain slices. The borrow holds candle's
/// read locks on the weight storage for the duration of `f`.
pub fn with_cpu_model<R>(model: &Gpt2, f: impl FnOnce(&CpuModel) -> Result<R>) -> Result<R> {
    if !supported(model) {
        bail!("the CPU decoder needs f32 weights on the CPU (this model is on {:?})", model.device().location())
    }
    let mut tensors: Vec<&Tensor> = vec![&model.wte, &model.wpe];
    for b in &model.blocks {
        tensors.extend([
            &b.ln_1.weight,
            &b.ln_1.bias,
            &b.attn.c_attn.weight,
            &b.attn.c_attn.bias,
            &b.attn.c_proj.weight,
            &b.attn.c_proj.bias,
            &b.ln_2.weight,
            &b.ln_2.bias,
            &b.mlp.c_fc.weight,
            &b.mlp.c_fc.bias,
            &b.mlp.c_proj.weight,
            &b.mlp.c_proj.bias,
        ]);
    }
    tensors.extend([&model.ln_f.weight, &model.ln_f.bias]);
    // A tied classifier is `wte` itself: its lock is taken once (parking_lot's read lock is
    // not reentrant when a writer waits).
    if let Some(h) = &model.lm_head {
        tensors.push(h);
    }
    let guards: Vec<(StorageRef<'_>, &Layout)> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(guards.len());
    for (g, l) in &guards {
        let data = match &**g {
            Storage::Cpu(CpuStorage::F32(v)) => v.as_slice(),
            _ => bail!("the CPU decoder needs f32 weights on the CPU"),
        };
        match l.contiguous_offsets() {
            Some((a, b)) => slices.push(&data[a..b]),
            None => bail!("the CPU decoder needs contiguous weights"),
        }
    }
    let cfg = &model.config;
    let mut it = slices.into_iter();
    let mut next = || it.next().expect("one slice per tensor");
    let wte = next();
    let wpe = next();
    let mut blocks = Vec::with_capacity(cfg.n_layer);
    for b in &model.blocks {
        blocks.push(BlockWeights {
            ln_1: (next(), next()),
            attn: (next(), next()),
            attn_proj: (next(), next()),
            ln_2: (next(), next()),
            fc: (next(), next()),
            fc_proj: (next(), next()),
            scale: b.attn.scale as f32,
        });
    }
    let ln_f = (next(), next());
    let head = if model.lm_head.is_some() { next() } else { wte };
    let narrow = (cfg.n_embd <= SHORT_ROWS).then(|| NarrowHead::of(head, cfg.vocab_size, cfg.n_embd));
    let m = CpuModel {
        n_layer: cfg.n_layer,
        d: cfg.n_embd,
        n_head: cfg.n_head,
        inner: cfg.inner_dim(),
        vocab: cfg.vocab_size,
        n_positions: cfg.n_positions,
        eps: cfg.layer_norm_epsilon,
        activation: cfg.activation()?,
        wte,
        wpe,
        blocks,
        ln_f,
        head,
        narrow,
        wide_int8: OnceLock::new(),
        zeros: vec![0.0; cfg.vocab_size],
    };
    f(&m)
}

/// Up to this width, the classifier runs on a transposed copy of its matrix: with short
/// rows, summing each dot product's vector lanes costs as much as the products (~2.5x
/// slower on the Austen models), while the transposed product has no such reduction.
/// Copying the Austen head takes well under a millisecond per generation.
const SHORT_ROWS: usize = 256;

/// `[rows, cols]` row-major to `[cols, rows]`.
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    const B: usize = 32;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    t[c * rows + r] = w[r * cols + c];
                }
            }
        }
    }
    t
}

struct BlockWeights<'a> {
    ln_1: (&'a [f32], &'a [f32]),
    attn: (&'a [f32], &'a [f32]),
    attn_proj: (&'a [f32], &'a [f32]),
    ln_2: (&'a [f32], &'a [f32]),
    fc: (&'a [f32], &'a [f32]),
    fc_proj: (&'a [f32], &'a [f32]),
    scale: f32,
}

/// The model's weights as slices (see [`with_cpu_model`]).
pub struct CpuModel<'a> {
    pub n_layer: usize,
    pub d: usize,
    pub n_head: usize,
    pub inner: usize,
    pub vocab: usize,
    pub n_positions: usize,
    eps: f64,
    activation: Activation,
    wte: &'a [f32],
    wpe: &'a [f32],
    blocks: Vec<BlockWeights<'a>>,
    ln_f: (&'a [f32], &'a [f32]),
    head: &'a [f32],
    /// The classifier transposed and its 8-bit copy, for narrow models (see [`SHORT_ROWS`]).
    narrow: Option<Arc<NarrowHead>>,
    /// A wide classifier in 8 bits, made on its first greedy token or max-prob check (see
    /// [`uses_int8_head`]); `None` inside when it cannot be made. Narrow ones keep theirs
    /// in `narrow`.
    wide_int8: OnceLock<Option<Int8Head>>,
    zeros: Vec<f32>,
}

/// A narrow classifier's derived copies, made once per classifier and process rather than
/// per [`with_cpu_model`] call (each generation makes one): the transposed f32 weights
/// (1-2 ms to make for the Austen models' 2 MB) and the 8-bit copy (about 4 ms, 5 more for
/// its second plane), which a generation of a few dozen tokens would not repay.
struct NarrowHead {
    /// The classifier it was made from, `[vocab, d]`, to recognise it by its shape and bits.
    vocab: usize,
    head: Vec<f32>,
    /// `[d, vocab]`.
    head_t: Vec<f32>,
    /// The transposed classifier in 8 bits, made on the first greedy token or max-prob
    /// check of a narrow model whose head runs on one thread (see [`CpuModel::greedy_token`]).
    int8: OnceLock<Option<Int8Head>>,
}

/// The narrow classifiers seen lately (the explorer's two models, and a few more).
static NARROW_HEADS: Mutex<Vec<Arc<NarrowHead>>> = Mutex::new(Vec::new());

impl NarrowHead {
    /// The copies of `head` (`[vocab, d]`): those made before for a classifier of the same
    /// shape and bits, else new ones (the least recently used of five dropped).
    fn of(head: &[f32], vocab: usize, d: usize) -> Arc<Self> {
        let mut seen = NARROW_HEADS.lock().unwrap_or_else(|e| e.into_inner());
        let same = |h: &Arc<Self>| {
            h.vocab == vocab && h.head.len() == head.len() && h.head.iter().zip(head).all(|(a, b)| a.to_bits() == b.to_bits())
        };
        if let Some(i) = seen.iter().position(same) {
            let h = seen.remove(i);
            seen.push(h.clone());
            return h;
        }
        let h = Arc::new(Self { vocab, head: head.to_vec(), head_t: transpose(head, vocab, d), int8: OnceLock::new() });
        if seen.len() >= 5 {
            seen.remove(0);
        }
        seen.push(h.clone());
        h
    }
}

/// Wide classifiers with at least this many weights pick greedy tokens through an 8-bit
/// copy (GPT-2-124M: 38.6M), shared among the threads.
const WIDE_INT8_MIN_WEIGHTS: usize = 1 << 22;

/// Greedy generations of at least this many tokens are worth the reduced copy of the
/// classifier: the 8-bit one takes 20-60 ms to make for GPT-2-124M here and saves about
/// 5 ms per token.
pub const REDUCED_HEAD_MIN_TOKENS: usize = 32;

/// Whether greedy tokens and max-prob checks of a `[vocab, d]` classifier are found through
/// an 8-bit copy ([`Int8Head`]). Narrow ones (one run transposed, see [`SHORT_ROWS`]) where
/// the head runs on one thread (the Austen models: beside the blocks, its 2 MB of f32
/// weights stream from the shared cache every token, 100-130 us of a 600-750 us decode
/// step here; the greedy token through the 8-bit copy took 64-76 us, in the same decode
/// loop). Wide ones from [`WIDE_INT8_MIN_WEIGHTS`], where the CPU has the integer
/// multiply-add (GPT-2-124M: the head read 154 MB of a 570 MB step; through the copy
/// 39 MB, 2.7 instead of 5.1-5.5 ms per token with the half-precision copy used before).
fn uses_int8_head(vocab: usize, d: usize) -> bool {
    match d <= SHORT_ROWS {
        true => !splits_linear(d, vocab),
        false => vocab * d >= WIDE_INT8_MIN_WEIGHTS && crate::kernels::i16_i8_cols_is_fast(),
    }
}

/// Bytes of the classifier a greedy token reads, for bandwidth figures: the 8-bit weights,
/// a scale and an error bound per token where [`CpuModel::greedy_token`] uses them (the few
/// candidates' f32 rows left out), else the f32 weights.
pub fn greedy_head_bytes(vocab: usize, d: usize) -> usize {
    if uses_int8_head(vocab, d) {
        vocab.div_ceil(crate::kernels::I8_BLOCK) * crate::kernels::I8_BLOCK * d.div_ceil(2) * 2 + vocab * (4 + 8 + 8)
    } else {
        vocab * d * 4
    }
}

/// An 8-bit copy of the classifier, with one scale per token, packed for
/// [`crate::kernels::i16_i8_cols`], and what each token's error bound is made of: what
/// [`bounded_argmax_i8`] needs to find the greedy token reading a quarter of the bytes.
struct Int8Head {
    /// `q[i, v] = round(w[v, i] / scale[v])`, packed by [`crate::kernels::pack_i8_pairs`].
    q: Vec<i8>,
    scale: Vec<f32>,
    /// Each token's error bound in two parts: per unit of the input's L1 norm, its largest
    /// rounding error `max_i |w_iv - scale_v q_iv|` plus the f32 rounding of its logit's sum;
    /// per unit of the input's 16-bit step, `scale_v sum_i |q_iv|` halved (rounding the input
    /// to its step moves each term by half a step at most).
    err: Vec<[f64; 2]>,
    /// The largest 16-bit input: the integer sums cannot overflow.
    qmax: f64,
    /// The second plane of a finer copy, made on the first max-prob check (see
    /// [`int8_bounds`]).
    fine: OnceLock<FinePlane>,
}

/// What is left of each weight after [`Int8Head`]'s first plane, in steps 254 times finer:
/// `w[v, i]` is `scale[v] (254 q[i, v] + r[i, v])` to within `err[v]`'s first part (`err` as
/// in [`Int8Head`]); `r` packed as `q`.
struct FinePlane {
    r: Vec<i8>,
    scale: Vec<f32>,
    err: Vec<[f64; 2]>,
}

/// Writes one token's 8-bit weights `q` (length `d`) into column `c` of its block in
/// [`crate::kernels::pack_i8_pairs`]'s layout (`out`: the block).
fn scatter_pairs(q: &[i8], c: usize, out: &mut [i8]) {
    use crate::kernels::I8_BLOCK;
    let mut pairs = q.chunks_exact(2);
    for (p, pair) in (&mut pairs).enumerate() {
        let o = (p * I8_BLOCK + c) * 2;
        out[o] = pair[0];
        out[o + 1] = pair[1];
    }
    if let [last] = pairs.remainder() {
        out[(q.len() / 2 * I8_BLOCK + c) * 2] = *last;
    }
}

/// An f32 sum of `d` products, in any order, is within `gamma` times the exact sum of the
/// products' magnitudes (`|x|_1 max|w|` at most): the logit's rounding, in the bounds of
/// [`Int8Head`] and [`FinePlane`].
fn logit_gamma(d: usize) -> f64 {
    let u = 2f64.powi(-24);
    (d + 1) as f64 * u / (1.0 - (d + 1) as f64 * u)
}

impl Int8Head {
    /// From the classifier's rows `head` (`[vocab, d]`), a block of
    /// [`crate::kernels::I8_BLOCK`] tokens per task. `None` where a weight is not finite.
    fn new(head: &[f32], d: usize, vocab: usize) -> Option<Self> {
        use crate::kernels::I8_BLOCK;
        let k2 = d.div_ceil(2);
        let blocks = vocab.div_ceil(I8_BLOCK);
        let gamma = logit_gamma(d);
        let mut packed = vec![0i8; blocks * k2 * I8_BLOCK * 2];
        let mut scale = vec![0f32; vocab];
        let mut err = vec![[0f64; 2]; vocab];
        let ok = packed
            .par_chunks_mut(k2 * I8_BLOCK * 2)
            .zip(scale.par_chunks_mut(I8_BLOCK))
            .zip(err.par_chunks_mut(I8_BLOCK))
            .enumerate()
            .map(|(b, ((out, scale), err))| {
                let mut q = vec![0i8; d];
                for (c, (s, e)) in scale.iter_mut().zip(err.iter_mut()).enumerate() {
                    let v = b * I8_BLOCK + c;
                    let row = &head[v * d..(v + 1) * d];
                    let Some(wmax) = crate::kernels::max_abs_finite(row) else {
                        return false;
                    };
                    *s = wmax / 127.0;
                    let [qerr, q_l1] = crate::kernels::quantize_i8(row, *s, &mut q);
                    scatter_pairs(&q, c, out);
                    *e = [qerr + gamma * wmax as f64, *s as f64 * q_l1 * (0.5 + 1e-9)];
                }
                true
            })
            .reduce(|| true, |a, b| a && b);
        if !ok {
            return None;
        }
        let qmax = (i32::MAX as usize / (127 * k2 * 2)).min(i16::MAX as usize) as f64;
        Some(Self { q: packed, scale, err, qmax, fine: OnceLock::new() })
    }

    /// The second plane, made from `head` (the classifier's rows, as this copy was made)
    /// on the first call, a block of tokens per task.
    fn fine(&self, head: &[f32]) -> &FinePlane {
        use crate::kernels::I8_BLOCK;
        self.fine.get_or_init(|| {
            let vocab = self.scale.len();
            let d = head.len() / vocab;
            let k2 = d.div_ceil(2);
            let gamma = logit_gamma(d);
            let scale: Vec<f32> = self.scale.iter().map(|&s| s / 254.0).collect();
            let mut r = vec![0i8; self.q.len()];
            let mut err = vec![[0f64; 2]; vocab];
            r.par_chunks_mut(k2 * I8_BLOCK * 2).zip(err.par_chunks_mut(I8_BLOCK)).enumerate().for_each(|(b, (out, err))| {
                let mut r = vec![0i8; d];
                for (c, e) in err.iter_mut().enumerate() {
                    let v = b * I8_BLOCK + c;
                    let row = &head[v * d..(v + 1) * d];
                    // The first plane's weights again, rounded as `new` rounded them, and what
                    // each leaves, in steps 254 times finer.
                    let [rerr, l1] = crate::kernels::quantize_i8_remainder(row, self.scale[v], scale[v], &mut r);
                    scatter_pairs(&r, c, out);
                    let wmax = crate::kernels::max_abs_finite(row).unwrap_or(f32::INFINITY) as f64;
                    let s = scale[v];
                    *e = [rerr + gamma * wmax, s as f64 * l1 * (0.5 + 1e-9)];
                }
            });
            FinePlane { r, scale, err }
        })
    }
}

/// The greedy token of the normed row `x`, as [`argmax`] picks it from [`CpuModel::head`]'s
/// logits (bit for bit the same logits, the first index on ties), reading the 8-bit copy for
/// all tokens and the f32 weights of the few candidates only (their exact logits: `logit`).
/// `None` where the input is not finite (the caller then computes every logit).
///
/// Why it is exact: `x` is rounded to 16-bit integers `r_i` in steps of `t` (`|x_i - t r_i|
/// <= t / 2`), and `sum_i r_i q_iv` is summed exactly in integers. With `s_v` the token's
/// scale, the estimate `a_v = s_v t sum_i r_i q_iv` is within `|x|_1 (max_i |w_iv - s_v q_iv|
/// + gamma_d max_i |w_iv|) + t s_v sum_i |q_iv| / 2` of the f32 logit `z_v` (the weights'
/// rounding to 8 bits, the input's to 16, the f32 rounding of the logit's sum; see
/// [`Int8Head::new`]), plus a floor for products that underflow and a margin for the f64
/// arithmetic of the bound itself. Every `v` whose upper end `a_v + e_v` lies below the
/// largest lower end has `z_v` below another token's logit, so the largest `z` and all its
/// ties lie among the rest, which are computed exactly, in the classifier's own summation
/// order ([`CpuModel::exact_logit`]).
fn bounded_argmax_i8(x: &[f32], int8: &Int8Head, logit: impl Fn(usize) -> f32) -> Option<u32> {
    let (bounds, lower) = int8_bounds(x, int8, None)?;
    exact_argmax(&bounds, lower, logit).map(|(v, _)| v)
}

/// Each token's logit for the normed row `x` as the 8-bit head bounds it (`[lower, upper]`,
/// see [`bounded_argmax_i8`]), and the largest lower end; with the second plane `fine` too
/// when given (twice the bytes, a bound about 250 times narrower where the weights'
/// rounding dominates it). `None` when `x` is not finite.
fn int8_bounds(x: &[f32], int8: &Int8Head, fine: Option<&FinePlane>) -> Option<(Vec<[f64; 2]>, f64)> {
    use crate::kernels::{I8_BLOCK, i16_i8_cols};
    let d = x.len();
    let vocab = int8.scale.len();
    let (mut l1, mut xmax) = (0f64, 0f64);
    for &v in x {
        l1 += (v as f64).abs();
        xmax = xmax.max((v as f64).abs());
    }
    if !l1.is_finite() {
        return None;
    }
    let step = xmax / int8.qmax;
    let mut r = vec![0i16; d.div_ceil(2) * 2];
    if step > 0.0 {
        for (r, &v) in r.iter_mut().zip(x) {
            *r = (v as f64 / step).round() as i16;
        }
    }
    // Each product that underflows in the f32 logit loses at most half the smallest
    // subnormal.
    let floor = (d + 1) as f64 * 2f64.powi(-149);
    let (scale, err) = fine.map_or((&int8.scale, &int8.err), |f| (&f.scale, &f.err));
    let mut bounds = vec![[0f64; 2]; vocab];
    // Tokens per task: all of them on one thread for narrow classifiers (see
    // `uses_int8_head`), a few tasks per thread for wide ones.
    let tasks = if d > SHORT_ROWS { rayon::current_num_threads().max(1) * 4 } else { 1 };
    let per = vocab.div_ceil(tasks).div_ceil(I8_BLOCK) * I8_BLOCK;
    let bytes = d.div_ceil(2) * 2;
    let task = |(t, out): (usize, &mut [[f64; 2]])| {
        let v0 = t * per;
        let n = out.len().div_ceil(I8_BLOCK) * I8_BLOCK;
        let mut sums = vec![0i32; n];
        i16_i8_cols(&r, &int8.q[v0 * bytes..(v0 + n) * bytes], &mut sums);
        let mut fine_sums = Vec::new();
        if let Some(fine) = fine {
            fine_sums.resize(n, 0);
            i16_i8_cols(&r, &fine.r[v0 * bytes..(v0 + n) * bytes], &mut fine_sums);
        }
        crate::kernels::bounded_estimates(&sums, &fine_sums, &scale[v0..], &err[v0..], [l1, step, floor], out)
    };
    let lower = if tasks == 1 {
        task((0, &mut bounds[..]))
    } else {
        bounds.par_chunks_mut(per).enumerate().map(task).reduce(|| f64::NEG_INFINITY, f64::max)
    };
    Some((bounds, lower))
}

/// The first token with the largest f32 logit (`logit`), and that logit, computed for the
/// tokens whose upper end reaches `lower` only; `None` when one of those logits is not
/// finite.
fn exact_argmax(bounds: &[[f64; 2]], lower: f64, logit: impl Fn(usize) -> f32) -> Option<(u32, f32)> {
    let mut best: Option<(u32, f32)> = None;
    for (v, b) in bounds.iter().enumerate() {
        if b[1] < lower {
            continue;
        }
        let z = logit(v);
        if !z.is_finite() {
            return None;
        }
        if best.is_none_or(|(_, b)| z > b) {
            best = Some((v as u32, z));
        }
    }
    best
}

/// What a reduced copy of the classifier tells of a row's largest softmax probability
/// against a threshold (see [`CpuModel::max_prob_check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxProbCheck {
    /// [`crate::kernels::max_prob`] of the f32 logits reaches the threshold; the greedy
    /// token (their [`argmax`]).
    Reaches(u32),
    /// It stays below the threshold.
    Below,
    /// The bound cannot tell (or this classifier has no reduced copy): compute the logits.
    Undecided,
}

/// Tokens whose logit may come within this of the largest get their exact logit in a
/// max-prob check: their terms of the softmax's sum weigh most, and the rest, each at most
/// `e^-4` of the largest, are bounded from the estimates.
const MAX_PROB_NEAR: f64 = 4.0;

/// Beyond this many tokens near the largest logit the check gives up (an almost flat
/// distribution: the logits are cheaper).
const MAX_PROB_NEAR_MAX: usize = 256;

/// [`CpuModel::max_prob_check`] from bounds on every logit (`bounds`, with `lower` the
/// largest lower end) and the exact f32 logit of any token (`logit`). The largest logit
/// `z*` and the greedy token are exact (as in [`exact_argmax`]). The softmax's sum `S =
/// sum_v exp(z_v - z*)` is bounded from every term's bounds first (at least 1: the term of
/// `z*`); where that does not decide and `refine` asks, again with the exact term of every
/// token whose upper end comes within [`MAX_PROB_NEAR`] of `z*`. `1 / S` then lies between
/// the bounds of the two sums, widened by 1e-4 for `exp`'s rounding (relative 1e-5 here at
/// most, arguments included; the sums are in f64) and by 1e-3 for the f32 arithmetic of
/// `max_prob` itself (in 16 lanes, its sum of up to 2^16 terms is within 3e-4 of exact), so
/// a decision is the one `max_prob(logits) >= threshold` would take.
fn max_prob_from_bounds(bounds: &[[f64; 2]], lower: f64, threshold: f64, refine: bool, logit: impl Fn(usize) -> f32) -> MaxProbCheck {
    if bounds.len() > 1 << 16 {
        return MaxProbCheck::Undecided;
    }
    let Some((token, zmax)) = exact_argmax(bounds, lower, &logit) else {
        return MaxProbCheck::Undecided;
    };
    let zmax = zmax as f64;
    let decide = |lo: f64, hi: f64| {
        let p_lo = (1.0 - 1e-3) / (hi * (1.0 + 1e-4));
        let p_hi = (1.0 + 1e-3) / (lo * (1.0 - 1e-4));
        if p_lo >= threshold {
            MaxProbCheck::Reaches(token)
        } else if p_hi < threshold {
            MaxProbCheck::Below
        } else {
            MaxProbCheck::Undecided
        }
    };
    // Every term from its bounds first: enough where the probability is far from the
    // threshold (flat distributions among them, with hundreds of tokens near the top).
    let (lo, hi) = crate::kernels::exp_bound_sums(bounds, zmax, f64::INFINITY);
    let first = decide(lo.max(1.0), hi);
    if first != MaxProbCheck::Undecided || !refine {
        return first;
    }
    let cut = zmax - MAX_PROB_NEAR;
    let (mut lo, mut hi) = crate::kernels::exp_bound_sums(bounds, zmax, cut);
    let mut near = 0;
    for (v, b) in bounds.iter().enumerate() {
        if b[1] < cut {
            continue;
        }
        near += 1;
        if near > MAX_PROB_NEAR_MAX {
            return MaxProbCheck::Undecided;
        }
        let z = logit(v);
        if !z.is_finite() {
            return MaxProbCheck::Undecided;
        }
        let t = crate::kernels::exp((z as f64 - zmax) as f32) as f64;
        lo += t;
        hi += t;
    }
    decide(lo, hi)
}

/// The f32 logit of token `v` as [`crate::kernels::classify_rows`] computes it from the
/// classifier's row (`head`: `[vocab, d]`).
fn row_logit(x: &[f32], head: &[f32], v: usize) -> f32 {
    let d = x.len();
    let mut z = [0f32];
    crate::kernels::classify_rows(x, d, &head[v * d..(v + 1) * d], &mut z, 1);
    z[0]
}

/// Rows of a split linear layer's weights summed into one partial result (see
/// [`linear_cols`]). Fixed, so that an output's sum has the same order however many rows
/// are computed and however many threads share them.
const K_CHUNK: usize = 192;

/// `y = x @ w + b` (`x: [m, k]`, `w: [k, n]`, `b: [n]`) over the output columns `c0..c0+nb`
/// of `w`; `y` is `[m, nb]`.
///
/// A layer of at least [`PAR_MIN_WEIGHTS`] weights is split among the threads by its input
/// rows: each task reads [`K_CHUNK`] consecutive rows of `w` — one contiguous stretch of
/// memory — into a partial result, and the partials are added to the bias in their order.
/// Decoding one row is bound by reading the weights, and contiguous stretches read faster
/// than the strided column blocks a split by outputs reads, most of all for narrow outputs
/// (`c_proj`: 14 → 20 GB/s in `bench --profile`). Whether a layer is split depends on the
/// whole matrix, not on `nb`: the k and v columns early exit computes on their own sum as
/// they do inside the full projection.
fn linear_cols(x: &[f32], k: usize, (w, b): (&[f32], &[f32]), c0: usize, nb: usize, y: &mut Vec<f32>) {
    let (m, n) = (x.len() / k, b.len());
    y.clear();
    for _ in 0..m {
        y.extend_from_slice(&b[c0..c0 + nb]);
    }
    if !splits_linear(k, n) {
        crate::kernels::matrix_cols_accumulate(x, k, w, n, c0, nb, y);
        return;
    }
    let starts: Vec<usize> = (0..k).step_by(K_CHUNK).collect();
    let parts: Vec<Vec<f32>> = starts
        .par_iter()
        .map(|&i0| {
            let kk = K_CHUNK.min(k - i0);
            let xs: Vec<f32> = (0..m).flat_map(|r| x[r * k + i0..r * k + i0 + kk].iter().copied()).collect();
            let mut part = vec![0f32; m * nb];
            crate::kernels::matrix_cols_accumulate(&xs, kk, &w[i0 * n..(i0 + kk) * n], n, c0, nb, &mut part);
            part
        })
        .collect();
    for part in &parts {
        y.iter_mut().zip(part).for_each(|(a, p)| *a += p);
    }
}

/// Whether [`linear_cols`] shares a `[k, n]` layer among the threads. With no more than one
/// chunk of rows there is nothing to share (the Austen head's transposed copy: 128 rows).
fn splits_linear(k: usize, n: usize) -> bool {
    k * n >= PAR_MIN_WEIGHTS && k > K_CHUNK
}

/// Splits `n` columns into a few blocks per thread, each a multiple of `align`.
fn column_split(n: usize, align: usize) -> Vec<(usize, usize)> {
    let threads = rayon::current_num_threads().max(1);
    let per = n.div_ceil(threads * 2).div_ceil(align).max(1) * align;
    (0..n).step_by(per).map(|s| (s, per.min(n - s))).collect()
}

/// Copies per-block results `[m, len]` into their columns of `y` (`[m, n]`).
fn scatter_columns(blocks: &[(usize, usize)], parts: &[Vec<f32>], m: usize, n: usize, y: &mut [f32]) {
    for (&(s, len), part) in blocks.iter().zip(parts) {
        for r in 0..m {
            y[r * n + s..r * n + s + len].copy_from_slice(&part[r * len..(r + 1) * len]);
        }
    }
}

/// Layer norm of each `d`-row of `x` into `y`, statistics in f64.
fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f64, y: &mut Vec<f32>) {
    let d = w.len();
    y.resize(x.len(), 0.0);
    for (yr, xr) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
        let (mean, rstd) = (mean as f32, (1.0 / (var + eps).sqrt()) as f32);
        for i in 0..d {
            yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
        }
    }
}

fn activate(act: Activation, x: &mut [f32], scratch: &mut Vec<f32>) {
    match act {
        Activation::GeluTanh => {
            scratch.clear();
            scratch.extend_from_slice(x);
            crate::kernels::gelu(scratch, x);
        }
        Activation::GeluErf => {
            x.iter_mut().for_each(|v| *v = (candle_core::cpu::erf::erf_f32(*v * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * *v)
        }
        Activation::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Silu => x.iter_mut().for_each(|v| *v /= 1.0 + (-*v).exp()),
    }
}

impl CpuModel<'_> {
    /// The classifier `lm_head(ln_f(h))` for rows `h` (`[m, d]`) into `logits` (`[m, vocab]`).
    pub fn head(&self, h: &[f32], logits: &mut Vec<f32>) {
        let mut normed = Vec::with_capacity(h.len());
        layer_norm(h, self.ln_f.0, self.ln_f.1, self.eps, &mut normed);
        self.classify_normed(&normed, logits);
    }

    /// The greedy token of one row `h` (`[d]`): `argmax(lm_head(ln_f(h)))`, the token
    /// [`argmax`] picks from [`Self::head`]'s logits, bit for bit. Where the classifier has
    /// an 8-bit copy ([`uses_int8_head`]) it is found through it ([`bounded_argmax_i8`]),
    /// reading about a quarter of the bytes: on GPT-2-124M the f32 head was a quarter of a
    /// decode step.
    pub fn greedy_token(&self, h: &[f32]) -> u32 {
        let mut normed = Vec::with_capacity(h.len());
        layer_norm(h, self.ln_f.0, self.ln_f.1, self.eps, &mut normed);
        if let Some(int8) = self.int8_head()
            && let Some(t) = bounded_argmax_i8(&normed, int8, |v| self.exact_logit(&normed, v))
        {
            return t;
        }
        let mut logits = Vec::new();
        self.classify_normed(&normed, &mut logits);
        argmax(&logits)
    }

    /// The classifier's 8-bit copy, made on the first call, where [`uses_int8_head`] says
    /// to use one and it can be made.
    fn int8_head(&self) -> Option<&Int8Head> {
        if !uses_int8_head(self.vocab, self.d) {
            return None;
        }
        let (head, copy) = match &self.narrow {
            Some(n) => (&n.head[..], &n.int8),
            None => (self.head, &self.wide_int8),
        };
        copy.get_or_init(|| Int8Head::new(head, self.d, self.vocab)).as_ref()
    }

    /// Token `v`'s f32 logit for the normed row `x`, as [`Self::classify_normed`] computes it.
    fn exact_logit(&self, x: &[f32], v: usize) -> f32 {
        let d = self.d;
        match self.narrow {
            Some(_) => crate::kernels::matrix_col_dot(x, &self.head[v * d..(v + 1) * d], 0.0),
            None => row_logit(x, self.head, v),
        }
    }

    /// Whether the largest softmax probability of `lm_head(ln_f(h))` (one row) reaches
    /// `threshold`, as [`crate::kernels::max_prob`] over [`Self::head`]'s logits says it,
    /// with the greedy token when it does: the max-prob early-exit check, decided from
    /// bounds on every logit and the exact logits of the few tokens near the top
    /// ([`max_prob_from_bounds`]), through the classifier's 8-bit copy: the first plane
    /// alone where it decides (checks far from the threshold), else both planes (half the
    /// bytes of the f32 classifier; the first plane alone bounds too loosely for the
    /// softmax's tail). [`MaxProbCheck::Undecided`] when the bound cannot tell, or where the
    /// classifier has no 8-bit copy.
    pub fn max_prob_check(&self, h: &[f32], threshold: f64) -> MaxProbCheck {
        let Some(int8) = self.int8_head() else {
            return MaxProbCheck::Undecided;
        };
        let mut x = Vec::with_capacity(h.len());
        layer_norm(h, self.ln_f.0, self.ln_f.1, self.eps, &mut x);
        let logit = |v: usize| self.exact_logit(&x, v);
        let Some((bounds, lower)) = int8_bounds(&x, int8, None) else {
            return MaxProbCheck::Undecided;
        };
        let coarse = max_prob_from_bounds(&bounds, lower, threshold, false, logit);
        if coarse != MaxProbCheck::Undecided {
            return coarse;
        }
        let head = self.narrow.as_ref().map_or(self.head, |n| &n.head[..]);
        let Some((bounds, lower)) = int8_bounds(&x, int8, Some(int8.fine(head))) else {
            return MaxProbCheck::Undecided;
        };
        max_prob_from_bounds(&bounds, lower, threshold, true, logit)
    }

    /// Whether decoding one row keeps to one thread: no layer and not the head is shared
    /// among the threads (the Austen models; GPT-2-124M shares every one). Attention is left
    /// out: it is shared only for long contexts. Two decoders on two threads then overlap
    /// ([`crate::analysis::speculative::generate_pipelined`]) instead of taking turns.
    pub fn rows_use_one_thread(&self) -> bool {
        let (d, inner) = (self.d, self.inner);
        let layers = [(d, 3 * d), (d, d), (d, inner), (inner, d)];
        !self.splits_head() && layers.iter().all(|&(k, n)| !splits_linear(k, n))
    }

    /// Whether [`Self::classify_normed`] shares the classifier among the threads.
    fn splits_head(&self) -> bool {
        match self.narrow {
            Some(_) => splits_linear(self.d, self.vocab),
            None => self.vocab * self.d >= PAR_MIN_WEIGHTS,
        }
    }

    fn classify_normed(&self, x: &[f32], logits: &mut Vec<f32>) {
        let (d, v) = (self.d, self.vocab);
        if let Some(n) = &self.narrow {
            return linear_cols(x, d, (&n.head_t, &self.zeros), 0, v, logits);
        }
        let m = x.len() / d;
        logits.resize(m * v, 0.0);
        if !self.splits_head() {
            crate::kernels::classify_rows(x, d, self.head, logits, v);
            return;
        }
        let blocks = column_split(v, 16);
        let parts: Vec<Vec<f32>> = blocks
            .par_iter()
            .map(|&(s, len)| {
                let mut y = vec![0f32; m * len];
                crate::kernels::classify_rows(x, d, &self.head[s * d..(s + len) * d], &mut y, len);
                y
            })
            .collect();
        scatter_columns(&blocks, &parts, m, v, logits);
    }
}

/// The parts of a block a decode step is timed by (`alignscope bench --profile`), declared
/// in [`BlockPart::ALL`]'s order: a part's discriminant is its index in [`BlockProfile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockPart {
    /// `ln_1` and `ln_2`.
    LayerNorm,
    /// The q, k, v projection (`attn.c_attn`) and storing keys and values.
    Qkv,
    Attention,
    /// The attention output projection (`attn.c_proj`) and its residual add.
    AttnProj,
    /// The MLP's up projection (`mlp.c_fc`).
    Fc,
    /// The MLP's activation.
    Activation,
    /// The MLP's down projection (`mlp.c_proj`) and its residual add.
    FcProj,
}

impl BlockPart {
    pub const ALL: [BlockPart; 7] = [
        BlockPart::LayerNorm,
        BlockPart::Qkv,
        BlockPart::Attention,
        BlockPart::AttnProj,
        BlockPart::Fc,
        BlockPart::Activation,
        BlockPart::FcProj,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BlockPart::LayerNorm => "layer norms",
            BlockPart::Qkv => "c_attn (q, k, v)",
            BlockPart::Attention => "attention",
            BlockPart::AttnProj => "attn c_proj",
            BlockPart::Fc => "mlp c_fc",
            BlockPart::Activation => "activation",
            BlockPart::FcProj => "mlp c_proj",
        }
    }
}

/// Time spent in each [`BlockPart`] over every block run while it is switched on, and the
/// bytes of weights each part read: what bandwidth each part reaches.
#[derive(Debug, Clone, Default)]
pub struct BlockProfile {
    pub secs: [f64; 7],
    pub weight_bytes: [usize; 7],
}

impl BlockProfile {
    fn add(&mut self, part: BlockPart, secs: f64, weights: usize) {
        let i = part as usize;
        self.secs[i] += secs;
        self.weight_bytes[i] += 4 * weights;
    }
}

/// Scratch buffers reused from token to token.
#[derive(Default)]
struct Scratch {
    normed: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    proj: Vec<f32>,
    hidden: Vec<f32>,
    act: Vec<f32>,
    scores: Vec<f32>,
}

/// Incremental decoding state: the KV cache of every block, filled position by position.
/// Blocks may be filled to different lengths (a draft runs ahead in the first blocks).
pub struct Decoder<'m, 'a> {
    pub model: &'m CpuModel<'a>,
    /// Per block: keys and values, head by head: each head's rows (`d / n_head` floats per
    /// position) lie together for the whole context, so attending a head reads one
    /// contiguous stretch. Allocated at the full context when a block is first filled
    /// (zeroed pages cost nothing until a position is written).
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    filled: Vec<usize>,
    s: Scratch,
    /// When set, every block run adds its time per part (a clock read per part and block).
    pub profile: Option<BlockProfile>,
}

impl<'m, 'a> Decoder<'m, 'a> {
    pub fn new(model: &'m CpuModel<'a>) -> Self {
        let n = model.n_layer;
        Self { model, keys: vec![Vec::new(); n], values: vec![Vec::new(); n], filled: vec![0; n], s: Scratch::default(), profile: None }
    }

    /// Positions cached in block `layer` (0-based).
    pub fn filled(&self, layer: usize) -> usize {
        self.filled[layer]
    }

    /// Forgets every position from `len` on, in every block (rolling back rejected drafts).
    pub fn truncate(&mut self, len: usize) {
        for f in &mut self.filled {
            *f = (*f).min(len);
        }
    }

    /// Token + position embeddings of `ids` placed at `pos0..`: `[ids.len(), d]`.
    pub fn embed(&self, ids: &[u32], pos0: usize) -> Result<Vec<f32>> {
        let m = self.model;
        let d = m.d;
        if pos0 + ids.len() > m.n_positions {
            bail!("sequence of {} tokens is longer than the model's context of {} positions", pos0 + ids.len(), m.n_positions)
        }
        let mut x = Vec::with_capacity(ids.len() * d);
        for (i, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= m.vocab {
                bail!("token id {id} is outside the model's vocabulary of {}", m.vocab)
            }
            let (t, p) = (&m.wte[id * d..(id + 1) * d], &m.wpe[(pos0 + i) * d..(pos0 + i + 1) * d]);
            x.extend(t.iter().zip(p).map(|(a, b)| a + b));
        }
        Ok(x)
    }

    fn store_kv(&mut self, layer: usize, kv: &[f32], stride: usize, pos0: usize) {
        let (d, cap) = (self.model.d, self.model.n_positions);
        let hd = d / self.model.n_head;
        let rows = kv.len() / stride;
        let (keys, values) = (&mut self.keys[layer], &mut self.values[layer]);
        if keys.is_empty() {
            *keys = vec![0.0; cap * d];
            *values = vec![0.0; cap * d];
        }
        let off = stride - 2 * d;
        for r in 0..rows {
            let row = &kv[r * stride..(r + 1) * stride];
            for h in 0..self.model.n_head {
                let at = (h * cap + pos0 + r) * hd;
                keys[at..at + hd].copy_from_slice(&row[off + h * hd..off + (h + 1) * hd]);
                values[at..at + hd].copy_from_slice(&row[off + d + h * hd..off + d + (h + 1) * hd]);
            }
        }
        self.filled[layer] = pos0 + rows;
    }

    fn check_position(&self, layer: usize, pos0: usize) -> Result<()> {
        if layer >= self.model.n_layer {
            bail!("block {layer} is out of range: the model has {} blocks", self.model.n_layer)
        }
        if self.filled[layer] != pos0 {
            bail!("block {} holds {} positions; the next rows must start there, not at {pos0}", layer + 1, self.filled[layer])
        }
        Ok(())
    }

    /// Runs block `layer` (0-based) on the rows `x` (`[rows, d]`, positions `pos0..`), in
    /// place, appending their keys and values to the block's cache.
    pub fn block(&mut self, layer: usize, x: &mut [f32], pos0: usize) -> Result<()> {
        self.check_position(layer, pos0)?;
        let m = self.model;
        let (d, inner) = (m.d, m.inner);
        let rows = x.len() / d;
        let w = &m.blocks[layer];
        let mut s = std::mem::take(&mut self.s);
        let mut clock = self.profile.as_ref().map(|_| Instant::now());
        layer_norm(x, w.ln_1.0, w.ln_1.1, m.eps, &mut s.normed);
        self.tick(&mut clock, BlockPart::LayerNorm, 2 * d);
        linear_cols(&s.normed, d, w.attn, 0, 3 * d, &mut s.qkv);
        self.store_kv(layer, &s.qkv, 3 * d, pos0);
        self.tick(&mut clock, BlockPart::Qkv, w.attn.0.len() + w.attn.1.len());
        self.attention(layer, &s.qkv, pos0, &mut s.att, &mut s.scores);
        self.tick(&mut clock, BlockPart::Attention, 0);
        linear_cols(&s.att, d, w.attn_proj, 0, d, &mut s.proj);
        x.iter_mut().zip(&s.proj).for_each(|(a, b)| *a += b);
        self.tick(&mut clock, BlockPart::AttnProj, w.attn_proj.0.len() + w.attn_proj.1.len());
        layer_norm(x, w.ln_2.0, w.ln_2.1, m.eps, &mut s.normed);
        self.tick(&mut clock, BlockPart::LayerNorm, 2 * d);
        linear_cols(&s.normed, d, w.fc, 0, inner, &mut s.hidden);
        self.tick(&mut clock, BlockPart::Fc, w.fc.0.len() + w.fc.1.len());
        activate(m.activation, &mut s.hidden, &mut s.act);
        self.tick(&mut clock, BlockPart::Activation, 0);
        linear_cols(&s.hidden, inner, w.fc_proj, 0, d, &mut s.proj);
        x.iter_mut().zip(&s.proj).for_each(|(a, b)| *a += b);
        self.tick(&mut clock, BlockPart::FcProj, w.fc_proj.0.len() + w.fc_proj.1.len());
        debug_assert_eq!(s.proj.len(), rows * d);
        self.s = s;
        Ok(())
    }

    /// Adds the time since `clock` to `part` when profiling (`clock` is `None` otherwise).
    fn tick(&mut self, clock: &mut Option<Instant>, part: BlockPart, weights: usize) {
        if let (Some(p), Some(t)) = (&mut self.profile, clock.as_mut()) {
            let now = Instant::now();
            p.add(part, (now - *t).as_secs_f64(), weights);
            *t = now;
        }
    }

    /// Appends to block `layer`'s cache the keys and values it would compute from input
    /// rows `x`, without running the block: early exit copies a token's state upwards this
    /// way (only the k and v columns of the projection are computed).
    pub fn fill_kv(&mut self, layer: usize, x: &[f32], pos0: usize) -> Result<()> {
        self.check_position(layer, pos0)?;
        let m = self.model;
        let d = m.d;
        let w = &m.blocks[layer];
        let mut s = std::mem::take(&mut self.s);
        layer_norm(x, w.ln_1.0, w.ln_1.1, m.eps, &mut s.normed);
        linear_cols(&s.normed, d, w.attn, d, 2 * d, &mut s.qkv);
        self.store_kv(layer, &s.qkv, 2 * d, pos0);
        self.s = s;
        Ok(())
    }

    /// Causal attention of the query rows in `qkv` (positions `pos0..`) over the cache.
    fn attention(&self, layer: usize, qkv: &[f32], pos0: usize, out: &mut Vec<f32>, scores: &mut Vec<f32>) {
        let m = self.model;
        let (d, nh) = (m.d, m.n_head);
        let hd = d / nh;
        let rows = qkv.len() / (3 * d);
        let scale = m.blocks[layer].scale;
        let (keys, values) = (&self.keys[layer][..], &self.values[layer][..]);
        let head = |h: usize| {
            let span = h * m.n_positions * hd..(h + 1) * m.n_positions * hd;
            HeadCache { keys: &keys[span.clone()], values: &values[span], stride: hd, offset: 0 }
        };
        out.resize(rows * d, 0.0);
        let work = rows * nh * (pos0 + rows) * hd;
        if work < PAR_MIN_ATTENTION {
            scores.resize(pos0 + rows, 0.0);
            for r in 0..rows {
                for h in 0..nh {
                    let q = &qkv[r * 3 * d + h * hd..r * 3 * d + (h + 1) * hd];
                    let o = &mut out[r * d + h * hd..r * d + (h + 1) * hd];
                    crate::kernels::attend_row(q, head(h), scale, &mut scores[..pos0 + r + 1], o);
                }
            }
            return;
        }
        // One task per row and head: a single decoded row still spreads its heads over the
        // threads (its reads of the cache miss the caches the weights just swept).
        out.par_chunks_mut(hd).enumerate().for_each_init(Vec::new, |sc, (i, o)| {
            let (r, h) = (i / nh, i % nh);
            sc.resize(pos0 + r + 1, 0.0);
            let q = &qkv[r * 3 * d + h * hd..r * 3 * d + (h + 1) * hd];
            crate::kernels::attend_row(q, head(h), scale, sc, o);
        });
    }

    /// Runs blocks `from..to` (0-based, `to` exclusive) on `x` at positions `pos0..`.
    pub fn blocks(&mut self, from: usize, to: usize, x: &mut [f32], pos0: usize) -> Result<()> {
        for l in from..to {
            self.block(l, x, pos0)?;
        }
        Ok(())
    }

    /// `lm_head(ln_f(h))` of the rows `h` into `logits` (`[rows, vocab]`).
    pub fn logits(&self, h: &[f32], logits: &mut Vec<f32>) {
        self.model.head(h, logits)
    }

    /// The greedy token of one row `h` (see [`CpuModel::greedy_token`]).
    pub fn greedy_token(&self, h: &[f32]) -> u32 {
        self.model.greedy_token(h)
    }

    /// The max-prob early-exit check of one row `h` (see [`CpuModel::max_prob_check`]).
    pub fn max_prob_check(&self, h: &[f32], threshold: f64) -> MaxProbCheck {
        self.model.max_prob_check(h, threshold)
    }
}

/// The index of the largest value; the first one on ties (NaN never wins).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] || v[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Gpt2Config, KvCache};
    use candle_core::Device;

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(worst <= tol, "max abs difference {worst}");
    }

    /// The engine computes what the candle model computes: prefill, then token by token,
    /// at every layer.
    #[test]
    fn matches_the_tensor_model() {
        matches_the_tensor_model_on(Gpt2Config::new(3, 64, 4, 300, 40));
    }

    /// The same with the MLP big enough to be split among threads by input rows.
    #[test]
    fn matches_the_tensor_model_with_split_layers() {
        let cfg = Gpt2Config::new(3, 512, 8, 300, 40);
        assert!(cfg.n_embd * cfg.inner_dim() >= PAR_MIN_WEIGHTS);
        matches_the_tensor_model_on(cfg);
    }

    fn matches_the_tensor_model_on(cfg: Gpt2Config) {
        let model = Gpt2::random(cfg, 3, &Device::Cpu).unwrap();
        let ids: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % 300).collect();
        with_cpu_model(&model, |m| {
            let mut dec = Decoder::new(m);
            let mut cache = KvCache::new(3);
            let t = Tensor::from_vec(ids[..9].to_vec(), (1, 9), &Device::Cpu)?;
            let want = model.forward_cached(&t, &mut cache, 3)?;
            let want_logits: Vec<f32> = model.head(&want)?.flatten_all()?.to_vec1()?;
            let mut x = dec.embed(&ids[..9], 0)?;
            dec.blocks(0, 3, &mut x, 0)?;
            close(&x, &want.flatten_all()?.to_vec1::<f32>()?, 1e-4);
            let mut logits = Vec::new();
            dec.logits(&x, &mut logits);
            close(&logits, &want_logits, 1e-4);
            for (i, &id) in ids[9..].iter().enumerate() {
                let pos = 9 + i;
                let t = Tensor::from_vec(vec![id], (1, 1), &Device::Cpu)?;
                let want = model.forward_cached(&t, &mut cache, 3)?;
                let mut x = dec.embed(&[id], pos)?;
                dec.blocks(0, 3, &mut x, pos)?;
                close(&x, &want.flatten_all()?.to_vec1::<f32>()?, 1e-4);
            }
            Ok(())
        })
        .unwrap();
    }

    /// Copies row `best` of the classifier (`[vocab, d]`) to an earlier and a later index
    /// (exact ties), and again, one weight moved by `bits` units in the last place, to index
    /// `nudged` (or near the end when `best` is early): a tie only in reduced precision.
    fn plant_ties(head: &mut [f32], d: usize, best: usize, nudged: usize, bits: u32) {
        let vocab = head.len() / d;
        let r = head[best * d..(best + 1) * d].to_vec();
        let (early, late, nudged) = if best > 10 { (3, vocab - 5, nudged) } else { (vocab - 9, vocab - 5, vocab - 7) };
        head[early * d..(early + 1) * d].copy_from_slice(&r);
        head[late * d..(late + 1) * d].copy_from_slice(&r);
        let mut n = r;
        n[d / 2] = f32::from_bits(n[d / 2].to_bits() + bits);
        head[nudged * d..(nudged + 1) * d].copy_from_slice(&n);
    }

    /// The greedy token of a wide classifier through its 8-bit copy is the argmax of the
    /// f32 logits as [`crate::kernels::classify_rows`] computes them (the wide head's own
    /// order, [`row_logit`]): random rows, exact ties (the first index wins), ties broken
    /// only in f32 (rows one unit in the last place apart, identical in 8 bits), tiny
    /// weights, widths that are not multiples of the vector length or even, with the copy
    /// and its bounds cut into blocks among the threads.
    #[test]
    fn bounded_argmax_i8_is_the_argmax_of_wide_logits() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for (trial, d) in [768, 300, 769, 768, 768, 768].into_iter().enumerate() {
            assert!(d > SHORT_ROWS);
            let vocab = 3001;
            let scale = if trial == 3 { 1e-36 } else { 0.05 };
            let mut head: Vec<f32> = (0..vocab * d).map(|_| rng.random_range(-1.0f32..1.0) * scale).collect();
            head[9 * d..10 * d].fill(0.0);
            let x: Vec<f32> = (0..d).map(|_| rng.random_range(-3.0f32..3.0)).collect();
            let logits_of = |head: &[f32]| {
                let mut logits = vec![0f32; vocab];
                crate::kernels::classify_rows(&x, d, head, &mut logits, vocab);
                logits
            };
            if trial >= 4 {
                let best = argmax(&logits_of(&head)) as usize;
                plant_ties(&mut head, d, best, 7, if trial == 4 { 1 } else { 0x800 });
            }
            let int8 = Int8Head::new(&head, d, vocab).unwrap();
            let got = bounded_argmax_i8(&x, &int8, |v| row_logit(&x, &head, v));
            assert_eq!(got, Some(argmax(&logits_of(&head))), "trial {trial}, d {d}");
        }
    }

    /// The greedy token through the 8-bit classifier is the f32 logits' argmax: random rows,
    /// exact ties (the first index wins), ties broken only in f32 (rows one unit in the last
    /// place apart, identical in 8 bits), tiny weights, widths that are not multiples of 4,
    /// a token whose weights are all zero.
    #[test]
    fn bounded_argmax_i8_is_the_argmax_of_the_logits() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        for (trial, d) in [128, 64, 33, 130, 128, 128, 128, 128].into_iter().enumerate() {
            let vocab = 3000;
            let scale = if trial == 4 { 1e-36 } else { 0.05 };
            let mut head: Vec<f32> = (0..vocab * d).map(|_| rng.random_range(-1.0f32..1.0) * scale).collect();
            head[7 * d..8 * d].fill(0.0);
            let x: Vec<f32> = (0..d).map(|_| rng.random_range(-3.0f32..3.0)).collect();
            let logits_of = |head: &[f32]| {
                let t = transpose(head, vocab, d);
                let mut logits = Vec::new();
                linear_cols(&x, d, (&t, &vec![0.0; vocab]), 0, vocab, &mut logits);
                (t, logits)
            };
            if trial >= 5 {
                let (_, logits) = logits_of(&head);
                plant_ties(&mut head, d, argmax(&logits) as usize, 8, if trial == 5 { 1 } else { 0x800 });
            }
            let (_, logits) = logits_of(&head);
            let int8 = Int8Head::new(&head, d, vocab).unwrap();
            let logit = |v: usize| crate::kernels::matrix_col_dot(&x, &head[v * d..(v + 1) * d], 0.0);
            assert_eq!(bounded_argmax_i8(&x, &int8, logit), Some(argmax(&logits)), "trial {trial}, d {d}");
        }
    }

    /// The 8-bit copy made row by row is [`crate::kernels::pack_i8_pairs`]'s layout of the
    /// rounded transposed classifier, for narrow and wide shapes, odd widths and a partial
    /// last block; its second plane likewise.
    #[test]
    fn the_8_bit_copy_is_the_packed_layout() {
        let val = |i: usize| ((i * 7919 % 1013) as f32 - 506.0) / 4000.0;
        for (d, vocab) in [(128, 300), (33, 70), (301, 130)] {
            let head: Vec<f32> = (0..vocab * d).map(val).collect();
            let int8 = Int8Head::new(&head, d, vocab).unwrap();
            let fine = int8.fine(&head);
            let (mut q, mut r) = (vec![0i8; d * vocab], vec![0i8; d * vocab]);
            for v in 0..vocab {
                let (mut qv, mut rv) = (vec![0i8; d], vec![0i8; d]);
                crate::kernels::quantize_i8(&head[v * d..(v + 1) * d], int8.scale[v], &mut qv);
                crate::kernels::quantize_i8_remainder(&head[v * d..(v + 1) * d], int8.scale[v], fine.scale[v], &mut rv);
                for i in 0..d {
                    (q[i * vocab + v], r[i * vocab + v]) = (qv[i], rv[i]);
                }
            }
            assert_eq!(int8.q, crate::kernels::pack_i8_pairs(&q, d, vocab), "{d} x {vocab}");
            assert_eq!(fine.r, crate::kernels::pack_i8_pairs(&r, d, vocab), "{d} x {vocab}");
        }
    }

    /// The max-prob check through both 8-bit planes takes the decision `max_prob(logits) >=
    /// threshold` takes, with the logits' argmax, over rows from flat to peaked
    /// distributions and thresholds on both sides of the probability, at it and one unit in
    /// the last place above it; it leaves undecided only thresholds within 5% of the
    /// probability. A narrow classifier (the Austen models' shape) and a wide one.
    #[test]
    fn the_max_prob_check_decides_as_the_logits_do() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(31);
        for (d, vocab, trials) in [(128, 4096, 60), (768, 4096, 24)] {
            let head: Vec<f32> = (0..vocab * d).map(|_| rng.random_range(-1.0f32..1.0) * 0.05).collect();
            let t = transpose(&head, vocab, d);
            let int8 = Int8Head::new(&head, d, vocab).unwrap();
            let (mut decided, mut far, mut probs) = (0, 0, Vec::new());
            for trial in 0..trials {
                // Larger inputs, more peaked distributions.
                let gain = (0.5 + trial as f32 * 30.0 / trials as f32) * if d <= SHORT_ROWS { 1.0 } else { 0.6 };
                let x: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0f32..1.0) * gain).collect();
                let mut logits = Vec::new();
                let logit: Box<dyn Fn(usize) -> f32> = if d <= SHORT_ROWS {
                    linear_cols(&x, d, (&t, &vec![0.0; vocab]), 0, vocab, &mut logits);
                    Box::new(|v: usize| crate::kernels::matrix_col_dot(&x, &head[v * d..(v + 1) * d], 0.0))
                } else {
                    logits.resize(vocab, 0.0);
                    crate::kernels::classify_rows(&x, d, &head, &mut logits, vocab);
                    Box::new(|v: usize| row_logit(&x, &head, v))
                };
                let p = crate::kernels::max_prob(&logits);
                probs.push(p);
                let (bounds, lower) = int8_bounds(&x, &int8, Some(int8.fine(&head))).unwrap();
                for tau in [0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, p as f64, p.next_up() as f64, p as f64 * 1.01, p as f64 * 0.99] {
                    let reaches = p as f64 >= tau;
                    match max_prob_from_bounds(&bounds, lower, tau, true, &logit) {
                        MaxProbCheck::Reaches(tok) => {
                            assert!(reaches, "d {d}, trial {trial}: p {p} < {tau}, but the check says it reaches");
                            assert_eq!(tok, argmax(&logits), "d {d}, trial {trial}");
                            decided += 1;
                        }
                        MaxProbCheck::Below => {
                            assert!(!reaches, "d {d}, trial {trial}: p {p} >= {tau}, but the check says below");
                            decided += 1;
                        }
                        MaxProbCheck::Undecided => far += usize::from((p as f64 / tau - 1.0).abs() > 0.05),
                    }
                }
            }
            assert!(far == 0, "d {d}: {far} checks undecided with the probability more than 5% from the threshold");
            assert!(decided > trials * 7, "d {d}: {decided} decided");
            let spread = probs.iter().fold((1f32, 0f32), |(lo, hi), &p| (lo.min(p), hi.max(p)));
            assert!(spread.0 < 0.05 && spread.1 > 0.9, "d {d}: the rows span flat to peaked: {spread:?}");
        }
    }

    /// Weights that are not finite, or an input that is not finite, leave the choice to the
    /// f32 logits.
    #[test]
    fn bounded_argmax_i8_declines_what_it_cannot_bound() {
        for (d, vocab) in [(64, 100), (300, 200)] {
            let mut head = vec![0.01f32; vocab * d];
            head[5 * d + 1] = f32::INFINITY;
            assert!(Int8Head::new(&head, d, vocab).is_none());
            head[5 * d + 1] = f32::NAN;
            assert!(Int8Head::new(&head, d, vocab).is_none());
            head[5 * d + 1] = 0.01;
            let int8 = Int8Head::new(&head, d, vocab).unwrap();
            let mut x = vec![1f32; d];
            x[3] = f32::NAN;
            assert_eq!(bounded_argmax_i8(&x, &int8, |v| row_logit(&x, &head, v)), None);
        }
    }

    /// A classifier's derived copies are those of a classifier with the same shape and bits:
    /// the same bits in another shape, or one weight changed, get their own.
    #[test]
    fn narrow_heads_are_recognised_by_shape_and_bits() {
        let w: Vec<f32> = (0..64 * 32).map(|i| i as f32 * 0.01).collect();
        let mut changed = w.clone();
        changed[5] += 1.0;
        for _ in 0..2 {
            for (w, vocab, d) in [(&w, 64, 32), (&w, 32, 64), (&changed, 64, 32)] {
                assert_eq!(NarrowHead::of(w, vocab, d).head_t, transpose(w, vocab, d), "{vocab} x {d}");
            }
        }
    }

    /// Greedy decoding of a narrow model (the Austen models' shape, smaller), whose greedy
    /// tokens come through the 8-bit classifier, picks the tokens the tensor model's logits
    /// pick.
    #[test]
    fn greedy_tokens_through_the_int8_head_are_the_tensor_models() {
        let cfg = Gpt2Config::new(2, 128, 4, 4096, 96);
        assert!(uses_int8_head(cfg.vocab_size, cfg.n_embd));
        greedy_tokens_are_the_tensor_models(cfg, 21);
    }

    /// Greedy decoding through a wide classifier large enough for its 8-bit copy picks the
    /// tokens the tensor model's logits pick.
    #[test]
    fn greedy_tokens_through_a_wide_int8_head_are_the_tensor_models() {
        let cfg = Gpt2Config::new(2, 512, 8, 8192, 64);
        assert!(cfg.n_embd > SHORT_ROWS && cfg.vocab_size * cfg.n_embd >= WIDE_INT8_MIN_WEIGHTS);
        assert_eq!(uses_int8_head(cfg.vocab_size, cfg.n_embd), crate::kernels::i16_i8_cols_is_fast());
        greedy_tokens_are_the_tensor_models(cfg, 9);
    }

    /// Greedy generations long enough to go through the classifier's reduced copy, at the
    /// last layer and an early one, give the tensor model's tokens.
    fn greedy_tokens_are_the_tensor_models(cfg: Gpt2Config, seed: u64) {
        let vocab = cfg.vocab_size as u32;
        let model = Gpt2::random(cfg, seed, &Device::Cpu).unwrap();
        let mut picked = std::collections::HashSet::new();
        for (p, exit_layer) in [(0, 2), (1, 1), (2, 2), (3, 1)] {
            let prompt: Vec<u32> = (0..6).map(|i| (i * 977 + 3 + p * 1301) % vocab).collect();
            let opts = crate::analysis::generate::GenerateOptions {
                exit_layer,
                max_new_tokens: REDUCED_HEAD_MIN_TOKENS + 8,
                sampling: crate::analysis::generate::Sampling::Greedy,
                eos: None,
            };
            assert!(opts.sampling.greedy_tokens(opts.max_new_tokens));
            let go = |_| std::ops::ControlFlow::Continue(());
            let engine = crate::analysis::generate::generate(&model, &prompt, &opts, go).unwrap();
            let tensor = crate::analysis::generate::generate_tensor(&model, &prompt, &opts, go).unwrap();
            assert_eq!(engine.ids, tensor.ids, "prompt {p}, exit layer {exit_layer}");
            picked.extend(engine.ids);
        }
        assert!(picked.len() > 3, "a test that picks one token says little: {picked:?}");
    }

    /// A batch of rows gives bit for bit what the rows give one at a time, with the work
    /// split among threads or not (a classifier big enough to be split; then linear
    /// layers big enough to be split too).
    #[test]
    fn rows_are_independent_of_batching() {
        rows_are_independent_of_batching_on(Gpt2Config::new(2, 256, 4, 4096, 64));
        let split = Gpt2Config::new(2, 512, 8, 4096, 64);
        assert!(split.n_embd * split.inner_dim() >= PAR_MIN_WEIGHTS);
        rows_are_independent_of_batching_on(split);
    }

    fn rows_are_independent_of_batching_on(cfg: Gpt2Config) {
        let d = cfg.n_embd;
        let model = Gpt2::random(cfg, 5, &Device::Cpu).unwrap();
        let ids: Vec<u32> = (0..20).map(|i| (i * 131 + 7) % 4096).collect();
        with_cpu_model(&model, |m| {
            let mut one = Decoder::new(m);
            let mut batched = Decoder::new(m);
            let mut x = one.embed(&ids[..10], 0)?;
            one.blocks(0, 2, &mut x, 0)?;
            let mut y = batched.embed(&ids[..10], 0)?;
            batched.blocks(0, 2, &mut y, 0)?;
            let mut singles = Vec::new();
            for (i, &id) in ids[10..].iter().enumerate() {
                let mut x = one.embed(&[id], 10 + i)?;
                one.blocks(0, 2, &mut x, 10 + i)?;
                let mut l = Vec::new();
                one.logits(&x, &mut l);
                singles.push((x, l));
            }
            let mut x = batched.embed(&ids[10..], 10)?;
            batched.blocks(0, 2, &mut x, 10)?;
            let mut l = Vec::new();
            batched.logits(&x, &mut l);
            for (r, (xs, ls)) in singles.iter().enumerate() {
                assert_eq!(&x[r * d..(r + 1) * d], &xs[..], "row {r} residual");
                assert_eq!(&l[r * 4096..(r + 1) * 4096], &ls[..], "row {r} logits");
            }
            Ok(())
        })
        .unwrap();
    }
}
