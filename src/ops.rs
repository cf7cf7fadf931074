//! Tensor operations shared by inference and training.
//!
//! Candle's CPU backend runs each elementwise op as its own pass with a fresh allocation,
//! which dominates training time for GPT-2's attention and layer norms. Four fused CPU ops
//! with hand-written backward passes replace those chains: causal self-attention straight
//! from the packed `c_attn` output, layer norm, the linear layer (one gemm onto the
//! broadcast bias, whose backward sums the bias gradient in parallel) and GELU. For a few
//! rows (batch-1 decoding) the linear layer and the classifier stream the weights instead
//! of calling a gemm. Other devices take the differentiable basic-op path, built from
//! candle ops that have a backward pass; [`with_portable_ops`] forces those paths on the CPU too
//! (that is how the CPU tests check what CUDA computes).

use crate::kernels::{blas, layers};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, D, DType, Device, InplaceOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::cell::Cell;

// ---------------------------------------------------------------- the portable path

thread_local! {
    static PORTABLE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every CPU-only fast path switched off on the calling thread: the fused
/// ops of this module, the small-row (batch-1) kernels, the hand-written cross-entropy of
/// the training loss and the CPU AdamW pass all take the basic-op paths that other devices
/// (CUDA) run. The CPU then computes what the GPU computes, op for op, so the tests can
/// check those paths against the fused ones and against PyTorch on a machine without a GPU.
///
/// The switch is per thread, so tests running side by side do not see each other's; every
/// dispatch consults it on the thread that calls the op, before any work goes to rayon.
pub fn with_portable_ops<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            PORTABLE.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(PORTABLE.with(|p| p.replace(true)));
    f()
}

/// Whether work on `device` may take a CPU-only fast path: on the CPU, unless
/// [`with_portable_ops`] is in force on this thread.
pub fn cpu_fast_path(device: &Device) -> bool {
    matches!(device, Device::Cpu) && !PORTABLE.with(Cell::get)
}

/// `x @ w + b` for `x: [n, in]`, `w: [in, out]`, `b: [out]`.
pub fn matmul_bias(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(&[x, w, b]) {
        let x = x.contiguous()?;
        return if tracked(&[&x, w, b]) { x.apply_op3(w, b, Linear) } else { x.apply_op3_no_bwd(w, b, &Linear) };
    }
    x.matmul(w)?.broadcast_add(b)
}

/// GPT-2's tanh-approximated GELU, fused (candle's backward for it takes a dozen passes).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(&[x]) && x.track_op() {
        return x.contiguous()?.apply_op1(GeluTanh);
    }
    x.gelu()
}

/// Whether a computation must stay differentiable: any input tracked for gradients makes
/// it so (and candle's fused kernels, which have no backward pass, are then off limits).
pub fn tracked(ts: &[&Tensor]) -> bool {
    ts.iter().any(|t| t.track_op())
}

/// `x @ w^T` for `x: [n, d]`, `w: [v, d]` (the classifier against the embedding matrix).
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if x.dim(0)? <= SMALL_ROWS && is_cpu_f32(&[x, w]) && !tracked(&[x, w]) {
        return x.contiguous()?.apply_op2_no_bwd(w, &SmallRowsTimesTransposed);
    }
    x.matmul(&w.t()?)
}

/// Below this many rows (batch-1 decoding, one lens position) a product is a stream over
/// the weights: the kernels below read every weight once, on all cores, near memory
/// bandwidth, where a general gemm is tuned for reuse.
const SMALL_ROWS: usize = 8;

/// Splits `n` columns into blocks for the threads, multiples of 16 floats.
fn column_blocks(n: usize) -> Vec<(usize, usize)> {
    let threads = rayon::current_num_threads().max(1);
    let per = n.div_ceil(threads * 4).div_ceil(16) * 16;
    (0..n).step_by(per.max(16)).map(|s| (s, per.max(16).min(n - s))).collect()
}

struct SmallRowsTimesTransposed;

impl CustomOp2 for SmallRowsTimesTransposed {
    fn name(&self) -> &'static str {
        "alignscope-small-rows-times-transposed"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s1, l1, "classifier input")?;
        let w = cpu_slice(s2, l2, "classifier weight")?;
        let (m, d) = l1.shape().dims2()?;
        let (v, d2) = l2.shape().dims2()?;
        if d != d2 {
            candle_core::bail!("classifier: [{m}, {d}] x [{v}, {d2}]^T")
        }
        let blocks = column_blocks(v);
        let parts: Vec<Vec<f32>> = blocks
            .par_iter()
            .map(|&(s, len)| {
                let mut y = vec![0f32; m * len];
                crate::kernels::rows_dot_rows(x, d, &w[s * d..(s + len) * d], &mut y, len);
                y
            })
            .collect();
        let mut out = vec![0f32; m * v];
        for ((s, len), part) in blocks.iter().zip(&parts) {
            for r in 0..m {
                out[r * v + s..r * v + s + len].copy_from_slice(&part[r * len..(r + 1) * len]);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((m, v))))
    }
}

/// Whether the fused CPU kernels apply: f32 tensors on a CPU fast path.
fn is_cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| cpu_fast_path(t.device()) && t.dtype() == DType::F32)
}

fn cpu_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

// ---------------------------------------------------------------- layer norm

/// Layer norm over the last dimension, differentiable w.r.t. x, weight and bias.
pub fn layer_norm_train(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if is_cpu_f32(&[x, weight, bias]) {
        return x.contiguous()?.apply_op3(weight, bias, LayerNormOp { eps });
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xn.broadcast_mul(weight)?.broadcast_add(bias)
}

struct LayerNormOp {
    eps: f64,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "alignscope-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s1, l1, "layer norm input")?;
        let w = cpu_slice(s2, l2, "layer norm weight")?;
        let b = cpu_slice(s3, l3, "layer norm bias")?;
        let mut y = output_vec(x.len());
        layers::layer_norm(x, w, b, self.eps, &mut y, None);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.dim(0)?;
        let n = x.elem_count() / d;
        let packed = x.apply_op3_no_bwd(w, &dy.contiguous()?, &LayerNormBackward { eps: self.eps })?;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = packed.narrow(0, n, 1)?.reshape(d)?;
        let db = packed.narrow(0, n + 1, 1)?.reshape(d)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Gradients of layer norm, packed as rows `[dx (n rows); dw; db]`.
struct LayerNormBackward {
    eps: f64,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "alignscope-layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s1, l1, "layer norm input")?;
        let w = cpu_slice(s2, l2, "layer norm weight")?;
        let dy = cpu_slice(s3, l3, "layer norm gradient")?;
        let d = w.len();
        let n = x.len() / d;
        let mut out = output_vec((n + 2) * d);
        let (dx, rest) = out.split_at_mut(n * d);
        let (dw, db) = layers::layer_norm_backward(x, w, dy, self.eps, None, dx, false);
        rest[..d].copy_from_slice(&dw);
        rest[d..].copy_from_slice(&db);
        Ok((CpuStorage::F32(out), Shape::from((n + 2, d))))
    }
}

// ---------------------------------------------------------------- attention

/// Causal self-attention from the packed projection `qkv: [b, t, 3c]` (q | k | v, heads
/// side by side as GPT-2 lays them out) to the merged heads `[b, t, c]`, or `None` when
/// the fused CPU kernel does not apply (other devices).
pub fn causal_attention(qkv: &Tensor, n_head: usize, scale: f64) -> Result<Option<Tensor>> {
    if !is_cpu_f32(&[qkv]) {
        return Ok(None);
    }
    let op = CausalAttention { n_head, scale: scale as f32 };
    let qkv = qkv.contiguous()?;
    Ok(Some(if qkv.track_op() { qkv.apply_op1(op)? } else { qkv.apply_op1_no_bwd(&op)? }))
}

#[derive(Clone, Copy)]
struct CausalAttention {
    n_head: usize,
    scale: f32,
}

impl CausalAttention {
    fn shape(&self, l: &Layout) -> Result<layers::AttentionShape> {
        let (b, t, c3) = l.shape().dims3()?;
        if c3 % (3 * self.n_head) != 0 {
            candle_core::bail!("qkv width {c3} is not 3 x n_head x head_dim")
        }
        Ok(layers::AttentionShape { b, t, c: c3 / 3, n_head: self.n_head, scale: self.scale })
    }
}

impl CustomOp1 for CausalAttention {
    fn name(&self) -> &'static str {
        "alignscope-causal-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = cpu_slice(s, l, "qkv")?;
        let shape = self.shape(l)?;
        let mut y = output_vec(shape.b * shape.t * shape.c);
        layers::attention(&shape, qkv, &mut y);
        Ok((CpuStorage::F32(y), Shape::from((shape.b, shape.t, shape.c))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(qkv.apply_op2_no_bwd(&dy.contiguous()?, &CausalAttentionBackward(*self))?))
    }
}

/// d qkv of [`CausalAttention`] given d y, recomputing the probabilities per head.
struct CausalAttentionBackward(CausalAttention);

impl CustomOp2 for CausalAttentionBackward {
    fn name(&self) -> &'static str {
        "alignscope-causal-attention-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = cpu_slice(s1, l1, "qkv")?;
        let dy = cpu_slice(s2, l2, "attention gradient")?;
        let shape = self.0.shape(l1)?;
        if dy.len() != shape.b * shape.t * shape.c {
            candle_core::bail!("attention gradient has {} elements, expected {}", dy.len(), shape.b * shape.t * shape.c)
        }
        let mut dqkv = output_vec(qkv.len());
        layers::attention_backward(&shape, qkv, dy, &mut dqkv);
        Ok((CpuStorage::F32(dqkv), l1.shape().clone()))
    }
}

/// The output vector of a kernel that writes every element (zero-filled: safe Rust has no
/// cheaper way to hand out floats).
fn output_vec(n: usize) -> Vec<f32> {
    vec![0f32; n]
}

// ---------------------------------------------------------------- linear

/// `y = x w + b` in one gemm that accumulates onto the broadcast bias.
struct Linear;

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "alignscope-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s1, l1, "linear input")?;
        let w = cpu_slice(s2, l2, "linear weight")?;
        let b = cpu_slice(s3, l3, "linear bias")?;
        let (n, k) = l1.shape().dims2()?;
        let (k2, m) = l2.shape().dims2()?;
        if k != k2 || b.len() != m {
            candle_core::bail!("linear: [{n}, {k}] x [{k2}, {m}] + [{}]", b.len())
        }
        if n <= SMALL_ROWS {
            // Each thread streams a contiguous range of weight rows into its own partial
            // sums; the partials are added in order (deterministic) onto the bias.
            let threads = rayon::current_num_threads().max(1);
            let per = k.div_ceil(threads);
            let parts: Vec<Vec<f32>> = (0..k)
                .step_by(per.max(1))
                .collect::<Vec<_>>()
                .par_iter()
                .map(|&r0| {
                    let r1 = (r0 + per).min(k);
                    let mut y = vec![0f32; n * m];
                    crate::kernels::rows_times_matrix_rows(x, k, r0, &w[r0 * m..r1 * m], m, &mut y);
                    y
                })
                .collect();
            let mut y = Vec::with_capacity(n * m);
            for _ in 0..n {
                y.extend_from_slice(b);
            }
            for part in &parts {
                y.iter_mut().zip(part).for_each(|(a, p)| *a += p);
            }
            return Ok((CpuStorage::F32(y), Shape::from((n, m))));
        }
        let mut y = output_vec(n * m);
        layers::broadcast_rows(b, None, &mut y);
        blas::sgemm(n, m, k, 1.0, blas::Operand::n(x, k), blas::Operand::n(w, m), true, &mut y, m, true);
        Ok((CpuStorage::F32(y), Shape::from((n, m))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = dy.matmul(&w.t()?)?;
        let dw = x.t()?.matmul(dy)?;
        let db = dy.contiguous()?.apply_op1_no_bwd(&ColumnSum)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Sums of the columns of `[n, m]` (a bias gradient): blocks of rows in parallel, their
/// partial sums added in order (candle's reduction over dim 0 is one strided thread).
struct ColumnSum;

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "alignscope-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s, l, "column-sum input")?;
        let (_, m) = l.shape().dims2()?;
        let out = layers::column_sums(x, m);
        Ok((CpuStorage::F32(out), Shape::from(m)))
    }
}

// ---------------------------------------------------------------- gelu

struct GeluTanh;

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "alignscope-gelu-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s, l, "gelu input")?;
        let mut y = output_vec(x.len());
        layers::gelu(x, &mut y);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &GeluTanhBackward)?))
    }
}

struct GeluTanhBackward;

impl CustomOp2 for GeluTanhBackward {
    fn name(&self) -> &'static str {
        "alignscope-gelu-tanh-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s1, l1, "gelu input")?;
        let dy = cpu_slice(s2, l2, "gelu gradient")?;
        let mut dx = dy.to_vec();
        layers::gelu_backward_in_place(x, &mut dx);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- in place

/// Runs `f` on the host memory of the f32 CPU tensor `t`, which it may change in place
/// (every tensor sharing that storage sees the change, as with `Var::set`, minus the copy).
pub fn with_host_mut<R>(t: &Tensor, f: impl FnOnce(&mut [f32]) -> R) -> Result<R> {
    let mut out = None;
    let op = HostMut(Cell::new(Some(|s: &mut [f32]| out = Some(f(s)))));
    t.inplace_op1(&op)?;
    drop(op);
    out.ok_or_else(|| candle_core::Error::Msg("with_host_mut: the tensor is not in host memory".into()))
}

/// Runs `f` on the host memory of the f32 CPU tensor `t` (contiguous), without a copy.
pub fn with_host<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (s, l) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*s else { candle_core::bail!("with_host: the tensor is not in host memory") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("with_host: the tensor is not contiguous") };
    Ok(f(&cpu.as_slice::<f32>()?[a..b]))
}

struct HostMut<F>(Cell<Option<F>>);

impl<F: FnOnce(&mut [f32])> InplaceOp1 for HostMut<F> {
    fn name(&self) -> &'static str {
        "alignscope-host-mut"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let CpuStorage::F32(data) = s else { candle_core::bail!("with_host_mut: the tensor is not f32") };
        let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("with_host_mut: the tensor is not contiguous") };
        if let Some(f) = self.0.take() {
            f(&mut data[a..b]);
        }
        Ok(())
    }
}
