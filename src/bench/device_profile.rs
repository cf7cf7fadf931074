//! Where a training step's time goes on a device that runs the basic-op path (a GPU):
//! each phase of [`crate::train::trainer::train_step`] run alone and timed twice, when the
//! host has queued its work and when the device has finished it. A phase whose queueing
//! time is close to its total is bound by the host (kernel launches, allocations), not by
//! the device's arithmetic; one much shorter is the device's.

use crate::train::loss::{Objective, collect_grads, head_loss, loss_and_grads, read_ce_sums};
use crate::train::optim::{AdamW, clip_coefficient};
use crate::train::trainer::Trainable;
use anyhow::Result;
use candle_core::{Device, Tensor};
use std::time::Instant;

/// One phase, `reps` times: the median host-side seconds until the work is queued, and until
/// the device has done it.
fn time_phase(device: &Device, reps: usize, mut phase: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    let (mut queued, mut done) = (vec![], vec![]);
    phase()?; // warm-up: allocator, cuBLAS plans
    device.synchronize()?;
    for _ in 0..reps {
        let t = Instant::now();
        phase()?;
        queued.push(t.elapsed().as_secs_f64());
        device.synchronize()?;
        done.push(t.elapsed().as_secs_f64());
    }
    Ok((super::median(queued), super::median(done)))
}

/// The phases of one training step of `obj` on `batch` (inputs `[b, t]`, targets).
pub fn profile(
    t: &Trainable,
    opt: &mut AdamW,
    batch: &(Tensor, Vec<u32>),
    obj: &Objective,
    device: &Device,
    reps: usize,
) -> Result<serde_json::Value> {
    let (inputs, targets) = batch;
    let model = &t.model;
    let (b, ctx) = inputs.dims2()?;
    let (n, d) = (b * ctx, model.config.n_embd);
    let weighted = obj.layer_weights.iter().filter(|&&w| w != 0.0).count();
    let mut phases = vec![];
    let mut add = |name: &str, times: (f64, f64), note: String| {
        phases.push(serde_json::json!({ "phase": name, "queued_ms": 1e3 * times.0, "done_ms": 1e3 * times.1, "note": note }));
    };

    let forward = time_phase(device, reps, || {
        let hs = model.residuals(inputs)?;
        let _ = model.final_norm(&hs[model.n_layer()])?;
        Ok(())
    })?;
    add("forward (trunk, all layers)", forward, "tracked for gradients, as in training".into());

    let hs = model.residuals(inputs)?;
    let z = model.final_norm(&hs[model.n_layer()])?.reshape((n, d))?.detach();
    let head = model.head_weight().detach();
    // Its CE sum left on the device, as a step leaves it until one read per step.
    let one_head = time_phase(device, reps, || head_loss(&z, &head, targets, Some(1.0)).map(drop))?;
    add("shared head + CE, one layer, with gradients", one_head, format!("{weighted} such layer(s) in this objective"));
    let monitored = obj.layer_weights.len() - weighted;
    if monitored > 0 && obj.monitor_positions > 0 {
        let m = obj.monitor_positions.min(n);
        let zm = z.narrow(0, 0, m)?;
        let monitor = time_phase(device, reps, || {
            let (ce, _) = head_loss(&zm, &head, &targets[..m], None)?;
            read_ce_sums(&[ce])?;
            Ok(())
        })?;
        add("monitoring CE, one layer (forward only)", monitor, format!("{monitored} such layer(s), {m} positions each"));
    }

    let mut last = None;
    let whole = time_phase(device, reps, || {
        last = Some(loss_and_grads(model, inputs, targets, obj, 1.0)?);
        Ok(())
    })?;
    add("forward + heads + backward (loss_and_grads)", whole, "reads the per-layer CE back once".into());

    let (_, grads, head_grad) = last.expect("timed at least once");
    let mut collected = vec![];
    let collect = time_phase(device, reps, || {
        collected = collect_grads(model, &t.vars, &grads, &head_grad)?;
        Ok(())
    })?;
    add("gather gradients", collect, format!("{} parameters", t.vars.len()));
    let clip = time_phase(device, reps, || {
        clip_coefficient(&collected, 1.0)?;
        Ok(())
    })?;
    add("gradient norm (clipping)", clip, "one read-back".into());
    let step = time_phase(device, reps, || {
        opt.step_scaled(&t.vars, &collected, 1e-6, 1.0)?;
        Ok(())
    })?;
    add("AdamW update", step, format!("{} parameters, a dozen kernels each", t.vars.len()));
    Ok(serde_json::json!({ "batch": b, "ctx": ctx, "reps": reps, "phases": phases }))
}

pub fn print(p: &serde_json::Value, say: &dyn Fn(&str)) {
    let Some(phases) = p["phases"].as_array() else { return };
    say("      device step profile (median; queued = host time until the work is queued, done = until the device finished it):");
    for ph in phases {
        let f = |k: &str| ph[k].as_f64().unwrap_or(f64::NAN);
        say(&format!(
            "      {:<46} queued {:>8.2} ms   done {:>8.2} ms   {}",
            ph["phase"].as_str().unwrap_or("?"),
            f("queued_ms"),
            f("done_ms"),
            ph["note"].as_str().unwrap_or("")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Gpt2, Gpt2Config};
    use crate::train::loss::standard_weights;
    use crate::train::optim::AdamWConfig;

    /// The profile runs every phase on the basic-op path (what a GPU runs), here on the CPU.
    #[test]
    fn every_phase_runs_on_the_portable_path() {
        crate::ops::with_portable_ops(|| {
            let dev = Device::Cpu;
            let t = Trainable::new(Gpt2::random(Gpt2Config::new(2, 16, 2, 64, 16), 1, &dev).unwrap()).unwrap();
            let mut opt = t.optimizer(AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }, true).unwrap();
            let ids: Vec<u32> = (0..2 * 9).map(|i| (i * 5 % 64) as u32).collect();
            let inputs = Tensor::from_vec(ids.iter().copied().take(16).collect::<Vec<_>>(), (2, 8), &dev).unwrap();
            let targets: Vec<u32> = ids[2..18].to_vec();
            let obj = Objective { layer_weights: standard_weights(2), cos_beta: 0.0, monitor_positions: 4 };
            let p = profile(&t, &mut opt, &(inputs, targets), &obj, &dev, 2).unwrap();
            let phases = p["phases"].as_array().unwrap();
            assert_eq!(phases.len(), 7, "{p}");
            assert!(phases.iter().all(|ph| ph["done_ms"].as_f64().unwrap() >= 0.0));
        });
    }
}
