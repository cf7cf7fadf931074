//! AdamW with state we can save and restore (candle_nn's keeps its moments private).
//! The update is torch.optim.AdamW's, op for op: decoupled weight decay first, then the
//! bias-corrected Adam step.

use anyhow::{Result, bail};
use candle_core::{Tensor, Var};

#[derive(Debug, Clone)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

pub struct AdamW {
    pub config: AdamWConfig,
    /// Completed steps (torch's `state['step']`).
    pub step: usize,
    /// First and second moments, one per parameter.
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Whether each parameter is decayed.
    pub decay: Vec<bool>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, params: &[Var], decay: Vec<bool>) -> Result<Self> {
        // Separate storage for each moment: the CPU update writes them in place.
        let m = params.iter().map(|p| p.as_tensor().zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        let v = params.iter().map(|p| p.as_tensor().zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { config, step: 0, m, v, decay })
    }

    /// One update with learning rate `lr` and gradients `grads` (same order as `params`).
    pub fn step(&mut self, params: &[Var], grads: &[Tensor], lr: f64) -> Result<()> {
        self.step_scaled(params, grads, lr, 1.0)
    }

    /// One update with the gradients multiplied by `grad_scale` (gradient clipping).
    pub fn step_scaled(&mut self, params: &[Var], grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        if grads.len() != params.len() {
            bail!("{} gradients for {} parameters", grads.len(), params.len())
        }
        if params.iter().all(|p| crate::ops::cpu_fast_path(p.device())) {
            return self.step_cpu(params, grads, lr, grad_scale);
        }
        let scaled: Vec<Tensor>;
        let grads = if grad_scale != 1.0 {
            scaled = grads.iter().map(|g| g * grad_scale).collect::<candle_core::Result<_>>()?;
            &scaled
        } else {
            grads
        };
        self.step += 1;
        let c = &self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        let step_size = lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        for i in 0..params.len() {
            let p = params[i].as_tensor();
            let g = &grads[i].detach();
            let mut theta = p.detach();
            if self.decay[i] && c.weight_decay != 0.0 {
                theta = (theta * (1.0 - lr * c.weight_decay))?;
            }
            let m = ((&self.m[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((v.sqrt()? / bc2_sqrt)? + c.eps)?;
            let theta = (theta - ((&m / denom)? * step_size)?)?;
            params[i].set(&theta)?;
            self.m[i] = m.detach();
            self.v[i] = v.detach();
        }
        Ok(())
    }
}

impl AdamW {
    /// The same update as [`AdamW::step_scaled`], op for op, in one parallel pass per
    /// parameter over host memory, in place (candle would make a dozen single-threaded
    /// passes and allocations).
    fn step_cpu(&mut self, params: &[Var], grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        if grads.len() != params.len() {
            bail!("{} gradients for {} parameters", grads.len(), params.len())
        }
        let k = self.begin_step(lr, grad_scale);
        for (i, g) in grads.iter().enumerate() {
            let decay = self.decay_factor(i, lr);
            crate::ops::with_host(&g.contiguous()?, |g| self.update_host(params, i, g, decay, &k))??;
        }
        Ok(())
    }

    /// [`AdamW::step_scaled`] with the gradients in host memory (the CPU training step's
    /// buffers, same order as `params`), updating parameters and moments in place.
    pub fn step_host(&mut self, params: &[Var], grads: &[Vec<f32>], lr: f64, grad_scale: f64) -> Result<()> {
        if grads.len() != params.len() {
            bail!("{} gradients for {} parameters", grads.len(), params.len())
        }
        use rayon::prelude::*;
        let k = self.begin_step(lr, grad_scale);
        // All parameters at once, each in chunks: one by one, the small ones (biases, norms)
        // each ran on one core while the other waited.
        grads.par_iter().enumerate().try_for_each(|(i, g)| self.update_host(params, i, g, self.decay_factor(i, lr), &k))
    }

    /// Counts the step and returns its constants.
    fn begin_step(&mut self, lr: f64, grad_scale: f64) -> StepConstants {
        self.step += 1;
        let c = &self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        StepConstants {
            b1: c.beta1 as f32,
            b2: c.beta2 as f32,
            // 1 - beta in f64, then rounded, as torch (and the tensor path) do: computed in
            // f32, 1 - 0.999 is off by 1.3e-5 of itself.
            one_minus_b1: (1.0 - c.beta1) as f32,
            one_minus_b2: (1.0 - c.beta2) as f32,
            step_size: (lr / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            eps: c.eps as f32,
            gs: grad_scale as f32,
        }
    }

    fn decay_factor(&self, i: usize, lr: f64) -> f32 {
        if self.decay[i] { (1.0 - lr * self.config.weight_decay) as f32 } else { 1.0 }
    }

    /// One parameter's update, in place in the parameter's and the moments' storage.
    fn update_host(&self, params: &[Var], i: usize, g: &[f32], decay: f32, k: &StepConstants) -> Result<()> {
        use crate::ops::with_host_mut;
        use rayon::prelude::*;
        if g.len() != params[i].elem_count() {
            bail!("gradient {i} has {} elements for a parameter of {}", g.len(), params[i].elem_count())
        }
        let update = |p: &mut [f32], m: &mut [f32], v: &mut [f32]| {
            p.par_chunks_mut(4096).zip(m.par_chunks_mut(4096)).zip(v.par_chunks_mut(4096)).zip(g.par_chunks(4096)).for_each(
                |(((p, m), v), g)| {
                    for j in 0..p.len() {
                        let g = if k.gs == 1.0 { g[j] } else { g[j] * k.gs };
                        let theta = if decay == 1.0 { p[j] } else { p[j] * decay };
                        m[j] = m[j] * k.b1 + g * k.one_minus_b1;
                        v[j] = v[j] * k.b2 + g * g * k.one_minus_b2;
                        let denom = v[j].sqrt() / k.bc2_sqrt + k.eps;
                        p[j] = theta - m[j] / denom * k.step_size;
                    }
                },
            )
        };
        with_host_mut(params[i].as_tensor(), |p| with_host_mut(&self.m[i], |m| with_host_mut(&self.v[i], |v| update(p, m, v))))???;
        Ok(())
    }
}

/// The per-step constants of an AdamW update.
struct StepConstants {
    b1: f32,
    b2: f32,
    one_minus_b1: f32,
    one_minus_b2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
    gs: f32,
}

/// [`clip_coefficient`] for gradients in host memory: each gradient's sum of squares in
/// f64 over fixed blocks, added in order.
pub fn clip_coefficient_host(grads: &[Vec<f32>], max_norm: f64) -> (f64, f64) {
    use rayon::prelude::*;
    // Every gradient at once (small ones alone would leave cores idle), the sums added in
    // order, so the norm does not depend on the threads.
    let per_grad: Vec<f64> = grads
        .par_iter()
        .map(|g| {
            g.par_chunks(1 << 14).map(|c| c.iter().map(|&x| x as f64 * x as f64).sum::<f64>()).collect::<Vec<f64>>().iter().sum::<f64>()
        })
        .collect();
    let sq: f64 = per_grad.iter().sum();
    let norm = sq.sqrt();
    let coef = if max_norm > 0.0 { (max_norm / (norm + 1e-6)).min(1.0) } else { 1.0 };
    (norm, coef)
}

/// The global L2 norm of the gradients and the factor torch's `clip_grad_norm_` would
/// scale them by (1 when under `max_norm`, or when clipping is off).
pub fn clip_coefficient(grads: &[Tensor], max_norm: f64) -> Result<(f64, f64)> {
    // Each gradient's sum of squares stays on its device and one read-back brings them all:
    // on a GPU a read-back per parameter would stall the stream some 150 times a step.
    let sums = grads.iter().map(|g| g.sqr()?.sum_all()).collect::<candle_core::Result<Vec<_>>>()?;
    let sq: f64 = if sums.is_empty() { 0.0 } else { Tensor::stack(&sums, 0)?.to_vec1::<f32>()?.iter().map(|&s| s as f64).sum() };
    let norm = sq.sqrt();
    let coef = if max_norm > 0.0 { (max_norm / (norm + 1e-6)).min(1.0) } else { 1.0 };
    Ok((norm, coef))
}

/// Warmup then cosine decay (nanoGPT): linear from lr/(warmup+1) up to lr over `warmup`
/// steps, then a half cosine from lr to `min_lr` at the last step. `it` is 0-based.
pub fn lr_at(it: usize, total: usize, warmup: usize, lr: f64, min_lr: f64) -> f64 {
    if it < warmup {
        return lr * (it + 1) as f64 / (warmup + 1) as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let ratio = ((it - warmup) as f64 / span as f64).min(1.0);
    let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
    min_lr + coeff * (lr - min_lr)
}
