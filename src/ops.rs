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

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, D, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::cell::{Cell, RefCell};

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

/// Mean and 1/std of one row, in f64 like the reference's f32 kernels accumulate.
fn row_stats(row: &[f32], eps: f64) -> (f32, f32) {
    let n = row.len() as f64;
    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
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
        let d = w.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d * 64).zip(x.par_chunks(d * 64)).for_each(|(yc, xc)| {
            for (yr, xr) in yc.chunks_mut(d).zip(xc.chunks(d)) {
                let (mean, rstd) = row_stats(xr, self.eps);
                for i in 0..d {
                    yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
                }
            }
        });
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
        let mut out = vec![0f32; (n + 2) * d];
        let (dx, rest) = out.split_at_mut(n * d);
        let rows = 64;
        // Partial sums per fixed block of rows, added in order: the result must not depend
        // on how rayon happened to split the work (resumed runs are bit-identical).
        let partials: Vec<(Vec<f64>, Vec<f64>)> = dx
            .par_chunks_mut(d * rows)
            .zip(x.par_chunks(d * rows).zip(dy.par_chunks(d * rows)))
            .map(|(dxc, (xc, dyc))| {
                let mut dw = vec![0f64; d];
                let mut db = vec![0f64; d];
                let mut xhat = vec![0f32; d];
                for ((dxr, xr), dyr) in dxc.chunks_mut(d).zip(xc.chunks(d)).zip(dyc.chunks(d)) {
                    let (mean, rstd) = row_stats(xr, self.eps);
                    let (mut s1, mut s2) = (0f64, 0f64);
                    for i in 0..d {
                        xhat[i] = (xr[i] - mean) * rstd;
                        let g = (dyr[i] * w[i]) as f64;
                        s1 += g;
                        s2 += g * xhat[i] as f64;
                        dw[i] += (dyr[i] * xhat[i]) as f64;
                        db[i] += dyr[i] as f64;
                    }
                    let (m1, m2) = ((s1 / d as f64) as f32, (s2 / d as f64) as f32);
                    for i in 0..d {
                        dxr[i] = (dyr[i] * w[i] - m1 - xhat[i] * m2) * rstd;
                    }
                }
                (dw, db)
            })
            .collect();
        let (mut dw, mut db) = (vec![0f64; d], vec![0f64; d]);
        for (pw, pb) in &partials {
            dw.iter_mut().zip(pw).for_each(|(x, y)| *x += y);
            db.iter_mut().zip(pb).for_each(|(x, y)| *x += y);
        }
        for i in 0..d {
            rest[i] = dw[i] as f32;
            rest[d + i] = db[i] as f32;
        }
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

/// The output buffer of a fused op, shared by rayon tasks that each write their own
/// disjoint (strided) part of it: a head's columns of every row.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

impl SendPtr {
    /// The pointer; a method, so that closures capture the whole `SendPtr` (which is Send)
    /// rather than its raw-pointer field (which is not).
    fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: the pointer is only dereferenced by tasks writing disjoint elements while the
// buffer it points into is alive (the op's output vector, dropped after the parallel loop).
unsafe impl Send for SendPtr {}
// SAFETY: as for Send: no two tasks access the same element.
unsafe impl Sync for SendPtr {}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `dst[m x n] = beta * lhs[m x k] @ rhs[k x n]`, all given by (pointer, row stride,
/// column stride); single-threaded (the callers parallelise over heads).
///
/// # Safety
/// For the given shapes and strides every element addressed in `dst`, `lhs` and `rhs` must
/// lie inside a live allocation, and no other thread may touch the elements of `dst`.
#[allow(clippy::too_many_arguments)]
unsafe fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    dst_cs: usize,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
    beta: f32,
) {
    // SAFETY: the caller guarantees the bounds and exclusive access (see above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            false,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            0.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

impl CausalAttention {
    fn dims(&self, l: &Layout) -> Result<(usize, usize, usize, usize)> {
        let (b, t, c3) = l.shape().dims3()?;
        if c3 % (3 * self.n_head) != 0 {
            candle_core::bail!("qkv width {c3} is not 3 x n_head x head_dim")
        }
        Ok((b, t, c3 / 3, c3 / 3 / self.n_head))
    }

    /// Softmax probabilities `p[t x t]` of head `(bi, h)` of the packed `qkv` (`[b, t, 3c]`);
    /// entries above the diagonal are 0.
    #[allow(clippy::too_many_arguments)]
    fn probs(&self, qkv: &[f32], bi: usize, h: usize, t: usize, c: usize, hd: usize, p: &mut [f32]) {
        let batch = &qkv[bi * t * 3 * c..(bi + 1) * t * 3 * c];
        assert!(p.len() >= t * t && (h + 1) * hd <= c);
        let (q, k) = (batch[h * hd..].as_ptr(), batch[c + h * hd..].as_ptr());
        // p = scale * q k^T
        // SAFETY: q and k address rows 0..t (stride 3c) and columns 0..hd of this head inside
        // `batch`, which holds t rows of 3c; p is the caller's own t x t buffer.
        unsafe { mm(t, t, hd, p.as_mut_ptr(), t, 1, q, 3 * c, 1, k, 1, 3 * c, self.scale) };
        for i in 0..t {
            let row = &mut p[i * t..(i + 1) * t];
            crate::kernels::softmax_row(&mut row[..=i]);
            row[i + 1..].iter_mut().for_each(|v| *v = 0.0);
        }
    }
}

impl CustomOp1 for CausalAttention {
    fn name(&self) -> &'static str {
        "alignscope-causal-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = cpu_slice(s, l, "qkv")?;
        let (b, t, c, hd) = self.dims(l)?;
        let mut y = vec![0f32; b * t * c];
        let yp = SendPtr(y.as_mut_ptr());
        (0..b * self.n_head).into_par_iter().for_each(|task| {
            let (bi, h) = (task / self.n_head, task % self.n_head);
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < t * t {
                    s.resize(t * t, 0.0);
                }
                let p = &mut s[..t * t];
                self.probs(qkv, bi, h, t, c, hd, p);
                let v = qkv[bi * t * 3 * c + 2 * c + h * hd..].as_ptr();
                // SAFETY: v addresses rows 0..t (stride 3c), columns 0..hd of this head's values
                // inside qkv; `out` addresses rows 0..t (stride c), columns h*hd..(h+1)*hd of
                // batch bi of y, which has b*t*c elements. Each task writes only its own
                // (bi, h) block, so no two tasks write the same element.
                unsafe {
                    let out = yp.get().add(bi * t * c + h * hd);
                    mm(t, hd, t, out, c, 1, p.as_ptr(), t, 1, v, 3 * c, 1, 1.0);
                }
            });
        });
        Ok((CpuStorage::F32(y), Shape::from((b, t, c))))
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
        let a = self.0;
        let qkv = cpu_slice(s1, l1, "qkv")?;
        let dy = cpu_slice(s2, l2, "attention gradient")?;
        let (b, t, c, hd) = a.dims(l1)?;
        let mut dqkv = vec![0f32; qkv.len()];
        if dy.len() != b * t * c {
            candle_core::bail!("attention gradient has {} elements, expected {}", dy.len(), b * t * c)
        }
        let dp_out = SendPtr(dqkv.as_mut_ptr());
        (0..b * a.n_head).into_par_iter().for_each(|task| {
            let (bi, h) = (task / a.n_head, task % a.n_head);
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < 2 * t * t {
                    s.resize(2 * t * t, 0.0);
                }
                let (p, dp) = s[..2 * t * t].split_at_mut(t * t);
                a.probs(qkv, bi, h, t, c, hd, p);
                let base = &qkv[bi * t * 3 * c..];
                let (q, k, v) = (base[h * hd..].as_ptr(), base[c + h * hd..].as_ptr(), base[2 * c + h * hd..].as_ptr());
                let g = dy[bi * t * c + h * hd..].as_ptr();
                // SAFETY: q, k, v (in qkv) and g (in dy) address rows 0..t of this head's hd
                // columns with strides 3c and c, inside their slices (lengths checked above);
                // dq, dk, dv address the same head's columns of batch bi of dqkv (same shape as
                // qkv). Each task writes only its own (bi, h) columns of dqkv, so no two tasks
                // write the same element; p and dp are this thread's scratch.
                unsafe {
                    let gbase = dp_out.get().add(bi * t * 3 * c);
                    let (dq, dk, dv) = (gbase.add(h * hd), gbase.add(c + h * hd), gbase.add(2 * c + h * hd));
                    // dv = p^T dy
                    mm(t, hd, t, dv, 3 * c, 1, p.as_ptr(), 1, t, g, c, 1, 1.0);
                    // dp = dy v^T
                    mm(t, t, hd, dp.as_mut_ptr(), t, 1, g, c, 1, v, 1, 3 * c, 1.0);
                    // ds = p * (dp - rowsum(dp * p)) * scale, in place in dp
                    for i in 0..t {
                        let (pr, dr) = (&p[i * t..(i + 1) * t], &mut dp[i * t..(i + 1) * t]);
                        let dot: f32 = pr[..=i].iter().zip(&dr[..=i]).map(|(x, y)| x * y).sum();
                        for j in 0..=i {
                            dr[j] = pr[j] * (dr[j] - dot) * a.scale;
                        }
                        dr[i + 1..].iter_mut().for_each(|v| *v = 0.0);
                    }
                    // dq = ds k ; dk = ds^T q
                    mm(t, hd, t, dq, 3 * c, 1, dp.as_ptr(), t, 1, k, 3 * c, 1, 1.0);
                    mm(t, hd, t, dk, 3 * c, 1, dp.as_ptr(), 1, t, q, 3 * c, 1, 1.0);
                }
            });
        });
        Ok((CpuStorage::F32(dqkv), l1.shape().clone()))
    }
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
        let mut y = Vec::with_capacity(n * m);
        for _ in 0..n {
            y.extend_from_slice(b);
        }
        let threads = candle_core::utils::get_num_threads();
        let par = if threads > 1 && n * m * k > 64 * 1024 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        // SAFETY: y is [n, m], x is [n, k] and w is [k, m] (checked above), all row-major,
        // and y is not aliased.
        unsafe {
            gemm::gemm(
                n,
                m,
                k,
                y.as_mut_ptr(),
                1,
                m as isize,
                true,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                1,
                m as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
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
        let partials: Vec<Vec<f32>> = x
            .par_chunks(m * 128)
            .map(|block| {
                let mut acc = vec![0f32; m];
                for row in block.chunks_exact(m) {
                    acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                }
                acc
            })
            .collect();
        let mut out = vec![0f32; m];
        for p in &partials {
            out.iter_mut().zip(p).for_each(|(a, v)| *a += v);
        }
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
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(4096).zip(x.par_chunks(4096)).for_each(|(yc, xc)| crate::kernels::gelu(xc, yc));
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
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(4096)
            .zip(x.par_chunks(4096).zip(dy.par_chunks(4096)))
            .for_each(|(dc, (xc, gc))| crate::kernels::gelu_backward(xc, gc, dc));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}
