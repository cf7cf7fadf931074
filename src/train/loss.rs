//! Training losses with the shared classifier applied after any layer.
//!
//! The head `lm_head(ln_f(h^l))` is the expensive part for large vocabularies, and the
//! aligned loss applies it after every layer. So the head and its cross-entropy are
//! differentiated by hand, chunk by chunk (softmax minus one-hot), and never hold more
//! than one chunk of logits; the gradient reaching `ln_f(h^l)` is then pushed through the
//! trunk with a single autograd pass on the surrogate `sum_l <ln_f(h^l), g_l>`.

use crate::model::Gpt2;
use anyhow::{Result, bail};
use candle_core::backprop::GradStore;
use candle_core::{D, DType, Tensor, Var};
use rayon::prelude::*;

/// `lambda_l = 2l / (L(L+1))` for l = 1..=L (index 0 = layer 1); they sum to 1.
pub fn aligned_weights(n_layer: usize) -> Vec<f64> {
    let denom = (n_layer * (n_layer + 1)) as f64;
    (1..=n_layer).map(|l| 2.0 * l as f64 / denom).collect()
}

/// Weight 1 on the last layer only.
pub fn standard_weights(n_layer: usize) -> Vec<f64> {
    let mut w = vec![0.0; n_layer];
    w[n_layer - 1] = 1.0;
    w
}

/// What one forward/backward pass optimizes.
#[derive(Debug, Clone)]
pub struct Objective {
    /// Weight of each layer's CE, layers 1..=L.
    pub layer_weights: Vec<f64>,
    /// ce-reg: `beta * sum_l lambda_l (1 - cos(h^l, h^L))` is added when > 0.
    pub cos_beta: f64,
    /// Per-layer CE of layers with zero weight is still measured (forward only) on at most
    /// this many positions per micro-batch (0 = all), for the live per-layer curves.
    pub monitor_positions: usize,
}

#[derive(Debug, Clone)]
pub struct LossValue {
    pub loss: f64,
    /// Mean CE per layer 1..=L.
    pub layer_losses: Vec<f64>,
}

/// Rows of logits per head chunk. On the CPU one chunk's logits stay near 32 MB, so they
/// stay in cache-friendly reach of the fused pass; a GPU gets chunks of up to ~256 MB,
/// large enough for its matrix units and few enough that a step launches a handful of
/// head products instead of dozens (GPT-2's 50,257-word head: 1,273 rows, not 159).
fn chunk_rows(vocab: usize, device: &candle_core::Device) -> usize {
    let bytes = if crate::ops::cpu_fast_path(device) { 32_000_000 } else { 256_000_000 };
    (bytes / 4 / vocab).max(16)
}

/// A sum of cross-entropies. The CPU's is summed on the host in f64; another device's stays
/// there as a one-element f32 tensor until [`read_ce_sums`] brings a step's sums back in one
/// read: a read per chunk would stall the GPU's queue every chunk.
#[derive(Clone)]
pub enum CeSum {
    Host(f64),
    Device(Tensor),
}

impl CeSum {
    fn add(self, other: CeSum) -> Result<CeSum> {
        Ok(match (self, other) {
            (CeSum::Host(a), CeSum::Host(b)) => CeSum::Host(a + b),
            (CeSum::Device(a), CeSum::Device(b)) => CeSum::Device((a + b)?),
            _ => bail!("cross-entropy sums from two kinds of device"),
        })
    }
}

/// The values of `sums`, with one read-back for all the device-side ones.
pub fn read_ce_sums(sums: &[CeSum]) -> Result<Vec<f64>> {
    let on_device: Vec<Tensor> = sums
        .iter()
        .filter_map(|s| match s {
            CeSum::Device(t) => Some(t.reshape(1)),
            CeSum::Host(_) => None,
        })
        .collect::<candle_core::Result<_>>()?;
    let mut read = match on_device.is_empty() {
        true => vec![],
        false => Tensor::cat(&on_device, 0)?.to_vec1::<f32>()?,
    }
    .into_iter();
    Ok(sums
        .iter()
        .map(|s| match s {
            CeSum::Host(v) => *v,
            CeSum::Device(_) => read.next().map(f64::from).unwrap_or(f64::NAN),
        })
        .collect())
}

/// Sum of CE over rows of `logits` (`[n, V]`) and, if `grad_scale` is given, the gradient
/// `grad_scale * (softmax - onehot)` of that sum.
fn xent(logits: &Tensor, targets: &[u32], grad_scale: Option<f64>) -> Result<(CeSum, Option<Tensor>)> {
    let (n, v) = logits.dims2()?;
    if crate::ops::cpu_fast_path(logits.device()) {
        let mut data: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        let per_row: Vec<f64> = data
            .par_chunks_mut(v)
            .zip(targets.par_iter())
            .map(|(row, &t)| crate::kernels::xent_row(row, t as usize, grad_scale.unwrap_or(0.0) as f32))
            .collect();
        // Summed in order, so the value does not depend on rayon's split.
        let ce: f64 = per_row.iter().sum();
        let grad = match grad_scale {
            Some(_) => Some(Tensor::from_vec(data, (n, v), logits.device())?),
            None => None,
        };
        return Ok((CeSum::Host(ce), grad));
    }
    // Other devices: the same math with tensor ops, the sum left on the device (f32: no
    // f64 kernels needed there; it is widened on the host when read).
    let t = Tensor::from_vec(targets.to_vec(), n, logits.device())?;
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&t.unsqueeze(1)?, 1)?;
    let ce = picked.sum_all()?.neg()?;
    let grad = match grad_scale {
        Some(s) => {
            let onehot =
                Tensor::arange(0u32, v as u32, logits.device())?.unsqueeze(0)?.broadcast_eq(&t.unsqueeze(1)?)?.to_dtype(DType::F32)?;
            Some(((logp.exp()? - onehot)? * s)?)
        }
        None => None,
    };
    Ok((CeSum::Device(ce), grad))
}

/// CE of the head over features `z` (`[n, d]`, already `ln_f`-normalised) against
/// `targets`; with `weight` the gradients w.r.t. `z` and the head matrix of
/// `weight * mean CE`.
pub fn head_loss(z: &Tensor, head: &Tensor, targets: &[u32], weight: Option<f64>) -> Result<(CeSum, Option<(Tensor, Tensor)>)> {
    head_loss_in_chunks(z, head, targets, weight, chunk_rows(head.dim(0)?, z.device()))
}

fn head_loss_in_chunks(
    z: &Tensor,
    head: &Tensor,
    targets: &[u32],
    weight: Option<f64>,
    step: usize,
) -> Result<(CeSum, Option<(Tensor, Tensor)>)> {
    let n = z.dim(0)?;
    let mut ce_sum: Option<CeSum> = None;
    let mut dz_parts = Vec::new();
    let mut dw: Option<Tensor> = None;
    let scale = weight.map(|w| w / n as f64);
    let mut start = 0;
    while start < n {
        let len = step.min(n - start);
        let zc = z.narrow(0, start, len)?;
        let logits = zc.matmul(&head.t()?)?;
        let (ce, g) = xent(&logits, &targets[start..start + len], scale)?;
        ce_sum = Some(match ce_sum {
            None => ce,
            Some(acc) => acc.add(ce)?,
        });
        if let Some(g) = g {
            dz_parts.push(g.matmul(head)?);
            let part = g.t()?.matmul(&zc)?;
            dw = Some(match dw {
                None => part,
                Some(acc) => (acc + part)?,
            });
        }
        start += len;
    }
    let grads = match (weight, dw) {
        (Some(_), Some(dw)) => Some((Tensor::cat(&dz_parts, 0)?, dw)),
        _ => None,
    };
    Ok((ce_sum.unwrap_or(CeSum::Host(0.0)), grads))
}

/// Mean raw cosine between matching rows of `a` and `b` (`[n, d]`), differentiable.
fn mean_cos(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dot = (a * b)?.sum(D::Minus1)?;
    let na = a.sqr()?.sum(D::Minus1)?.sqrt()?;
    let nb = b.sqr()?.sum(D::Minus1)?.sqrt()?;
    Ok((dot / ((na * nb)? + 1e-12)?)?.mean_all()?)
}

/// Loss and gradients of one micro-batch. `model` must hold the `vars`' tensors (see
/// [`crate::train::trainer::Trainable`]). `inputs`, `targets`: `[b, t]` token ids.
/// Gradients are scaled by `grad_scale` (1/accumulation steps).
pub fn loss_and_grads(
    model: &Gpt2,
    inputs: &Tensor,
    targets: &[u32],
    obj: &Objective,
    grad_scale: f64,
) -> Result<(LossValue, GradStore, Tensor)> {
    let n_layer = model.n_layer();
    if obj.layer_weights.len() != n_layer {
        bail!("objective has {} layer weights for {n_layer} layers", obj.layer_weights.len())
    }
    let (b, t) = inputs.dims2()?;
    if super::cpu_step::supports(model) {
        return loss_and_grads_cpu(model, inputs, targets, obj, grad_scale);
    }
    let n = b * t;
    let d = model.config.n_embd;
    let hs = model.residuals(inputs)?;
    let head = model.head_weight().detach();
    let mut surrogate: Option<Tensor> = None;
    let mut head_grad: Option<Tensor> = None;
    // Each layer's CE sum and the count it is over, read back together after the loop.
    let mut layer_sums = Vec::with_capacity(n_layer);
    let mut layer_rows = Vec::with_capacity(n_layer);
    let add = |acc: Option<Tensor>, x: Tensor| -> Result<Option<Tensor>> {
        Ok(Some(match acc {
            None => x,
            Some(a) => (a + x)?,
        }))
    };
    for (h, &w) in hs[1..].iter().zip(&obj.layer_weights) {
        let x = model.final_norm(h)?.reshape((n, d))?;
        if w != 0.0 {
            let z = x.detach();
            let (ce, g) = head_loss(&z, &head, targets, Some(w * grad_scale))?;
            let (dz, dw) = g.expect("gradients requested");
            layer_sums.push(ce);
            layer_rows.push(n);
            surrogate = add(surrogate, (x * dz)?.sum_all()?)?;
            head_grad = add(head_grad, dw)?;
        } else {
            // Monitoring only: forward CE on (a prefix of) the positions, no gradient.
            let m = if obj.monitor_positions == 0 { n } else { obj.monitor_positions.min(n) };
            let z = x.detach().narrow(0, 0, m)?;
            let (ce, _) = head_loss(&z, &head, &targets[..m], None)?;
            layer_sums.push(ce);
            layer_rows.push(m);
        }
    }
    let mut reg_value = None;
    if obj.cos_beta > 0.0 {
        let lambdas = aligned_weights(n_layer);
        let last = hs[n_layer].reshape((n, d))?;
        let mut reg: Option<Tensor> = None;
        for l in 1..n_layer {
            let c = mean_cos(&hs[l].reshape((n, d))?, &last)?;
            let term = ((1.0 - c)? * lambdas[l - 1])?;
            reg = add(reg, term)?;
        }
        if let Some(reg) = reg {
            surrogate = add(surrogate, (&reg * (obj.cos_beta * grad_scale))?)?;
            reg_value = Some(CeSum::Device(reg.detach()));
        }
    }
    let surrogate = match surrogate {
        Some(s) => s,
        None => bail!("the objective has no trainable term"),
    };
    let grads = surrogate.backward()?;
    // Read back only now, the backward pass already queued behind the forward's work.
    layer_sums.extend(reg_value);
    let mut sums = read_ce_sums(&layer_sums)?;
    let reg = if obj.cos_beta > 0.0 && sums.len() > n_layer { sums.pop() } else { None };
    let layer_losses: Vec<f64> = sums.iter().zip(&layer_rows).map(|(s, &m)| s / m as f64).collect();
    // Layers weighted 0 are only monitored: they do not enter the loss (not even as NaN).
    let mut loss: f64 = layer_losses.iter().zip(&obj.layer_weights).filter(|(_, w)| **w != 0.0).map(|(l, w)| l * w).sum();
    if let Some(reg) = reg {
        loss += obj.cos_beta * reg;
    }
    let head_grad = head_grad.unwrap_or_else(|| head.zeros_like().expect("zeros"));
    Ok((LossValue { loss, layer_losses }, grads, head_grad))
}

/// [`loss_and_grads`] through the CPU training step ([`super::cpu_step`]): its gradients
/// (the head's already folded into `wte` or `lm_head.weight`) in a `GradStore` under the
/// model's parameters, and a zero head gradient.
fn loss_and_grads_cpu(
    model: &Gpt2,
    inputs: &Tensor,
    targets: &[u32],
    obj: &Objective,
    grad_scale: f64,
) -> Result<(LossValue, GradStore, Tensor)> {
    let (b, t) = inputs.dims2()?;
    let ids = inputs.flatten_all()?.to_vec1::<u32>()?;
    let mut ws = super::cpu_step::Workspace::new();
    let batch = super::cpu_step::MicroBatch { ids: &ids, targets, b, t };
    let value = super::cpu_step::accumulate_loss_and_grads(model, &batch, obj, grad_scale, &mut ws)?;
    let mut store = GradStore::default();
    for ((_, p), g) in model.params().iter().zip(std::mem::take(&mut ws.grads)) {
        store.insert(p, Tensor::from_vec(g, p.shape(), p.device())?);
    }
    let head = model.head_weight().zeros_like()?;
    Ok((value, store, head))
}

/// Gradients of every parameter (by name, `model.params()` order), the head's manual
/// gradient folded into `wte` (tied) or `lm_head.weight`.
pub fn collect_grads(model: &Gpt2, vars: &[Var], grads: &GradStore, head_grad: &Tensor) -> Result<Vec<Tensor>> {
    let names = model.params();
    let mut out = Vec::with_capacity(vars.len());
    for ((name, _), var) in names.iter().zip(vars) {
        // Detached: candle's gradients still point into the forward graph, and the
        // optimizer's moments would otherwise keep every step's graph alive.
        let mut g = match grads.get(var.as_tensor()) {
            Some(g) => g.detach(),
            None => var.as_tensor().zeros_like()?,
        };
        let is_head = match &model.lm_head {
            Some(_) => name == "lm_head.weight",
            None => name == "transformer.wte.weight",
        };
        if is_head {
            g = (g + head_grad.detach())?;
        }
        out.push(g);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The head's CE and gradients do not depend on the chunking, on the fused CPU path nor
    /// on the tensor-op path other devices take (whose chunk sums stay on the device).
    #[test]
    fn head_loss_is_the_same_in_any_chunks() {
        let dev = Device::Cpu;
        let z = Tensor::randn(0f32, 1.0, (37, 8), &dev).unwrap();
        let head = Tensor::randn(0f32, 0.5, (50, 8), &dev).unwrap();
        let targets: Vec<u32> = (0..37).map(|i| (i * 7 % 50) as u32).collect();
        let run = |step: usize| {
            let (ce, g) = head_loss_in_chunks(&z, &head, &targets, Some(0.3), step).unwrap();
            let (dz, dw) = g.unwrap();
            (read_ce_sums(&[ce]).unwrap()[0], values(&dz), values(&dw))
        };
        let (ce, dz, dw) = run(37);
        for (portable, step) in [(false, 5), (true, 37), (true, 5), (true, 1)] {
            let (c, z2, w2) = if portable { crate::ops::with_portable_ops(|| run(step)) } else { run(step) };
            assert!((c - ce).abs() < 1e-4 * ce.abs(), "ce {c} vs {ce} (portable {portable}, chunk {step})");
            for (a, b) in z2.iter().zip(&dz).chain(w2.iter().zip(&dw)) {
                assert!((a - b).abs() < 1e-5, "gradient {a} vs {b} (portable {portable}, chunk {step})");
            }
        }
        // Sums from both kinds come back in order, device-side ones in one read.
        let sums = [CeSum::Host(1.5), CeSum::Device(Tensor::new(2.5f32, &dev).unwrap()), CeSum::Host(-1.0)];
        assert_eq!(read_ce_sums(&sums).unwrap(), vec![1.5, 2.5, -1.0]);
    }
}
