//! Single-precision matrix products for the CPU paths, row-major like BLAS's `sgemm`,
//! through the pure-Rust `gemm` crate, or Intel MKL's sequential `cblas_sgemm` with the
//! `mkl` feature.
//!
//! Parallel products split the output into blocks of rows or columns, one sequential
//! product each: no block's sum over `k` is ever split, so the result does not depend on
//! which thread ran which block (resumed training runs are bit-identical). Deep products
//! take fixed blocks; shallow ones (`k` up to [`GUIDED_MAX_DEPTH`], one pass of the
//! kernels over `k` whatever the block) take blocks as the threads come free, and the
//! result does not depend on where those fell either (tested against one thread).

use std::sync::atomic::{AtomicUsize, Ordering};

/// One operand of a product: a row-major matrix with `ld` floats between rows, read as is
/// or transposed.
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a> {
    pub data: &'a [f32],
    pub ld: usize,
    pub trans: bool,
}

impl<'a> Operand<'a> {
    /// `data` as stored (`[rows, ld]`).
    pub fn n(data: &'a [f32], ld: usize) -> Self {
        Self { data, ld, trans: false }
    }

    /// `data` transposed: a `[rows, ld]` array read as its `[ld, rows]` transpose.
    pub fn t(data: &'a [f32], ld: usize) -> Self {
        Self { data, ld, trans: true }
    }

    /// Whether `op(data)` of `rows x cols` lies inside the slice.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        let (r, c) = if self.trans { (cols, rows) } else { (rows, cols) };
        r == 0 || c == 0 || (c <= self.ld && (r - 1) * self.ld + c <= self.data.len())
    }
}

/// Which library computes the products, for benchmark reports.
pub const BACKEND: &str = if cfg!(feature = "mkl") { "Intel MKL (sequential, static)" } else { "gemm crate" };

/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_MIN_FMAS: usize = 1 << 18;

/// `c[m x n] = alpha * op(a)[m x k] op(b)[k x n]`, added onto `c` when `accumulate`,
/// spread over the rayon threads when `parallel` and large enough.
///
/// Panics if an operand does not hold the shape it is given (a programming error).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Operand,
    b: Operand,
    accumulate: bool,
    c: &mut [f32],
    ldc: usize,
    parallel: bool,
) {
    assert!(a.fits(m, k) && b.fits(k, n), "sgemm operands do not hold [{m}, {k}] x [{k}, {n}]");
    assert!(n <= ldc && (m == 0 || (m - 1) * ldc + n <= c.len()), "sgemm output does not hold [{m}, {n}]");
    if m == 0 || n == 0 {
        return;
    }
    let threads = if parallel && m * n * k >= PARALLEL_MIN_FMAS { rayon::current_num_threads() } else { 1 };
    // SAFETY: the asserts above keep every element of op(a), op(b) and c inside its slice,
    // and `c` is borrowed mutably, so nothing else reads or writes it meanwhile.
    unsafe { sgemm_raw(m, n, k, alpha, raw(a), raw(b), accumulate, c.as_mut_ptr(), ldc, threads) }
}

/// An operand as a pointer, for [`sgemm_raw`].
#[derive(Clone, Copy, Debug)]
pub struct RawOperand {
    pub ptr: *const f32,
    pub ld: usize,
    pub trans: bool,
}

fn raw(o: Operand) -> RawOperand {
    RawOperand { ptr: o.data.as_ptr(), ld: o.ld, trans: o.trans }
}

impl RawOperand {
    /// The operand from its row `i` on (of `op(self)`).
    ///
    /// # Safety
    /// Row `i` of `op(self)` must lie inside the operand's allocation.
    unsafe fn at_row(self, i: usize) -> Self {
        // SAFETY: the caller keeps the offset inside the allocation.
        unsafe { Self { ptr: if self.trans { self.ptr.add(i) } else { self.ptr.add(i * self.ld) }, ..self } }
    }

    /// The operand from its column `j` on (of `op(self)`).
    ///
    /// # Safety
    /// Column `j` of `op(self)` must lie inside the operand's allocation.
    unsafe fn at_col(self, j: usize) -> Self {
        // SAFETY: the caller keeps the offset inside the allocation.
        unsafe { Self { ptr: if self.trans { self.ptr.add(j * self.ld) } else { self.ptr.add(j) }, ..self } }
    }
}

/// A pointer that rayon tasks may carry; each writes only its own block through it.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

impl OutPtr {
    /// The pointer; a method, so that closures capture the whole `OutPtr` (which is Send)
    /// rather than its raw-pointer field (which is not).
    fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: tasks write disjoint blocks of the output (see `sgemm_raw`) while the caller
// keeps it alive.
unsafe impl Send for OutPtr {}
// SAFETY: as for Send.
unsafe impl Sync for OutPtr {}
#[derive(Clone, Copy)]
struct InPtr(RawOperand);
// SAFETY: inputs are only read, and the caller keeps them alive and unchanged.
unsafe impl Send for InPtr {}
// SAFETY: as for Send.
unsafe impl Sync for InPtr {}

/// [`sgemm`] on pointers with `threads` blocks (1: on the calling thread).
///
/// # Safety
/// Every element of `op(a)` (`m x k`), `op(b)` (`k x n`) and of `c` (`m` rows of `n`,
/// `ldc` apart) must lie inside live allocations, and no other thread may access those
/// elements of `c` during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_raw(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: RawOperand,
    b: RawOperand,
    accumulate: bool,
    c: *mut f32,
    ldc: usize,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if a.trans && !b.trans && m > n && threads > 1 {
        // The gemm crate runs `a^T b` into a tall row-major output (the weight gradients
        // `x^T dy`, the head's `g^T z`) at half the speed of the same sums posed
        // transposed, `c^T = b^T a`, into a row-major buffer (measured with `alignscope
        // bench --what gemm`): compute that, then add its transpose onto c. Only the
        // large products spread over threads were measured; the attention kernels' small
        // per-head products keep the direct path.
        let flip = |o: RawOperand| RawOperand { trans: !o.trans, ..o };
        // Not zeroed: the product overwrites all of it (zeroing was a serial 2 MB memset
        // per head chunk of the aligned loss, with the other core idle). With nothing to
        // sum, it is zeros.
        let mut t: Vec<f32> = if k == 0 { vec![0f32; n * m] } else { Vec::with_capacity(n * m) };
        // SAFETY: op(b)^T and op(a)^T address the same elements as op(b) and op(a), which
        // the caller vouched for; t has room for n rows of m, every element of which the
        // product writes (without reading it) before the length covers it.
        unsafe {
            sgemm_raw(n, m, k, alpha, flip(b), flip(a), false, t.as_mut_ptr(), m, threads);
            t.set_len(n * m);
        }
        // SAFETY: forwarded from the caller: c's m rows of n, ldc apart.
        unsafe { add_transposed(&t, m, n, accumulate, c, ldc, threads) };
        return;
    }
    if threads <= 1 {
        // SAFETY: forwarded from the caller.
        unsafe { sequential(m, n, k, alpha, a, b, accumulate, c, ldc) };
        return;
    }
    use rayon::prelude::*;
    // Blocks along the longer side of c, of whole vectors of the kernels (16 rows or
    // columns). Rounding blocks up to the kernels' register tiles made 4096 rows three
    // blocks of 1056 and one of 928, so one thread waited for the other in every product.
    let (along_rows, len) = if m >= n { (true, m) } else { (false, n) };
    let (a, b, c) = (InPtr(a), InPtr(b), OutPtr(c));
    let run = |(s, l): (usize, usize)| {
        let (a, b, c) = (a, b, c);
        // SAFETY: block s..s+l of the rows (or columns) of c, and the matching rows of op(a)
        // (or columns of op(b)), lie inside what the caller vouched for; blocks are disjoint,
        // so no two tasks write the same element of c.
        unsafe {
            if along_rows {
                sequential(l, n, k, alpha, a.0.at_row(s), b.0, accumulate, c.0.add(s * ldc), ldc);
            } else {
                sequential(m, l, k, alpha, a.0, b.0.at_col(s), accumulate, c.0.add(s), ldc);
            }
        }
    };
    if k <= GUIDED_MAX_DEPTH {
        // Shallow products: each thread takes blocks from a shared counter until none are
        // left, large ones first (a share of what is left), so a thread slowed by the host
        // takes fewer and neither waits long for the other at the end. Every block packs
        // the shared operand again, cheap at this depth. Measured with `bench --what gemm`
        // and `--what train` in alternating runs: the forward products 15-25% faster, and
        // the trunk's and head's products 96-100% busy instead of 90-97%.
        let next = AtomicUsize::new(0);
        (0..threads).into_par_iter().for_each(|_| {
            while let Some(block) = guided_block(&next, len, threads, 16) {
                run(block);
            }
        });
    } else {
        // Deeper products (the weight gradients, 4096 deep; the head's input gradient; the
        // MLP's down projection and the wider layers' input gradients): every block packs
        // a large operand again, and guided blocks measured 10-25% slower on the deepest;
        // a few equal blocks per thread.
        even_blocks(len, threads * 2, 16).into_par_iter().for_each(run);
    }
}

/// Products at most this deep are spread over the threads in guided blocks (see
/// [`sgemm_raw`]).
const GUIDED_MAX_DEPTH: usize = 128;

/// The next block `(start, len)` of `0..total` taken from the counter `next` shared by
/// `threads` threads: half of a thread's share of what is left (guided self-scheduling),
/// a multiple of `unit` but the last; `None` when nothing is left.
fn guided_block(next: &AtomicUsize, total: usize, threads: usize, unit: usize) -> Option<(usize, usize)> {
    let mut s = next.load(Ordering::Relaxed);
    loop {
        if s >= total {
            return None;
        }
        let left = total - s;
        let l = (left.div_ceil(2 * threads).div_ceil(unit) * unit).min(left);
        match next.compare_exchange_weak(s, s + l, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some((s, l)),
            Err(now) => s = now,
        }
    }
}

/// `len` split into at most `count` consecutive blocks `(start, len)` whose lengths are
/// multiples of `unit` (but the last) and differ by at most `unit`: the blocks with one
/// unit more are the last ones, where a partial last unit takes it back.
fn even_blocks(len: usize, count: usize, unit: usize) -> Vec<(usize, usize)> {
    let units = len.div_ceil(unit);
    let count = count.clamp(1, units.max(1));
    let mut blocks = Vec::with_capacity(count);
    let mut start = 0;
    for b in 0..count {
        let l = ((units / count + usize::from(b >= count - units % count)) * unit).min(len - start);
        blocks.push((start, l));
        start += l;
    }
    blocks
}

/// `c[i, j] = t[j, i]` (or `+=` with `accumulate`) for the `m x n` output `c` and the
/// `n x m` row-major `t`, in blocks of rows of `c` spread over `threads`.
///
/// # Safety
/// `c`'s `m` rows of `n`, `ldc` apart, must lie inside a live allocation that no other
/// thread accesses during the call.
unsafe fn add_transposed(t: &[f32], m: usize, n: usize, accumulate: bool, c: *mut f32, ldc: usize, threads: usize) {
    use rayon::prelude::*;
    const ROWS: usize = 64;
    let out = OutPtr(c);
    let block = |i0: usize| {
        let i1 = (i0 + ROWS).min(m);
        for j in 0..n {
            let src = &t[j * m + i0..j * m + i1];
            for (r, &v) in src.iter().enumerate() {
                // SAFETY: row i0 + r < m and column j < n lie inside c (the caller's
                // guarantee); only this block writes rows i0..i1.
                unsafe {
                    let d = out.get().add((i0 + r) * ldc + j);
                    *d = if accumulate { *d + v } else { v };
                }
            }
        }
    };
    if threads <= 1 {
        (0..m).step_by(ROWS).for_each(block);
    } else {
        (0..m).into_par_iter().step_by(ROWS).for_each(block);
    }
}

#[cfg(feature = "mkl")]
mod mkl {
    // CBLAS's enums, as mkl_cblas.h numbers them.
    pub const ROW_MAJOR: i32 = 101;
    pub const NO_TRANS: i32 = 111;
    pub const TRANS: i32 = 112;

    unsafe extern "C" {
        /// LP64 CBLAS (32-bit ints), from libmkl_intel_lp64 + libmkl_sequential.
        #[allow(clippy::too_many_arguments)]
        pub fn cblas_sgemm(
            layout: i32,
            trans_a: i32,
            trans_b: i32,
            m: i32,
            n: i32,
            k: i32,
            alpha: f32,
            a: *const f32,
            lda: i32,
            b: *const f32,
            ldb: i32,
            beta: f32,
            c: *mut f32,
            ldc: i32,
        );
    }
}

/// One product on the calling thread: MKL's sequential sgemm.
///
/// # Safety
/// As [`sgemm_raw`].
#[cfg(feature = "mkl")]
#[allow(clippy::too_many_arguments)]
unsafe fn sequential(m: usize, n: usize, k: usize, alpha: f32, a: RawOperand, b: RawOperand, accumulate: bool, c: *mut f32, ldc: usize) {
    let int = |x: usize| i32::try_from(x).expect("matrix dimension beyond MKL's LP64 interface (2^31)");
    let trans = |o: RawOperand| if o.trans { mkl::TRANS } else { mkl::NO_TRANS };
    // BLAS refuses (with a message, computing nothing) a leading dimension below the
    // stored row's length. Ours is at least that whenever more than one row is stored;
    // a single stored row may come with any ld, which then addresses nothing.
    let ld = |o: RawOperand, cols: usize| int(o.ld.max(cols).max(1));
    if k == 0 {
        // beta = 0 would still write c; with nothing to sum, c is alpha * 0 (or unchanged).
        if !accumulate {
            for i in 0..m {
                // SAFETY: row i of c (n floats) lies inside what the caller vouched for.
                unsafe { std::ptr::write_bytes(c.add(i * ldc), 0, n) };
            }
        }
        return;
    }
    // SAFETY: forwarded from the caller; with beta = 0 MKL does not read c (NaNs in a
    // fresh buffer do not leak), with beta = 1 it adds onto it.
    unsafe {
        mkl::cblas_sgemm(
            mkl::ROW_MAJOR,
            trans(a),
            trans(b),
            int(m),
            int(n),
            int(k),
            alpha,
            a.ptr,
            ld(a, if a.trans { m } else { k }),
            b.ptr,
            ld(b, if b.trans { k } else { n }),
            if accumulate { 1.0 } else { 0.0 },
            c,
            int(ldc.max(n)),
        )
    }
}

/// One product on the calling thread.
///
/// # Safety
/// As [`sgemm_raw`].
#[cfg(not(feature = "mkl"))]
#[allow(clippy::too_many_arguments)]
unsafe fn sequential(m: usize, n: usize, k: usize, alpha: f32, a: RawOperand, b: RawOperand, accumulate: bool, c: *mut f32, ldc: usize) {
    // (row stride, column stride) of op(x).
    let strides = |o: RawOperand| if o.trans { (1isize, o.ld as isize) } else { (o.ld as isize, 1isize) };
    let ((ars, acs), (brs, bcs)) = (strides(a), strides(b));
    // SAFETY: forwarded from the caller; gemm reads op(a), op(b) and writes c only within
    // the given shapes and strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ldc as isize,
            accumulate,
            a.ptr,
            acs,
            ars,
            b.ptr,
            bcs,
            brs,
            1.0,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_blocks_cover_the_range_evenly() {
        for (len, count, unit) in [(4096, 4, 16), (128, 4, 16), (4097, 4, 16), (40, 4, 16), (7, 4, 16), (1, 8, 16), (384, 3, 16)] {
            let b = even_blocks(len, count, unit);
            assert!(!b.is_empty() && b.len() <= count, "{len}: {b:?}");
            assert_eq!(b[0].0, 0);
            for w in b.windows(2) {
                assert_eq!(w[0].0 + w[0].1, w[1].0, "{len}: {b:?}");
            }
            assert_eq!(b.last().map(|&(s, l)| s + l), Some(len));
            assert!(b.iter().all(|&(_, l)| l > 0), "{len}: {b:?}");
            assert!(b[..b.len() - 1].iter().all(|&(_, l)| l % unit == 0), "{len}: {b:?}");
            let (lo, hi) = (b.iter().map(|x| x.1).min().unwrap(), b.iter().map(|x| x.1).max().unwrap());
            assert!(hi - lo <= unit, "{len}: {b:?}");
        }
        assert_eq!(even_blocks(4096, 4, 16), vec![(0, 1024), (1024, 1024), (2048, 1024), (3072, 1024)]);
        assert_eq!(even_blocks(128, 4, 16), vec![(0, 32), (32, 32), (64, 32), (96, 32)]);
    }

    /// Guided blocks cover the range in order, large ones first, whole units but the last.
    #[test]
    fn guided_blocks_cover_the_range_largest_first() {
        for (len, threads) in [(4096, 2), (128, 2), (4097, 4), (7, 2), (1, 8), (384, 3)] {
            let next = AtomicUsize::new(0);
            let b: Vec<_> = std::iter::from_fn(|| guided_block(&next, len, threads, 16)).collect();
            assert_eq!(b[0].0, 0);
            for w in b.windows(2) {
                assert_eq!(w[0].0 + w[0].1, w[1].0, "{len}: {b:?}");
                assert!(w[0].1 >= w[1].1, "{len}: {b:?}");
            }
            assert_eq!(b.last().map(|&(s, l)| s + l), Some(len));
            assert!(b[..b.len() - 1].iter().all(|&(_, l)| l % 16 == 0), "{len}: {b:?}");
        }
        let next = AtomicUsize::new(0);
        let b: Vec<_> = std::iter::from_fn(|| guided_block(&next, 4096, 2, 16)).map(|b| b.1).collect();
        assert_eq!(&b[..3], &[1024, 768, 576]);
    }

    /// A parallel product is bit for bit the one-thread product, on shallow products (guided
    /// blocks, wherever they fall) and deep ones (fixed blocks), each shape several times.
    #[test]
    fn parallel_products_are_the_one_thread_products_bit_for_bit() {
        let val = |i: usize| ((i * 7919 + 13) % 2003) as f32 / 1001.0 - 1.0;
        for (m, n, k) in [(1000, 384, 128), (96, 1000, 64), (512, 128, 512), (64, 200, 2048)] {
            let a: Vec<f32> = (0..m * k).map(val).collect();
            let b: Vec<f32> = (0..k * n).map(|i| val(i + 5)).collect();
            let mut one = vec![0f32; m * n];
            sgemm(m, n, k, 1.0, Operand::n(&a, k), Operand::n(&b, n), false, &mut one, n, false);
            for _ in 0..5 {
                let mut par = vec![0f32; m * n];
                sgemm(m, n, k, 1.0, Operand::n(&a, k), Operand::n(&b, n), false, &mut par, n, true);
                assert!(par.iter().zip(&one).all(|(p, o)| p.to_bits() == o.to_bits()), "[{m}, {k}] x [{k}, {n}]");
            }
        }
    }

    /// Every combination of transposes, overwrite and accumulate, sequential and parallel,
    /// against a plain triple loop in f64.
    #[test]
    fn products_match_a_triple_loop() {
        let (m, n, k) = (150, 70, 33);
        let val = |i: usize| ((i * 37 % 101) as f32 - 50.0) / 25.0;
        for (ta, tb, acc, par) in (0..16).map(|x| (x & 1 != 0, x & 2 != 0, x & 4 != 0, x & 8 != 0)) {
            let (ar, ac) = if ta { (k, m) } else { (m, k) };
            let (br, bc) = if tb { (n, k) } else { (k, n) };
            let (lda, ldb, ldc) = (ac + 3, bc + 1, n + 5);
            let a: Vec<f32> = (0..ar * lda).map(val).collect();
            let b: Vec<f32> = (0..br * ldb).map(|i| val(i + 7)).collect();
            let c0: Vec<f32> = (0..m * ldc).map(|i| val(i + 3)).collect();
            let mut c = c0.clone();
            let oa = Operand { data: &a, ld: lda, trans: ta };
            let ob = Operand { data: &b, ld: ldb, trans: tb };
            // Large enough to be split when parallel.
            let threads = if par { 3 } else { 1 };
            // SAFETY: the shapes and leading dimensions fit the vectors above.
            unsafe { sgemm_raw(m, n, k, 0.5, raw(oa), raw(ob), acc, c.as_mut_ptr(), ldc, threads) };
            for i in 0..m {
                for j in 0..n {
                    let mut s = 0f64;
                    for p in 0..k {
                        let x = if ta { a[p * lda + i] } else { a[i * lda + p] };
                        let y = if tb { b[j * ldb + p] } else { b[p * ldb + j] };
                        s += x as f64 * y as f64;
                    }
                    let want = 0.5 * s + if acc { c0[i * ldc + j] as f64 } else { 0.0 };
                    let got = c[i * ldc + j] as f64;
                    assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "({ta}, {tb}, {acc}, {par}) [{i}, {j}]: {got} vs {want}");
                }
                // Padding between rows is untouched.
                for j in n..ldc.min(c.len() - i * ldc) {
                    assert_eq!(c[i * ldc + j], c0[i * ldc + j]);
                }
            }
        }
    }
}
