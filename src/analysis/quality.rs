//! Text quality of generations per exit layer: diversity and coherence, as the paper
//! measures them.

use crate::model::Gpt2;
use anyhow::Result;
use std::collections::HashSet;

/// Diversity `prod_{n=2..4} unique n-grams / total n-grams` over a token sequence.
/// A sequence too short to hold any n-gram of some order scores 0 for that order.
pub fn diversity(ids: &[u32]) -> f64 {
    (2..=4)
        .map(|n| {
            if ids.len() < n {
                return 0.0;
            }
            let grams: Vec<&[u32]> = ids.windows(n).collect();
            let unique: HashSet<&[u32]> = grams.iter().copied().collect();
            unique.len() as f64 / grams.len() as f64
        })
        .product()
}

/// A sentence embedding: the mean over positions of the embedding model's final
/// normalised features `ln_f(h^L)`. (The paper uses SimCSE; with no hub access we embed
/// with a GPT-2 of our own, by default the checkpoint under study.)
pub fn sentence_embedding(embedder: &Gpt2, ids: &[u32]) -> Result<Vec<f64>> {
    let n = embedder.config.n_positions;
    let ids = if ids.len() > n { &ids[ids.len() - n..] } else { ids };
    if ids.is_empty() {
        return Ok(vec![0.0; embedder.config.n_embd]);
    }
    let hs = embedder.residuals(&super::ids_tensor(embedder, ids)?)?;
    let x = embedder.final_norm(hs.last().expect("residuals"))?.squeeze(0)?.mean(0)?;
    Ok(x.to_vec1::<f32>()?.into_iter().map(|v| v as f64).collect())
}

/// Coherence: cosine between the sentence embeddings of the prompt and the continuation.
pub fn coherence(embedder: &Gpt2, prompt: &[u32], continuation: &[u32]) -> Result<f64> {
    let a = sentence_embedding(embedder, prompt)?;
    let b = sentence_embedding(embedder, continuation)?;
    Ok(super::similarity::cosine(&a, &b))
}
