//! Layer × layer similarity over a whole text: the full centered COS and linear CKA
//! matrices over every position of the evaluated chunks (the paper's Figures 1–3 measure
//! similarity over a dataset, not one prompt).

use super::eval::checked_chunks;
use super::similarity::CorpusSimilarity;
use crate::model::Gpt2;
use anyhow::{Result, bail};
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::ops::{ControlFlow, Range};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TextSimilarity {
    pub layers: usize,
    /// Positions the matrices are computed over.
    pub positions: usize,
    pub chunks: usize,
    pub ctx: usize,
    /// `(L+1) x (L+1)`: centered COS and linear CKA, index = layer (`None` where
    /// undefined: features that do not vary over the positions).
    pub cos: Vec<Vec<Option<f64>>>,
    pub cka: Vec<Vec<Option<f64>>>,
}

/// Features kept between the two passes, in floats (~256 MB); chunks beyond it run the
/// model again in the second pass.
const KEEP_FLOATS: usize = 64_000_000;

/// Similarity of every layer pair over the chunks of `ids` (the same chunks as
/// [`super::eval::evaluate`]). `progress(done, total)` counts chunk passes: every chunk is
/// passed twice (moments, then cosines) and may cancel.
pub fn text_similarity(
    model: &Gpt2,
    ids: &[u32],
    ctx: usize,
    max_chunks: Option<usize>,
    mut progress: impl FnMut(usize, usize) -> ControlFlow<()>,
) -> Result<TextSimilarity> {
    let ranges = checked_chunks(model, ids, ctx, max_chunks, "compare")?;
    let (k, d) = (model.n_layer() + 1, model.config.n_embd);
    // Batches of ~4096 positions: one gemm of (k d)^2 x 4096 each.
    let batch = (4096 / ranges[0].len()).max(1);
    let batches: Vec<&[Range<usize>]> = ranges.chunks(batch).collect();
    let features = |rs: &[Range<usize>]| -> Result<Vec<Tensor>> {
        let t = rs[0].len();
        let flat: Vec<u32> = rs.iter().flat_map(|r| ids[r.clone()].iter().copied()).collect();
        let x = Tensor::from_vec(flat, (rs.len(), t), model.device())?;
        Ok(model.residuals(&x)?.iter().map(|h| h.reshape((rs.len() * t, d))).collect::<candle_core::Result<_>>()?)
    };
    let total = 2 * ranges.len();
    let mut done = 0;
    let mut step = |n: usize| -> Result<()> {
        done += n;
        if progress(done, total).is_break() {
            bail!("similarity cancelled")
        }
        Ok(())
    };
    let mut sim = CorpusSimilarity::new(k, d);
    let mut kept: Vec<Option<Vec<Tensor>>> = Vec::with_capacity(batches.len());
    let mut kept_floats = 0;
    for rs in &batches {
        let feats = features(rs)?;
        sim.add_moments(&feats)?;
        let floats = k * d * rs.len() * rs[0].len();
        if kept_floats + floats <= KEEP_FLOATS {
            kept_floats += floats;
            kept.push(Some(feats.into_iter().map(|f| f.to_device(&Device::Cpu)).collect::<candle_core::Result<_>>()?));
        } else {
            kept.push(None);
        }
        step(rs.len())?;
    }
    for (rs, k) in batches.iter().zip(kept) {
        let feats = match k {
            Some(f) => f,
            None => features(rs)?,
        };
        sim.add_cosines(&feats)?;
        step(rs.len())?;
    }
    debug_assert!(sim.complete());
    Ok(TextSimilarity {
        layers: model.n_layer(),
        positions: sim.positions(),
        chunks: ranges.len(),
        ctx: ranges[0].len(),
        cos: sim.cos(),
        cka: sim.cka(),
    })
}
