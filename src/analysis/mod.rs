//! Per-layer analysis: logit lens, representation similarity, generation from any exit
//! layer, and evaluation over a text.
pub mod corpus;
pub mod embedder;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod lens;
pub mod quality;
pub mod similarity;

use crate::model::Gpt2;
use anyhow::{Result, bail};
use candle_core::Tensor;
use tokenizers::Tokenizer;

/// Tokenizes a prompt; an empty prompt (or one with no tokens) is an error.
pub fn encode_prompt(tok: &Tokenizer, model: &Gpt2, prompt: &str) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        bail!("the prompt is empty")
    }
    let enc = tok.encode(prompt, false).map_err(|e| anyhow::anyhow!("cannot tokenize the prompt: {e}"))?;
    let ids = enc.get_ids().to_vec();
    if ids.is_empty() {
        bail!("the prompt is empty after tokenization")
    }
    let n = model.config.n_positions;
    if ids.len() > n {
        bail!("the prompt is {} tokens long but the model's context is {n} tokens", ids.len())
    }
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= model.config.vocab_size) {
        bail!("the tokenizer produced id {bad}, outside the model's vocabulary of {}", model.config.vocab_size)
    }
    Ok(ids)
}

/// `[1, t]` tensor of ids on the model's device.
pub fn ids_tensor(model: &Gpt2, ids: &[u32]) -> Result<Tensor> {
    Ok(Tensor::from_vec(ids.to_vec(), (1, ids.len()), model.device())?)
}

/// Tokenizes a text (read from `path`, named in errors) with a checkpoint's tokenizer.
pub fn tokenize_text(tok: &Tokenizer, text: &str, path: &std::path::Path) -> Result<Vec<u32>> {
    let enc = tok.encode(text, false).map_err(|e| anyhow::anyhow!("cannot tokenize {}: {e}", path.display()))?;
    Ok(enc.get_ids().to_vec())
}

/// Reads and tokenizes a whole text file.
pub fn tokenize_file(tok: &Tokenizer, path: &std::path::Path) -> Result<Vec<u32>> {
    tokenize_text(tok, &eval::read_text(path)?, path)
}

/// Decodes ids to text.
pub fn decode(tok: &Tokenizer, ids: &[u32]) -> String {
    tok.decode(ids, false).unwrap_or_default()
}
