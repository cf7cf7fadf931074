//! Per-layer analysis: logit lens, representation similarity, generation from any exit
//! layer, and evaluation over a text.
pub mod corpus;
pub mod early_exit;
pub mod embedder;
pub mod eval;
pub mod exits;
pub mod generate;
pub mod inspect;
pub mod lens;
pub mod lookup;
mod pipelined;
pub mod quality;
pub mod sampling;
pub mod similarity;
pub mod speculative;

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

/// The text of a growing sequence of generated tokens. A token can end inside a
/// multi-byte character (the decoded text then ends in U+FFFD), so text is released only
/// once the character is complete.
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    released: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        Self { tok, ids: Vec::new(), released: 0 }
    }

    /// Adds a token; the whole text so far when it ends on a complete character.
    pub fn push(&mut self, id: u32) -> Option<String> {
        self.ids.push(id);
        let text = decode(self.tok, &self.ids);
        (!text.ends_with('\u{FFFD}')).then_some(text)
    }

    /// Adds a token; the text not released before, when it ends on a complete character.
    pub fn push_new(&mut self, id: u32) -> Option<String> {
        let text = self.push(id)?;
        let new = text.get(self.released..)?.to_string();
        self.released = text.len();
        Some(new)
    }

    /// Tokens so far.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Decodes ids to text.
pub fn decode(tok: &Tokenizer, ids: &[u32]) -> String {
    tok.decode(ids, false).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_text_waits_for_whole_characters() {
        let dir = crate::paths::project_dir().join("tests/fixtures/tiny-gpt2");
        let tok = crate::model::checkpoint::load_tokenizer(&dir).unwrap();
        let ids = tok.encode("a 🙂 b", false).unwrap().get_ids().to_vec();
        let mut stream = TextStream::new(&tok);
        let pieces: Vec<Option<String>> = ids.iter().map(|&i| stream.push_new(i)).collect();
        // The emoji's four bytes are several byte-level tokens: nothing shows until the last.
        assert!(pieces.iter().any(Option::is_none), "{pieces:?}");
        assert_eq!(pieces.iter().flatten().cloned().collect::<String>(), "a 🙂 b");
        assert_eq!(stream.len(), ids.len());
    }
}
