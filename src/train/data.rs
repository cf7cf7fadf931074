//! Training data: files or folders (text, JSON lines, parquet; local or from the hub, see
//! [`crate::corpus`]), tokenized with the checkpoint's tokenizer, documents joined with
//! end-of-text, drawn as random windows by a seeded RNG whose position is saved with every
//! checkpoint.

use anyhow::{Result, bail};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use tokenizers::Tokenizer;

/// Expands `--data` specs (files, folders, `hf://datasets/...`) into the files to train
/// on: a folder named by split gives its train split (see [`crate::corpus`]).
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    Ok(crate::corpus::select(paths, crate::corpus::Role::Train)?.files)
}

/// Reads the files' documents and tokenizes them whole, each followed by `eos`.
pub fn load_tokens(tok: &Tokenizer, files: &[PathBuf], eos: u32) -> Result<Vec<u32>> {
    let docs = crate::corpus::read_documents(files)?;
    Ok(crate::corpus::tokens::tokenize_documents(tok, &docs, eos, None, |_, _| {})?.ids)
}

/// Draws random windows of `ctx + 1` tokens (inputs and shifted targets).
pub struct Batcher {
    tokens: std::sync::Arc<Vec<u32>>,
    ctx: usize,
    rng: ChaCha8Rng,
}

impl Batcher {
    pub fn new(tokens: std::sync::Arc<Vec<u32>>, ctx: usize, seed: u64) -> Result<Self> {
        if tokens.len() < ctx + 1 {
            bail!("the training data has {} tokens, fewer than one window of --ctx {ctx} + 1", tokens.len())
        }
        Ok(Self { tokens, ctx, rng: ChaCha8Rng::seed_from_u64(seed) })
    }

    /// `b` windows: inputs `[b * ctx]` and targets `[b * ctx]`, row-major.
    pub fn next_batch(&mut self, b: usize) -> (Vec<u32>, Vec<u32>) {
        let max_start = self.tokens.len() - self.ctx - 1;
        let mut inputs = Vec::with_capacity(b * self.ctx);
        let mut targets = Vec::with_capacity(b * self.ctx);
        for _ in 0..b {
            let s = self.rng.random_range(0..=max_start);
            inputs.extend_from_slice(&self.tokens[s..s + self.ctx]);
            targets.extend_from_slice(&self.tokens[s + 1..s + self.ctx + 1]);
        }
        (inputs, targets)
    }

    /// The RNG's position, saved so a resumed run draws the same batches.
    pub fn position(&self) -> u128 {
        self.rng.get_word_pos()
    }

    pub fn set_position(&mut self, pos: u128) {
        self.rng.set_word_pos(pos);
    }

    pub fn n_tokens(&self) -> usize {
        self.tokens.len()
    }
}
