//! GPT-2's layers on host slices, forward and backward, spread over the rayon threads:
//! layer norm, causal self-attention from the packed `c_attn` output, bias sums, GELU. The
//! fused candle ops ([`crate::ops`]) and the CPU training step ([`crate::train::cpu_step`])
//! both run these, so inference and training compute the same numbers.
//!
//! Every reduction runs over fixed blocks whose partial results are combined in order:
//! the result does not depend on how rayon scheduled the blocks.

use super::blas::{RawOperand, sgemm_raw};
use rayon::prelude::*;
use std::cell::RefCell;

/// Rows per parallel task of the row-wise kernels.
const ROW_BLOCK: usize = 64;

// ---------------------------------------------------------------- layer norm

/// Mean and 1/std of one row, accumulated in f64.
#[inline]
fn row_stats(row: &[f32], eps: f64) -> (f32, f32) {
    let n = row.len() as f64;
    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

/// `y = (x - mean) / std * w + b` over rows of `w.len()`; with `stats` (two floats a row:
/// mean, 1/std) the statistics are kept for the backward pass.
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f64, y: &mut [f32], stats: Option<&mut [f32]>) {
    let d = w.len();
    assert!(b.len() == d && x.len() == y.len() && x.len().is_multiple_of(d), "layer norm shapes");
    let rows = x.len() / d;
    let one = |yc: &mut [f32], xc: &[f32], sc: Option<&mut [f32]>| {
        let mut sc = sc;
        for (r, (yr, xr)) in yc.chunks_mut(d).zip(xc.chunks(d)).enumerate() {
            let (mean, rstd) = row_stats(xr, eps);
            if let Some(s) = sc.as_deref_mut() {
                s[2 * r] = mean;
                s[2 * r + 1] = rstd;
            }
            for i in 0..d {
                yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
            }
        }
    };
    match stats {
        Some(s) => {
            assert_eq!(s.len(), 2 * rows, "layer norm statistics");
            y.par_chunks_mut(d * ROW_BLOCK)
                .zip(x.par_chunks(d * ROW_BLOCK))
                .zip(s.par_chunks_mut(2 * ROW_BLOCK))
                .for_each(|((yc, xc), sc)| one(yc, xc, Some(sc)));
        }
        None => y.par_chunks_mut(d * ROW_BLOCK).zip(x.par_chunks(d * ROW_BLOCK)).for_each(|(yc, xc)| one(yc, xc, None)),
    }
}

/// Backward of [`layer_norm`]: `dx` gets (or, with `accumulate`, has added) the gradient
/// of the input; returns the gradients of `w` and `b`. `stats` are the forward pass's, or
/// `None` to recompute them from `x`.
pub fn layer_norm_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    eps: f64,
    stats: Option<&[f32]>,
    dx: &mut [f32],
    accumulate: bool,
) -> (Vec<f32>, Vec<f32>) {
    let d = w.len();
    assert!(x.len() == dy.len() && x.len() == dx.len() && x.len().is_multiple_of(d), "layer norm backward shapes");
    let rows = x.len() / d;
    if let Some(s) = stats {
        assert_eq!(s.len(), 2 * rows, "layer norm statistics");
    }
    let partials: Vec<(Vec<f64>, Vec<f64>)> = dx
        .par_chunks_mut(d * ROW_BLOCK)
        .zip(x.par_chunks(d * ROW_BLOCK).zip(dy.par_chunks(d * ROW_BLOCK)))
        .enumerate()
        .map(|(blk, (dxc, (xc, dyc)))| {
            let mut dw = vec![0f64; d];
            let mut db = vec![0f64; d];
            let mut xhat = vec![0f32; d];
            for (r, ((dxr, xr), dyr)) in dxc.chunks_mut(d).zip(xc.chunks(d)).zip(dyc.chunks(d)).enumerate() {
                let (mean, rstd) = match stats {
                    Some(s) => {
                        let row = blk * ROW_BLOCK + r;
                        (s[2 * row], s[2 * row + 1])
                    }
                    None => row_stats(xr, eps),
                };
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
                if accumulate {
                    for i in 0..d {
                        dxr[i] += (dyr[i] * w[i] - m1 - xhat[i] * m2) * rstd;
                    }
                } else {
                    for i in 0..d {
                        dxr[i] = (dyr[i] * w[i] - m1 - xhat[i] * m2) * rstd;
                    }
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
    (dw.into_iter().map(|v| v as f32).collect(), db.into_iter().map(|v| v as f32).collect())
}

// ---------------------------------------------------------------- bias, GELU

/// Sums of the columns of `x` (`[rows, m]`): fixed blocks of rows in parallel, their
/// partial sums added in order.
pub fn column_sums(x: &[f32], m: usize) -> Vec<f32> {
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
    out
}

/// `y[r, :] = b` for every row of `y`, or `y[r, :] = x[r, :] + b` with `x`.
pub fn broadcast_rows(b: &[f32], x: Option<&[f32]>, y: &mut [f32]) {
    let m = b.len();
    match x {
        Some(x) => y.par_chunks_mut(m * ROW_BLOCK).zip(x.par_chunks(m * ROW_BLOCK)).for_each(|(yc, xc)| {
            for (yr, xr) in yc.chunks_mut(m).zip(xc.chunks(m)) {
                for i in 0..m {
                    yr[i] = xr[i] + b[i];
                }
            }
        }),
        None => y.par_chunks_mut(m * ROW_BLOCK).for_each(|yc| {
            for yr in yc.chunks_mut(m) {
                yr.copy_from_slice(b);
            }
        }),
    }
}

/// GPT-2's GELU of `x` into `y`.
pub fn gelu(x: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(4096).zip(x.par_chunks(4096)).for_each(|(yc, xc)| super::gelu(xc, yc));
}

/// `g = g * gelu'(x)`, in place.
pub fn gelu_backward_in_place(x: &[f32], g: &mut [f32]) {
    g.par_chunks_mut(4096).zip(x.par_chunks(4096)).for_each(|(gc, xc)| super::gelu_backward_in_place(xc, gc));
}

// ---------------------------------------------------------------- attention

/// Query rows per block of the causal attention kernels: a block only reads the keys up
/// to its last row, which skips most of the masked half of `q k^T`.
const ATT_BLOCK: usize = 64;

/// The shape of a packed attention input `qkv: [b, t, 3c]` with `n_head` heads.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub n_head: usize,
    /// Multiplies `q k^T` before the softmax.
    pub scale: f32,
}

impl AttentionShape {
    fn hd(&self) -> usize {
        self.c / self.n_head
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The output buffer of an attention kernel, written by rayon tasks that each own a
/// disjoint (strided) part of it: one head's columns of one sequence.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

impl SharedOut {
    /// The pointer; a method, so that closures capture the whole `SharedOut` (which is
    /// Send) rather than its raw-pointer field (which is not).
    fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: the pointer is only dereferenced by tasks writing disjoint elements while the
// buffer it points into is alive (the kernel's output, borrowed mutably for the call).
unsafe impl Send for SharedOut {}
// SAFETY: as for Send: no two tasks access the same element.
unsafe impl Sync for SharedOut {}

/// `dst[m x n] = alpha * a[m x k] b[k x n]` on the calling thread (pointers with leading
/// dimensions; `ta`/`tb`: read transposed).
///
/// # Safety
/// As [`sgemm_raw`] with one thread.
#[allow(clippy::too_many_arguments)]
unsafe fn mm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: *const f32,
    lda: usize,
    ta: bool,
    b: *const f32,
    ldb: usize,
    tb: bool,
    dst: *mut f32,
    ldd: usize,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        sgemm_raw(m, n, k, alpha, RawOperand { ptr: a, ld: lda, trans: ta }, RawOperand { ptr: b, ld: ldb, trans: tb }, false, dst, ldd, 1)
    }
}

/// Softmax probabilities `p` (`[t, t]`, row stride `t`) of head `h` of sequence `bi`: row
/// `i` holds its weights over keys `0..=i` and zeros up to the end of its block of rows;
/// entries further right are not written.
fn probs(s: &AttentionShape, qkv: &[f32], bi: usize, h: usize, p: &mut [f32]) {
    let (t, c, hd) = (s.t, s.c, s.hd());
    let batch = &qkv[bi * t * 3 * c..(bi + 1) * t * 3 * c];
    assert!(p.len() >= t * t && (h + 1) * hd <= c);
    let (q, k) = (batch[h * hd..].as_ptr(), batch[c + h * hd..].as_ptr());
    for i0 in (0..t).step_by(ATT_BLOCK) {
        let i1 = (i0 + ATT_BLOCK).min(t);
        // p[i0..i1, 0..i1] = scale * q[i0..i1] k[0..i1]^T
        // SAFETY: q and k address rows 0..t (stride 3c) and columns 0..hd of this head inside
        // `batch`, which holds t rows of 3c; p is the caller's own t x t buffer.
        unsafe { mm(i1 - i0, i1, hd, s.scale, q.add(i0 * 3 * c), 3 * c, false, k, 3 * c, true, p.as_mut_ptr().add(i0 * t), t) };
        for i in i0..i1 {
            let row = &mut p[i * t..i * t + i1];
            super::softmax_row(&mut row[..=i]);
            row[i + 1..].iter_mut().for_each(|v| *v = 0.0);
        }
    }
}

/// Causal self-attention from the packed projection `qkv: [b, t, 3c]` (q | k | v, heads
/// side by side as GPT-2 lays them out) into the merged heads `y: [b, t, c]`.
pub fn attention(s: &AttentionShape, qkv: &[f32], y: &mut [f32]) {
    let (b, t, c, hd) = (s.b, s.t, s.c, s.hd());
    assert!(qkv.len() == b * t * 3 * c && y.len() == b * t * c && c % s.n_head == 0, "attention shapes");
    let yp = SharedOut(y.as_mut_ptr());
    (0..b * s.n_head).into_par_iter().for_each(|task| {
        let (bi, h) = (task / s.n_head, task % s.n_head);
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            if scratch.len() < t * t {
                scratch.resize(t * t, 0.0);
            }
            let p = &mut scratch[..t * t];
            probs(s, qkv, bi, h, p);
            let v = qkv[bi * t * 3 * c + 2 * c + h * hd..].as_ptr();
            for i0 in (0..t).step_by(ATT_BLOCK) {
                let i1 = (i0 + ATT_BLOCK).min(t);
                // y[i0..i1] = p[i0..i1, 0..i1] v[0..i1]
                // SAFETY: v addresses rows 0..t (stride 3c), columns 0..hd of this head's values
                // inside qkv; the output addresses rows i0..i1 (stride c), columns h*hd..(h+1)*hd
                // of sequence bi of y, which has b*t*c elements. Each task writes only its own
                // (bi, h) block, so no two tasks write the same element.
                unsafe {
                    let out = yp.get().add(bi * t * c + i0 * c + h * hd);
                    mm(i1 - i0, hd, i1, 1.0, p.as_ptr().add(i0 * t), t, false, v, 3 * c, false, out, c);
                }
            }
        });
    });
}

/// Backward of [`attention`]: `dqkv` (`[b, t, 3c]`, overwritten) from `dy` (`[b, t, c]`),
/// recomputing the probabilities head by head.
pub fn attention_backward(s: &AttentionShape, qkv: &[f32], dy: &[f32], dqkv: &mut [f32]) {
    let (b, t, c, hd) = (s.b, s.t, s.c, s.hd());
    assert!(qkv.len() == b * t * 3 * c && dqkv.len() == qkv.len() && dy.len() == b * t * c, "attention backward shapes");
    let out = SharedOut(dqkv.as_mut_ptr());
    (0..b * s.n_head).into_par_iter().for_each(|task| {
        let (bi, h) = (task / s.n_head, task % s.n_head);
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            if scratch.len() < 2 * t * t {
                scratch.resize(2 * t * t, 0.0);
            }
            let (p, dp) = scratch[..2 * t * t].split_at_mut(t * t);
            probs(s, qkv, bi, h, p);
            let base = &qkv[bi * t * 3 * c..];
            let (q, k, v) = (base[h * hd..].as_ptr(), base[c + h * hd..].as_ptr(), base[2 * c + h * hd..].as_ptr());
            let g = dy[bi * t * c + h * hd..].as_ptr();
            // SAFETY: q, k, v (in qkv) and g (in dy) address rows 0..t of this head's hd columns
            // with strides 3c and c, inside their slices (lengths checked above); dq, dk, dv
            // address the same head's columns of sequence bi of dqkv (same shape as qkv). Each
            // task writes only its own (bi, h) columns of dqkv, so no two tasks write the same
            // element; p and dp are this thread's scratch. Block (i0, i1) of p and dp is
            // written for columns 0..i1 only, and only those are read.
            unsafe {
                let gbase = out.get().add(bi * t * 3 * c);
                let (dq, dk, dv) = (gbase.add(h * hd), gbase.add(c + h * hd), gbase.add(2 * c + h * hd));
                let (pp, dpp) = (p.as_ptr(), dp.as_mut_ptr());
                for j0 in (0..t).step_by(ATT_BLOCK) {
                    let j1 = (j0 + ATT_BLOCK).min(t);
                    // dv[j0..j1] = p[j0..t, j0..j1]^T dy[j0..t] (p is zero above the diagonal)
                    mm(j1 - j0, hd, t - j0, 1.0, pp.add(j0 * t + j0), t, true, g.add(j0 * c), c, false, dv.add(j0 * 3 * c), 3 * c);
                }
                for i0 in (0..t).step_by(ATT_BLOCK) {
                    let i1 = (i0 + ATT_BLOCK).min(t);
                    // dp[i0..i1, 0..i1] = dy[i0..i1] v[0..i1]^T
                    mm(i1 - i0, i1, hd, 1.0, g.add(i0 * c), c, false, v, 3 * c, true, dpp.add(i0 * t), t);
                    // ds = p * (dp - rowsum(dp * p)) * scale, in place in dp
                    for i in i0..i1 {
                        let (pr, dr) = (&p[i * t..i * t + i1], &mut dp[i * t..i * t + i1]);
                        let dot: f32 = pr[..=i].iter().zip(&dr[..=i]).map(|(x, y)| x * y).sum();
                        for j in 0..=i {
                            dr[j] = pr[j] * (dr[j] - dot) * s.scale;
                        }
                        dr[i + 1..].iter_mut().for_each(|v| *v = 0.0);
                    }
                    // dq[i0..i1] = ds[i0..i1, 0..i1] k[0..i1]
                    mm(i1 - i0, hd, i1, 1.0, dpp.add(i0 * t), t, false, k, 3 * c, false, dq.add(i0 * 3 * c), 3 * c);
                }
                let dsp = dp.as_ptr();
                for j0 in (0..t).step_by(ATT_BLOCK) {
                    let j1 = (j0 + ATT_BLOCK).min(t);
                    // dk[j0..j1] = ds[j0..t, j0..j1]^T q[j0..t]
                    mm(j1 - j0, hd, t - j0, 1.0, dsp.add(j0 * t + j0), t, true, q.add(j0 * 3 * c), 3 * c, false, dk.add(j0 * 3 * c), 3 * c);
                }
            }
        });
    });
}
