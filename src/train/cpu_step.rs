//! The training step on the CPU, forward and backward written out by hand over host
//! buffers that live from one step to the next.
//!
//! It computes what [`super::loss::loss_and_grads`] computes through candle's autograd
//! (the tests hold both to PyTorch's gradients), without what autograd costs on a CPU: a
//! fresh zero-filled buffer and an extra pass for every gradient edge, single-threaded
//! elementwise ops, a graph per step. Every op runs on all cores (products through
//! [`crate::kernels::blas`], the rest through [`crate::kernels::layers`]); every sum is
//! taken in a fixed order, so a step's result does not depend on thread scheduling and a
//! resumed run is bit-identical to an uninterrupted one.
//!
//! The backward pass walks the blocks from the last to the first, carrying the gradient of
//! the residual stream; when it reaches `h^l` it adds the shared head's gradient for layer
//! `l` (aligned loss) or the cosine term's (ce-reg), so only one per-layer gradient is kept:
//! the head's at `h^l`, computed while block `l`'s backward pass runs.

use super::loss::{LossValue, Objective, aligned_weights};
use crate::kernels::blas::{Operand, sgemm};
use crate::kernels::layers::{self, AttentionShape};
use crate::model::Gpt2;
use crate::model::config::Activation;
use crate::model::gpt2::BLOCK_PARAMS;
use anyhow::{Result, bail};
use candle_core::{Storage, Tensor};
use rayon::prelude::*;
use std::time::{Duration, Instant};

/// Where a training step's time goes, accumulated over steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Token and position embeddings, forward and backward.
    Embedding,
    /// The trunk's layer norms (and the shared head's `ln_f`), forward and backward.
    LayerNorm,
    /// The trunk's matrix products (`c_attn`, `c_proj`, `c_fc`, MLP `c_proj`), forward
    /// and backward, with their biases.
    TrunkMatmul,
    /// Causal self-attention, forward and backward.
    Attention,
    /// GELU, residual adds, forward and backward.
    Elementwise,
    /// The shared head's products: logits, and the gradients of features and weights.
    HeadMatmul,
    /// Softmax cross-entropy of the head's logits (and its gradient).
    HeadSoftmax,
    /// ce-reg's cosine term.
    Cosine,
    /// Zeroing and accumulating gradients, gradient norm, AdamW.
    Optimizer,
    /// The shared head at `h^l` and block `l`'s backward pass side by side (every exit
    /// but the last): both streams' products, norms and softmax, timed together.
    HeadBesideBlock,
}

impl Section {
    pub const ALL: [Section; 10] = [
        Section::Embedding,
        Section::LayerNorm,
        Section::TrunkMatmul,
        Section::Attention,
        Section::Elementwise,
        Section::HeadMatmul,
        Section::HeadSoftmax,
        Section::Cosine,
        Section::Optimizer,
        Section::HeadBesideBlock,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Section::Embedding => "embedding",
            Section::LayerNorm => "layer norm",
            Section::TrunkMatmul => "trunk matmul",
            Section::Attention => "attention",
            Section::Elementwise => "gelu, residual",
            Section::HeadMatmul => "shared head matmul",
            Section::HeadSoftmax => "head softmax-CE",
            Section::Cosine => "cosine term",
            Section::Optimizer => "grad norm, AdamW",
            Section::HeadBesideBlock => "head beside block bwd",
        }
    }
}

/// Wall time and CPU time (all threads) per [`Section`], and the floating-point work of
/// the matrix products.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    time: [Duration; 10],
    /// `None` until the process CPU clock has been read around the section.
    cpu: [Option<f64>; 10],
    /// Multiply-adds of the trunk's and the head's products.
    pub trunk_fmas: u64,
    pub head_fmas: u64,
}

impl Profile {
    fn add(&mut self, s: Section, d: Duration) {
        self.time[s as usize] += d;
    }

    /// Charges the wall time `d` and the CPU time since `cpu_at_start` to `s`.
    fn add_since(&mut self, s: Section, d: Duration, cpu_at_start: Option<f64>) {
        self.add(s, d);
        if let (Some(c0), Some(c1)) = (cpu_at_start, crate::util::process_cpu_seconds()) {
            let slot = &mut self.cpu[s as usize];
            *slot = Some(slot.unwrap_or(0.0) + (c1 - c0));
        }
    }

    pub fn get(&self, s: Section) -> Duration {
        self.time[s as usize]
    }

    /// CPU seconds of all threads while `s` ran (`None` where the clock is not available).
    pub fn cpu(&self, s: Section) -> Option<f64> {
        self.cpu[s as usize]
    }

    /// Charges time spent outside this module's step (the optimizer, started when the
    /// process had used `cpu_at_start` seconds of CPU) to [`Section::Optimizer`].
    pub fn add_optimizer(&mut self, d: Duration, cpu_at_start: Option<f64>) {
        self.add_since(Section::Optimizer, d, cpu_at_start);
    }

    pub fn total(&self) -> Duration {
        self.time.iter().sum()
    }
}

/// Runs `f`, charging its wall time and the process's CPU time to `s`.
fn timed<R>(p: &mut Profile, s: Section, f: impl FnOnce() -> R) -> R {
    let (t, c) = (Instant::now(), crate::util::process_cpu_seconds());
    let r = f();
    p.add_since(s, t.elapsed(), c);
    r
}

/// Positions of a block's parameters in [`BLOCK_PARAMS`] order.
const LN1_W: usize = 0;
const LN1_B: usize = 1;
const ATTN_W: usize = 2;
const ATTN_B: usize = 3;
const PROJ_W: usize = 4;
const PROJ_B: usize = 5;
const LN2_W: usize = 6;
const LN2_B: usize = 7;
const FC_W: usize = 8;
const FC_B: usize = 9;
const MLP_W: usize = 10;
const MLP_B: usize = 11;

/// Whether this step can train `model`: f32 parameters on the CPU fast path, GPT-2's GELU.
pub fn supports(model: &Gpt2) -> bool {
    debug_assert_eq!(BLOCK_PARAMS[MLP_B], "mlp.c_proj.bias");
    crate::ops::cpu_fast_path(model.device())
        && matches!(model.config.activation(), Ok(Activation::GeluTanh))
        && model.params().iter().all(|(_, t)| t.dtype() == candle_core::DType::F32 && t.is_contiguous())
}

/// The activations of one block that its backward pass reads.
#[derive(Default)]
struct BlockActs {
    ln1: Vec<f32>,
    ln1_stats: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    mid: Vec<f32>,
    ln2: Vec<f32>,
    ln2_stats: Vec<f32>,
    fc: Vec<f32>,
    act: Vec<f32>,
}

/// Buffers of a step, kept between steps of the same shape.
#[derive(Default)]
pub struct Workspace {
    /// (rows, n_embd, inner, n_layer, vocab) the buffers are sized for.
    shape: (usize, usize, usize, usize, usize),
    /// The residual stream `h^0..h^L`.
    res: Vec<Vec<f32>>,
    blocks: Vec<BlockActs>,
    /// Gradient of the residual stream at the current layer of the backward pass.
    dres: Vec<f32>,
    /// Scratch of the backward pass: `[n, inner]`, `[n, 3d]`, `[n, d]`, `[n, d]`.
    dinner: Vec<f32>,
    dqkv: Vec<f32>,
    dnarrow: Vec<f32>,
    datt: Vec<f32>,
    /// The shared head: `ln_f` output and statistics, its gradient, one chunk of logits.
    z: Vec<f32>,
    z_stats: Vec<f32>,
    dz: Vec<f32>,
    logits: Vec<f32>,
    /// The head's gradient at `h^l`, computed beside block `l`'s backward pass.
    head_dh: Vec<f32>,
    /// ce-reg: the cosine term's gradient for each layer `1..=L` (index = layer).
    cos_grad: Vec<Vec<f32>>,
    /// Gradients of every parameter, in [`Gpt2::params`] order.
    pub grads: Vec<Vec<f32>>,
    pub profile: Profile,
    /// Run the head at `h^l` and block `l`'s backward pass one after the other instead of
    /// side by side: the same result, and a profile that charges every section alone.
    pub head_in_turn: bool,
}

impl Workspace {
    pub fn new() -> Self {
        Self::default()
    }

    fn fit(&mut self, model: &Gpt2, n: usize) {
        let c = &model.config;
        let (d, inner, l, v) = (c.n_embd, c.inner_dim(), c.n_layer, c.vocab_size);
        let shape = (n, d, inner, l, v);
        if self.grads.is_empty() {
            self.grads = model.params().iter().map(|(_, t)| vec![0f32; t.elem_count()]).collect();
        }
        if self.shape == shape {
            return;
        }
        self.shape = shape;
        let buf = |len: usize| vec![0f32; len];
        self.res = (0..=l).map(|_| buf(n * d)).collect();
        self.blocks = (0..l)
            .map(|_| BlockActs {
                ln1: buf(n * d),
                ln1_stats: buf(2 * n),
                qkv: buf(n * 3 * d),
                att: buf(n * d),
                mid: buf(n * d),
                ln2: buf(n * d),
                ln2_stats: buf(2 * n),
                fc: buf(n * inner),
                act: buf(n * inner),
            })
            .collect();
        self.dres = buf(n * d);
        self.dinner = buf(n * inner);
        self.dqkv = buf(n * 3 * d);
        self.dnarrow = buf(n * d);
        self.datt = buf(n * d);
        self.z = buf(n * d);
        self.z_stats = buf(2 * n);
        self.dz = buf(n * d);
        self.head_dh = buf(n * d);
        self.logits = buf(head_chunk_rows(v).min(n) * v);
        self.cos_grad.clear();
    }

    /// Sets every gradient to zero (the start of an optimizer step).
    pub fn zero_grads(&mut self) {
        let (t, c) = (Instant::now(), crate::util::process_cpu_seconds());
        self.grads.par_iter_mut().for_each(|g| g.par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0)));
        self.profile.add_since(Section::Optimizer, t.elapsed(), c);
    }
}

/// Rows of logits per head chunk: one chunk's logits near 32 MB.
pub fn head_chunk_rows(vocab: usize) -> usize {
    (8_000_000 / vocab).max(16)
}

/// Read access to every parameter of the model as host slices, in [`Gpt2::params`] order.
struct HostParams<'a> {
    guards: Vec<(candle_core::StorageRef<'a>, &'a candle_core::Layout)>,
}

impl<'a> HostParams<'a> {
    fn lock(tensors: &'a [Tensor]) -> Self {
        Self { guards: tensors.iter().map(|t| t.storage_and_layout()).collect() }
    }

    fn slices(&self) -> Result<Vec<&[f32]>> {
        self.guards
            .iter()
            .map(|(s, l)| {
                let Storage::Cpu(cpu) = &**s else { bail!("a parameter is not in host memory") };
                let data = cpu.as_slice::<f32>()?;
                match l.contiguous_offsets() {
                    Some((a, b)) => Ok(&data[a..b]),
                    None => bail!("a parameter is not contiguous"),
                }
            })
            .collect()
    }
}

/// The parameters of one block.
struct BlockParams<'a> {
    p: &'a [&'a [f32]],
}

impl<'a> BlockParams<'a> {
    fn get(&self, i: usize) -> &'a [f32] {
        self.p[i]
    }
}

/// One micro-batch: `ids` and `targets` are `[b, t]` row-major.
pub struct MicroBatch<'a> {
    pub ids: &'a [u32],
    pub targets: &'a [u32],
    pub b: usize,
    pub t: usize,
}

/// Loss of one micro-batch, its gradients (scaled by `grad_scale`) added onto
/// `ws.grads`. The caller zeroes the gradients at the start of an optimizer step.
pub fn accumulate_loss_and_grads(
    model: &Gpt2,
    batch: &MicroBatch,
    obj: &Objective,
    grad_scale: f64,
    ws: &mut Workspace,
) -> Result<LossValue> {
    let cfg = &model.config;
    let (n_layer, d, inner, vocab) = (cfg.n_layer, cfg.n_embd, cfg.inner_dim(), cfg.vocab_size);
    let (b, t) = (batch.b, batch.t);
    let n = b * t;
    if obj.layer_weights.len() != n_layer {
        bail!("objective has {} layer weights for {n_layer} layers", obj.layer_weights.len())
    }
    if batch.ids.len() != n || batch.targets.len() != n {
        bail!("a micro-batch of {b} x {t} needs {n} inputs and targets, got {} and {}", batch.ids.len(), batch.targets.len())
    }
    if t > cfg.n_positions {
        bail!("sequence of {t} tokens is longer than the model's context of {} positions", cfg.n_positions)
    }
    if let Some(&bad) = batch.ids.iter().chain(batch.targets).find(|&&i| i as usize >= vocab) {
        bail!("token id {bad} is outside the vocabulary of {vocab}")
    }
    if obj.layer_weights.iter().all(|&w| w == 0.0) && obj.cos_beta <= 0.0 {
        bail!("the objective has no trainable term")
    }
    ws.fit(model, n);
    let tensors: Vec<Tensor> = model.params().into_iter().map(|(_, t)| t).collect();
    let host = HostParams::lock(&tensors);
    let p = host.slices()?;
    let head_index = if model.lm_head.is_some() { p.len() - 1 } else { 0 };
    let (lnf_w, lnf_b, head_w) = (p[2 + 12 * n_layer], p[3 + 12 * n_layer], p[head_index]);
    let block = |l: usize| BlockParams { p: &p[2 + 12 * l..2 + 12 * (l + 1)] };
    let eps = cfg.layer_norm_epsilon;
    let Workspace {
        res,
        blocks,
        dres,
        dinner,
        dqkv,
        dnarrow,
        datt,
        z,
        z_stats,
        dz,
        logits,
        head_dh,
        cos_grad,
        grads,
        profile,
        head_in_turn,
        shape: _,
    } = ws;
    let prof = profile;

    // ---- forward
    timed(prof, Section::Embedding, || {
        let (wte, wpe) = (p[0], p[1]);
        res[0].par_chunks_mut(d).enumerate().for_each(|(r, h)| {
            let (tok, pos) = (&wte[batch.ids[r] as usize * d..][..d], &wpe[(r % t) * d..][..d]);
            for i in 0..d {
                h[i] = tok[i] + pos[i];
            }
        });
    });
    for l in 0..n_layer {
        let (w, a) = (block(l), &mut blocks[l]);
        let (before, after) = res.split_at_mut(l + 1);
        let (x, out) = (&before[l], &mut after[0]);
        let shape = AttentionShape { b, t, c: d, n_head: cfg.n_head, scale: model.blocks[l].attn.scale as f32 };
        timed(prof, Section::LayerNorm, || layers::layer_norm(x, w.get(LN1_W), w.get(LN1_B), eps, &mut a.ln1, Some(&mut a.ln1_stats)));
        timed(prof, Section::TrunkMatmul, || linear(&a.ln1, w.get(ATTN_W), w.get(ATTN_B), None, d, 3 * d, &mut a.qkv));
        timed(prof, Section::Attention, || layers::attention(&shape, &a.qkv, &mut a.att));
        timed(prof, Section::TrunkMatmul, || linear(&a.att, w.get(PROJ_W), w.get(PROJ_B), Some(x), d, d, &mut a.mid));
        timed(prof, Section::LayerNorm, || layers::layer_norm(&a.mid, w.get(LN2_W), w.get(LN2_B), eps, &mut a.ln2, Some(&mut a.ln2_stats)));
        timed(prof, Section::TrunkMatmul, || linear(&a.ln2, w.get(FC_W), w.get(FC_B), None, d, inner, &mut a.fc));
        timed(prof, Section::Elementwise, || layers::gelu(&a.fc, &mut a.act));
        timed(prof, Section::TrunkMatmul, || linear(&a.act, w.get(MLP_W), w.get(MLP_B), Some(&a.mid), inner, d, out));
    }
    prof.trunk_fmas += (n * d * (3 * d + d + 2 * inner) * n_layer) as u64;

    // ---- ce-reg's cosine term: its value now, its gradients kept for the backward pass
    let mut reg = 0.0;
    let cos_on = obj.cos_beta > 0.0 && n_layer > 1;
    if cos_on {
        timed(prof, Section::Cosine, || {
            let lambdas = aligned_weights(n_layer);
            if cos_grad.len() != n_layer + 1 || cos_grad[0].len() != n * d {
                *cos_grad = (0..=n_layer).map(|_| vec![0f32; n * d]).collect();
            }
            cos_grad[n_layer].fill(0.0);
            for l in 1..n_layer {
                let coef = -obj.cos_beta * grad_scale * lambdas[l - 1] / n as f64;
                let (lower, upper) = cos_grad.split_at_mut(n_layer);
                let mean = cosine_term(&res[l], &res[n_layer], d, coef, &mut lower[l], &mut upper[0]);
                reg += lambdas[l - 1] * (1.0 - mean);
            }
        });
    }

    // ---- backward, from the last block down. The shared head at h^l needs only the
    // forward pass, so it runs while block l's backward pass computes the gradient at
    // h^l, and is added to it after: two streams of work, whose products' blocks either
    // core takes, so neither waits for the other at the end of each product. Both write
    // their own buffers and sum in the order of the sequential pass: the result is the
    // same to the bit as running them in turn (`Workspace::head_in_turn`, tested).
    let mut layer_losses = vec![0.0; n_layer];
    let mut loss = 0.0;
    let head = HeadArgs { lnf_w, lnf_b, head_w, vocab, d, eps };
    let in_turn = *head_in_turn;
    {
        let (weight, dhead) = (obj.layer_weights[n_layer - 1], &mut grads[head_index]);
        let top = head_at(&head, &res[n_layer], batch.targets, weight, obj, grad_scale, (z, z_stats, dz, logits), dhead, dres, prof);
        if top.lnf_grads.is_none() {
            // No head gradient at the top: the backward pass starts from the cosine term
            // alone (ce-reg with a zero last-layer weight) or from nothing.
            timed(prof, Section::Cosine, || if cos_on { dres.copy_from_slice(&cos_grad[n_layer]) } else { dres.fill(0.0) });
        } else if cos_on {
            timed(prof, Section::Cosine, || add_into(dres, &cos_grad[n_layer]));
        }
        top.add_to(&mut layer_losses[n_layer - 1], &mut loss, weight, grads, n_layer);
    }
    for l in (0..n_layer).rev() {
        // dres is d loss / d h^{l+1}: through block l to d loss / d h^l, beside the head at h^l.
        let (w, a, x) = (block(l), &blocks[l], &res[l]);
        let (g, dhead) = block_and_head_grads(grads, l, head_index);
        let shape = AttentionShape { b, t, c: d, n_head: cfg.n_head, scale: model.blocks[l].attn.scale as f32 };
        let mut block_backward = |prof: &mut Profile| {
            prof.trunk_fmas += 2 * (n * d * (3 * d + d + 2 * inner)) as u64;
            // out = mid + act @ W2 + b2
            timed(prof, Section::TrunkMatmul, || {
                linear_backward(&a.act, w.get(MLP_W), dres, inner, d, pair(g, MLP_W), Some(&mut dinner[..]));
            });
            // act = gelu(fc)
            timed(prof, Section::Elementwise, || layers::gelu_backward_in_place(&a.fc, dinner));
            // fc = ln2 @ W1 + b1
            timed(prof, Section::TrunkMatmul, || {
                linear_backward(&a.ln2, w.get(FC_W), dinner, d, inner, pair(g, FC_W), Some(&mut dnarrow[..]));
            });
            // ln2 = LN(mid); dres becomes d loss / d mid
            timed(prof, Section::LayerNorm, || {
                let (dw, db) = layers::layer_norm_backward(&a.mid, w.get(LN2_W), dnarrow, eps, Some(&a.ln2_stats), dres, true);
                let (gw, gb) = pair(g, LN2_W);
                add_into(gw, &dw);
                add_into(gb, &db);
            });
            // mid = x + att @ Wp + bp
            timed(prof, Section::TrunkMatmul, || {
                linear_backward(&a.att, w.get(PROJ_W), dres, d, d, pair(g, PROJ_W), Some(&mut datt[..]));
            });
            timed(prof, Section::Attention, || layers::attention_backward(&shape, &a.qkv, datt, dqkv));
            // qkv = ln1 @ Wa + ba
            timed(prof, Section::TrunkMatmul, || {
                linear_backward(&a.ln1, w.get(ATTN_W), dqkv, d, 3 * d, pair(g, ATTN_W), Some(&mut dnarrow[..]));
            });
            // ln1 = LN(x); dres becomes d loss / d x = d loss / d h^l
            timed(prof, Section::LayerNorm, || {
                let (dw, db) = layers::layer_norm_backward(x, w.get(LN1_W), dnarrow, eps, Some(&a.ln1_stats), dres, true);
                let (gw, gb) = pair(g, LN1_W);
                add_into(gw, &dw);
                add_into(gb, &db);
            });
        };
        if l == 0 {
            // h^0 (the embeddings) has no exit.
            block_backward(prof);
            continue;
        }
        // The head at h^l: layer l's CE, its gradient at h^l written into its own buffer.
        let weight = obj.layer_weights[l - 1];
        let mut head_at_l =
            |prof: &mut Profile| head_at(&head, x, batch.targets, weight, obj, grad_scale, (z, z_stats, dz, logits), dhead, head_dh, prof);
        let exit = if in_turn {
            let exit = head_at_l(prof);
            block_backward(prof);
            exit
        } else {
            // Timed as one section: the two streams' own sections overlap.
            let (t0, c0) = (Instant::now(), crate::util::process_cpu_seconds());
            let (mut p_block, mut p_head) = (Profile::default(), Profile::default());
            let ((), exit) = rayon::join(|| block_backward(&mut p_block), || head_at_l(&mut p_head));
            prof.add_since(Section::HeadBesideBlock, t0.elapsed(), c0);
            exit
        };
        if exit.lnf_grads.is_some() {
            timed(prof, Section::Elementwise, || add_into(dres, head_dh));
        }
        if cos_on {
            timed(prof, Section::Cosine, || add_into(dres, &cos_grad[l]));
        }
        exit.add_to(&mut layer_losses[l - 1], &mut loss, weight, grads, n_layer);
    }
    // h^0 = wte[ids] + wpe[positions]
    timed(prof, Section::Embedding, || {
        let (gwte, rest) = grads.split_at_mut(1);
        embedding_backward(batch.ids, dres, d, &mut gwte[0]);
        let gwpe = &mut rest[0];
        gwpe[..t * d].par_chunks_mut(d).enumerate().for_each(|(pos, gp)| {
            for bi in 0..b {
                let row = &dres[(bi * t + pos) * d..][..d];
                gp.iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
        });
    });
    if cos_on {
        loss += obj.cos_beta * reg;
    }
    Ok(LossValue { loss, layer_losses })
}

/// `y = x @ w + b` (+ `residual`), `x: [n, k]`, `w: [k, m]`.
fn linear(x: &[f32], w: &[f32], b: &[f32], residual: Option<&[f32]>, k: usize, m: usize, y: &mut [f32]) {
    let n = x.len() / k;
    layers::broadcast_rows(b, residual, y);
    sgemm(n, m, k, 1.0, Operand::n(x, k), Operand::n(w, m), true, y, m, true);
}

/// Backward of `y = x @ w + b` (`x: [n, k]`, `w: [k, m]`): adds `x^T dy` to `dw` and
/// the column sums of `dy` to `db`; writes `dy @ w^T` into `dx` when given.
fn linear_backward(x: &[f32], w: &[f32], dy: &[f32], k: usize, m: usize, (dw, db): (&mut [f32], &mut [f32]), dx: Option<&mut [f32]>) {
    let n = x.len() / k;
    // Side by side: the two products write their own outputs, and a core done with its
    // blocks of one takes blocks of the other rather than wait.
    rayon::join(
        || sgemm(k, m, n, 1.0, Operand::t(x, k), Operand::n(dy, m), true, dw, m, true),
        || {
            if let Some(dx) = dx {
                sgemm(n, k, m, 1.0, Operand::n(dy, m), Operand::t(w, m), false, dx, k, true);
            }
        },
    );
    add_into(db, &layers::column_sums(dy, m));
}

/// The gradients of a weight and of the bias that follows it.
fn pair(g: &mut [Vec<f32>], weight: usize) -> (&mut [f32], &mut [f32]) {
    let (a, b) = g.split_at_mut(weight + 1);
    (&mut a[weight], &mut b[0])
}

/// `acc += x`, elementwise, in parallel.
fn add_into(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len(), "add_into lengths");
    acc.par_chunks_mut(1 << 14).zip(x.par_chunks(1 << 14)).for_each(|(a, x)| a.iter_mut().zip(x).for_each(|(a, v)| *a += v));
}

/// `dwte[ids[r]] += dres[r]` for every row in order: each task owns the ids congruent to
/// it, so every row of `dwte` sums its contributions in row order.
fn embedding_backward(ids: &[u32], dres: &[f32], d: usize, dwte: &mut [f32]) {
    const PARTS: usize = 16;
    let ptr = SharedRows(dwte.as_mut_ptr());
    let len = dwte.len();
    (0..PARTS).into_par_iter().for_each(|part| {
        for (r, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id % PARTS != part {
                continue;
            }
            assert!((id + 1) * d <= len, "token id inside the embedding matrix");
            // SAFETY: row `id` lies inside dwte (asserted), and only the task owning
            // `id % PARTS` writes it, so no two tasks touch the same row.
            let row = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(id * d), d) };
            row.iter_mut().zip(&dres[r * d..(r + 1) * d]).for_each(|(a, v)| *a += v);
        }
    });
}

/// The rows of a gradient matrix, shared by tasks that each write their own rows.
#[derive(Clone, Copy)]
struct SharedRows(*mut f32);

impl SharedRows {
    fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: tasks write disjoint rows while the buffer is alive (borrowed for the call).
unsafe impl Send for SharedRows {}
// SAFETY: as for Send.
unsafe impl Sync for SharedRows {}

/// What the shared head reads.
struct HeadArgs<'a> {
    lnf_w: &'a [f32],
    lnf_b: &'a [f32],
    head_w: &'a [f32],
    vocab: usize,
    d: usize,
    eps: f64,
}

/// CE of the shared head over the rows of `h` (summed), in chunks of logits. With
/// `grad_scale` (the loss weight / rows), `grad_scale * (softmax - onehot)` is pushed
/// back: the head matrix's gradient is added onto `dhead`, `ln_f`'s input gradient is
/// written into `dh`, and `ln_f`'s parameter gradients are returned.
#[allow(clippy::too_many_arguments)]
fn head_pass(
    a: &HeadArgs,
    h: &[f32],
    targets: &[u32],
    grad_scale: Option<f64>,
    scratch: (&mut Vec<f32>, &mut Vec<f32>, &mut Vec<f32>, &mut Vec<f32>),
    dhead: &mut [f32],
    dh: &mut [f32],
    prof: &mut Profile,
) -> (f64, Vec<f32>, Vec<f32>) {
    let (z, z_stats, dz, logits) = scratch;
    let (d, v) = (a.d, a.vocab);
    let n = h.len() / d;
    let (z, z_stats, dz) = (&mut z[..n * d], &mut z_stats[..2 * n], &mut dz[..n * d]);
    timed(prof, Section::LayerNorm, || layers::layer_norm(h, a.lnf_w, a.lnf_b, a.eps, z, Some(z_stats)));
    let step = head_chunk_rows(v);
    let mut ce = 0.0;
    for start in (0..n).step_by(step) {
        let len = step.min(n - start);
        let zc = &z[start * d..(start + len) * d];
        let lg = &mut logits[..len * v];
        timed(prof, Section::HeadMatmul, || sgemm(len, v, d, 1.0, Operand::n(zc, d), Operand::t(a.head_w, d), false, lg, v, true));
        prof.head_fmas += (len * v * d) as u64;
        let tg = &targets[start..start + len];
        let scale = grad_scale.unwrap_or(0.0) as f32;
        let per_row: Vec<f64> = timed(prof, Section::HeadSoftmax, || {
            lg.par_chunks_mut(v).zip(tg.par_iter()).map(|(row, &t)| crate::kernels::xent_row(row, t as usize, scale)).collect()
        });
        // Summed in order, so the value does not depend on rayon's split.
        ce += per_row.iter().sum::<f64>();
        if grad_scale.is_some() {
            timed(prof, Section::HeadMatmul, || {
                let dzc = &mut dz[start * d..(start + len) * d];
                sgemm(len, d, v, 1.0, Operand::n(lg, v), Operand::n(a.head_w, d), false, dzc, d, true);
                sgemm(v, d, len, 1.0, Operand::t(lg, v), Operand::n(zc, d), true, dhead, d, true);
            });
            prof.head_fmas += 2 * (len * v * d) as u64;
        }
    }
    if grad_scale.is_none() {
        return (ce, Vec::new(), Vec::new());
    }
    let (dw, db) = timed(prof, Section::LayerNorm, || layers::layer_norm_backward(h, a.lnf_w, dz, a.eps, Some(z_stats), dh, false));
    (ce, dw, db)
}

/// The shared head at one exit `h^j` of the backward pass: its CE, and where the layer has
/// a loss weight, its gradient.
struct Exit {
    /// Mean CE over the rows the head saw.
    ce: f64,
    /// `ln_f`'s parameter gradients, where the layer is weighted.
    lnf_grads: Option<(Vec<f32>, Vec<f32>)>,
}

impl Exit {
    /// Records the layer's CE and adds its weighted share to `loss`, and `ln_f`'s
    /// gradients to theirs.
    fn add_to(self, layer_loss: &mut f64, loss: &mut f64, weight: f64, grads: &mut [Vec<f32>], n_layer: usize) {
        *layer_loss = self.ce;
        if let Some((dw, db)) = self.lnf_grads {
            add_into(&mut grads[2 + 12 * n_layer], &dw);
            add_into(&mut grads[3 + 12 * n_layer], &db);
            *loss += weight * self.ce;
        }
    }
}

/// The shared head at `h` (one exit) under the objective: with a loss weight, CE over every
/// row and its gradient (the head matrix's added onto `dhead`, `ln_f`'s input gradient
/// written into `dh`); without, the monitoring CE over the first
/// `monitor_positions` rows alone.
#[allow(clippy::too_many_arguments)]
fn head_at(
    head: &HeadArgs,
    h: &[f32],
    targets: &[u32],
    weight: f64,
    obj: &Objective,
    grad_scale: f64,
    scratch: (&mut Vec<f32>, &mut Vec<f32>, &mut Vec<f32>, &mut Vec<f32>),
    dhead: &mut [f32],
    dh: &mut [f32],
    prof: &mut Profile,
) -> Exit {
    let n = h.len() / head.d;
    if weight != 0.0 {
        let (ce, dw, db) = head_pass(head, h, targets, Some(weight * grad_scale / n as f64), scratch, dhead, dh, prof);
        return Exit { ce: ce / n as f64, lnf_grads: Some((dw, db)) };
    }
    let m = if obj.monitor_positions == 0 { n } else { obj.monitor_positions.min(n) };
    let (ce, _, _) = head_pass(head, &h[..m * head.d], &targets[..m], None, scratch, &mut [], &mut [], prof);
    Exit { ce: ce / m as f64, lnf_grads: None }
}

/// The gradients of block `l`'s parameters and of the head matrix (the first parameter,
/// tied to the embedding, or the last), borrowed together.
fn block_and_head_grads(grads: &mut [Vec<f32>], l: usize, head_index: usize) -> (&mut [Vec<f32>], &mut Vec<f32>) {
    let block = 2 + 12 * l..2 + 12 * (l + 1);
    assert!(head_index < block.start || head_index >= block.end, "the head matrix is not a block parameter");
    if head_index < block.start {
        let (head, rest) = grads.split_at_mut(head_index + 1);
        (&mut rest[block.start - head_index - 1..block.end - head_index - 1], &mut head[head_index])
    } else {
        let (rest, head) = grads.split_at_mut(head_index);
        (&mut rest[block], &mut head[0])
    }
}

/// Mean over rows of `cos(a_r, b_r) = a_r . b_r / (|a_r| |b_r| + 1e-12)`; adds
/// `coef * d cos_r / d a_r` onto `ga` (overwriting) and onto `gb` (accumulating).
fn cosine_term(a: &[f32], b: &[f32], d: usize, coef: f64, ga: &mut [f32], gb: &mut [f32]) -> f64 {
    let per_row: Vec<f64> = ga
        .par_chunks_mut(d)
        .zip(gb.par_chunks_mut(d))
        .zip(a.par_chunks(d).zip(b.par_chunks(d)))
        .map(|((ga, gb), (ar, br))| {
            let (mut dot, mut aa, mut bb) = (0f64, 0f64, 0f64);
            for i in 0..d {
                let (x, y) = (ar[i] as f64, br[i] as f64);
                dot += x * y;
                aa += x * x;
                bb += y * y;
            }
            let (na, nb) = (aa.sqrt(), bb.sqrt());
            let den = na * nb + 1e-12;
            let cos = dot / den;
            // d cos / d a = b / den - dot nb a / (na den^2), and symmetrically for b.
            let (ka, kb) = (dot * nb / (na * den * den), dot * na / (nb * den * den));
            for i in 0..d {
                let (x, y) = (ar[i] as f64, br[i] as f64);
                ga[i] = (coef * (y / den - ka * x)) as f32;
                gb[i] += (coef * (x / den - kb * y)) as f32;
            }
            cos
        })
        .collect();
    per_row.iter().sum::<f64>() / per_row.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Gpt2Config;
    use crate::train::loss::standard_weights;
    use candle_core::Device;

    fn model(tied: bool) -> Gpt2 {
        let cfg: Gpt2Config = serde_json::from_value(serde_json::json!({
            "vocab_size": 512, "n_positions": 64, "n_embd": 64, "n_layer": 4, "n_head": 4,
            "tie_word_embeddings": tied,
        }))
        .unwrap();
        Gpt2::random(cfg, 7, &Device::Cpu).unwrap()
    }

    /// Loss, per-layer losses and every gradient of two steps (accumulated), the head and
    /// the block backward side by side or in turn.
    fn run(model: &Gpt2, obj: &Objective, in_turn: bool) -> (Vec<f64>, Vec<Vec<f32>>) {
        let (b, t, v) = (4, 64, model.config.vocab_size as u32);
        let ids: Vec<u32> = (0..b * t).map(|i| (i as u32 * 37 + 11) % v).collect();
        let targets: Vec<u32> = (0..b * t).map(|i| (i as u32 * 101 + 5) % v).collect();
        let mut ws = Workspace { head_in_turn: in_turn, ..Workspace::new() };
        let mut losses = vec![];
        for scale in [1.0, 0.5] {
            let batch = MicroBatch { ids: &ids, targets: &targets, b, t };
            let value = accumulate_loss_and_grads(model, &batch, obj, scale, &mut ws).unwrap();
            losses.push(value.loss);
            losses.extend(value.layer_losses);
        }
        (losses, std::mem::take(&mut ws.grads))
    }

    /// The head at h^l beside block l's backward pass gives the step run in turn, to the
    /// bit: every objective's kind, tied and untied heads, any number of threads.
    #[test]
    fn head_beside_the_block_backward_is_the_step_in_turn() {
        let objectives = [
            Objective { layer_weights: aligned_weights(4), cos_beta: 0.0, monitor_positions: 0 },
            Objective { layer_weights: standard_weights(4), cos_beta: 0.0, monitor_positions: 50 },
            Objective { layer_weights: vec![0.5, 0.0, 0.5, 1.0], cos_beta: 0.3, monitor_positions: 0 },
            Objective { layer_weights: vec![0.2, 0.3, 0.5, 0.0], cos_beta: 0.1, monitor_positions: 0 },
            Objective { layer_weights: vec![1.0, 0.0, 0.0, 0.0], cos_beta: 0.0, monitor_positions: 0 },
        ];
        for tied in [true, false] {
            let m = model(tied);
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                for obj in &objectives {
                    let (beside, in_turn) = pool.install(|| (run(&m, obj, false), run(&m, obj, true)));
                    let what = format!("weights {:?}, cos {}, tied {tied}, {threads} threads", obj.layer_weights, obj.cos_beta);
                    assert_eq!(beside.0, in_turn.0, "losses: {what}");
                    for (i, (a, b)) in beside.1.iter().zip(&in_turn.1).enumerate() {
                        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "gradient {i}: {what}");
                        assert!(a.iter().any(|&x| x != 0.0) || obj.layer_weights[3] == 0.0, "gradient {i} is zero: {what}");
                    }
                }
            }
        }
    }
}
