//! Picking the next token from a row of logits: the argmax, or nucleus (top-p) sampling
//! at a temperature from a seeded generator.
//!
//! Adapted from candle-transformers 0.11.1 `generation/mod.rs` (`LogitsProcessor`, MIT OR
//! Apache-2.0, the candle authors), the two strategies alignscope offers, with the same
//! arithmetic and the same generator (rand 0.9's `StdRng`), so a seed gives the tokens it
//! gave when that crate sampled them.

use candle_core::{D, DType, Result, Tensor};
use rand09::SeedableRng;
use rand09::distr::Distribution;

/// How a [`LogitsSampler`] picks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Strategy {
    ArgMax,
    /// Nucleus sampling: the most likely tokens until their probability reaches `p`
    /// (all of them when `p` is not in (0, 1)), at `temperature`.
    TopP {
        p: f64,
        temperature: f64,
    },
}

pub struct LogitsSampler {
    rng: rand09::rngs::StdRng,
    strategy: Strategy,
}

impl LogitsSampler {
    pub fn new(seed: u64, strategy: Strategy) -> Self {
        Self { rng: rand09::rngs::StdRng::seed_from_u64(seed), strategy }
    }

    /// The next token from `logits` (rank 1).
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32> {
        let logits = logits.to_dtype(DType::F32)?;
        match self.strategy {
            Strategy::ArgMax => logits.argmax(D::Minus1)?.to_scalar::<u32>(),
            Strategy::TopP { p, temperature } => {
                let mut prs = candle_nn::ops::softmax_last_dim(&(&logits / temperature)?)?.to_vec1::<f32>()?;
                if p <= 0.0 || p >= 1.0 { self.sample_multinomial(&prs) } else { self.sample_top_p(&mut prs, p as f32) }
            }
        }
    }

    fn sample_multinomial(&mut self, prs: &[f32]) -> Result<u32> {
        let distr = rand09::distr::weighted::WeightedIndex::new(prs).map_err(candle_core::Error::wrap)?;
        Ok(distr.sample(&mut self.rng) as u32)
    }

    /// Zeroes every token outside the nucleus, then samples from what is left.
    fn sample_top_p(&mut self, prs: &mut [f32], top_p: f32) -> Result<u32> {
        let mut by_prob = (0..prs.len()).collect::<Vec<_>>();
        by_prob.sort_by(|&i, &j| prs[j].total_cmp(&prs[i]));
        let mut cumsum = 0.;
        for &i in &by_prob {
            if cumsum >= top_p {
                prs[i] = 0.0;
            } else {
                cumsum += prs[i];
            }
        }
        self.sample_multinomial(prs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn argmax_picks_the_largest_logit() {
        let logits = Tensor::new(&[0.5f32, 3.0, -1.0, 2.9], &Device::Cpu).unwrap();
        assert_eq!(LogitsSampler::new(0, Strategy::ArgMax).sample(&logits).unwrap(), 1);
    }

    #[test]
    fn top_p_never_samples_outside_the_nucleus_and_a_seed_repeats() {
        // Probabilities about 0.64, 0.24, 0.09, 0.03: p = 0.8 keeps the first two.
        let logits = Tensor::new(&[3.0f32, 2.0, 1.0, 0.0], &Device::Cpu).unwrap();
        let draw = |seed| {
            let mut s = LogitsSampler::new(seed, Strategy::TopP { p: 0.8, temperature: 1.0 });
            (0..200).map(|_| s.sample(&logits).unwrap()).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert!(a.iter().all(|&t| t < 2), "{a:?}");
        assert!(a.contains(&0) && a.contains(&1));
        assert_eq!(a, draw(7));
    }
}
