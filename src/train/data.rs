//! Training data: plain-text files or folders, tokenized with the checkpoint's tokenizer,
//! documents joined with end-of-text, drawn as random windows by a seeded RNG whose
//! position is saved with every checkpoint.

use crate::analysis::eval::read_text;
use anyhow::{Result, bail};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use tokenizers::Tokenizer;

/// Expands files and folders (their `.txt` files, sorted) into a list of files.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let p = crate::paths::resolve_asset(p);
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&p)
                .map_err(|e| anyhow::anyhow!("cannot read data folder {}: {e}", p.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "txt"))
                .collect();
            files.sort();
            if files.is_empty() {
                bail!("data folder {} holds no .txt files", p.display())
            }
            out.extend(files);
        } else if p.is_file() {
            out.push(p);
        } else {
            bail!("data file {} does not exist", p.display())
        }
    }
    Ok(out)
}

/// Tokenizes each file as one document and joins them, each followed by `eos`.
pub fn load_tokens(tok: &Tokenizer, files: &[PathBuf], eos: u32) -> Result<Vec<u32>> {
    let texts: Vec<String> = files.iter().map(|f| read_text(f)).collect::<Result<_>>()?;
    let encs = tok
        .encode_batch(texts.iter().map(|s| s.as_str()).collect::<Vec<_>>(), false)
        .map_err(|e| anyhow::anyhow!("cannot tokenize the training data: {e}"))?;
    let mut out = Vec::new();
    for e in encs {
        out.extend_from_slice(e.get_ids());
        out.push(eos);
    }
    Ok(out)
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
