//! The typed messages a background training job speaks: commands in, events out.

use super::config::LossKind;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Sent to a running job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrainCommand {
    /// Save a checkpoint at the current step and stop.
    Stop,
}

/// One optimizer step's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: usize,
    pub total_steps: usize,
    /// The loss that was optimized this step (aligned, standard or ce-reg).
    pub loss: f64,
    /// Which loss this step optimized (the aligned recipe alternates aligned and standard).
    pub objective: LossKind,
    /// Per-layer CE of the shared classifier, layers 1..=L (index 0 = layer 1).
    pub layer_losses: Vec<f64>,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_sec: f64,
    pub eta_secs: f64,
}

/// A held-out evaluation during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub step: usize,
    /// Per layer 1..=L (index 0 = layer 1): mean CE and top-1 accuracy.
    pub layer_losses: Vec<f64>,
    pub layer_acc: Vec<f64>,
}

/// Sent by a running job.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    /// What the job is doing before its first step (fetching, reading and tokenizing the
    /// data), and which data it chose.
    Preparing {
        message: String,
    },
    Started {
        start_step: usize,
        total_steps: usize,
        out: PathBuf,
        n_layer: usize,
    },
    Progress(StepMetrics),
    Eval(EvalMetrics),
    CheckpointSaved {
        step: usize,
        dir: PathBuf,
    },
    Finished {
        step: usize,
        dir: PathBuf,
        stopped_early: bool,
    },
    Failed {
        message: String,
    },
}
