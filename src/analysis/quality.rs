//! Text quality of generations per exit layer: diversity and coherence, as the paper
//! measures them, and both over a fixed prompt set drawn from a text.

use super::embedder::SentenceEncoder;
use super::generate::{GenerateOptions, Sampling, generate};
use super::similarity::mean_defined;
use crate::model::Gpt2;
use anyhow::Result;
use serde::Serialize;
use std::collections::HashSet;
use std::ops::ControlFlow;
use tokenizers::Tokenizer;

/// Diversity `prod_{n=2..4} unique n-grams / total n-grams` over a token sequence.
/// Undefined (`None`) for a sequence too short to hold a 4-gram: the product needs every
/// order, and an order with no n-gram has no ratio (it is not 0).
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

/// A GPT-2's sentence embedding: the mean over positions of its final normalised features
/// `ln_f(h^L)` (the stand-in for a sentence encoder; see [`super::embedder`]). Longer
/// inputs keep their last `n_positions` tokens; `None` for an empty text.
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
/// undefined (`None`) when either text is empty.
pub fn coherence(encoder: &SentenceEncoder, prompt: &str, continuation: &str) -> Result<Option<f64>> {
    Ok(coherences(encoder, prompt, &[continuation])?.pop().flatten())
}

/// Coherence of several continuations of one prompt (one batch for the encoder).
pub fn coherences(encoder: &SentenceEncoder, prompt: &str, continuations: &[&str]) -> Result<Vec<Option<f64>>> {
    let mut texts = vec![prompt];
    texts.extend_from_slice(continuations);
    let mut vecs = encoder.embed(&texts)?.into_iter();
    let p = vecs.next().flatten();
    Ok(vecs
        .map(|c| match (&p, c) {
            (Some(a), Some(b)) => super::similarity::cosine(a, &b),
            _ => None,
        })
        .collect())
}

/// How the prompt set is drawn and continued.
#[derive(Debug, Clone, Serialize)]
pub struct PromptSetOptions {
    /// Number of prompts, evenly spaced over the text.
    pub prompts: usize,
    /// Tokens per prompt.
    pub prompt_tokens: usize,
    pub max_new_tokens: usize,
    pub sampling: Sampling,
}

/// A fixed prompt set: `count` windows of `len` tokens at evenly spaced offsets of the
/// text (the first at 0, the last ending at the text's end), so the same text always gives
/// the same prompts.
pub fn prompt_set(ids: &[u32], count: usize, len: usize) -> Vec<Vec<u32>> {
    if count == 0 || len == 0 || ids.len() < len {
        return vec![];
    }
    let span = ids.len() - len;
    let count = count.min(span + 1);
    (0..count)
        .map(|i| {
            let start = if count == 1 { 0 } else { i * span / (count - 1) };
            ids[start..start + len].to_vec()
        })
        .collect()
}

/// One generation of the prompt set.
#[derive(Debug, Clone, Serialize)]
pub struct SampleText {
    pub prompt: usize,
    pub text: String,
    pub tokens: usize,
    pub diversity: Option<f64>,
    pub coherence: Option<f64>,
}

/// Diversity and coherence at one exit layer, averaged over the prompt set (undefined
/// values are left out of the mean; `None` when none is defined).
#[derive(Debug, Clone, Serialize)]
pub struct LayerQuality {
    pub layer: usize,
    pub diversity: Option<f64>,
    pub coherence: Option<f64>,
    /// Prompts whose diversity / coherence is defined.
    pub diversity_n: usize,
    pub coherence_n: usize,
    pub samples: Vec<SampleText>,
}

/// Generates from every prompt at every exit layer 1..=L and measures each continuation.
/// `progress(done, total)` counts generations and may cancel.
pub fn layer_quality(
    model: &Gpt2,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    opts: &PromptSetOptions,
    eos: Option<u32>,
    encoder: &SentenceEncoder,
    mut progress: impl FnMut(usize, usize) -> ControlFlow<()>,
) -> Result<Vec<LayerQuality>> {
    let n_layer = model.n_layer();
    let total = n_layer * prompts.len();
    let prompt_texts: Vec<String> = prompts.iter().map(|p| super::decode(tok, p)).collect();
    // conts[p][l-1]: the continuation of prompt p at exit layer l.
    let mut conts: Vec<Vec<Vec<u32>>> = vec![Vec::with_capacity(n_layer); prompts.len()];
    let mut done = 0;
    for (p, ids) in prompts.iter().enumerate() {
        for l in 1..=n_layer {
            let g = generate(
                model,
                ids,
                &GenerateOptions { exit_layer: l, max_new_tokens: opts.max_new_tokens, sampling: opts.sampling, eos },
                |_| ControlFlow::Continue(()),
            )?;
            let mut out = g.ids;
            // End-of-text ends the continuation; it is not part of the text measured.
            if eos.is_some() && out.last().copied() == eos {
                out.pop();
            }
            conts[p].push(out);
            done += 1;
            if progress(done, total).is_break() {
                anyhow::bail!("generation cancelled")
            }
        }
    }
    let mut samples: Vec<Vec<SampleText>> = vec![Vec::new(); n_layer];
    for (p, per_layer) in conts.iter().enumerate() {
        let texts: Vec<String> = per_layer.iter().map(|c| super::decode(tok, c)).collect();
        let coh = coherences(encoder, &prompt_texts[p], &texts.iter().map(String::as_str).collect::<Vec<_>>())?;
        for (l, ((c, text), coherence)) in per_layer.iter().zip(texts).zip(coh).enumerate() {
            samples[l].push(SampleText { prompt: p, text, tokens: c.len(), diversity: diversity(c), coherence });
        }
    }
    Ok(samples
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let div: Vec<Option<f64>> = s.iter().map(|x| x.diversity).collect();
            let coh: Vec<Option<f64>> = s.iter().map(|x| x.coherence).collect();
            LayerQuality {
                layer: i + 1,
                diversity: mean_defined(div.iter().copied()),
                coherence: mean_defined(coh.iter().copied()),
                diversity_n: div.iter().flatten().count(),
                coherence_n: coh.iter().flatten().count(),
                samples: s,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diversity_is_the_product_over_orders_and_undefined_when_short() {
        assert_eq!(diversity(&[]), None);
        assert_eq!(diversity(&[1, 2, 3]), None);
        assert_eq!(diversity(&[1, 2, 3, 4]), Some(1.0));
        // 1 1 1 1 1: 1/4 bigrams, 1/3 trigrams, 1/2 4-grams unique.
        assert!((diversity(&[1, 1, 1, 1, 1]).unwrap() - 0.25 / 3.0 * 0.5).abs() < 1e-15);
        // 1 2 1 2 1: bigrams {12, 21} of 4, trigrams {121, 212} of 3, 4-grams 2 of 2.
        assert!((diversity(&[1, 2, 1, 2, 1]).unwrap() - 0.5 * (2.0 / 3.0) * 1.0).abs() < 1e-15);
    }

    #[test]
    fn prompt_sets_are_evenly_spaced_windows() {
        let ids: Vec<u32> = (0..100).collect();
        let p = prompt_set(&ids, 3, 10);
        assert_eq!(p.len(), 3);
        assert_eq!((p[0][0], p[1][0], p[2][0], p[2][9]), (0, 45, 90, 99));
        assert!(prompt_set(&ids, 3, 101).is_empty());
        assert_eq!(prompt_set(&ids[..12], 5, 10).len(), 3);
    }
}
