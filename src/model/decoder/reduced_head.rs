//! The classifier's reduced copy: an 8-bit copy of `lm_head` (one scale per token, a second
//! plane 254 times finer made on demand) and rigorous bounds on every logit from it, through
//! which the CPU decoder finds greedy tokens and decides max-prob early-exit checks reading
//! a quarter (or half) of the f32 classifier's bytes, with the same results bit for bit:
//! the few tokens the bounds cannot rule out get their exact f32 logits.

use super::{SHORT_ROWS, splits_linear};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Wide classifiers with at least this many weights pick greedy tokens through an 8-bit
/// copy (GPT-2-124M: 38.6M), shared among the threads.
pub(super) const WIDE_INT8_MIN_WEIGHTS: usize = 1 << 22;

/// Greedy generations of at least this many tokens are worth the reduced copy of the
/// classifier: the 8-bit one takes 60-80 ms to make for GPT-2-124M here (once per
/// process and classifier, then 15-20 ms to recognise it) and saves about 6 ms per token
/// against the f32 classifier (9 ms a token).
pub const REDUCED_HEAD_MIN_TOKENS: usize = 32;

/// Whether greedy tokens and max-prob checks of a `[vocab, d]` classifier are found through
/// an 8-bit copy ([`Int8Head`]). Narrow ones (one run transposed, see [`SHORT_ROWS`]) where
/// the head runs on one thread (the Austen models: beside the blocks, its 2 MB of f32
/// weights stream from the shared cache every token, 100-130 us of a 600-750 us decode
/// step here; the greedy token through the 8-bit copy took 64-76 us, in the same decode
/// loop). Wide ones from [`WIDE_INT8_MIN_WEIGHTS`], where the CPU has the integer
/// multiply-add (GPT-2-124M: the head read 154 MB of a 570 MB step; through the copy
/// 39 MB, 2.7 instead of 5.1-5.5 ms per token with the half-precision copy used before).
pub(super) fn uses_int8_head(vocab: usize, d: usize) -> bool {
    match d <= SHORT_ROWS {
        true => !splits_linear(d, vocab),
        false => vocab * d >= WIDE_INT8_MIN_WEIGHTS && crate::kernels::i16_i8_cols_is_fast(),
    }
}

/// Bytes of the classifier a greedy token reads, for bandwidth figures: the 8-bit weights,
/// a scale and an error bound per token where [`CpuModel::greedy_token`](super::CpuModel::greedy_token) uses them (the few
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
pub(super) struct Int8Head {
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

/// A 128-bit digest of the weights' bits, to recognise a classifier again without keeping
/// a copy of it (see `wide_int8_head`): [`crate::kernels::digest_lanes`] of each block of
/// 2^20 weights, on all threads, folded in order by invertible steps, so that a change of
/// any one weight always changes it; other changes collide by chance only.
pub(super) fn weights_digest(w: &[f32]) -> [u64; 2] {
    use crate::kernels::{digest_lanes, fmix64};
    const BLOCK: usize = 1 << 20;
    let blocks: Vec<[u64; 2]> = w.par_chunks(BLOCK).enumerate().map(|(b, block)| digest_lanes(block, b as u64)).collect();
    blocks.iter().fold([w.len() as u64, !(w.len() as u64)], |h, b| [fmix64(h[0] ^ b[0]), fmix64(h[1] ^ b[1])])
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
    pub(super) fn new(head: &[f32], d: usize, vocab: usize) -> Option<Self> {
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
    /// Makes the second plane now (see [`Self::fine`]).
    pub(super) fn make_fine(&self, head: &[f32]) {
        self.fine(head);
    }

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

/// The greedy token of the normed row `x`, as [`argmax`](super::argmax) picks it from [`CpuModel::head`](super::CpuModel::head)'s
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
/// order ([`CpuModel::exact_logit`](super::CpuModel::exact_logit)).
pub(super) fn bounded_argmax_i8(x: &[f32], int8: &Int8Head, logit: impl Fn(usize) -> f32) -> Option<u32> {
    let (bounds, lower) = int8_bounds(x, int8, None)?;
    exact_argmax(&bounds, lower, logit).map(|(v, _)| v)
}

/// Each token's logit for the normed row `x` as the 8-bit head bounds it (`[lower, upper]`,
/// see [`bounded_argmax_i8`]), and the largest lower end; with the second plane `fine` too
/// when given (twice the bytes, a bound about 250 times narrower where the weights'
/// rounding dominates it). `None` when `x` is not finite.
fn int8_bounds(x: &[f32], int8: &Int8Head, fine: Option<&FinePlane>) -> Option<(Vec<[f64; 2]>, f64)> {
    int8_bounds_rows(x, x.len(), int8, fine).pop().flatten()
}

/// [`int8_bounds`] for each row of `xs` (`[m, d]`), the classifier read once for all of
/// them (see [`crate::kernels::i16_i8_cols_rows`]): per row the same bounds.
fn int8_bounds_rows(xs: &[f32], d: usize, int8: &Int8Head, fine: Option<&FinePlane>) -> Vec<Option<(Vec<[f64; 2]>, f64)>> {
    use crate::kernels::{I8_BLOCK, i16_i8_cols_rows};
    let m = xs.len() / d;
    let vocab = int8.scale.len();
    let bytes = d.div_ceil(2) * 2;
    // Each row's inputs in 16 bits, and its L1 norm and step; a row that is not finite
    // gets no bounds (its inputs are left at zero, and its sums unused).
    let mut r = vec![0i16; m * bytes];
    let mut consts: Vec<Option<[f64; 3]>> = Vec::with_capacity(m);
    // Each product that underflows in the f32 logit loses at most half the smallest
    // subnormal.
    let floor = (d + 1) as f64 * 2f64.powi(-149);
    for (x, r) in xs.chunks_exact(d).zip(r.chunks_exact_mut(bytes)) {
        let (mut l1, mut xmax) = (0f64, 0f64);
        for &v in x {
            l1 += (v as f64).abs();
            xmax = xmax.max((v as f64).abs());
        }
        if !l1.is_finite() {
            consts.push(None);
            continue;
        }
        let step = xmax / int8.qmax;
        if step > 0.0 {
            for (r, &v) in r.iter_mut().zip(x) {
                *r = (v as f64 / step).round() as i16;
            }
        }
        consts.push(Some([l1, step, floor]));
    }
    let (scale, err) = fine.map_or((&int8.scale, &int8.err), |f| (&f.scale, &f.err));
    let mut bounds: Vec<Vec<[f64; 2]>> = (0..m).map(|_| vec![[0f64; 2]; vocab]).collect();
    // Tokens per task: all of them on one thread for narrow classifiers (see
    // `uses_int8_head`), a few tasks per thread for wide ones.
    let tasks = if d > SHORT_ROWS { rayon::current_num_threads().max(1) * 4 } else { 1 };
    let per = vocab.div_ceil(tasks).div_ceil(I8_BLOCK) * I8_BLOCK;
    let task = |(t, mut outs): (usize, Vec<&mut [[f64; 2]]>)| -> Vec<f64> {
        let v0 = t * per;
        let len = outs[0].len();
        let n = len.div_ceil(I8_BLOCK) * I8_BLOCK;
        let mut sums = vec![0i32; m * n];
        i16_i8_cols_rows(&r, m, &int8.q[v0 * bytes..(v0 + n) * bytes], &mut sums);
        let mut fine_sums = Vec::new();
        if let Some(fine) = fine {
            fine_sums.resize(m * n, 0);
            i16_i8_cols_rows(&r, m, &fine.r[v0 * bytes..(v0 + n) * bytes], &mut fine_sums);
        }
        let row_fine = |i: usize| if fine_sums.is_empty() { &fine_sums[..] } else { &fine_sums[i * n..(i + 1) * n] };
        outs.iter_mut()
            .enumerate()
            .map(|(i, out)| match consts[i] {
                Some(k) => crate::kernels::bounded_estimates(&sums[i * n..(i + 1) * n], row_fine(i), &scale[v0..], &err[v0..], k, out),
                None => f64::NEG_INFINITY,
            })
            .collect()
    };
    let mut work: Vec<Vec<&mut [[f64; 2]]>> = (0..vocab.div_ceil(per)).map(|_| Vec::with_capacity(m)).collect();
    for b in bounds.iter_mut() {
        for (t, c) in b.chunks_mut(per).enumerate() {
            work[t].push(c);
        }
    }
    let lowers: Vec<Vec<f64>> =
        if work.len() == 1 { vec![task((0, work.pop().expect("one task")))] } else { work.into_par_iter().enumerate().map(task).collect() };
    bounds
        .into_iter()
        .enumerate()
        .map(|(i, b)| consts[i].map(|_| (b, lowers.iter().map(|l| l[i]).fold(f64::NEG_INFINITY, f64::max))))
        .collect()
}

/// [`bounded_argmax_i8`] for each row of `xs` (`[m, d]`), the classifier read once for
/// all of them; `logit(i, v)` is row `i`'s f32 logit of token `v`. Per row the same
/// answer.
pub(super) fn bounded_argmax_i8_rows(xs: &[f32], d: usize, int8: &Int8Head, logit: impl Fn(usize, usize) -> f32) -> Vec<Option<u32>> {
    int8_bounds_rows(xs, d, int8, None)
        .into_iter()
        .enumerate()
        .map(|(i, b)| b.and_then(|(bounds, lower)| exact_argmax(&bounds, lower, |v| logit(i, v)).map(|(v, _)| v)))
        .collect()
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
/// against a threshold (see [`CpuModel::max_prob_check`](super::CpuModel::max_prob_check)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxProbCheck {
    /// [`crate::kernels::max_prob`] of the f32 logits reaches the threshold; the greedy
    /// token (their [`argmax`](super::argmax)).
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

/// [`CpuModel::max_prob_check`](super::CpuModel::max_prob_check) from bounds on every logit (`bounds`, with `lower` the
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

/// The max-prob check of the normed row `x` through `int8` (made from the classifier's rows
/// `head`; `logit` gives a token's exact f32 logit): the first plane alone where it decides
/// (checks far from the threshold), else both planes (see
/// [`CpuModel::max_prob_check`](super::CpuModel::max_prob_check)).
pub(super) fn max_prob_check_i8(
    x: &[f32],
    int8: &Int8Head,
    head: &[f32],
    threshold: f64,
    logit: impl Fn(usize) -> f32 + Copy,
) -> MaxProbCheck {
    let Some((bounds, lower)) = int8_bounds(x, int8, None) else {
        return MaxProbCheck::Undecided;
    };
    let coarse = max_prob_from_bounds(&bounds, lower, threshold, false, logit);
    if coarse != MaxProbCheck::Undecided {
        return coarse;
    }
    let Some((bounds, lower)) = int8_bounds(x, int8, Some(int8.fine(head))) else {
        return MaxProbCheck::Undecided;
    };
    max_prob_from_bounds(&bounds, lower, threshold, true, logit)
}

/// The f32 logit of token `v` as [`crate::kernels::classify_rows`] computes it from the
/// classifier's row (`head`: `[vocab, d]`).
pub(super) fn row_logit(x: &[f32], head: &[f32], v: usize) -> f32 {
    let d = x.len();
    let mut z = [0f32];
    crate::kernels::classify_rows(x, d, &head[v * d..(v + 1) * d], &mut z, 1);
    z[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::decoder::{argmax, linear_cols, transpose};

    /// The same bits give the same digest wherever they lie; a change of any one weight
    /// (one bit of it, a sign of zero, a NaN's payload), in any block, lane or tail, or of
    /// the length, gives another.
    #[test]
    fn the_weights_digest_changes_with_any_one_weight() {
        for len in [1usize, 7, 8, 9, 1000, (1 << 20) + 13] {
            let w: Vec<f32> = (0..len).map(|i| ((i * 7919 % 1013) as f32 - 500.0) * 1e-3).collect();
            let base = weights_digest(&w);
            assert_eq!(weights_digest(&w.clone()), base, "len {len}");
            let mut longer = w.clone();
            longer.push(0.0);
            assert_ne!(weights_digest(&longer), base, "len {len} + a zero");
            let at = [0, len / 2, len - 1, len.saturating_sub(5), (1 << 20).min(len - 1)];
            for &i in &at {
                for flip in [1u32, 1 << 31, 1 << 22] {
                    let mut v = w.clone();
                    v[i] = f32::from_bits(v[i].to_bits() ^ flip);
                    assert_ne!(weights_digest(&v), base, "len {len}, weight {i}, bits {flip:#x}");
                }
            }
        }
        let nan = |payload: u32| vec![0.5f32, f32::from_bits(0x7fc0_0000 | payload), -0.0];
        assert_ne!(weights_digest(&nan(1)), weights_digest(&nan(2)));
        assert_ne!(weights_digest(&[0.0, 1.0]), weights_digest(&[-0.0, 1.0]));
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

    /// Several rows' greedy tokens at once are each row's own: rows with planted ties, a
    /// row that is not finite, any number of rows.
    #[test]
    fn bounded_argmax_i8_of_several_rows_is_each_rows() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (d, vocab) = (768, 3001);
        let mut head: Vec<f32> = (0..vocab * d).map(|_| rng.random_range(-1.0f32..1.0) * 0.05).collect();
        let int8 = Int8Head::new(&head, d, vocab).unwrap();
        let x0: Vec<f32> = (0..d).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        let best = (0..vocab).max_by(|&a, &b| row_logit(&x0, &head, a).total_cmp(&row_logit(&x0, &head, b))).unwrap();
        plant_ties(&mut head, d, best, 7, 1);
        let int8_tied = Int8Head::new(&head, d, vocab).unwrap();
        for (int8, name) in [(&int8, "random"), (&int8_tied, "ties")] {
            for m in [2, 3, 5, 6, 9] {
                let mut xs: Vec<f32> = x0.clone();
                for _ in 1..m {
                    xs.extend((0..d).map(|_| rng.random_range(-3.0f32..3.0)));
                }
                if m == 6 {
                    xs[4 * d + 3] = f32::NAN;
                }
                let got = bounded_argmax_i8_rows(&xs, d, int8, |i, v| row_logit(&xs[i * d..(i + 1) * d], &head, v));
                for (i, g) in got.iter().enumerate() {
                    let x = &xs[i * d..(i + 1) * d];
                    assert_eq!(*g, bounded_argmax_i8(x, int8, |v| row_logit(x, &head, v)), "{name}, {m} rows, row {i}");
                }
                assert_eq!(got[4 * (m == 6) as usize].is_none(), m == 6, "a row that is not finite has no token");
            }
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
}
