//! A training run's configuration: everything needed to start it, and saved with every
//! checkpoint so that `--resume` continues the same run.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// `sum_l lambda_l CE_l` with `lambda_l = 2l/(L(L+1))`, alternated with plain
    /// last-layer CE on every other step unless `alternate` is off.
    Aligned,
    /// Last-layer CE.
    Standard,
    /// Last-layer CE + beta * sum_l lambda_l (1 - cos(h^l, h^L)).
    CeReg,
}

impl std::fmt::Display for LossKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LossKind::Aligned => "aligned",
            LossKind::Standard => "standard",
            LossKind::CeReg => "ce-reg",
        })
    }
}

impl std::str::FromStr for LossKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "aligned" => Ok(LossKind::Aligned),
            "standard" => Ok(LossKind::Standard),
            "ce-reg" => Ok(LossKind::CeReg),
            _ => Err(format!("unknown loss {s:?}: use aligned, standard or ce-reg")),
        }
    }
}

/// Where the weights of a new run come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitFrom {
    /// A checkpoint (`--ckpt`, resolved like everywhere else).
    Checkpoint(String),
    /// Random GPT-2 weights of the given config.json, with the tokenizer of a folder.
    Random { config: PathBuf, tokenizer: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub init: InitFrom,
    /// Output checkpoint folder.
    pub out: PathBuf,
    pub loss: LossKind,
    /// Aligned loss: alternate with last-layer CE on every other step (the paper's recipe).
    pub alternate: bool,
    /// ce-reg: weight of the cosine term.
    pub beta: f64,
    /// Training texts (files or folders of .txt files).
    pub data: Vec<PathBuf>,
    /// Held-out texts for periodic evaluation.
    pub eval_data: Vec<PathBuf>,
    /// Total steps of the run (a resume continues up to this).
    pub steps: usize,
    /// Sequences per optimizer step (split into `accum` micro-batches).
    pub batch: usize,
    pub accum: usize,
    /// Tokens per window; 0 = the model's default context ([`crate::model::DEFAULT_CTX`],
    /// or its own context if shorter).
    pub ctx: usize,
    pub lr: f64,
    /// Learning rate at the end of the cosine schedule.
    pub min_lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    /// Exclude 1-D parameters (biases, layer norms) and embeddings from weight decay.
    pub decay_matrices_only: bool,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Clip the global gradient norm to this (0 = off).
    pub grad_clip: f64,
    pub eval_every: usize,
    /// Held-out batches per evaluation.
    pub eval_batches: usize,
    pub save_every: usize,
    pub seed: u64,
}

impl TrainConfig {
    /// The paper's GPT-2 fine-tuning defaults (AdamW, lr 2e-5, ctx 256, batch 8).
    pub fn finetune(init: InitFrom, out: PathBuf, loss: LossKind, data: Vec<PathBuf>) -> Self {
        Self {
            init,
            out,
            loss,
            alternate: true,
            beta: 1.0,
            data,
            eval_data: vec![],
            steps: 1000,
            batch: 8,
            accum: 1,
            ctx: crate::model::DEFAULT_CTX,
            lr: 2e-5,
            min_lr: 2e-6,
            warmup: 0,
            weight_decay: 0.01,
            decay_matrices_only: true,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            grad_clip: 1.0,
            eval_every: 100,
            eval_batches: 8,
            save_every: 100,
            seed: 0,
        }
    }

    /// The loss that step `step` (1-based) optimizes: the aligned recipe alternates the
    /// multi-layer loss (odd steps) with last-layer CE (even steps) unless `alternate` is off.
    pub fn objective_at(&self, step: usize) -> LossKind {
        match self.loss {
            LossKind::Aligned if self.alternate && step.is_multiple_of(2) => LossKind::Standard,
            kind => kind,
        }
    }
}
