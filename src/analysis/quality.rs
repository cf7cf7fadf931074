//! Text quality of generations per exit layer: diversity and coherence, as the paper
//! measures them.

use crate::model::Gpt2;
use anyhow::Result;
use std::collections::HashSet;

/// Diversity `prod_{n=2..4} unique n-grams / total n-grams` over a token sequence;
/// `None` for a sequence too short to hold a 4-gram (the product is undefined).
pub fn diversity(ids: &[u32]) -> Option<f64> {
    if ids.len() < 4 {
        return None;
    }
    let ratio = |n: usize| {
        let grams: Vec<&[u32]> = ids.windows(n).collect();
        let unique: HashSet<&[u32]> = grams.iter().copied().collect();
        unique.len() as f64 / grams.len() as f64
    };
    Some((2..=4).map(ratio).product())
}

/// A sentence embedding: the mean over positions of the embedding model's final
/// normalised features `ln_f(h^L)`. (The paper uses SimCSE; with no hub access we embed
/// with a GPT-2 of our own, by default the checkpoint under study.)
/// `None` for an empty text.
pub fn sentence_embedding(embedder: &Gpt2, ids: &[u32]) -> Result<Option<Vec<f64>>> {
    let n = embedder.config.n_positions;
    let ids = if ids.len() > n { &ids[ids.len() - n..] } else { ids };
    if ids.is_empty() {
        return Ok(None);
    }
    let hs = embedder.residuals(&super::ids_tensor(embedder, ids)?)?;
    let x = embedder.final_norm(hs.last().expect("residuals"))?.squeeze(0)?.mean(0)?;
    Ok(Some(x.to_vec1::<f32>()?.into_iter().map(|v| v as f64).collect()))
}

/// Coherence: cosine between the sentence embeddings of the prompt and the continuation;
/// `None` when the continuation is empty.
pub fn coherence(embedder: &Gpt2, prompt: &[u32], continuation: &[u32]) -> Result<Option<f64>> {
    match (sentence_embedding(embedder, prompt)?, sentence_embedding(embedder, continuation)?) {
        (Some(a), Some(b)) => Ok(super::similarity::cosine(&a, &b)),
        _ => Ok(None),
    }
}
