//! An 8-bit copy of a model's blocks (from a given one on) and of its classifier, for
//! drafting: a decoder over it (see [`super::Decoder::approximate`]) runs those blocks
//! reading a quarter of the bytes, and its greedy tokens agree with the full model's nearly
//! always (99.3% along the Austen models' greedy continuations with every block in 8 bits
//! and 16-bit inputs, measured in PyTorch with the same rounding). Nothing it computes is
//! ever emitted: the speculative drafters pick drafts with it, and the full model's own
//! blocks judge every draft.

use super::CpuModel;
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// A linear layer `x @ w + b` as `w[i, j] ≈ scale[j] q[i, j]`: one scale per output column,
/// `q` `[k, n]` row-major like the checkpoint's f32 weights.
pub(super) struct QuantLinear {
    k: usize,
    /// `q` packed for [`crate::kernels::i16_i8_quad_rows`], its outputs padded to whole
    /// blocks, and each output's sum of weights.
    packed: Vec<i8>,
    colsum: Vec<i32>,
    scale: Vec<f32>,
    bias: Vec<f32>,
    /// The largest 16-bit input: the 32-bit sums cannot overflow.
    xmax: f32,
}

impl QuantLinear {
    fn new(k: usize, (w, b): (&[f32], &[f32])) -> Self {
        let n = b.len();
        let mut top = vec![0f32; n];
        for row in w.chunks_exact(n) {
            crate::kernels::fold_col_max(row, &mut top);
        }
        // A column of zeros keeps step 0 and zeros; a weight that is not finite becomes 0
        // (a draft from it may be wrong, never an emitted token).
        let scale: Vec<f32> = top.iter().map(|t| t / 127.0).collect();
        let np = n.div_ceil(crate::kernels::I8_BLOCK) * crate::kernels::I8_BLOCK;
        let mut q = vec![0i8; k * np];
        for (qrow, row) in q.chunks_exact_mut(np).zip(w.chunks_exact(n)) {
            crate::kernels::quantize_cols_i8(row, &scale, &mut qrow[..n]);
        }
        let xmax = (i32::MAX as usize / (127 * k.div_ceil(4) * 4)).min(i16::MAX as usize) as f32;
        let (packed, colsum) = crate::kernels::pack_i8_quads(&q, k, np);
        Self { k, packed, colsum, scale, bias: b.to_vec(), xmax }
    }

    /// `y = x @ w + b` for the rows of `x` (`[m, k]`), approximately: each row in 16 bits
    /// (its own step), the products summed in 32-bit integers.
    pub(super) fn apply(&self, x: &[f32], y: &mut Vec<f32>) {
        let (k, n) = (self.k, self.bias.len());
        let (kp, np, m) = (k.div_ceil(4) * 4, self.colsum.len(), x.len() / k);
        let mut xq = vec![0i16; m * kp];
        let steps: Vec<f32> =
            x.chunks_exact(k).zip(xq.chunks_exact_mut(kp)).map(|(row, q)| crate::kernels::quantize_i16(row, self.xmax, q)).collect();
        let mut sums = vec![0i32; m * np];
        let blocks = np / crate::kernels::I8_BLOCK;
        if !super::splits_linear(kp, np) || blocks < 2 {
            crate::kernels::i16_i8_quad_rows(&xq, kp, &self.packed, &self.colsum, &mut sums);
        } else {
            // Layers the f32 engine shares among the threads (GPT-2-124M's; the Austen
            // models' and their classifier run on one core, beside the pipeline's other
            // thread) are shared by blocks of outputs: reading the copy from memory bounds a
            // draft there, and one core reads at about half the rate two do.
            let per = blocks.div_ceil(2 * rayon::current_num_threads().max(1));
            let bytes = kp / 4 * crate::kernels::I8_BLOCK * 4;
            let parts: Vec<(usize, Vec<i32>)> = (0..blocks)
                .step_by(per)
                .collect::<Vec<_>>()
                .into_par_iter()
                .map(|b0| {
                    let b1 = (b0 + per).min(blocks);
                    let cols = (b0 * crate::kernels::I8_BLOCK, b1 * crate::kernels::I8_BLOCK);
                    let mut part = vec![0i32; m * (cols.1 - cols.0)];
                    crate::kernels::i16_i8_quad_rows(
                        &xq,
                        kp,
                        &self.packed[b0 * bytes..b1 * bytes],
                        &self.colsum[cols.0..cols.1],
                        &mut part,
                    );
                    (cols.0, part)
                })
                .collect();
            for (c0, part) in parts {
                let w = part.len() / m;
                for r in 0..m {
                    sums[r * np + c0..r * np + c0 + w].copy_from_slice(&part[r * w..(r + 1) * w]);
                }
            }
        }
        y.clear();
        for (row, &step) in sums.chunks_exact(np).zip(&steps) {
            y.extend(row[..n].iter().zip(&self.scale).zip(&self.bias).map(|((&z, &s), &b)| z as f32 * (s * step) + b));
        }
    }
}

pub(super) struct QuantBlock {
    pub(super) attn: QuantLinear,
    pub(super) attn_proj: QuantLinear,
    pub(super) fc: QuantLinear,
    pub(super) fc_proj: QuantLinear,
}

/// 8-bit copies of the linear layers of blocks `from..L` (0-based) and of the classifier.
pub struct QuantBlocks {
    from: usize,
    blocks: Vec<QuantBlock>,
    /// The classifier as a linear layer `[d, vocab]` with no bias: one scale per token.
    head: QuantLinear,
}

/// What recognises the weights a copy was made from: where each of their slices lies, its
/// length, and a sample of its bits (every 1021st weight, and the last) — tens of microseconds
/// where digesting every bit took one to two milliseconds a generation. Weights changed in place
/// (a training step changes nearly all of them) change the sample; a change the sample
/// misses leaves a stale copy, which can only make drafts wrong more often: every emitted
/// token is still the model's own.
fn copied_weights_key(m: &CpuModel, from: usize) -> [u64; 2] {
    use crate::kernels::fmix64;
    let mut key = [from as u64, !(from as u64)];
    let mut fold = |v: u64| key = [fmix64(key[0] ^ v), fmix64(key[1].rotate_left(17) ^ v)];
    let mut slices: Vec<&[f32]> =
        m.blocks[from.min(m.n_layer)..].iter().flat_map(|w| [w.attn, w.attn_proj, w.fc, w.fc_proj]).flat_map(|(a, b)| [a, b]).collect();
    slices.extend([m.head, m.ln_f.0, m.ln_f.1]);
    for part in slices {
        fold(part.as_ptr() as u64);
        fold(part.len() as u64);
        for v in part.iter().step_by(1021).chain(part.last()) {
            fold(v.to_bits() as u64);
        }
    }
    key
}

/// The copies made lately, by the first block copied and [`copied_weights_key`].
static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

/// A copy in [`SEEN`]: its first block, its [`copied_weights_key`], the copy.
type Seen = (usize, [u64; 2], Arc<QuantBlocks>);

impl QuantBlocks {
    /// The copy of blocks `from..L` of `m`: the one made before for the same weights (each
    /// generation borrows the weights anew, and making the copy takes milliseconds), else a
    /// new one (the least recently used of four dropped). Recognised by
    /// [`copied_weights_key`].
    pub fn of(m: &CpuModel, from: usize) -> Arc<Self> {
        let digest = copied_weights_key(m, from);
        let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = seen.iter().position(|(f, d, _)| (*f, *d) == (from, digest)) {
            let entry = seen.remove(i);
            let copy = entry.2.clone();
            seen.push(entry);
            return copy;
        }
        let copy = Arc::new(Self::new(m, from));
        if seen.len() >= 4 {
            seen.remove(0);
        }
        seen.push((from, digest, copy.clone()));
        copy
    }

    /// Copies blocks `from..L` of `m`.
    pub fn new(m: &CpuModel, from: usize) -> Self {
        let (d, inner) = (m.d, m.inner);
        let blocks = m.blocks[from.min(m.n_layer)..]
            .par_iter()
            .map(|w| QuantBlock {
                attn: QuantLinear::new(d, w.attn),
                attn_proj: QuantLinear::new(d, w.attn_proj),
                fc: QuantLinear::new(d, w.fc),
                fc_proj: QuantLinear::new(inner, w.fc_proj),
            })
            .collect();
        // The classifier as `[d, vocab]`: narrow models keep it so already.
        let head = match &m.narrow {
            Some(n) => QuantLinear::new(m.d, (&n.head_t, &m.zeros)),
            None => QuantLinear::new(m.d, (&super::transpose(m.head, m.vocab, m.d), &m.zeros)),
        };
        Self { from, blocks, head }
    }

    /// The greedy token of the classifier's 8-bit copy on one row `h`: `argmax(lm_head(ln_f(h)))`
    /// nearly always (a draft, never an emitted token).
    pub fn greedy_token(&self, m: &CpuModel, h: &[f32], scratch: &mut Vec<f32>, logits: &mut Vec<f32>) -> u32 {
        self.greedy_tokens(m, h, scratch, logits)[0]
    }

    /// [`Self::greedy_token`] of each row of `h` (`[rows, d]`), the rows sharing each read of
    /// the classifier's copy.
    pub fn greedy_tokens(&self, m: &CpuModel, h: &[f32], scratch: &mut Vec<f32>, logits: &mut Vec<f32>) -> Vec<u32> {
        super::layer_norm(h, m.ln_f.0, m.ln_f.1, m.eps, scratch);
        self.head.apply(scratch, logits);
        logits.chunks_exact(m.vocab).map(super::argmax).collect()
    }

    /// The copy of block `layer`, if it is one of those copied.
    pub(super) fn block(&self, layer: usize) -> Option<&QuantBlock> {
        layer.checked_sub(self.from).and_then(|i| self.blocks.get(i))
    }

    /// The first block copied (0-based).
    pub fn from(&self) -> usize {
        self.from
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::decoder::{Decoder, with_cpu_model};
    use crate::model::{Gpt2, Gpt2Config};
    use candle_core::Device;

    /// Each 8-bit linear layer is the f32 one within its rounding: per output, at most half
    /// a weight step times the input's L1 norm plus half an input step times the weights'
    /// (small relative to the outputs), shared among the threads or not; over whole blocks
    /// the approximate residual stream
    /// stays close to the exact one, and the copy's greedy token is the model's nearly always.
    #[test]
    fn the_copy_is_the_model_within_its_rounding() {
        let cfg = Gpt2Config::new(3, 72, 4, 300, 40);
        let model = Gpt2::random(cfg, 5, &Device::Cpu).unwrap();
        with_cpu_model(&model, |m| {
            let q = QuantBlocks::new(m, 0);
            let x: Vec<f32> = (0..3 * 72).map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 300.0).collect();
            for (l, (w, b)) in [(&q.blocks[1].attn, m.blocks[1].attn), (&q.blocks[2].fc, m.blocks[2].fc)] {
                let n = b.len();
                let mut y = Vec::new();
                l.apply(&x, &mut y);
                for (r, xr) in x.chunks_exact(72).enumerate() {
                    let l1: f32 = xr.iter().map(|v| v.abs()).sum();
                    let xstep = xr.iter().fold(0f32, |a, v| a.max(v.abs())) / l.xmax;
                    for j in 0..n {
                        let exact: f32 = b[j] + xr.iter().enumerate().map(|(i, v)| v * w[i * n + j]).sum::<f32>();
                        let wl1: f32 = (0..72).map(|i| w[i * n + j].abs()).sum();
                        let bound = 0.5 * l.scale[j] * l1 + 0.5 * xstep * wl1 + 1e-5;
                        assert!((y[r * n + j] - exact).abs() <= bound, "row {r} output {j}: {} vs {exact} (bound {bound})", y[r * n + j]);
                    }
                }
            }
            // A layer large enough to be shared among the threads: the same bound.
            let (k, n) = (256, 1088);
            let w: Vec<f32> = (0..k * n).map(|i| ((i * 104_729 % 2003) as f32 - 1000.0) * 1e-3).collect();
            let b: Vec<f32> = (0..n).map(|j| j as f32 * 1e-3).collect();
            let wide = QuantLinear::new(k, (&w, &b));
            assert!(super::super::splits_linear(k, n));
            let xs: Vec<f32> = (0..3 * k).map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 300.0).collect();
            let mut y = Vec::new();
            wide.apply(&xs, &mut y);
            for (r, xr) in xs.chunks_exact(k).enumerate() {
                let l1: f32 = xr.iter().map(|v| v.abs()).sum();
                let xstep = xr.iter().fold(0f32, |a, v| a.max(v.abs())) / wide.xmax;
                for j in 0..n {
                    let exact: f32 = b[j] + xr.iter().enumerate().map(|(i, v)| v * w[i * n + j]).sum::<f32>();
                    let wl1: f32 = (0..k).map(|i| w[i * n + j].abs()).sum();
                    let bound = 0.5 * wide.scale[j] * l1 + 0.5 * xstep * wl1 + 1e-3;
                    assert!((y[r * n + j] - exact).abs() <= bound, "wide: row {r} output {j}: {} vs {exact}", y[r * n + j]);
                }
            }
            // Through every block and the classifier, token after token.
            let (mut exact, mut approx) = (Decoder::new(m), Decoder::approximate(m, &q));
            let (mut same, mut scratch, mut logits) = (0, Vec::new(), Vec::new());
            for pos in 0..30 {
                let id = (pos * 37 + 11) as u32 % 300;
                let (mut a, mut b) = (exact.embed(&[id], pos)?, approx.embed(&[id], pos)?);
                exact.blocks(0, 3, &mut a, pos)?;
                approx.blocks(0, 3, &mut b, pos)?;
                let norm = a.iter().map(|v| v * v).sum::<f32>().sqrt();
                let diff = a.iter().zip(&b).map(|(u, v)| (u - v) * (u - v)).sum::<f32>().sqrt();
                assert!(diff < 0.05 * norm, "position {pos}: {diff} of {norm}");
                same += (exact.greedy_token(&a) == q.greedy_token(m, &b, &mut scratch, &mut logits)) as usize;
            }
            assert!(same >= 24, "the copy's greedy token was the model's {same} times of 30");
            Ok(())
        })
        .unwrap();
    }

    /// A copy is made once for its weights and found again for the same weights; weights
    /// changed in place (a training step) get a new one; copies from other blocks are others.
    #[test]
    fn a_copy_is_made_once_for_its_weights() {
        let model = Gpt2::random(Gpt2Config::new(2, 32, 2, 100, 16), 9, &Device::Cpu).unwrap();
        let first = with_cpu_model(&model, |m| Ok(QuantBlocks::of(m, 0))).unwrap();
        let again = with_cpu_model(&model, |m| Ok(QuantBlocks::of(m, 0))).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let upper = with_cpu_model(&model, |m| Ok(QuantBlocks::of(m, 1))).unwrap();
        assert!(!Arc::ptr_eq(&first, &upper) && upper.from() == 1 && upper.blocks.len() == 1);
        // As an optimizer step changes them all.
        crate::ops::with_host_mut(&model.blocks[0].mlp.c_fc.weight, |v| v.iter_mut().for_each(|x| *x *= 2.0)).unwrap();
        let changed = with_cpu_model(&model, |m| Ok(QuantBlocks::of(m, 0))).unwrap();
        assert!(!Arc::ptr_eq(&first, &changed));
    }
}
