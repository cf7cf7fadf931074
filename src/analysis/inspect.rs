//! Everything alignscope shows about one prompt: residual similarity across layers and the
//! logit lens at chosen positions.

use super::ids_tensor;
use super::lens::{TopToken, lens_logits, top_tokens};
use super::similarity::{Features, ResidualSteps, cka_matrix, cos_matrix, residual_steps};
use crate::model::Gpt2;
use anyhow::{Result, bail};
use candle_core::Tensor;
use serde::Serialize;
use tokenizers::Tokenizer;

/// Which positions to read the lens at.
#[derive(Debug, Clone)]
pub enum LensAt {
    Position(usize),
    Last,
    All,
}

#[derive(Debug, Clone, Serialize)]
pub struct PromptAnalysis {
    pub layers: usize,
    pub input_ids: Vec<u32>,
    /// The text of each input token.
    pub tokens: Vec<String>,
    /// Centered COS, raw COS and linear CKA, `(L+1) x (L+1)`; `None` where undefined
    /// (centered COS and CKA of a one-token prompt).
    pub cos: Vec<Vec<Option<f64>>>,
    pub cos_raw: Vec<Vec<Option<f64>>>,
    pub cka: Vec<Vec<Option<f64>>>,
    pub steps: ResidualSteps,
    /// Positions the lens was read at.
    pub lens_positions: Vec<usize>,
    /// `lens[layer][i]`: top-k at `lens_positions[i]`.
    pub lens: Vec<Vec<Vec<TopToken>>>,
}

impl PromptAnalysis {
    /// The top-k at `layer` and absolute `position`, if the lens was read there.
    pub fn lens_at(&self, layer: usize, position: usize) -> Option<&[TopToken]> {
        let i = self.lens_positions.iter().position(|&p| p == position)?;
        self.lens.get(layer).map(|l| l[i].as_slice())
    }
}

/// Per-layer features `[t, d]` of a batch-1 residual stream.
pub fn layer_features(residuals: &[Tensor]) -> Result<Vec<Features>> {
    residuals
        .iter()
        .map(|h| {
            let h = h.squeeze(0)?;
            let (n, d) = h.dims2()?;
            let v: Vec<f32> = h.flatten_all()?.to_vec1()?;
            Ok(Features::from_f32(n, d, &v))
        })
        .collect()
}

pub fn analyze(model: &Gpt2, tok: &Tokenizer, ids: &[u32], top_k: usize, at: LensAt) -> Result<PromptAnalysis> {
    let t = ids.len();
    let positions: Vec<usize> = match at {
        LensAt::Position(p) if p >= t => {
            bail!("position {p} is out of range: the prompt has {t} tokens (positions 0..={})", t - 1)
        }
        LensAt::Position(p) => vec![p],
        LensAt::Last => vec![t - 1],
        LensAt::All => (0..t).collect(),
    };
    let residuals = model.residuals(&ids_tensor(model, ids)?)?;
    let feats = layer_features(&residuals)?;
    let logits = lens_logits(model, &residuals, &positions)?;
    let lens = logits.iter().map(|per_pos| per_pos.iter().map(|row| top_tokens(tok, row, top_k)).collect()).collect();
    Ok(PromptAnalysis {
        layers: model.n_layer(),
        input_ids: ids.to_vec(),
        tokens: super::lens::token_pieces(tok, ids),
        cos: cos_matrix(&feats, true),
        cos_raw: cos_matrix(&feats, false),
        cka: cka_matrix(&feats),
        steps: residual_steps(&feats),
        lens_positions: positions,
        lens,
    })
}
