//! `bench --what inference --profile`: where a batch-1 decode step's time goes on the CPU
//! decoder — each part of a block and the shared head, with the bandwidth each part reaches
//! on the weights it reads (decoding one row is bound by reading the weights).

use crate::model::Gpt2;
use crate::model::decoder::{self, BlockPart, BlockProfile, Decoder};
use anyhow::Result;
use serde_json::{Value, json};
use std::time::Instant;

/// Greedy-decodes `tokens` tokens after `prompt` at full depth and returns the time per token
/// of each part, as JSON; `None` when the CPU decoder does not run this model.
pub fn profile(m: &Gpt2, prompt: &[u32], tokens: usize) -> Result<Option<Value>> {
    if !decoder::supported(m) || tokens == 0 {
        return Ok(None);
    }
    let n_layer = m.n_layer();
    decoder::with_cpu_model(m, |cm| {
        let mut dec = Decoder::new(cm);
        let mut x = dec.embed(prompt, 0)?;
        dec.blocks(0, n_layer, &mut x, 0)?;
        // Also makes the classifier's 8-bit copy, if it has one, before timing.
        let mut next = dec.greedy_token(&x[(prompt.len() - 1) * cm.d..]);
        dec.profile = Some(BlockProfile::default());
        let (mut blocks, mut head, mut rest) = (0.0, 0.0, 0.0);
        let started = Instant::now();
        for i in 0..tokens {
            let pos = prompt.len() + i;
            let t0 = Instant::now();
            let mut x = dec.embed(&[next], pos)?;
            let t1 = Instant::now();
            dec.blocks(0, n_layer, &mut x, pos)?;
            let t2 = Instant::now();
            next = dec.greedy_token(&x);
            let t3 = Instant::now();
            rest += (t1 - t0).as_secs_f64();
            blocks += (t2 - t1).as_secs_f64();
            head += (t3 - t2).as_secs_f64();
        }
        let wall = started.elapsed().as_secs_f64();
        let p = dec.profile.take().expect("profiling");
        let per = |secs: f64| secs / tokens as f64;
        let gbps = |bytes: usize, secs: f64| (secs > 0.0 && bytes > 0).then(|| bytes as f64 / secs / 1e9);
        let mut parts: Vec<Value> = BlockPart::ALL
            .iter()
            .enumerate()
            .map(|(i, part)| {
                json!({
                    "part": part.name(),
                    "ms_per_token": 1e3 * per(p.secs[i]),
                    "share": p.secs[i] / wall,
                    "weight_gb_per_sec": gbps(p.weight_bytes[i], p.secs[i]),
                })
            })
            .collect();
        let untimed = blocks - p.secs.iter().sum::<f64>();
        parts
            .push(json!({"part": "between parts", "ms_per_token": 1e3 * per(untimed), "share": untimed / wall, "weight_gb_per_sec": null}));
        let head_bytes = decoder::greedy_head_bytes(cm.vocab, cm.d) + 4 * 2 * cm.d;
        parts.push(json!({
            "part": "shared head (ln_f, lm_head, argmax)",
            "ms_per_token": 1e3 * per(head),
            "share": head / wall,
            "weight_gb_per_sec": gbps(head_bytes * tokens, head),
        }));
        parts.push(json!({"part": "embedding, loop", "ms_per_token": 1e3 * per(rest), "share": rest / wall, "weight_gb_per_sec": null}));
        let block_bytes: usize = p.weight_bytes.iter().sum();
        Ok(Some(json!({
            "tokens": tokens,
            "ms_per_token": 1e3 * per(wall),
            "parts": parts,
            "weight_gb_per_sec": (block_bytes + head_bytes * tokens) as f64 / wall / 1e9,
        })))
    })
}

/// The profile as lines of text.
pub fn print(p: &Value, say: &dyn Fn(&str)) {
    say(&format!(
        "    where a decode step's time goes ({} tokens, {:.1} ms/token, {:.1} GB/s of weights overall):",
        p["tokens"],
        p["ms_per_token"].as_f64().unwrap_or(f64::NAN),
        p["weight_gb_per_sec"].as_f64().unwrap_or(f64::NAN)
    ));
    for part in p["parts"].as_array().into_iter().flatten() {
        let bw = part["weight_gb_per_sec"].as_f64().map(|v| format!("{v:>5.1} GB/s")).unwrap_or_default();
        say(&format!(
            "      {:<28} {:>6.2} ms/token {:>5.1}%  {bw}",
            part["part"].as_str().unwrap_or("?"),
            part["ms_per_token"].as_f64().unwrap_or(f64::NAN),
            100.0 * part["share"].as_f64().unwrap_or(f64::NAN)
        ));
    }
}
