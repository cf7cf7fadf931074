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

mod assist;
mod quantized;
mod reduced_head;
pub use assist::Assist;
pub use quantized::QuantBlocks;
use reduced_head::{Int8Head, bounded_argmax_i8, bounded_argmax_i8_rows, max_prob_check_i8, row_logit, uses_int8_head};
pub use reduced_head::{MaxProbCheck, REDUCED_HEAD_MIN_TOKENS, greedy_head_bytes};

/// Linear layers and the classifier with at least this many weights are split among the
/// threads; smaller ones (the Austen blocks: 16k-65k weights) run on one core, where a
/// rayon fork-join would cost more than the arithmetic. GPT-2-124M's attention projection
/// (590k weights) is above it: on one core it read its weights at 10-12 GB/s, split 16-17
/// (1.7 instead of 2.3-2.8 ms per token over three alternating pairs).
const PAR_MIN_WEIGHTS: usize = 1 << 18;
/// Attention is split among threads (by row and head) above this many multiply-adds where
/// the model's linear layers are split too: from the 43rd position on when decoding
/// GPT-2-124M one row at a time (where it took 7% of a step at 128 positions on one thread).
const PAR_MIN_ATTENTION: usize = 1 << 15;
/// The same where every layer runs on one core (the Austen models): the other thread sleeps
/// there (or drafts, in pipelined decoding), and waking it costs more than a verification's
/// attention saves: 5 rows after 64 positions took 31-34 µs a block split, 14-15 µs on one
/// thread. Split only for passes over many rows, such as long prompts.
const PAR_MIN_ATTENTION_ONE_THREAD: usize = 1 << 19;

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
    /// A wide classifier in 8 bits, found on its first greedy token or max-prob check (see
    /// [`uses_int8_head`], [`wide_int8_head`]); `None` inside when it cannot be made.
    /// Narrow ones keep theirs in `narrow`.
    wide_int8: OnceLock<Arc<Option<Int8Head>>>,
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
    /// The classifier in 8 bits, made on the first greedy token or max-prob check of a
    /// narrow model whose head runs on one thread (see [`CpuModel::int8_head`]).
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

/// A wide classifier's 8-bit copy, with what recognises the classifier: its shape
/// (`vocab`, `d`) and the digest of its weights.
struct WideInt8Head {
    vocab: usize,
    d: usize,
    digest: [u64; 2],
    copy: Arc<Option<Int8Head>>,
}

/// The 8-bit copies of the wide classifiers seen lately (see [`wide_int8_head`]).
static WIDE_INT8_HEADS: Mutex<Vec<WideInt8Head>> = Mutex::new(Vec::new());

/// The 8-bit copy of a wide classifier `head` (`[vocab, d]`): the one made before for a
/// classifier of the same shape and digest, else a new one (the older of two dropped).
/// Each generation makes its own [`CpuModel`], and the copy takes 60-80 ms to make for
/// GPT-2-124M — a third of a 32-token generation from layer 1, made again for every exit
/// layer of the explorer's depth-wise generation; the digest reads the weights once
/// (15-20 ms). Recognising the weights by their bits rather than their address keeps a
/// copy from outliving weights changed in place (a training step).
fn wide_int8_head(head: &[f32], d: usize, vocab: usize) -> Arc<Option<Int8Head>> {
    let digest = reduced_head::weights_digest(head);
    let mut seen = WIDE_INT8_HEADS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = seen.iter().position(|h| (h.vocab, h.d, h.digest) == (vocab, d, digest)) {
        let entry = seen.remove(i);
        let copy = entry.copy.clone();
        seen.push(entry);
        return copy;
    }
    // Made under the lock, so that two threads asking at once do not both make it; a thread
    // asking for another classifier meanwhile waits the tens of milliseconds it takes.
    let copy = Arc::new(Int8Head::new(head, d, vocab));
    if seen.len() >= 2 {
        seen.remove(0);
    }
    seen.push(WideInt8Head { vocab, d, digest, copy: copy.clone() });
    copy
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

/// All columns of a linear layer: [`linear_cols`], or through `assist` (see [`Assist`])
/// where given and the layer is not shared among the threads already. The same bits.
fn linear_assisted(assist: Option<&Assist>, x: &[f32], k: usize, wb: (&[f32], &[f32]), y: &mut Vec<f32>, mine: &mut Vec<f32>) {
    let n = wb.1.len();
    match assist {
        Some(a) if !splits_linear(k, n) => a.linear(x, k, wb, y, mine),
        _ => linear_cols(x, k, wb, 0, n, y),
    }
}

/// A block's linear layer: through its 8-bit copy where there is one (a drafter's
/// [`Decoder::approximate`]), else [`linear_assisted`].
fn linear_in(
    copy: Option<&quantized::QuantLinear>,
    assist: Option<&Assist>,
    x: &[f32],
    k: usize,
    wb: (&[f32], &[f32]),
    y: &mut Vec<f32>,
    mine: &mut Vec<f32>,
) {
    match copy {
        Some(c) => c.apply(x, y),
        None => linear_assisted(assist, x, k, wb, y, mine),
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
    /// The keys and values block `layer` computes from input rows `x` (`[rows, d]`) into
    /// `kv` (`[rows, 2d]`: the k and v columns of its projection), `normed` as scratch.
    pub fn kv_columns(&self, layer: usize, x: &[f32], normed: &mut Vec<f32>, kv: &mut Vec<f32>) {
        let w = &self.blocks[layer];
        layer_norm(x, w.ln_1.0, w.ln_1.1, self.eps, normed);
        linear_cols(normed, self.d, w.attn, self.d, 2 * self.d, kv);
    }

    /// The classifier `lm_head(ln_f(h))` for rows `h` (`[m, d]`) into `logits` (`[m, vocab]`).
    pub fn head(&self, h: &[f32], logits: &mut Vec<f32>) {
        let mut normed = Vec::with_capacity(h.len());
        layer_norm(h, self.ln_f.0, self.ln_f.1, self.eps, &mut normed);
        self.classify_normed(&normed, logits);
    }

    /// The greedy token of one row `h` (`[d]`): `argmax(lm_head(ln_f(h)))`, the token
    /// [`argmax`] picks from [`Self::head`]'s logits, bit for bit. Where the classifier has
    /// an 8-bit copy (`uses_int8_head`) it is found through it (`bounded_argmax_i8`),
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

    /// [`Self::greedy_token`] of each row of `h` (`[m, d]`), the classifier's 8-bit copy
    /// read once for all of them (a verification's rows): per row the same token.
    pub fn greedy_tokens(&self, h: &[f32]) -> Vec<u32> {
        let d = self.d;
        if h.len() <= d {
            return h.chunks_exact(d).map(|row| self.greedy_token(row)).collect();
        }
        let mut normed = Vec::with_capacity(h.len());
        layer_norm(h, self.ln_f.0, self.ln_f.1, self.eps, &mut normed);
        let row = |i: usize| &normed[i * d..(i + 1) * d];
        let found = match self.int8_head() {
            Some(int8) => bounded_argmax_i8_rows(&normed, d, int8, |i, v| self.exact_logit(row(i), v)),
            None => vec![None; h.len() / d],
        };
        let mut logits = Vec::new();
        found
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                t.unwrap_or_else(|| {
                    self.classify_normed(row(i), &mut logits);
                    argmax(&logits)
                })
            })
            .collect()
    }

    /// The classifier's 8-bit copy, made on the first call, where [`uses_int8_head`] says
    /// to use one and it can be made.
    fn int8_head(&self) -> Option<&Int8Head> {
        if !uses_int8_head(self.vocab, self.d) {
            return None;
        }
        // A classifier's copy is shared by every model with the same bits (see `NarrowHead`
        // and `wide_int8_head`), so it is made from this one as well as from any.
        match &self.narrow {
            Some(n) => n.int8.get_or_init(|| Int8Head::new(self.head, self.d, self.vocab)).as_ref(),
            None => self.wide_int8.get_or_init(|| wide_int8_head(self.head, self.d, self.vocab)).as_ref().as_ref(),
        }
    }

    /// Token `v`'s f32 logit for the normed row `x`, as [`Self::classify_normed`] computes it.
    fn exact_logit(&self, x: &[f32], v: usize) -> f32 {
        let d = self.d;
        match self.narrow {
            Some(_) => crate::kernels::matrix_col_dot(x, &self.head[v * d..(v + 1) * d], 0.0),
            None => row_logit(x, self.head, v),
        }
    }

    /// Makes the classifier's reduced copies now rather than on the first greedy token
    /// ([`Self::greedy_token`]) or, with `checks`, the first max-prob check that needs its
    /// second plane ([`Self::max_prob_check`]): they are made once per classifier and
    /// process, and a decoder timed against another (the explorer's speedups) should not
    /// pay for them where the other does not.
    pub fn prepare_reduced_head(&self, checks: bool) {
        if let Some(int8) = self.int8_head()
            && checks
        {
            int8.make_fine(self.head);
        }
    }

    /// Whether the largest softmax probability of `lm_head(ln_f(h))` (one row) reaches
    /// `threshold`, as [`crate::kernels::max_prob`] over [`Self::head`]'s logits says it,
    /// with the greedy token when it does: the max-prob early-exit check, decided from
    /// bounds on every logit and the exact logits of the few tokens near the top
    /// (`max_prob_check_i8`), through the classifier's 8-bit copy: the first plane
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
        max_prob_check_i8(&x, int8, self.head, threshold, |v| self.exact_logit(&x, v))
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
    /// The columns an [`Assist`]ed product computes on this thread.
    mine: Vec<f32>,
    normed: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    proj: Vec<f32>,
    hidden: Vec<f32>,
    act: Vec<f32>,
    scores: Vec<f32>,
}

/// Positions per transposed key row of the KV cache: the context rounded up to whole blocks
/// of the attention kernel's lanes.
fn key_stride(n_positions: usize) -> usize {
    n_positions.div_ceil(crate::kernels::KEY_BLOCK) * crate::kernels::KEY_BLOCK
}

/// Incremental decoding state: the KV cache of every block, filled position by position.
/// Blocks may be filled to different lengths (a draft runs ahead in the first blocks).
pub struct Decoder<'m, 'a> {
    pub model: &'m CpuModel<'a>,
    /// Per block: keys and values, head by head, each head's for the whole context together.
    /// A head's keys are transposed, one row of [`key_stride`] positions per component (the
    /// scores of consecutive positions are one vector's lanes: see `kernels::HeadCache`);
    /// its values one row of `d / n_head` floats per position, so attending a head reads
    /// contiguous stretches. Allocated at the full context when a block is first filled.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    filled: Vec<usize>,
    s: Scratch,
    /// When set, every block run adds its time per part (a clock read per part and block).
    pub profile: Option<BlockProfile>,
    /// Blocks computed through their 8-bit copies instead of the model's weights (see
    /// [`Self::approximate`]).
    quant: Option<&'m QuantBlocks>,
}

impl<'m, 'a> Decoder<'m, 'a> {
    pub fn new(model: &'m CpuModel<'a>) -> Self {
        let n = model.n_layer;
        Self {
            model,
            keys: vec![Vec::new(); n],
            values: vec![Vec::new(); n],
            filled: vec![0; n],
            s: Scratch::default(),
            profile: None,
            quant: None,
        }
    }

    /// A decoder that runs the blocks `quant` copies through those 8-bit copies (the others
    /// through the model's weights): approximately the model, for picking drafts only.
    pub fn approximate(model: &'m CpuModel<'a>, quant: &'m QuantBlocks) -> Self {
        Self { quant: Some(quant), ..Self::new(model) }
    }

    /// The 8-bit copies this decoder runs (see [`Self::approximate`]).
    pub fn quant(&self) -> Option<&'m QuantBlocks> {
        self.quant
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

    /// Keeps only the first `len` positions of block `layer`'s cache.
    pub fn truncate_block(&mut self, layer: usize, len: usize) {
        self.filled[layer] = self.filled[layer].min(len);
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
        let (d, cap, nh) = (self.model.d, self.model.n_positions, self.model.n_head);
        let (hd, ks) = (d / nh, key_stride(cap));
        let rows = kv.len() / stride;
        let (keys, values) = (&mut self.keys[layer], &mut self.values[layer]);
        if keys.is_empty() {
            *keys = vec![0.0; ks * d];
            *values = vec![0.0; cap * d];
        }
        let off = stride - 2 * d;
        for r in 0..rows {
            let (row, pos) = (&kv[r * stride..(r + 1) * stride], pos0 + r);
            for h in 0..nh {
                for (i, &k) in row[off + h * hd..off + (h + 1) * hd].iter().enumerate() {
                    keys[(h * hd + i) * ks + pos] = k;
                }
                let at = (h * cap + pos) * hd;
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
        self.block_until(layer, x, pos0, || false).map(|_| ())
    }

    /// [`Self::block`], asking `stop` after each of the block's parts whether to give up on
    /// it: when `stop` returns true, returns `false` at once, with `x` part-way through the
    /// block and the rows' keys and values in the cache (drop them with
    /// [`Self::truncate_block`]). Returns `true` when the block ran whole. Pipelined early
    /// exit stops a block this way when a lower layer's check lets the token leave, and the
    /// pipelined drafter when a correction voids its row.
    pub fn block_until(&mut self, layer: usize, x: &mut [f32], pos0: usize, stop: impl FnMut() -> bool) -> Result<bool> {
        self.block_assisted(layer, x, pos0, stop, None)
    }

    /// [`Self::block_until`], offering half of each linear layer's columns to a thread that
    /// waits on `assist` (see [`Assist`]): the same bits, sooner when that thread is idle.
    /// Layers the engine already shares among the threads (see `splits_linear`) are not offered.
    pub fn block_assisted(
        &mut self,
        layer: usize,
        x: &mut [f32],
        pos0: usize,
        mut stop: impl FnMut() -> bool,
        assist: Option<&Assist>,
    ) -> Result<bool> {
        self.check_position(layer, pos0)?;
        let m = self.model;
        let (d, inner) = (m.d, m.inner);
        let rows = x.len() / d;
        let w = &m.blocks[layer];
        let q = self.quant.and_then(|q| q.block(layer));
        let mut s = std::mem::take(&mut self.s);
        let mut clock = self.profile.as_ref().map(|_| Instant::now());
        layer_norm(x, w.ln_1.0, w.ln_1.1, m.eps, &mut s.normed);
        self.tick(&mut clock, BlockPart::LayerNorm, 2 * d);
        linear_in(q.map(|q| &q.attn), assist, &s.normed, d, w.attn, &mut s.qkv, &mut s.mine);
        self.store_kv(layer, &s.qkv, 3 * d, pos0);
        self.tick(&mut clock, BlockPart::Qkv, w.attn.0.len() + w.attn.1.len());
        if stop() {
            self.s = s;
            return Ok(false);
        }
        self.attention(layer, &s.qkv, pos0, &mut s.att, &mut s.scores);
        self.tick(&mut clock, BlockPart::Attention, 0);
        if stop() {
            self.s = s;
            return Ok(false);
        }
        linear_in(q.map(|q| &q.attn_proj), assist, &s.att, d, w.attn_proj, &mut s.proj, &mut s.mine);
        x.iter_mut().zip(&s.proj).for_each(|(a, b)| *a += b);
        self.tick(&mut clock, BlockPart::AttnProj, w.attn_proj.0.len() + w.attn_proj.1.len());
        if stop() {
            self.s = s;
            return Ok(false);
        }
        layer_norm(x, w.ln_2.0, w.ln_2.1, m.eps, &mut s.normed);
        self.tick(&mut clock, BlockPart::LayerNorm, 2 * d);
        linear_in(q.map(|q| &q.fc), assist, &s.normed, d, w.fc, &mut s.hidden, &mut s.mine);
        self.tick(&mut clock, BlockPart::Fc, w.fc.0.len() + w.fc.1.len());
        if stop() {
            self.s = s;
            return Ok(false);
        }
        activate(m.activation, &mut s.hidden, &mut s.act);
        self.tick(&mut clock, BlockPart::Activation, 0);
        linear_in(q.map(|q| &q.fc_proj), assist, &s.hidden, inner, w.fc_proj, &mut s.proj, &mut s.mine);
        x.iter_mut().zip(&s.proj).for_each(|(a, b)| *a += b);
        self.tick(&mut clock, BlockPart::FcProj, w.fc_proj.0.len() + w.fc_proj.1.len());
        debug_assert_eq!(s.proj.len(), rows * d);
        self.s = s;
        Ok(true)
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
        let mut s = std::mem::take(&mut self.s);
        self.model.kv_columns(layer, x, &mut s.normed, &mut s.qkv);
        self.store_kv(layer, &s.qkv, 2 * self.model.d, pos0);
        self.s = s;
        Ok(())
    }

    /// Appends keys and values computed by [`CpuModel::kv_columns`] (`[rows, 2d]`, keys
    /// then values) to block `layer`'s cache at positions `pos0..`: [`Self::fill_kv`] with
    /// the arithmetic done elsewhere (pipelined early exit does it on its second thread).
    pub fn store_kv_columns(&mut self, layer: usize, kv: &[f32], pos0: usize) -> Result<()> {
        self.check_position(layer, pos0)?;
        self.store_kv(layer, kv, 2 * self.model.d, pos0);
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
        let ks = key_stride(m.n_positions);
        let head = |h: usize| HeadCache {
            keys: &keys[h * hd * ks..(h + 1) * hd * ks],
            key_stride: ks,
            values: &values[h * m.n_positions * hd..(h + 1) * m.n_positions * hd],
        };
        out.resize(rows * d, 0.0);
        let work = rows * nh * (pos0 + rows) * hd;
        let par_min = if m.rows_use_one_thread() { PAR_MIN_ATTENTION_ONE_THREAD } else { PAR_MIN_ATTENTION };
        if work < par_min {
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

    /// [`CpuModel::greedy_tokens`]: the greedy token of each row of `h`.
    pub fn greedy_tokens(&self, h: &[f32]) -> Vec<u32> {
        self.model.greedy_tokens(h)
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

    /// A wide classifier's 8-bit copy is made once for its bits, wherever they lie, and
    /// made anew when a weight changes in place.
    #[test]
    fn a_wide_classifiers_copy_is_made_once_for_its_bits() {
        let (vocab, d) = (777, 40);
        let mut head: Vec<f32> = (0..vocab * d).map(|i| ((i * 104_729 % 2003) as f32 - 1000.0) * 1e-4).collect();
        let first = wide_int8_head(&head, d, vocab);
        assert!(first.is_some());
        let elsewhere = head.clone();
        assert!(Arc::ptr_eq(&first, &wide_int8_head(&elsewhere, d, vocab)));
        head[123] += 0.25;
        let changed = wide_int8_head(&head, d, vocab);
        assert!(!Arc::ptr_eq(&first, &changed));
        assert!(Arc::ptr_eq(&changed, &wide_int8_head(&head, d, vocab)));
    }

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
        assert!(cfg.n_embd > SHORT_ROWS && cfg.vocab_size * cfg.n_embd >= reduced_head::WIDE_INT8_MIN_WEIGHTS);
        assert_eq!(uses_int8_head(cfg.vocab_size, cfg.n_embd), crate::kernels::i16_i8_cols_is_fast());
        greedy_tokens_are_the_tensor_models(cfg, 9);
    }

    /// Preparing makes a narrow classifier's 8-bit copy, shared by every later model over
    /// the same weights.
    #[test]
    fn preparing_the_reduced_head_makes_the_copy_once() {
        let model = Gpt2::random(Gpt2Config::new(1, 128, 4, 4096, 16), 5, &Device::Cpu).unwrap();
        with_cpu_model(&model, |m| {
            m.prepare_reduced_head(true);
            assert!(m.narrow.as_ref().unwrap().int8.get().is_some_and(|c| c.is_some()));
            Ok(())
        })
        .unwrap();
        with_cpu_model(&model, |m| {
            assert!(m.narrow.as_ref().unwrap().int8.get().is_some(), "the copy is not shared");
            Ok(())
        })
        .unwrap();
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
