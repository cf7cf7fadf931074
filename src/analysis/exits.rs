//! The early-exit sweep — the paper's Table 1 for a language model: teacher-forced over a
//! text, each position's prediction leaves at the first layer whose exit measure reaches
//! the threshold (or at the last layer); for each threshold, the next-token accuracy of the
//! early-exit predictions, their agreement with the last layer's, the mean exit layer and
//! the layer speedup.
//!
//! Teacher-forced means every position sees the full model's states of the positions
//! before it (as a classifier sees its whole input); in generation the blocks above an exit
//! get copied states instead (see [`super::early_exit`]), and only generation measures
//! wall-clock time.

use super::early_exit::{ExitMeasure, saturation};
use super::eval::checked_chunks;
use crate::model::Gpt2;
use anyhow::{Result, bail};
use candle_core::Tensor;
use serde::Serialize;
use std::ops::ControlFlow;

/// Every layer's prediction and exit measure at every position of a text.
pub struct ExitTrace {
    pub n_layer: usize,
    pub measure: ExitMeasure,
    /// Per position: the next token.
    pub targets: Vec<u32>,
    /// `argmax[p * n_layer + l - 1]`, `value[...]`: layer `l`'s greedy token and measure.
    pub argmax: Vec<u32>,
    pub value: Vec<f32>,
    pub chunks: usize,
    pub ctx: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExitRow {
    /// `None`: the full model (every position leaves at the last layer).
    pub threshold: Option<f64>,
    /// Next-token accuracy of the early-exit predictions.
    pub accuracy: f64,
    /// How often the early-exit prediction is the last layer's.
    pub agreement: f64,
    pub mean_exit_layer: f64,
    /// `L / mean exit layer`.
    pub layer_speedup: f64,
}

/// Runs the model over consecutive chunks of `ctx` tokens of `ids` (at most `max_chunks`)
/// and records every layer's prediction and exit measure. `progress(done, total)` may cancel.
pub fn trace_exits(
    model: &Gpt2,
    ids: &[u32],
    ctx: usize,
    max_chunks: Option<usize>,
    measure: ExitMeasure,
    mut progress: impl FnMut(usize, usize) -> ControlFlow<()>,
) -> Result<ExitTrace> {
    let ranges = checked_chunks(model, ids, ctx, max_chunks, "evaluate")?;
    let n_layer = model.n_layer();
    let (d, vocab) = (model.config.n_embd, model.config.vocab_size);
    let mut t = ExitTrace { n_layer, measure, targets: vec![], argmax: vec![], value: vec![], chunks: ranges.len(), ctx };
    for (ci, r) in ranges.iter().enumerate() {
        let chunk = &ids[r.clone()];
        let n = chunk.len() - 1;
        let input = Tensor::from_vec(chunk.to_vec(), (1, chunk.len()), model.device())?;
        let hs = model.residuals(&input)?;
        let flat: Vec<Vec<f32>> = hs.iter().map(|h| Ok(h.narrow(1, 0, n)?.flatten_all()?.to_vec1::<f32>()?)).collect::<Result<_>>()?;
        let mut argmax = vec![0u32; n * n_layer];
        let mut value = vec![0f32; n * n_layer];
        for l in 1..=n_layer {
            let logits: Vec<f32> = model.head(&hs[l].narrow(1, 0, n)?)?.flatten_all()?.to_vec1()?;
            for p in 0..n {
                let row = &logits[p * vocab..(p + 1) * vocab];
                argmax[p * n_layer + l - 1] = crate::model::decoder::argmax(row);
                value[p * n_layer + l - 1] = match measure {
                    ExitMeasure::MaxProb => crate::kernels::max_prob(row),
                    ExitMeasure::Saturation => saturation(&flat[l][p * d..(p + 1) * d], &flat[l - 1][p * d..(p + 1) * d]) as f32,
                };
            }
        }
        t.targets.extend_from_slice(&chunk[1..]);
        t.argmax.extend(argmax);
        t.value.extend(value);
        if progress(ci + 1, ranges.len()).is_break() {
            bail!("cancelled")
        }
    }
    Ok(t)
}

impl ExitTrace {
    pub fn positions(&self) -> usize {
        self.targets.len()
    }

    /// Exit layer of position `p` at `threshold` (`None`: the last layer).
    pub fn exit_layer(&self, p: usize, threshold: Option<f64>) -> usize {
        let l_n = self.n_layer;
        match threshold {
            None => l_n,
            Some(th) => (1..l_n).find(|&l| self.value[p * l_n + l - 1] as f64 >= th).unwrap_or(l_n),
        }
    }

    /// The table row for one threshold (`None`: the full model).
    pub fn row(&self, threshold: Option<f64>) -> ExitRow {
        let l_n = self.n_layer;
        let n = self.positions();
        let (mut hits, mut agree, mut layers) = (0usize, 0usize, 0usize);
        for p in 0..n {
            let e = self.exit_layer(p, threshold);
            let pred = self.argmax[p * l_n + e - 1];
            hits += (pred == self.targets[p]) as usize;
            agree += (pred == self.argmax[p * l_n + l_n - 1]) as usize;
            layers += e;
        }
        let mean = layers as f64 / n as f64;
        ExitRow {
            threshold,
            accuracy: hits as f64 / n as f64,
            agreement: agree as f64 / n as f64,
            mean_exit_layer: mean,
            layer_speedup: l_n as f64 / mean,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_by_hand() {
        // Two positions, three layers: position 0 is sure at layer 1 (right there, wrong at
        // the top), position 1 only at layer 2.
        let t = ExitTrace {
            n_layer: 3,
            measure: ExitMeasure::MaxProb,
            targets: vec![5, 7],
            argmax: vec![5, 6, 6, 1, 7, 7],
            value: vec![0.9, 0.2, 0.3, 0.1, 0.6, 0.2],
            chunks: 1,
            ctx: 3,
        };
        let full = t.row(None);
        assert_eq!((full.accuracy, full.agreement, full.mean_exit_layer, full.layer_speedup), (0.5, 1.0, 3.0, 1.0));
        let r = t.row(Some(0.5));
        assert_eq!((t.exit_layer(0, Some(0.5)), t.exit_layer(1, Some(0.5))), (1, 2));
        assert_eq!((r.accuracy, r.agreement, r.mean_exit_layer, r.layer_speedup), (1.0, 0.5, 1.5, 2.0));
        // Nothing reaches 0.95: the full model's row.
        let r = t.row(Some(0.95));
        assert_eq!((r.accuracy, r.mean_exit_layer), (0.5, 3.0));
    }
}
