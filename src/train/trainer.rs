//! One training step: micro-batches, loss, gradients, clipping, AdamW.

use super::cpu_step::{MicroBatch, Workspace, accumulate_loss_and_grads};
use super::loss::{LossValue, Objective, aligned_weights, collect_grads, loss_and_grads, standard_weights};
use super::optim::{AdamW, AdamWConfig, clip_coefficient, clip_coefficient_host};
use crate::model::Gpt2;
use anyhow::Result;
use candle_core::{Tensor, Var};
use std::sync::Mutex;

/// A model whose parameters are candle `Var`s, so autograd reaches them and the
/// optimizer can update them in place.
pub struct Trainable {
    pub model: Gpt2,
    pub vars: Vec<Var>,
    pub names: Vec<String>,
    /// The CPU training step's buffers (activations, gradients, its profile), kept
    /// from one step to the next.
    pub workspace: Mutex<Workspace>,
}

impl Trainable {
    pub fn new(mut model: Gpt2) -> Result<Self> {
        let names = model.params().into_iter().map(|(n, _)| n).collect();
        let mut vars = Vec::new();
        model.map_params(|t| {
            let v = Var::from_tensor(t)?;
            let shared = v.as_tensor().clone();
            vars.push(v);
            Ok(shared)
        })?;
        Ok(Self { model, vars, names, workspace: Mutex::new(Workspace::new()) })
    }

    /// Which parameters get weight decay: all, or (nanoGPT) only the 2-D weight matrices
    /// of the blocks, not biases, layer norms or embeddings.
    pub fn decay_mask(&self, matrices_only: bool) -> Vec<bool> {
        self.names
            .iter()
            .zip(&self.vars)
            .map(|(n, v)| {
                !matrices_only || (v.as_tensor().rank() == 2 && !n.contains(".wte.") && !n.contains(".wpe.") && n != "lm_head.weight")
            })
            .collect()
    }

    /// A plain-tensor copy of the model for inference (no gradient tracking).
    pub fn snapshot(&self) -> Result<Gpt2> {
        let mut m = self.model.clone();
        m.map_params(|t| Ok(t.detach().copy()?))?;
        Ok(m)
    }

    pub fn optimizer(&self, cfg: AdamWConfig, matrices_only: bool) -> Result<AdamW> {
        AdamW::new(cfg, &self.vars, self.decay_mask(matrices_only))
    }
}

/// What one step optimizes when its loss is `kind` (see [`super::TrainConfig::objective_at`]).
pub fn objective_for(kind: super::LossKind, n_layer: usize, beta: f64, monitor: usize) -> Objective {
    use super::LossKind::*;
    let (layer_weights, cos_beta) = match kind {
        Aligned => (aligned_weights(n_layer), 0.0),
        CeReg => (standard_weights(n_layer), beta),
        Standard => (standard_weights(n_layer), 0.0),
    };
    Objective { layer_weights, cos_beta, monitor_positions: monitor }
}

/// Result of one optimizer step.
pub struct StepOutcome {
    pub value: LossValue,
    pub grad_norm: f64,
}

/// Computes the gradients of a batch split into micro-batches, clips them, and applies
/// AdamW. Nothing is updated if the loss is not finite.
pub fn train_step(
    t: &Trainable,
    opt: &mut AdamW,
    micro_batches: &[(Tensor, Vec<u32>)],
    obj: &Objective,
    lr: f64,
    grad_clip: f64,
) -> Result<StepOutcome> {
    if super::cpu_step::supports(&t.model) {
        return train_step_cpu(t, opt, micro_batches, obj, lr, grad_clip);
    }
    let k = micro_batches.len();
    let scale = 1.0 / k as f64;
    let mut total: Option<Vec<Tensor>> = None;
    let mut value = LossValue { loss: 0.0, layer_losses: vec![0.0; t.model.n_layer()] };
    for (inputs, targets) in micro_batches {
        let (v, grads, head_grad) = loss_and_grads(&t.model, inputs, targets, obj, scale)?;
        let g = collect_grads(&t.model, &t.vars, &grads, &head_grad)?;
        value.loss += v.loss * scale;
        for (a, b) in value.layer_losses.iter_mut().zip(&v.layer_losses) {
            *a += b * scale;
        }
        total = Some(match total {
            None => g,
            Some(acc) => acc.iter().zip(&g).map(|(a, b)| a + b).collect::<candle_core::Result<_>>()?,
        });
    }
    let grads = total.expect("at least one micro-batch");
    if !value.loss.is_finite() {
        return Ok(StepOutcome { value, grad_norm: f64::NAN });
    }
    // Clipping is folded into the update: the optimizer scales each gradient as it reads it.
    let (grad_norm, coef) = clip_coefficient(&grads, grad_clip)?;
    if !grad_norm.is_finite() {
        return Ok(StepOutcome { value, grad_norm });
    }
    opt.step_scaled(&t.vars, &grads, lr, coef)?;
    Ok(StepOutcome { value, grad_norm })
}

/// [`train_step`] on the CPU: gradients accumulate in the workspace's buffers, and the
/// norm and AdamW read them there.
fn train_step_cpu(
    t: &Trainable,
    opt: &mut AdamW,
    micro_batches: &[(Tensor, Vec<u32>)],
    obj: &Objective,
    lr: f64,
    grad_clip: f64,
) -> Result<StepOutcome> {
    let mut ws = t.workspace.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let k = micro_batches.len();
    let scale = 1.0 / k as f64;
    let mut value = LossValue { loss: 0.0, layer_losses: vec![0.0; t.model.n_layer()] };
    ws.zero_grads();
    for (inputs, targets) in micro_batches {
        let (b, ctx) = inputs.dims2()?;
        let ids = inputs.flatten_all()?.to_vec1::<u32>()?;
        let batch = MicroBatch { ids: &ids, targets, b, t: ctx };
        let v = accumulate_loss_and_grads(&t.model, &batch, obj, scale, &mut ws)?;
        value.loss += v.loss * scale;
        for (a, b) in value.layer_losses.iter_mut().zip(&v.layer_losses) {
            *a += b * scale;
        }
    }
    if !value.loss.is_finite() {
        return Ok(StepOutcome { value, grad_norm: f64::NAN });
    }
    let (started, cpu) = (std::time::Instant::now(), crate::util::process_cpu_seconds());
    let (grad_norm, coef) = clip_coefficient_host(&ws.grads, grad_clip);
    if grad_norm.is_finite() {
        opt.step_host(&t.vars, &ws.grads, lr, coef)?;
    }
    ws.profile.add_optimizer(started.elapsed(), cpu);
    Ok(StepOutcome { value, grad_norm })
}
