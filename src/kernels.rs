//! Vectorisable CPU math for the hot elementwise loops (softmax-cross-entropy, GELU,
//! attention softmax). `exp` is the Cephes single-precision polynomial (relative error
//! ~1e-7), written with plain arithmetic so LLVM vectorises it; each loop is compiled
//! three times, for the baseline target, for AVX2+FMA and for AVX-512, and the widest the
//! CPU supports is picked at run time.

pub mod blas;
pub mod layers;

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without SSE4.1.
const ROUND_MAGIC: f32 = 12_582_912.0;

#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // t holds round(x log2 e) in its low mantissa bits: no float-to-int conversion, so the
    // loop stays vectorised.
    let t = x * LOG2E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let scale = f32::from_bits(t.to_bits().wrapping_sub(ROUND_MAGIC.to_bits()).wrapping_add(127) << 23);
    e * scale
}

/// Lanes of the partial reductions below: wide enough for AVX-512, and independent, so
/// the compiler vectorises them without reassociating a single running sum.
const LANES: usize = 16;

/// The largest element of a slice.
#[inline(always)]
fn max_of(row: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            if c[j] > m[j] {
                m[j] = c[j];
            }
        }
    }
    let mut best = tail.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in m {
        best = best.max(v);
    }
    best
}

/// `row[i] = exp(row[i] - max)`, returning the sum.
#[inline(always)]
fn exp_shift_sum(row: &mut [f32], max: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            c[j] = exp(c[j] - max);
            acc[j] += c[j];
        }
    }
    let mut sum: f32 = 0.0;
    for v in chunks.into_remainder() {
        *v = exp(*v - max);
        sum += *v;
    }
    sum + acc.iter().sum::<f32>()
}

/// tanh through exp: `1 - 2 / (exp(2x) + 1)`, accurate to ~1e-7 absolute.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

macro_rules! dispatch {
    ($(#[$m:meta])* pub fn $name:ident($($arg:ident : $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$m])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn generic($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) -> $ret { generic($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret { generic($($arg),*) }
                if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has every feature the function is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has every feature the function is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}

dispatch! {
    /// Cross-entropy of one row of logits against `target`; when `grad_scale` is non-zero
    /// the row is overwritten with `grad_scale * (softmax - onehot)`.
    pub fn xent_row(row: &mut [f32], target: usize, grad_scale: f32) -> f64 {
        let max = max_of(row);
        let picked = row[target];
        if grad_scale != 0.0 {
            let sum = exp_shift_sum(row, max);
            let k = grad_scale / sum;
            for x in row.iter_mut() {
                *x *= k;
            }
            row[target] -= grad_scale;
            (sum as f64).ln() + (max - picked) as f64
        } else {
            let mut acc = [0f32; LANES];
            let chunks = row.chunks_exact(LANES);
            let tail = chunks.remainder();
            for c in chunks {
                for j in 0..LANES {
                    acc[j] += exp(c[j] - max);
                }
            }
            let sum = acc.iter().sum::<f32>() + tail.iter().map(|&x| exp(x - max)).sum::<f32>();
            (sum as f64).ln() + (max - picked) as f64
        }
    }
}

dispatch! {
    /// In-place softmax of a row.
    pub fn softmax_row(row: &mut [f32]) -> () {
        let max = max_of(row);
        let inv = 1.0 / exp_shift_sum(row, max);
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

const GELU_C: f32 = 0.797_884_6; // sqrt(2 / pi)

dispatch! {
    /// GPT-2's GELU (tanh approximation).
    pub fn gelu(x: &[f32], y: &mut [f32]) -> () {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = 0.5 * x * (1.0 + tanh(GELU_C * (x + 0.044715 * x * x * x)));
        }
    }
}

dispatch! {
    /// d GELU: `dx = dy * gelu'(x)`.
    pub fn gelu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) -> () {
        for ((d, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
            let t = tanh(GELU_C * (x + 0.044715 * x * x * x));
            let du = GELU_C * (1.0 + 3.0 * 0.044715 * x * x);
            *d = g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du);
        }
    }
}

dispatch! {
    /// d GELU in place: `g = g * gelu'(x)`.
    pub fn gelu_backward_in_place(x: &[f32], g: &mut [f32]) -> () {
        for (d, &x) in g.iter_mut().zip(x) {
            let t = tanh(GELU_C * (x + 0.044715 * x * x * x));
            let du = GELU_C * (1.0 + 3.0 * 0.044715 * x * x);
            *d *= 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du;
        }
    }
}

dispatch! {
    /// `y[r, :] += x[r, rows] @ w[rows, :]` for a few rows `r` of `x` and a contiguous range
    /// of rows of `w` (`[k, n]` row-major, `w` holds just that range): streams the range
    /// once, sequentially, for all rows of `x` (batch-1 decode reads each weight once).
    /// `x` is `[m, k]`; `y` is `[m, n]`.
    pub fn rows_times_matrix_rows(x: &[f32], k: usize, row0: usize, w: &[f32], n: usize, y: &mut [f32]) -> () {
        let m = y.len() / n;
        let rows = w.len() / n;
        // Four weight rows per pass over y: a quarter of the loads and stores of y.
        let mut i = 0;
        while i + 4 <= rows {
            let (w0, w1, w2, w3) = (&w[i * n..(i + 1) * n], &w[(i + 1) * n..(i + 2) * n], &w[(i + 2) * n..(i + 3) * n], &w[(i + 3) * n..(i + 4) * n]);
            for r in 0..m {
                let xr = &x[r * k + row0 + i..r * k + row0 + i + 4];
                let (a0, a1, a2, a3) = (xr[0], xr[1], xr[2], xr[3]);
                let yr = &mut y[r * n..(r + 1) * n];
                for j in 0..n {
                    yr[j] += a0 * w0[j] + a1 * w1[j] + a2 * w2[j] + a3 * w3[j];
                }
            }
            i += 4;
        }
        for (ii, wrow) in w.chunks_exact(n).enumerate().skip(i) {
            for r in 0..m {
                let a = x[r * k + row0 + ii];
                let yr = &mut y[r * n..(r + 1) * n];
                for (yv, &wv) in yr.iter_mut().zip(wrow) {
                    *yv += a * wv;
                }
            }
        }
    }
}

dispatch! {
    /// `y[r, v] = dot(x[r, :], w[v, :])` for a few rows and a block of rows `v` of `w`
    /// (`[v, d]` row-major: the classifier against the embedding matrix).
    pub fn rows_dot_rows(x: &[f32], d: usize, w: &[f32], y: &mut [f32], n_w: usize) -> () {
        let m = x.len() / d;
        for v in 0..n_w {
            let wv = &w[v * d..(v + 1) * d];
            for r in 0..m {
                let xr = &x[r * d..(r + 1) * d];
                // 64 partial sums: four independent vector accumulators, so the FMAs
                // pipeline instead of waiting on one another.
                let mut acc = [0f32; 64];
                let (xa, xt) = xr.split_at(d - d % 64);
                let (wa, wt) = wv.split_at(d - d % 64);
                for (xc, wc) in xa.chunks_exact(64).zip(wa.chunks_exact(64)) {
                    let xc: &[f32; 64] = xc.try_into().expect("64");
                    let wc: &[f32; 64] = wc.try_into().expect("64");
                    for j in 0..64 {
                        acc[j] += xc[j] * wc[j];
                    }
                }
                let mut s: f32 = acc.iter().sum();
                for (a, b) in xt.iter().zip(wt) {
                    s += a * b;
                }
                y[r * n_w + v] = s;
            }
        }
    }
}

dispatch! {
    /// `y[r, :] += x[r, :] @ w[:, c0..c0 + nb]` for the rows `r` of `x` (`[m, k]`), with `w`
    /// `[k, n]` row-major and `y` `[m, nb]`. Streams the weight rows (four at a time, over a
    /// window of columns that stays in L1). Every output element adds its products in the
    /// same order whatever `m` and however the columns are split among threads: a row's
    /// result does not depend on the rows that come with it (what lets a batched
    /// verification reproduce one-token-at-a-time decoding exactly). Several rows on
    /// AVX-512 take `several_rows_avx512`, the same operations in registers.
    pub fn matrix_cols_accumulate(x: &[f32], k: usize, w: &[f32], n: usize, c0: usize, nb: usize, y: &mut [f32]) -> () {
        const WINDOW: usize = 1024;
        let m = y.len() / nb;
        #[cfg(target_arch = "x86_64")]
        if m >= 2 && std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above); the shapes are the caller's,
            // which the function checks as the loops below would (by slicing).
            unsafe { several_rows_avx512(x, k, w, n, c0, nb, y) };
            return;
        }
        let mut j0 = 0;
        while j0 < nb {
            let t = WINDOW.min(nb - j0);
            let col = |i: usize| &w[i * n + c0 + j0..i * n + c0 + j0 + t];
            let mut i = 0;
            while i + 4 <= k {
                let (w0, w1, w2, w3) = (col(i), col(i + 1), col(i + 2), col(i + 3));
                for r in 0..m {
                    let (a0, a1, a2, a3) = (x[r * k + i], x[r * k + i + 1], x[r * k + i + 2], x[r * k + i + 3]);
                    let yr = &mut y[r * nb + j0..r * nb + j0 + t];
                    for j in 0..t {
                        yr[j] += a0 * w0[j] + a1 * w1[j] + a2 * w2[j] + a3 * w3[j];
                    }
                }
                i += 4;
            }
            while i < k {
                let w0 = col(i);
                for r in 0..m {
                    let a = x[r * k + i];
                    let yr = &mut y[r * nb + j0..r * nb + j0 + t];
                    for (yv, &wv) in yr.iter_mut().zip(w0) {
                        *yv += a * wv;
                    }
                }
                i += 1;
            }
            j0 += t;
        }
    }
}

/// `q[i] = round(x[i] / step)` (to even, within `±qmax`) with `step = max|x| / qmax` (1 for
/// a row of zeros), which it returns: a row of 16-bit inputs for [`i16_i8_cols`].
/// Not-finite inputs count as 0. `qmax` is at most `i16::MAX`.
pub fn quantize_i16(x: &[f32], qmax: f32, q: &mut [i16]) -> f32 {
    assert!(q.len() >= x.len() && qmax <= i16::MAX as f32, "quantize_i16: shapes or range do not fit");
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked above); q holds x.len() values.
        return unsafe { quantize_i16_avx512(x, qmax, q) };
    }
    let top = x.iter().fold(0f32, |a, &v| if v.is_finite() { a.max(v.abs()) } else { a });
    let step = if top > 0.0 { top / qmax } else { 1.0 };
    let inv = 1.0 / step;
    for (q, &v) in q.iter_mut().zip(x) {
        *q = if v.is_finite() { (v * inv).round_ties_even().clamp(-qmax, qmax) as i16 } else { 0 };
    }
    step
}

/// [`quantize_i16`] on AVX-512, the same values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_i16_avx512(x: &[f32], qmax: f32, q: &mut [i16]) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len();
    let full = n - n % 16;
    let abs = |v: __m512| _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fff_ffff)));
    let inf = _mm512_set1_ps(f32::INFINITY);
    let mut top = _mm512_setzero_ps();
    for i in (0..full).step_by(16) {
        // SAFETY: i + 16 <= n.
        let a = abs(unsafe { _mm512_loadu_ps(x.as_ptr().add(i)) });
        top = _mm512_mask_max_ps(top, _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, inf), top, a);
    }
    let mut top = _mm512_reduce_max_ps(top);
    for &v in &x[full..] {
        if v.is_finite() {
            top = top.max(v.abs());
        }
    }
    let step = if top > 0.0 { top / qmax } else { 1.0 };
    let inv = 1.0 / step;
    let (vinv, hi, lo) = (_mm512_set1_ps(inv), _mm512_set1_ps(qmax), _mm512_set1_ps(-qmax));
    for i in (0..full).step_by(16) {
        // SAFETY: i + 16 <= n <= q.len().
        unsafe {
            let v = _mm512_loadu_ps(x.as_ptr().add(i));
            let finite = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(abs(v), inf);
            let f = _mm512_min_ps(_mm512_max_ps(_mm512_maskz_mul_ps(finite, v, vinv), lo), hi);
            let z = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(f);
            _mm256_storeu_si256(q.as_mut_ptr().add(i) as *mut __m256i, _mm512_cvtsepi32_epi16(z));
        }
    }
    for (q, &v) in q[full..n].iter_mut().zip(&x[full..]) {
        *q = if v.is_finite() { (v * inv).round_ties_even().clamp(-qmax, qmax) as i16 } else { 0 };
    }
    step
}

/// [`matrix_cols_accumulate`] for several rows (a verification, a prompt) on AVX-512: each
/// weight vector is loaded once for up to four rows, and the outputs stay in registers over
/// sixteen weight rows instead of going through memory every four (sixteen at a time, so
/// that the weights still stream in a few sequential runs). Per output the same products,
/// rounded and added in the same order as the one-row loop: the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn several_rows_avx512(x: &[f32], k: usize, w: &[f32], n: usize, c0: usize, nb: usize, y: &mut [f32]) {
    const WINDOW: usize = 1024;
    let m = y.len() / nb;
    assert!(x.len() >= m * k && c0 + nb <= n && w.len() >= k * n, "several_rows_avx512: shapes do not fit");
    let groups = k - k % 4;
    let mut j0 = 0;
    while j0 < nb {
        let t = WINDOW.min(nb - j0);
        let tiles = t - t % COL_TILE;
        let mut i0 = 0;
        while i0 < groups {
            let i1 = (i0 + K_TILE).min(groups);
            let mut r0 = 0;
            while r0 < m {
                let rows = 4.min(m - r0);
                for c in (0..tiles).step_by(COL_TILE) {
                    let at = TileAt { col: c0 + j0 + c, ycol: j0 + c, nb, r0, i0, i1 };
                    // SAFETY: rows r0..r0 + rows < m of x and y, columns up to c0 + nb <= n of
                    // w and nb of y, weight rows below k: inside the slices (asserted above).
                    unsafe {
                        match rows {
                            4 => cols_tile::<4>(x, k, w, n, y, at),
                            3 => cols_tile::<3>(x, k, w, n, y, at),
                            2 => cols_tile::<2>(x, k, w, n, y, at),
                            _ => cols_tile::<1>(x, k, w, n, y, at),
                        }
                    }
                }
                for r in r0..r0 + rows {
                    let xr = &x[r * k..(r + 1) * k];
                    for j in tiles..t {
                        let wc = |i: usize| w[i * n + c0 + j0 + j];
                        let yv = &mut y[r * nb + j0 + j];
                        for i in (i0..i1).step_by(4) {
                            *yv += xr[i] * wc(i) + xr[i + 1] * wc(i + 1) + xr[i + 2] * wc(i + 2) + xr[i + 3] * wc(i + 3);
                        }
                    }
                }
                r0 += rows;
            }
            i0 = i1;
        }
        for i in groups..k {
            let wi = &w[i * n + c0 + j0..i * n + c0 + j0 + t];
            for r in 0..m {
                let a = x[r * k + i];
                for (yv, &wv) in y[r * nb + j0..r * nb + j0 + t].iter_mut().zip(wi) {
                    *yv += a * wv;
                }
            }
        }
        j0 += t;
    }
}

/// Columns (two vectors) and weight rows per register tile of [`several_rows_avx512`].
#[cfg(target_arch = "x86_64")]
const COL_TILE: usize = 32;
#[cfg(target_arch = "x86_64")]
const K_TILE: usize = 16;

/// Where a [`cols_tile`] lies: its first column in the weights and in the output, the
/// output's row length, its first row, its weight rows `i0..i1` (whole groups of four).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct TileAt {
    col: usize,
    ycol: usize,
    nb: usize,
    r0: usize,
    i0: usize,
    i1: usize,
}

/// Rows `r0..r0 + R` by [`COL_TILE`] columns over the weight rows `i0..i1`, in registers.
///
/// # Safety
/// The CPU must have AVX-512F, and the tile must lie inside `x` (`[.., k]`), `w` (`[k, n]`)
/// and `y` (`[.., nb]`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn cols_tile<const R: usize>(x: &[f32], k: usize, w: &[f32], n: usize, y: &mut [f32], at: TileAt) {
    use std::arch::x86_64::*;
    let (xp, wp, yp) = (x.as_ptr(), w.as_ptr(), y.as_mut_ptr());
    // SAFETY (every pointer below): inside the slices, the caller's guarantee.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for (r, a) in acc.iter_mut().enumerate() {
            let yr = yp.add((at.r0 + r) * at.nb + at.ycol);
            *a = [_mm512_loadu_ps(yr), _mm512_loadu_ps(yr.add(16))];
        }
        for i in (at.i0..at.i1).step_by(4) {
            let wrow = |d: usize, h: usize| _mm512_loadu_ps(wp.add((i + d) * n + at.col + 16 * h));
            let wv = [[wrow(0, 0), wrow(0, 1)], [wrow(1, 0), wrow(1, 1)], [wrow(2, 0), wrow(2, 1)], [wrow(3, 0), wrow(3, 1)]];
            for (r, a) in acc.iter_mut().enumerate() {
                let xr = xp.add((at.r0 + r) * k + i);
                let xs = [_mm512_set1_ps(*xr), _mm512_set1_ps(*xr.add(1)), _mm512_set1_ps(*xr.add(2)), _mm512_set1_ps(*xr.add(3))];
                for h in 0..2 {
                    // (((a0 w0 + a1 w1) + a2 w2) + a3 w3), each product rounded, then onto
                    // the output: the one-row loop's operations.
                    let mut s = _mm512_add_ps(_mm512_mul_ps(xs[0], wv[0][h]), _mm512_mul_ps(xs[1], wv[1][h]));
                    s = _mm512_add_ps(s, _mm512_mul_ps(xs[2], wv[2][h]));
                    s = _mm512_add_ps(s, _mm512_mul_ps(xs[3], wv[3][h]));
                    a[h] = _mm512_add_ps(a[h], s);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let yr = yp.add((at.r0 + r) * at.nb + at.ycol);
            _mm512_storeu_ps(yr, a[0]);
            _mm512_storeu_ps(yr.add(16), a[1]);
        }
    }
}

/// What [`matrix_cols_accumulate`] adds up for one output, starting from `init` (the bias),
/// with that output's weights `w` (its column of the matrix, length `k`) given as one
/// contiguous row: the same products summed in the same order, so the same bits. A greedy
/// token's few candidate logits are computed this way from the untransposed classifier
/// instead of walking a column of the transposed one (see `decoder::bounded_argmax_i8`).
pub fn matrix_col_dot(x: &[f32], w: &[f32], init: f32) -> f32 {
    let k = w.len();
    let mut y = init;
    let mut i = 0;
    while i + 4 <= k {
        y += x[i] * w[i] + x[i + 1] * w[i + 1] + x[i + 2] * w[i + 2] + x[i + 3] * w[i + 3];
        i += 4;
    }
    while i < k {
        y += x[i] * w[i];
        i += 1;
    }
    y
}

dispatch! {
    /// Estimates from [`i16_i8_cols`]'s integer sums and their error bounds, as
    /// `decoder::bounded_argmax_i8` defines them: with `[l1, step, floor] = k`, `a_v =
    /// z_v (scale_v step)` within `e_v = (l1 err_v[0] + step err_v[1] + floor) (1 + 1e-6) +
    /// |a_v| 2^-50`, where `z_v = sums_v`, or `254 sums_v + fine_v` when `fine` (a second
    /// plane's sums) is not empty. Writes each token's `[a_v - e_v, a_v + e_v]` into `bounds`
    /// and returns the largest lower end (minus infinity when there is none). In f64, in
    /// lanes, so the loop is vectorised.
    pub fn bounded_estimates(sums: &[i32], fine: &[i32], scale: &[f32], err: &[[f64; 2]], k: [f64; 3], bounds: &mut [[f64; 2]]) -> f64 {
        const W: usize = 8;
        let [l1, step, floor] = k;
        let n = bounds.len();
        let (sums, scale, err) = (&sums[..n], &scale[..n], &err[..n]);
        let two = !fine.is_empty();
        let fine = if two { &fine[..n] } else { &sums[..n] };
        let one = |z: i32, f: i32, s: f32, e: &[f64; 2]| {
            let z = if two { 254.0 * z as f64 + f as f64 } else { z as f64 };
            let a = z * (s as f64 * step);
            let e = (l1 * e[0] + step * e[1] + floor) * (1.0 + 1e-6) + a.abs() * (1.0 / (1u64 << 50) as f64);
            [a - e, a + e]
        };
        let mut lower = [f64::NEG_INFINITY; W];
        let mut b = bounds.chunks_exact_mut(W);
        let mut z = sums.chunks_exact(W);
        let mut f = fine.chunks_exact(W);
        let mut s = scale.chunks_exact(W);
        let mut e = err.chunks_exact(W);
        for ((((b, z), f), s), e) in (&mut b).zip(&mut z).zip(&mut f).zip(&mut s).zip(&mut e) {
            for j in 0..W {
                b[j] = one(z[j], f[j], s[j], &e[j]);
                lower[j] = if b[j][0] > lower[j] { b[j][0] } else { lower[j] };
            }
        }
        let mut best = lower.into_iter().fold(f64::NEG_INFINITY, f64::max);
        let tail = b.into_remainder().iter_mut().zip(z.remainder()).zip(f.remainder()).zip(s.remainder()).zip(e.remainder());
        for ((((b, &z), &f), &s), e) in tail {
            *b = one(z, f, s, e);
            best = best.max(b[0]);
        }
        best
    }
}

/// Terms of a softmax's sum below `exp(-EXP_TAIL)` of the largest count that much in
/// [`exp_bound_sums`]' upper sum (at most 4096 e^-16 = 5e-4 of the sum in all for a
/// 4096-token vocabulary; the top term is 1).
const EXP_TAIL: f32 = 16.0;

dispatch! {
    /// Lower and upper bounds on `sum_v exp(z_v - zmax)` over the tokens whose logit `z_v`
    /// lies in `bounds[v]` (`[lower, upper]`), leaving out those whose upper end reaches
    /// `cut` (`zmax` the largest logit: no term above 1). Each term through [`exp`] in f32
    /// (the caller allows for its error); in the upper sum a term counts at least
    /// `exp(-EXP_TAIL)`, in the lower one a term below `exp(-80)` counts 0. In lanes,
    /// without branches, so the loop is vectorised.
    pub fn exp_bound_sums(bounds: &[[f64; 2]], zmax: f64, cut: f64) -> (f64, f64) {
        // The exponents first, as f32 (a term left out: minus infinity), then the exps
        // over plain f32 slices.
        let mut ls = vec![0f32; bounds.len()];
        let mut hs = vec![0f32; bounds.len()];
        for ((b, l), h) in bounds.iter().zip(&mut ls).zip(&mut hs) {
            let keep = b[1] < cut;
            let lv = (b[0] - zmax) as f32;
            *l = if keep && lv >= -80.0 { lv } else { f32::NEG_INFINITY };
            *h = if keep { ((b[1] - zmax) as f32).clamp(-EXP_TAIL, 0.0) } else { f32::NEG_INFINITY };
        }
        // Summed in f64, so the sum's rounding stays negligible for any vocabulary.
        let sum = |xs: &[f32]| {
            let mut acc = [0f64; LANES];
            let chunks = xs.chunks_exact(LANES);
            let tail = chunks.remainder();
            for c in chunks {
                for j in 0..LANES {
                    let e = exp(c[j]);
                    acc[j] += if c[j] == f32::NEG_INFINITY { 0.0 } else { e as f64 };
                }
            }
            acc.iter().sum::<f64>() + tail.iter().map(|&x| if x == f32::NEG_INFINITY { 0.0 } else { exp(x) as f64 }).sum::<f64>()
        };
        (sum(&ls), sum(&hs))
    }
}

/// `round(y)` (half away from zero) clamped to the 8-bit range (NaN to 0), by truncation:
/// it vectorises (without SSE4.1 too, where `f32::round` is a library call per weight).
#[inline(always)]
pub fn round_i8(y: f32) -> i8 {
    let t = (y + 0.5f32.copysign(y)).clamp(-127.0, 127.0);
    let t = if t.is_nan() { 0.0 } else { t };
    // SAFETY: `t` is finite and within the 8-bit range.
    unsafe { t.to_int_unchecked::<i32>() as i8 }
}

dispatch! {
    /// A 128-bit digest of `w`'s bits, starting from `seed`: sixteen 32-bit lanes in two
    /// variants, each step `a -> rotl((a ^ x) * M, r)` (a bijection of the state for a given
    /// weight, and of the weight for a given state), folded into two words by steps that are
    /// bijections too, so that a change of any one weight always changes the digest. In
    /// lanes, so it vectorises (it reads 154 MB for GPT-2-124M's classifier).
    pub fn digest_lanes(w: &[f32], seed: u64) -> [u64; 2] {
        const L: usize = 16;
        const M: [u32; 2] = [0x9E37_79B1, 0x85EB_CA77];
        let mut a = [seed as u32 ^ 0x27D4_EB2F; L];
        let mut b = [(seed >> 32) as u32 ^ 0x1656_67B1; L];
        let mut chunks = w.chunks_exact(L);
        for c in &mut chunks {
            for j in 0..L {
                let x = c[j].to_bits();
                a[j] = (a[j] ^ x).wrapping_mul(M[0]).rotate_left(13);
                b[j] = (b[j] ^ x).wrapping_mul(M[1]).rotate_left(17);
            }
        }
        for (j, v) in chunks.remainder().iter().enumerate() {
            let x = v.to_bits();
            a[j] = (a[j] ^ x).wrapping_mul(M[0]).rotate_left(13);
            b[j] = (b[j] ^ x).wrapping_mul(M[1]).rotate_left(17);
        }
        let mut h = [seed ^ w.len() as u64, !seed];
        for j in 0..L {
            let v = a[j] as u64 | (b[j] as u64) << 32;
            h[0] = fmix64(h[0] ^ v);
            h[1] = fmix64(h[1] ^ v.rotate_left(32) ^ 0xC2B2_AE3D_27D4_EB4F);
        }
        h
    }
}

/// MurmurHash3's finaliser: an invertible mix of a 64-bit word.
pub fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

dispatch! {
    /// The largest `|w|` of `row`, `None` where a weight is not finite; in lanes, so it
    /// vectorises.
    pub fn max_abs_finite(row: &[f32]) -> Option<f32> {
        const W: usize = 16;
        let (mut m, mut ok) = ([0f32; W], [true; W]);
        let mut chunks = row.chunks_exact(W);
        for c in &mut chunks {
            for j in 0..W {
                let a = c[j].abs();
                m[j] = if a > m[j] { a } else { m[j] };
                ok[j] &= a <= f32::MAX;
            }
        }
        let (mut best, mut finite) = (0f32, ok.iter().all(|&o| o));
        for a in chunks.remainder().iter().map(|w| w.abs()).chain(m) {
            best = if a > best { a } else { best };
            finite &= a <= f32::MAX;
        }
        finite.then_some(best)
    }
}

/// Each weight of `row` through `one` (its 8-bit value into `out`, and its level: the
/// weight is `step` times the level to within the rounding), and `[max_i |w_i - step l_i|,
/// sum_i |l_i|]` in f64 (each term exact but the difference's last rounding). In lanes, so
/// it vectorises: the body of [`quantize_i8`] and [`quantize_i8_remainder`].
#[inline(always)]
fn quantize_lanes(row: &[f32], out: &mut [i8], step: f32, one: impl Fn(f32) -> (i8, f64)) -> [f64; 2] {
    const W: usize = 16;
    let step = step as f64;
    let (mut e, mut l) = ([0f64; W], [0f64; W]);
    let (mut ws, mut os) = (row.chunks_exact(W), out.chunks_exact_mut(W));
    for (w, o) in (&mut ws).zip(&mut os) {
        for j in 0..W {
            let (v, level) = one(w[j]);
            o[j] = v;
            let d = (w[j] as f64 - step * level).abs();
            e[j] = if d > e[j] { d } else { e[j] };
            l[j] += level.abs();
        }
    }
    let (mut err, mut l1) = (0f64, 0f64);
    for (&w, o) in ws.remainder().iter().zip(os.into_remainder()) {
        let (v, level) = one(w);
        *o = v;
        err = err.max((w as f64 - step * level).abs());
        l1 += level.abs();
    }
    for j in 0..W {
        err = err.max(e[j]);
        l1 += l[j];
    }
    [err, l1]
}

dispatch! {
    /// A row of weights in 8 bits at step `s`: `q_i = round(w_i / s)` (by [`round_i8`];
    /// zero where `s` is), and `[max_i |w_i - s q_i|, sum_i |q_i|]`, the parts of the
    /// copy's error bound (see `decoder::Int8Head`).
    pub fn quantize_i8(row: &[f32], s: f32, q: &mut [i8]) -> [f64; 2] {
        let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
        quantize_lanes(row, q, s, |w| {
            let q = round_i8(w * inv);
            (q, q as f64)
        })
    }
}

dispatch! {
    /// A row of a `[k, n]` matrix in 8 bits, each column at its own step: `q_j = round(w_j /
    /// s_j)` (by [`round_i8`]; zero where `s_j` is 0 or `w_j` not finite).
    pub fn quantize_cols_i8(row: &[f32], s: &[f32], q: &mut [i8]) -> () {
        for ((q, &w), &s) in q.iter_mut().zip(row).zip(s) {
            let y = if s > 0.0 && w.is_finite() { w / s } else { 0.0 };
            *q = round_i8(y);
        }
    }
}

dispatch! {
    /// `top_j = max(top_j, |w_j|)` over the finite weights of a row (see [`quantize_cols_i8`]).
    pub fn fold_col_max(row: &[f32], top: &mut [f32]) -> () {
        for (t, &w) in top.iter_mut().zip(row) {
            let a = w.abs();
            *t = if a.is_finite() && a > *t { a } else { *t };
        }
    }
}

dispatch! {
    /// What [`quantize_i8`] at step `coarse` leaves of each weight, in 8 bits at step `fine`
    /// (`coarse / 254`): `r_i = round((w_i - 254 fine q_i) / fine)` (any rounding would do:
    /// the error is measured from the result), and `[max_i |w_i - fine l_i|, sum_i |l_i|]`
    /// with `l_i = 254 q_i + r_i`, the two planes' level.
    pub fn quantize_i8_remainder(row: &[f32], coarse: f32, fine: f32, r: &mut [i8]) -> [f64; 2] {
        let inv = if coarse > 0.0 { 1.0 / coarse } else { 0.0 };
        let k = if fine > 0.0 { 1.0 / fine } else { 0.0 };
        quantize_lanes(row, r, fine, |w| {
            let q = round_i8(w * inv);
            let r = round_i8((w - fine * 254.0 * q as f32) * k);
            (r, 254.0 * q as f64 + r as f64)
        })
    }
}

/// Outputs per block of [`pack_i8_pairs`]'s layout: four AVX-512 registers of 32-bit sums.
pub const I8_BLOCK: usize = 64;

/// The 8-bit matrix `q` (`[k, n]`, row-major) in the layout [`i16_i8_cols`] reads: blocks of
/// [`I8_BLOCK`] outputs, one after the other, each `[ceil(k/2), I8_BLOCK, 2]` (the weights
/// of two consecutive inputs side by side, as the pairwise multiply-add takes them), padded
/// with zeros to whole blocks and an even `k`. A block is one contiguous read.
pub fn pack_i8_pairs(q: &[i8], k: usize, n: usize) -> Vec<i8> {
    assert_eq!(q.len(), k * n, "pack_i8_pairs: q is not [k, n]");
    let (k2, blocks) = (k.div_ceil(2), n.div_ceil(I8_BLOCK));
    let mut packed = vec![0i8; blocks * k2 * I8_BLOCK * 2];
    for i in 0..k {
        for j in 0..n {
            let (b, c) = (j / I8_BLOCK, j % I8_BLOCK);
            packed[((b * k2 + i / 2) * I8_BLOCK + c) * 2 + i % 2] = q[i * n + j];
        }
    }
    packed
}

/// The 8-bit matrix `q` (`[k, n]`, row-major) in the layout [`i16_i8_quad_cols`] reads:
/// blocks of [`I8_BLOCK`] outputs, each `[ceil(k/4), I8_BLOCK, 4]` (the weights of four
/// consecutive inputs side by side, as the 4-way byte dot product takes them), padded with
/// zeros; and each output's sum of weights, which undoes the inputs' unsigned offset.
pub fn pack_i8_quads(q: &[i8], k: usize, n: usize) -> (Vec<i8>, Vec<i32>) {
    assert_eq!(q.len(), k * n, "pack_i8_quads: q is not [k, n]");
    let (k4, blocks) = (k.div_ceil(4), n.div_ceil(I8_BLOCK));
    let mut packed = vec![0i8; blocks * k4 * I8_BLOCK * 4];
    let mut colsum = vec![0i32; blocks * I8_BLOCK];
    for (i, row) in q.chunks_exact(n).enumerate() {
        for (b, cols) in row.chunks(I8_BLOCK).enumerate() {
            let at = (b * k4 + i / 4) * I8_BLOCK * 4 + i % 4;
            for (c, &w) in cols.iter().enumerate() {
                packed[at + 4 * c] = w;
            }
        }
        for (cs, &w) in colsum.iter_mut().zip(row) {
            *cs += w as i32;
        }
    }
    (packed, colsum)
}

/// `y[r, j] = sum_i x[r, i] * q[i, j]` for the rows `r` of `x` (`[m, kp]`, each padded with
/// zeros to `kp`, a multiple of 4) over 16-bit inputs and 8-bit weights packed by
/// [`pack_i8_quads`] (`y` `[m, n]`, `n` = `colsum.len()`), in 32-bit integers: the same exact
/// sums as [`i16_i8_cols`] (the same overflow bound is the caller's), on the CPU's byte dot
/// products where it has them (AVX-512 VNNI): each input split into a high and a low byte,
/// each byte plane one unsigned 4-way product per 16 outputs, a third of the instructions of
/// the pairwise path; two rows share each load of the weights.
pub fn i16_i8_quad_rows(x: &[i16], kp: usize, packed: &[i8], colsum: &[i32], y: &mut [i32]) {
    let n = colsum.len();
    assert!(kp.is_multiple_of(4) && kp > 0 && x.len().is_multiple_of(kp), "i16_i8_quad_rows: rows are not padded to a multiple of 4");
    let m = x.len() / kp;
    assert!(
        n.is_multiple_of(I8_BLOCK) && y.len() == m * n && packed.len() == n / I8_BLOCK * kp / 4 * I8_BLOCK * 4,
        "i16_i8_quad_rows: shapes do not match"
    );
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has AVX-512F, BW and VNNI (checked above); the lengths match.
        return unsafe { i16_i8_quad_rows_vnni(x, kp, packed, colsum, y) };
    }
    for (xr, yr) in x.chunks_exact(kp).zip(y.chunks_exact_mut(n)) {
        i16_i8_quad_cols_any(xr, packed, yr);
    }
}

dispatch! {
    /// [`i16_i8_quad_rows`] of one row as the compiler vectorises it (where the CPU has no
    /// byte dot products).
    pub fn i16_i8_quad_cols_any(x: &[i16], packed: &[i8], y: &mut [i32]) -> () {
        let k4 = x.len() / 4;
        for (yb, qb) in y.chunks_exact_mut(I8_BLOCK).zip(packed.chunks_exact(k4 * I8_BLOCK * 4)) {
            yb.fill(0);
            for (g, qg) in qb.chunks_exact(I8_BLOCK * 4).enumerate() {
                let xs = [x[4 * g] as i32, x[4 * g + 1] as i32, x[4 * g + 2] as i32, x[4 * g + 3] as i32];
                for (yv, w) in yb.iter_mut().zip(qg.chunks_exact(4)) {
                    *yv += xs[0] * w[0] as i32 + xs[1] * w[1] as i32 + xs[2] * w[2] as i32 + xs[3] * w[3] as i32;
                }
            }
        }
    }
}

/// [`i16_i8_quad_rows`] on AVX-512 VNNI. With `x = 256 h + l` (`l` the low byte, unsigned;
/// `h` signed, offset by 128 to be unsigned), the sum `x w` is `256 (sum (h + 128) w -
/// 128 sum w) + sum l w`: two byte planes, four inputs per instruction. Wrapping 32-bit arithmetic is
/// exact here: the true sum fits (the caller's bound), so intermediate wraps cancel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn i16_i8_quad_rows_vnni(x: &[i16], kp: usize, packed: &[i8], colsum: &[i32], y: &mut [i32]) {
    use std::arch::x86_64::*;
    let (k4, n, m) = (kp / 4, colsum.len(), x.len() / kp);
    // The inputs' byte planes: high bytes offset by 128 (unsigned), low bytes; four
    // consecutive inputs' bytes make one 32-bit word, broadcast to every lane.
    let (mut hi, mut lo) = (vec![0i32; m * k4], vec![0i32; m * k4]);
    let (hp, lp) = (hi.as_mut_ptr() as *mut u8, lo.as_mut_ptr() as *mut u8);
    let mut i = 0;
    while i < x.len() {
        let take = (x.len() - i).min(32);
        let mut tail = [0i16; 32];
        tail[..take].copy_from_slice(&x[i..i + take]);
        // SAFETY: `tail` holds 32 inputs; the planes hold x.len() bytes each, `take` from i.
        unsafe {
            let v = _mm512_loadu_si512(tail.as_ptr() as *const __m512i);
            let h = _mm512_add_epi16(_mm512_srai_epi16::<8>(v), _mm512_set1_epi16(128));
            let l = _mm512_and_si512(v, _mm512_set1_epi16(0xff));
            let mask = if take == 32 { u32::MAX } else { (1u32 << take) - 1 };
            _mm512_mask_cvtepi16_storeu_epi8(hp.add(i) as *mut i8, mask, h);
            _mm512_mask_cvtepi16_storeu_epi8(lp.add(i) as *mut i8, mask, l);
        }
        i += take;
    }
    for b in 0..n / I8_BLOCK {
        let qb = packed[b * k4 * I8_BLOCK * 4..(b + 1) * k4 * I8_BLOCK * 4].as_ptr();
        let mut r = 0;
        while r < m {
            let two = r + 1 < m;
            let zero = _mm512_setzero_si512();
            let (mut h0, mut l0, mut h1, mut l1) = ([zero; 4], [zero; 4], [zero; 4], [zero; 4]);
            for g in 0..k4 {
                // SAFETY: the block holds k4 * 256 bytes; g < k4 and t * 64 + 64 <= 256.
                let w: [__m512i; 4] =
                    std::array::from_fn(|t| unsafe { _mm512_loadu_si512(qb.add((g * I8_BLOCK + t * 16) * 4) as *const __m512i) });
                let (xh, xl) = (_mm512_set1_epi32(hi[r * k4 + g]), _mm512_set1_epi32(lo[r * k4 + g]));
                for t in 0..4 {
                    h0[t] = _mm512_dpbusd_epi32(h0[t], xh, w[t]);
                    l0[t] = _mm512_dpbusd_epi32(l0[t], xl, w[t]);
                }
                if two {
                    let (xh, xl) = (_mm512_set1_epi32(hi[(r + 1) * k4 + g]), _mm512_set1_epi32(lo[(r + 1) * k4 + g]));
                    for t in 0..4 {
                        h1[t] = _mm512_dpbusd_epi32(h1[t], xh, w[t]);
                        l1[t] = _mm512_dpbusd_epi32(l1[t], xl, w[t]);
                    }
                }
            }
            for (row, (h, l)) in [(r, (&h0, &l0)), (r + 1, (&h1, &l1))].into_iter().take(1 + two as usize) {
                for t in 0..4 {
                    // SAFETY: colsum has n elements and y m * n; b * 64 + t * 16 + 16 <= n.
                    unsafe {
                        let c = _mm512_loadu_si512(colsum.as_ptr().add(b * I8_BLOCK + t * 16) as *const __m512i);
                        let signed = _mm512_sub_epi32(h[t], _mm512_slli_epi32::<7>(c));
                        let sum = _mm512_add_epi32(_mm512_slli_epi32::<8>(signed), l[t]);
                        _mm512_storeu_si512(y.as_mut_ptr().add(row * n + b * I8_BLOCK + t * 16) as *mut __m512i, sum);
                    }
                }
            }
            r += 2;
        }
    }
}

/// `y[j] = sum_i x[i] * q[i, j]` over 16-bit inputs and 8-bit weights packed by
/// [`pack_i8_pairs`] (`x` padded with a zero to the packing's even length), in 32-bit
/// integers: exact, so every path gives the same sums. The caller keeps them from
/// overflowing (`k * max|x| * 127 < 2^31`). `y` has a whole number of blocks.
pub fn i16_i8_cols(x: &[i16], packed: &[i8], y: &mut [i32]) {
    let k2 = x.len() / 2;
    assert_eq!(x.len(), 2 * k2, "i16_i8_cols: x has an odd length");
    let blocks = y.len() / I8_BLOCK;
    assert!(y.len() == blocks * I8_BLOCK && packed.len() == blocks * k2 * I8_BLOCK * 2, "i16_i8_cols: shapes do not match");
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has AVX-512F and BW (checked above); the lengths match.
        return unsafe { i16_i8_cols_avx512(x, packed, y) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked above); the lengths match.
        return unsafe { i16_i8_cols_avx2(x, packed, y) };
    }
    i16_i8_cols_plain(x, packed, y);
}

/// [`i16_i8_cols`] for `m` rows of inputs at once (`x`: `[m, k]`, `y`: `[m, n]`): on
/// AVX-512BW each weight is loaded and widened once for up to five rows, so a wide
/// classifier is read once for all of them. Exact integer sums: each row's are
/// [`i16_i8_cols`]'s.
pub fn i16_i8_cols_rows(x: &[i16], m: usize, packed: &[i8], y: &mut [i32]) {
    assert!(m > 0 && x.len().is_multiple_of(m) && y.len().is_multiple_of(m), "i16_i8_cols_rows: shapes do not match");
    let (k, n) = (x.len() / m, y.len() / m);
    let k2 = k / 2;
    assert!(k == 2 * k2 && n % I8_BLOCK == 0 && packed.len() == n / I8_BLOCK * k2 * I8_BLOCK * 2, "i16_i8_cols_rows: shapes do not match");
    // Groups of at most five rows (20 registers of sums and 4 of weights), as even as can
    // be: the classifier is read once per group.
    let per_group = m.div_ceil(m.div_ceil(5));
    let mut r0 = 0;
    while r0 < m {
        let rows = per_group.min(m - r0);
        let (xs, ys) = (&x[r0 * k..(r0 + rows) * k], &mut y[r0 * n..(r0 + rows) * n]);
        #[cfg(target_arch = "x86_64")]
        if rows > 1 && std::is_x86_feature_detected!("avx512bw") {
            // SAFETY: the CPU has AVX-512F and BW (checked above); the lengths match
            // (asserted above).
            unsafe {
                match rows {
                    5 => i16_i8_cols_rows_avx512::<5>(xs, packed, ys),
                    4 => i16_i8_cols_rows_avx512::<4>(xs, packed, ys),
                    3 => i16_i8_cols_rows_avx512::<3>(xs, packed, ys),
                    _ => i16_i8_cols_rows_avx512::<2>(xs, packed, ys),
                }
            }
            r0 += rows;
            continue;
        }
        for (xr, yr) in xs.chunks_exact(k).zip(ys.chunks_exact_mut(n)) {
            i16_i8_cols(xr, packed, yr);
        }
        r0 += rows;
    }
}

/// [`i16_i8_cols_rows`] for `R` rows on AVX-512: a block's 64 sums of each row in four
/// registers, each widened weight vector multiplied into all `R` rows.
///
/// # Safety
/// The CPU must have AVX-512F and BW; `x` is `R` rows of an even length `k`, `packed`
/// holds `y.len() / R / I8_BLOCK` blocks of `k / 2 * I8_BLOCK * 2` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn i16_i8_cols_rows_avx512<const R: usize>(x: &[i16], packed: &[i8], y: &mut [i32]) {
    use std::arch::x86_64::*;
    let (k, n) = (x.len() / R, y.len() / R);
    let k2 = k / 2;
    for b in 0..n / I8_BLOCK {
        let qb = packed[b * k2 * I8_BLOCK * 2..(b + 1) * k2 * I8_BLOCK * 2].as_ptr();
        let mut acc = [[_mm512_setzero_si512(); 4]; R];
        for p in 0..k2 {
            // SAFETY: the block holds k2 * 128 bytes; p < k2 and t * 32 + 32 <= 128.
            let w: [__m512i; 4] = std::array::from_fn(|t| unsafe {
                _mm512_cvtepi8_epi16(_mm256_loadu_si256(qb.add(p * I8_BLOCK * 2 + t * 32) as *const __m256i))
            });
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_epi32(input_pair(&x[r * k..(r + 1) * k], p));
                for t in 0..4 {
                    a[t] = _mm512_add_epi32(a[t], _mm512_madd_epi16(w[t], xv));
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (t, v) in a.iter().enumerate() {
                // SAFETY: row r's block b has 64 elements inside y; t * 16 + 16 <= 64.
                unsafe { _mm512_storeu_si512(y.as_mut_ptr().add(r * n + b * I8_BLOCK + t * 16) as *mut _, *v) };
            }
        }
    }
}

/// [`i16_i8_cols`] without vector instructions.
fn i16_i8_cols_plain(x: &[i16], packed: &[i8], y: &mut [i32]) {
    let k2 = x.len() / 2;
    for (yb, qb) in y.chunks_exact_mut(I8_BLOCK).zip(packed.chunks_exact(k2 * I8_BLOCK * 2)) {
        yb.fill(0);
        for (p, qp) in qb.chunks_exact(I8_BLOCK * 2).enumerate() {
            let (x0, x1) = (x[2 * p] as i32, x[2 * p + 1] as i32);
            for (yv, w) in yb.iter_mut().zip(qp.chunks_exact(2)) {
                *yv += x0 * w[0] as i32 + x1 * w[1] as i32;
            }
        }
    }
}

/// The pair of inputs `2p, 2p + 1` as one 32-bit lane, for the pairwise multiply-add.
#[cfg(target_arch = "x86_64")]
fn input_pair(x: &[i16], p: usize) -> i32 {
    (x[2 * p] as u16 as u32 | (x[2 * p + 1] as u16 as u32) << 16) as i32
}

/// [`i16_i8_cols`] on AVX-512: a block's 64 sums in four registers, two sets of them
/// (even and odd input pairs) so the additions do not wait on each other.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn i16_i8_cols_avx512(x: &[i16], packed: &[i8], y: &mut [i32]) {
    use std::arch::x86_64::*;
    let k2 = x.len() / 2;
    for (b, yb) in y.chunks_exact_mut(I8_BLOCK).enumerate() {
        let qb = packed[b * k2 * I8_BLOCK * 2..(b + 1) * k2 * I8_BLOCK * 2].as_ptr();
        let (mut even, mut odd) = ([_mm512_setzero_si512(); 4], [_mm512_setzero_si512(); 4]);
        // One input pair into one set of sums.
        let step = |acc: &mut [__m512i; 4], p: usize| {
            let xv = _mm512_set1_epi32(input_pair(x, p));
            for (t, a) in acc.iter_mut().enumerate() {
                // SAFETY: the block holds k2 * 128 bytes; p < k2 and t * 32 + 32 <= 128.
                let w = unsafe { _mm512_cvtepi8_epi16(_mm256_loadu_si256(qb.add(p * I8_BLOCK * 2 + t * 32) as *const __m256i)) };
                *a = _mm512_add_epi32(*a, _mm512_madd_epi16(w, xv));
            }
        };
        let mut p = 0;
        while p + 2 <= k2 {
            step(&mut even, p);
            step(&mut odd, p + 1);
            p += 2;
        }
        if p < k2 {
            step(&mut even, p);
        }
        for t in 0..4 {
            // SAFETY: yb has 64 elements; t * 16 + 16 <= 64; unaligned store.
            unsafe { _mm512_storeu_si512(yb.as_mut_ptr().add(t * 16) as *mut _, _mm512_add_epi32(even[t], odd[t])) };
        }
    }
}

/// [`i16_i8_cols`] on AVX2: a block's 64 sums in eight registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn i16_i8_cols_avx2(x: &[i16], packed: &[i8], y: &mut [i32]) {
    use std::arch::x86_64::*;
    let k2 = x.len() / 2;
    for (b, yb) in y.chunks_exact_mut(I8_BLOCK).enumerate() {
        let qb = packed[b * k2 * I8_BLOCK * 2..(b + 1) * k2 * I8_BLOCK * 2].as_ptr();
        let mut acc = [_mm256_setzero_si256(); 8];
        for p in 0..k2 {
            let xv = _mm256_set1_epi32(input_pair(x, p));
            for (t, a) in acc.iter_mut().enumerate() {
                // SAFETY: the block holds k2 * 128 bytes; p < k2 and t * 16 + 16 <= 128.
                let w = unsafe { _mm256_cvtepi8_epi16(_mm_loadu_si128(qb.add(p * I8_BLOCK * 2 + t * 16) as *const __m128i)) };
                *a = _mm256_add_epi32(*a, _mm256_madd_epi16(w, xv));
            }
        }
        for (t, a) in acc.iter().enumerate() {
            // SAFETY: yb has 64 elements; t * 8 + 8 <= 64; unaligned store.
            unsafe { _mm256_storeu_si256(yb.as_mut_ptr().add(t * 8) as *mut __m256i, *a) };
        }
    }
}

/// Whether [`i16_i8_cols`] runs on vector instructions here (AVX-512BW or AVX2): where it
/// does not, an 8-bit copy of a wide classifier saves no time.
pub fn i16_i8_cols_is_fast() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512bw") || std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Dot product: four vector accumulators of 16 lanes, reduced as a tree. Vectorised, with
/// no long chain of dependent additions, and the same order for the same length.
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [[0f32; LANES]; 4];
    let n = a.len().min(b.len());
    let full = n - n % (4 * LANES);
    for (ca, cb) in a[..full].chunks_exact(4 * LANES).zip(b[..full].chunks_exact(4 * LANES)) {
        for u in 0..4 {
            for j in 0..LANES {
                acc[u][j] += ca[u * LANES + j] * cb[u * LANES + j];
            }
        }
    }
    let mut rest = full;
    while rest + LANES <= n {
        for j in 0..LANES {
            acc[0][j] += a[rest + j] * b[rest + j];
        }
        rest += LANES;
    }
    let mut v = [0f32; LANES];
    for j in 0..LANES {
        v[j] = (acc[0][j] + acc[1][j]) + (acc[2][j] + acc[3][j]);
    }
    let mut width = LANES / 2;
    while width > 0 {
        for j in 0..width {
            v[j] += v[j + width];
        }
        width /= 2;
    }
    let mut s = v[0];
    for i in rest..n {
        s += a[i] * b[i];
    }
    s
}

dispatch! {
    /// `y[r, v] = dot(x[r, :], w[v, :])` for the rows of `x` (`[m, d]`) and the `n_w` rows
    /// of `w` (`[n_w, d]`: the classifier against the embedding matrix); `y` is `[m, n_w]`.
    /// Each dot product is computed on its own: rows do not affect one another.
    pub fn classify_rows(x: &[f32], d: usize, w: &[f32], y: &mut [f32], n_w: usize) -> () {
        let m = x.len() / d;
        for v in 0..n_w {
            let wv = &w[v * d..(v + 1) * d];
            for r in 0..m {
                y[r * n_w + v] = dot_lanes(&x[r * d..(r + 1) * d], wv);
            }
        }
    }
}

dispatch! {
    /// The largest softmax probability of a row of logits, `1 / sum_j exp(z_j - max z)`
    /// (the confidence of a prediction), without writing the probabilities.
    pub fn max_prob(row: &[f32]) -> f32 {
        let max = max_of(row);
        let mut acc = [0f32; LANES];
        let chunks = row.chunks_exact(LANES);
        let tail = chunks.remainder();
        for c in chunks {
            for j in 0..LANES {
                acc[j] += exp(c[j] - max);
            }
        }
        let sum = acc.iter().sum::<f32>() + tail.iter().map(|&x| exp(x - max)).sum::<f32>();
        1.0 / sum
    }
}

/// One head's slice of a KV cache. Keys are stored transposed — component `i` of position
/// `j` at `keys[i * key_stride + j]` — so that the scores of [`KEY_BLOCK`] consecutive
/// positions are the lanes of one vector, each summed over the head's components in order;
/// `key_stride` is a multiple of [`KEY_BLOCK`] and every key row holds whole blocks of
/// [`KEY_BLOCK`] positions past the last one scored (their lanes are computed and dropped).
/// Values are a row of the head size per position.
#[derive(Clone, Copy)]
pub struct HeadCache<'a> {
    pub keys: &'a [f32],
    pub key_stride: usize,
    pub values: &'a [f32],
}

/// Positions per block of a transposed key row: key rows of a cache are padded to this.
pub const KEY_BLOCK: usize = LANES;

dispatch! {
    /// One head of one query row against the first `scores.len()` cached positions:
    /// `out = softmax(scale q K^T) V`. Computed for this row alone, so batching rows cannot
    /// change it.
    pub fn attend_row(q: &[f32], cache: HeadCache<'_>, scale: f32, scores: &mut [f32], out: &mut [f32]) -> () {
        // The common head sizes get a copy compiled for their size, the same operations
        // in the same order (so the same bits): the output rows stay in registers across
        // positions. Generic, the compiler kept neither (the Austen models' 32; GPT-2's 64).
        match q.len() {
            32 => attend_row_sized::<32>(q, cache, scale, scores, out),
            64 => attend_row_sized::<64>(q, cache, scale, scores, out),
            _ => attend_row_any(q, cache, scale, scores, out),
        }
    }
}

/// [`attend_row`] for any head size.
#[inline(always)]
fn attend_row_any(q: &[f32], cache: HeadCache<'_>, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    let (mut even, mut odd) = (vec![0f32; q.len()], vec![0f32; q.len()]);
    attend_row_into(q, cache, scale, scores, &mut even, &mut odd);
    out.iter_mut().zip(even.iter().zip(&odd)).for_each(|(o, (a, b))| *o = a + b);
}

/// [`attend_row`] for head size `HD`: the same arithmetic into local rows, which the
/// compiler keeps in registers.
#[inline(always)]
fn attend_row_sized<const HD: usize>(q: &[f32], cache: HeadCache<'_>, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    let q: &[f32; HD] = q.try_into().expect("a query of the head size");
    let (mut even, mut odd) = ([0f32; HD], [0f32; HD]);
    attend_row_into(q, cache, scale, scores, &mut even, &mut odd);
    out.iter_mut().zip(even.iter().zip(&odd)).for_each(|(o, (a, b))| *o = a + b);
}

/// Attention of one query row: the weighted values of the even positions added onto
/// `even`, of the odd ones onto `odd` (both zero on entry): two independent chains of
/// additions instead of one.
#[inline(always)]
fn attend_row_into(q: &[f32], cache: HeadCache<'_>, scale: f32, scores: &mut [f32], even: &mut [f32], odd: &mut [f32]) {
    let hd = q.len();
    let HeadCache { keys, key_stride, values } = cache;
    // Scores, a block of positions at a time: lane l sums q_i k_i(j0 + l) over i in order.
    for (b, block) in scores.chunks_mut(LANES).enumerate() {
        let j0 = b * LANES;
        let mut acc = [0f32; LANES];
        for (i, &qi) in q.iter().enumerate() {
            let k: &[f32; LANES] = keys[i * key_stride + j0..i * key_stride + j0 + LANES].try_into().expect("a whole block");
            for l in 0..LANES {
                acc[l] += qi * k[l];
            }
        }
        for (s, a) in block.iter_mut().zip(acc) {
            *s = a * scale;
        }
    }
    let max = max_of(scores);
    let inv = 1.0 / exp_shift_sum(scores, max);
    let mut pairs = scores.chunks_exact(2);
    let mut j = 0;
    for p in &mut pairs {
        let (p0, p1) = (p[0] * inv, p[1] * inv);
        let (v0, v1) = (&values[j * hd..(j + 1) * hd], &values[(j + 1) * hd..(j + 2) * hd]);
        for c in 0..hd {
            even[c] += p0 * v0[c];
            odd[c] += p1 * v1[c];
        }
        j += 2;
    }
    if let [p] = pairs.remainder() {
        let (p, v) = (p * inv, &values[j * hd..(j + 1) * hd]);
        for c in 0..hd {
            even[c] += p * v[c];
        }
    }
}

#[cfg(test)]
mod tests {
    /// The byte-plane path of 16-bit x 8-bit sums gives the pairwise path's exact sums, on
    /// both its implementations, with inputs at the overflow bound and weights at +-127,
    /// over lengths that leave every remainder of the groups of four.
    #[test]
    fn quad_sums_are_the_pairwise_sums() {
        for (k, n) in [(1usize, 64usize), (5, 64), (128, 384), (130, 128), (511, 64), (512, 128)] {
            let xmax = (i32::MAX as usize / (127 * k.div_ceil(4) * 4)).min(i16::MAX as usize) as i32;
            let q: Vec<i8> = (0..k * n)
                .map(|i| match i % 7 {
                    0 => 127,
                    1 => -127,
                    _ => ((i * 7919) % 255) as i8,
                })
                .collect();
            let x: Vec<i16> = (0..k)
                .map(|i| match i % 5 {
                    0 => xmax,
                    1 => -xmax,
                    _ => ((i * 104_729) % (2 * xmax as usize + 1)) as i32 - xmax,
                })
                .map(|v| v as i16)
                .collect();
            let mut pairs = vec![0i32; n];
            let mut x2 = x.clone();
            x2.resize(k.div_ceil(2) * 2, 0);
            let q2: Vec<i8> = q.iter().copied().chain(std::iter::repeat_n(0, (x2.len() - k) * n)).collect();
            super::i16_i8_cols(&x2, &super::pack_i8_pairs(&q2, x2.len(), n), &mut pairs);
            let (packed, colsum) = super::pack_i8_quads(&q, k, n);
            let mut x4 = x.clone();
            x4.resize(k.div_ceil(4) * 4, 0);
            let (mut quads, mut any) = (vec![0i32; n], vec![0i32; n]);
            super::i16_i8_quad_rows(&x4, x4.len(), &packed, &colsum, &mut quads);
            super::i16_i8_quad_cols_any(&x4, &packed, &mut any);
            let exact: Vec<i32> = (0..n).map(|j| (0..k).map(|i| x[i] as i64 * q[i * n + j] as i64).sum::<i64>() as i32).collect();
            assert_eq!(pairs, exact, "k {k} n {n}");
            assert_eq!(quads, exact, "k {k} n {n}");
            assert_eq!(any, exact, "k {k} n {n}");
            // Rows in twos and one left over: each row's sums as alone.
            for m in [2usize, 3, 5] {
                let xs: Vec<i16> = (0..m).flat_map(|r| x4.iter().map(move |&v| if r % 2 == 1 { v.saturating_neg() } else { v })).collect();
                let mut ys = vec![0i32; m * n];
                super::i16_i8_quad_rows(&xs, x4.len(), &packed, &colsum, &mut ys);
                for r in 0..m {
                    let want: Vec<i32> = exact.iter().map(|&v| if r % 2 == 1 { -v } else { v }).collect();
                    assert_eq!(ys[r * n..(r + 1) * n], want[..], "k {k} n {n} rows {m} row {r}");
                }
            }
        }
    }

    /// 16-bit rounding of a row: to even, within the bound, not-finite inputs 0, the same on
    /// the vector path as on the scalar one.
    #[test]
    fn a_row_in_16_bits_rounds_to_even_within_the_bound() {
        let x: Vec<f32> = (0..37).map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 31.0).chain([f32::NAN, f32::INFINITY, -2.5]).collect();
        let mut q = vec![0i16; x.len()];
        let step = super::quantize_i16(&x, 1000.0, &mut q);
        let top = x.iter().filter(|v| v.is_finite()).fold(0f32, |a, v| a.max(v.abs()));
        assert_eq!(step, top / 1000.0);
        for (&v, &z) in x.iter().zip(&q) {
            let want = if v.is_finite() { (v * (1.0 / step)).round_ties_even().clamp(-1000.0, 1000.0) as i16 } else { 0 };
            assert_eq!(z, want, "{v}");
        }
        assert_eq!(q.iter().map(|z| z.abs()).max(), Some(1000));
        assert_eq!(super::quantize_i16(&[0.0; 20], 1000.0, &mut q), 1.0);
        assert!(q[..20].iter().all(|&z| z == 0));
        let mut h = [0i16; 3];
        assert_eq!(super::quantize_i16(&[1.0, -0.5, 0.25], 4.0, &mut h), 0.25);
        assert_eq!(h, [4, -2, 1]);
    }

    /// The copies of attention compiled for a head size compute the same bits as the
    /// generic one, over lengths that leave every remainder of the blocks and pairs; the
    /// padding lanes of the last block of keys cannot leak into the result (NaN there
    /// changes nothing); and the result is softmax(scale q K^T) V computed in f64.
    #[test]
    fn sized_attention_is_the_generic_attention() {
        fn check<const HD: usize>() {
            let val = |i: usize| ((i * 7919 % 1013) as f32 - 506.0) / 211.0;
            for positions in [1usize, 2, 15, 16, 17, 33, 64, 100] {
                let key_stride = positions.div_ceil(super::KEY_BLOCK) * super::KEY_BLOCK + super::KEY_BLOCK;
                let key = |j: usize, i: usize| val(j * HD + i);
                let keys = |pad: f32| -> Vec<f32> {
                    (0..HD * key_stride)
                        .map(|at| if at % key_stride < positions { key(at % key_stride, at / key_stride) } else { pad })
                        .collect()
                };
                let (keys0, keys_nan) = (keys(0.0), keys(f32::NAN));
                let values: Vec<f32> = (0..positions * HD).map(|i| val(i + 11)).collect();
                let q: Vec<f32> = (0..HD).map(|i| val(i + 3) * 0.7).collect();
                let cache = super::HeadCache { keys: &keys0, key_stride, values: &values };
                let (mut s1, mut s2) = (vec![0f32; positions], vec![0f32; positions]);
                let (mut o1, mut o2) = (vec![0f32; HD], vec![0f32; HD]);
                super::attend_row_any(&q, cache, 0.17, &mut s1, &mut o1);
                super::attend_row_sized::<HD>(&q, cache, 0.17, &mut s2, &mut o2);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&o1), bits(&o2), "head size {HD}, {positions} positions");
                let mut o3 = vec![0f32; HD];
                super::attend_row(&q, cache, 0.17, &mut s2, &mut o3);
                assert_eq!(bits(&o1), bits(&o3), "dispatched, head size {HD}, {positions} positions");
                let nan_padded = super::HeadCache { keys: &keys_nan, ..cache };
                super::attend_row(&q, nan_padded, 0.17, &mut s2, &mut o3);
                assert_eq!(bits(&o1), bits(&o3), "NaN padding, head size {HD}, {positions} positions");
                let s: Vec<f64> = (0..positions).map(|j| 0.17 * (0..HD).map(|i| q[i] as f64 * key(j, i) as f64).sum::<f64>()).collect();
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for c in 0..HD {
                    let want: f64 = (0..positions).map(|j| e[j] / sum * values[j * HD + c] as f64).sum();
                    assert!((o1[c] as f64 - want).abs() < 1e-5, "head size {HD}, {positions} positions, column {c}: {} vs {want}", o1[c]);
                }
            }
        }
        check::<32>();
        check::<64>();
    }

    /// One output of the column product computed from its contiguous weights is the
    /// column product's output, bit for bit, whatever the length's remainder mod 4, the
    /// rows computed with it (one at a time or several: register tiles and their edges)
    /// and the columns asked for.
    #[test]
    fn a_column_dot_is_the_column_product() {
        let val = |i: usize| ((i * 7919 % 1013) as f32 - 506.0) / 97.0;
        for (k, n, c0, nb) in [
            (1, 37, 0, 37),
            (3, 37, 0, 37),
            (4, 64, 0, 64),
            (5, 100, 3, 70),
            (8, 37, 0, 37),
            (127, 1100, 0, 1100),
            (128, 37, 0, 37),
            (130, 1100, 40, 1060),
        ] {
            for m in [1, 2, 3, 4, 5, 9] {
                let x: Vec<f32> = (0..m * k).map(|i| val(i + 5) * 0.3).collect();
                let w: Vec<f32> = (0..k * n).map(val).collect();
                let bias: Vec<f32> = (0..nb).map(|j| val(j + 1) * 0.01).collect();
                let mut y: Vec<f32> = (0..m).flat_map(|_| bias.iter().copied()).collect();
                super::matrix_cols_accumulate(&x, k, &w, n, c0, nb, &mut y);
                for r in 0..m {
                    for j in 0..nb {
                        let col: Vec<f32> = (0..k).map(|i| w[i * n + c0 + j]).collect();
                        let got = super::matrix_col_dot(&x[r * k..(r + 1) * k], &col, bias[j]);
                        assert_eq!(got.to_bits(), y[r * nb + j].to_bits(), "k {k}, {m} rows, row {r}, output {j}");
                    }
                }
            }
        }
    }

    /// The packed 8-bit column product is the exact integer sum on every path the CPU has,
    /// whatever the remainders of `k` (odd: a padded input) and `n` (a partial block).
    #[test]
    fn the_8_bit_column_product_is_the_exact_sum() {
        for (k, n) in [(1, 21), (3, 64), (6, 65), (128, 4096), (129, 130)] {
            let x: Vec<i16> = (0..k).map(|i| ((i * 7919 % 65535) as i32 - 32767) as i16).collect();
            let q: Vec<i8> = (0..k * n).map(|i| ((i * 53 % 255) as i32 - 127) as i8).collect();
            let packed = super::pack_i8_pairs(&q, k, n);
            let mut xp = x.clone();
            xp.resize(k.div_ceil(2) * 2, 0);
            let blocks = n.div_ceil(super::I8_BLOCK);
            let want: Vec<i32> = (0..blocks * super::I8_BLOCK)
                .map(|j| if j < n { (0..k).map(|i| x[i] as i32 * q[i * n + j] as i32).sum() } else { 0 })
                .collect();
            let mut paths = Vec::new();
            let mut y = vec![7i32; want.len()];
            super::i16_i8_cols(&xp, &packed, &mut y);
            paths.push(("dispatched", y.clone()));
            super::i16_i8_cols_plain(&xp, &packed, &mut y);
            paths.push(("plain", y.clone()));
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2.
                    unsafe { super::i16_i8_cols_avx2(&xp, &packed, &mut y) };
                    paths.push(("avx2", y.clone()));
                }
                if std::is_x86_feature_detected!("avx512bw") {
                    // SAFETY: the CPU has AVX-512F and BW.
                    unsafe { super::i16_i8_cols_avx512(&xp, &packed, &mut y) };
                    paths.push(("avx512", y.clone()));
                }
            }
            for (name, got) in paths {
                assert_eq!(got, want, "{name}, k {k}, n {n}");
            }
        }
    }

    /// Several rows at once give each row's own sums: groups of one to five rows, every
    /// block, odd lengths padded.
    #[test]
    fn the_8_bit_column_product_of_several_rows_is_each_rows() {
        for (k, n) in [(3, 64), (6, 65), (128, 4096), (129, 130)] {
            let q: Vec<i8> = (0..k * n).map(|i| ((i * 53 % 255) as i32 - 127) as i8).collect();
            let packed = super::pack_i8_pairs(&q, k, n);
            let (kp, np) = (k.div_ceil(2) * 2, n.div_ceil(super::I8_BLOCK) * super::I8_BLOCK);
            for m in [1, 2, 3, 4, 5, 6, 9, 11] {
                let x: Vec<i16> = (0..m * kp).map(|i| if i % kp < k { ((i * 7919 % 65535) as i32 - 32767) as i16 } else { 0 }).collect();
                let mut y = vec![7i32; m * np];
                super::i16_i8_cols_rows(&x, m, &packed, &mut y);
                for r in 0..m {
                    let mut one = vec![0i32; np];
                    super::i16_i8_cols(&x[r * kp..(r + 1) * kp], &packed, &mut one);
                    assert_eq!(&y[r * np..(r + 1) * np], &one[..], "k {k}, n {n}, {m} rows, row {r}");
                }
            }
        }
    }

    /// Rounding to 8 bits is `f32::round` clamped to +-127 (NaN to 0), and a row's 8-bit
    /// levels and error terms, in lanes, are those of a plain loop, whatever the length's
    /// remainder; the second plane's level is within half a fine step of each weight.
    #[test]
    fn eight_bit_rows_are_the_plain_loops() {
        for y in [0.0f32, 0.49, 0.5, -0.5, 1.5, -2.5, 126.5, 127.4, 130.0, -1e9, f32::NAN, f32::INFINITY] {
            let want = if y.is_nan() { 0 } else { y.round().clamp(-127.0, 127.0) as i8 };
            assert_eq!(super::round_i8(y), want, "{y}");
        }
        let val = |i: usize| ((i * 7919 % 1013) as f32 - 506.0) / 211.0;
        for n in [1, 15, 16, 17, 33, 768, 769] {
            let row: Vec<f32> = (0..n).map(val).collect();
            let s = super::max_abs_finite(&row).unwrap() / 127.0;
            let mut q = vec![0i8; n];
            let [err, l1] = super::quantize_i8(&row, s, &mut q);
            let want_q: Vec<i8> = row.iter().map(|&w| super::round_i8(w * (1.0 / s))).collect();
            assert_eq!(q, want_q, "n {n}");
            let want_err = row.iter().zip(&q).map(|(&w, &q)| (w as f64 - s as f64 * q as f64).abs()).fold(0.0, f64::max);
            assert_eq!(err, want_err, "n {n}");
            assert_eq!(l1, q.iter().map(|&q| (q as f64).abs()).sum::<f64>(), "n {n}");
            let fine = s / 254.0;
            let mut r = vec![0i8; n];
            let [ferr, fl1] = super::quantize_i8_remainder(&row, s, fine, &mut r);
            let levels: Vec<f64> = q.iter().zip(&r).map(|(&q, &r)| 254.0 * q as f64 + r as f64).collect();
            let want_ferr = row.iter().zip(&levels).map(|(&w, &l)| (w as f64 - fine as f64 * l).abs()).fold(0.0, f64::max);
            assert_eq!(ferr, want_ferr, "n {n}");
            assert_eq!(fl1, levels.iter().map(|l| l.abs()).sum::<f64>(), "n {n}");
            assert!(ferr <= fine as f64 * 0.51, "n {n}: {ferr} vs a fine step {fine}");
        }
        assert_eq!(super::max_abs_finite(&[1.0, -3.0, 2.0]), Some(3.0));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut row = vec![0.5f32; 40];
            row[37] = bad;
            assert_eq!(super::max_abs_finite(&row), None, "{bad}");
            row[37] = 0.5;
            row[3] = bad;
            assert_eq!(super::max_abs_finite(&row), None, "{bad}");
        }
    }

    #[test]
    fn exp_and_tanh_are_accurate() {
        let mut worst: f64 = 0.0;
        let mut worst_t: f64 = 0.0;
        for i in -86_900..88_000 {
            let x = i as f32 * 1e-3;
            let e = super::exp(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((e - want) / want).abs());
            if x.abs() < 20.0 {
                worst_t = worst_t.max((super::tanh(x) as f64 - (x as f64).tanh()).abs());
            }
        }
        assert!(worst < 3e-7, "exp relative error {worst:e}");
        assert!(worst_t < 3e-7, "tanh absolute error {worst_t:e}");
    }
}
