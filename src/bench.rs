//! `alignscope bench`: speed of the engine on this machine. Inference: all-layer forward +
//! analysis of a 64-token prompt, and batch-1 greedy decode at full depth and at an exit
//! layer. Training: tokens/s of the standard and aligned losses. Run on the fixture model
//! and on GPT-2-sized random models (shapes only, no download).

use crate::analysis::generate::{GenerateOptions, Sampling, generate, generate_tensor};
use crate::analysis::inspect::{LensAt, analyze};
use crate::analysis::speculative::{
    DEFAULT_LOOKAHEAD, SpeculativeOptions, calibrate, default_int8_draft, generate_pipelined, generate_speculative, pipelining_pays,
};
use crate::model::{Checkpoint, Gpt2, Gpt2Config};
use crate::train::loss::{Objective, aligned_weights, standard_weights};
use crate::train::optim::AdamWConfig;
use crate::train::trainer::{Trainable, train_step};
use anyhow::{Result, bail};
use candle_core::{Device, Tensor};
use clap::Args;
use rand::{RngExt, SeedableRng};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod compare;
mod decode_profile;
mod device_profile;
mod gemm;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to measure: inference, decode (plain greedy vs self-speculative decoding on the
    /// shipped Austen pair), train, gemm (GFLOP/s of each matrix product of a CPU training
    /// step), tui (explorer frame times while scrubbing) or all (inference, decode and train)
    #[arg(long, default_value = "all")]
    pub what: String,
    /// Which models: fixture, gpt2 (random GPT-2-124M), or a checkpoint name/folder;
    /// repeatable (default: fixture and gpt2 for inference; fixture and the 12-layer d128
    /// vocab-4096 config for training)
    #[arg(long)]
    pub model: Vec<String>,
    /// Timed repetitions of the prompt analysis
    #[arg(long, default_value_t = 10)]
    pub reps: usize,
    /// Tokens per decode measurement
    #[arg(long, default_value_t = 32)]
    pub decode_tokens: usize,
    /// Timed training steps per loss
    #[arg(long, default_value_t = 5)]
    pub train_steps: usize,
    /// Training batch size (default: 16 for the 12-layer model, 8 for the fixture)
    #[arg(long)]
    pub batch: Option<usize>,
    /// Device: cpu, cuda, cuda:N or auto
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CUDA only: f32 matrix products on TF32 tensor cores (faster, ~1e-3 relative error
    /// per product; off by default)
    #[arg(long)]
    pub tf32: bool,
    /// Decode benchmark: draft layer (default: picked by calibration, as `--speculative auto`)
    #[arg(long)]
    pub draft_layer: Option<usize>,
    /// Decode benchmark: most tokens drafted per verification (default: picked by calibration)
    #[arg(long)]
    pub draft: Option<usize>,
    /// Decode benchmark: draft confidence below which drafting stops (default: picked by calibration)
    #[arg(long)]
    pub draft_confidence: Option<f64>,
    /// Decode benchmark: time pipelined speculative decoding (`generate --pipelined`: drafting
    /// and verification on two threads) instead of the one-thread rounds; its draft layer as
    /// `--speculative auto --pipelined` picks it unless --draft-layer is given
    #[arg(long)]
    pub pipelined: bool,
    /// Decode benchmark: time the 8-bit drafter (`generate --speculative int8`: the model's
    /// own 8-bit copy drafts, the model verifies; pipelined where a row keeps to one core)
    /// instead of a draft layer; with --draft-layer E, the blocks up to E run exactly
    #[arg(long)]
    pub int8: bool,
    /// Decode benchmark: speculative decoding drafts from the text's repeats where it can
    /// (`generate --lookup`), the draft layer elsewhere; calibrated so
    #[arg(long)]
    pub lookup: bool,
    /// Decode benchmark: also time every draft layer (with the calibrated or given draft length)
    #[arg(long)]
    pub sweep: bool,
    /// Print one JSON object with every measurement instead of text
    #[arg(long)]
    pub json: bool,
    /// Also show where a training step's time goes (embedding, layer norms, matmuls,
    /// attention, the shared head, the optimizer, data), how busy the cores are in each,
    /// and the matmuls' GFLOP/s, and where a decode step's time goes (each part of a block,
    /// the shared head); on a GPU, each phase of a training step timed alone (forward, one
    /// layer's head, the whole loss and backward, gradients, clipping, AdamW), as the host
    /// queues it and as the device finishes it
    #[arg(long)]
    pub profile: bool,
    /// Also run the PyTorch/transformers counterparts (scripts/pytorch_*_bench.py, with the
    /// PyTorch engine's Python) and print alignscope/PyTorch ratios from this one run
    #[arg(long)]
    pub compare_torch: bool,
}

fn project(p: &str) -> PathBuf {
    crate::paths::resolve_asset(Path::new(p))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Subject {
    name: String,
    label: String,
    model: Gpt2,
    tokenizer: tokenizers::Tokenizer,
}

fn subject(name: &str, device: &Device) -> Result<Subject> {
    match name {
        "fixture" => {
            let ck = Checkpoint::load_dir(&project("tests/fixtures/tiny-gpt2"), device)?;
            Ok(Subject { name: name.into(), label: "fixture (4 layers, d 64, vocab 512)".into(), model: ck.model, tokenizer: ck.tokenizer })
        }
        "gpt2" | "gpt2-124m" => {
            let cfg = Gpt2Config::preset("gpt2").expect("preset");
            let tok = crate::model::checkpoint::load_tokenizer(&project(crate::paths::GPT2_TOKENIZER_DIR))?;
            Ok(Subject {
                name: name.into(),
                label: "GPT-2-124M (random weights, 12 layers, d 768, vocab 50257)".into(),
                model: Gpt2::random(cfg, 0, device)?,
                tokenizer: tok,
            })
        }
        "austen12" => {
            let cfg = Gpt2Config::new(12, 128, 4, 4096, 256);
            let tok = crate::model::checkpoint::load_tokenizer(&project("tests/fixtures/tiny-gpt2"))?;
            Ok(Subject {
                name: name.into(),
                label: "12 layers, d 128, vocab 4096, ctx 256 (random)".into(),
                model: Gpt2::random(cfg, 0, device)?,
                tokenizer: tok,
            })
        }
        spec => {
            let ck = crate::train::recipe::open(spec, device)?;
            let c = &ck.model.config;
            Ok(Subject {
                name: spec.into(),
                label: format!("{spec} ({} layers, d {}, vocab {})", c.n_layer, c.n_embd, c.vocab_size),
                model: ck.model,
                tokenizer: ck.tokenizer,
            })
        }
    }
}

/// The first `n` tokens of the held-out text (repeated if the model's vocabulary is smaller).
fn prompt_ids(s: &Subject, n: usize) -> Result<Vec<u32>> {
    let text = crate::analysis::eval::read_text(&crate::paths::default_eval_file())?;
    let ids = s.tokenizer.encode(&text[..20_000], false).map_err(|e| anyhow::anyhow!("{e}"))?.get_ids().to_vec();
    let v = s.model.config.vocab_size as u32;
    Ok(ids.into_iter().map(|i| i % v).take(n).collect())
}

fn bench_inference(s: &Subject, a: &BenchArgs, say: &dyn Fn(&str)) -> Result<serde_json::Value> {
    let m = &s.model;
    let device = m.device();
    let n_layer = m.n_layer();
    let ids = prompt_ids(s, 64.min(m.config.n_positions))?;
    say(&s.label);
    analyze(m, &s.tokenizer, &ids, 5, LensAt::Last)?; // warm-up
    let mut times = vec![];
    for _ in 0..a.reps {
        let t = Instant::now();
        analyze(m, &s.tokenizer, &ids, 5, LensAt::Last)?;
        device.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let analysis_ms = 1e3 * median(times);
    say(&format!(
        "  analysis of a {}-token prompt (all {} layers: residuals, lens top-5, COS, CKA): median {analysis_ms:.1} ms over {} runs",
        ids.len(),
        n_layer,
        a.reps
    ));
    let mut decode = vec![];
    for exit in [n_layer, n_layer.div_ceil(2)] {
        let opts = GenerateOptions { exit_layer: exit, max_new_tokens: a.decode_tokens, sampling: Sampling::Greedy, eos: None };
        let prompt = &ids[..8.min(ids.len())];
        generate(m, prompt, &GenerateOptions { max_new_tokens: 4, ..opts.clone() }, |_| ControlFlow::Continue(()))?;
        // Time only the decode steps: from the first generated token to the last (each
        // token is read back to the host to be chosen, so the device is idle at both ends).
        let mut first = None;
        let mut count = 0usize;
        generate(m, prompt, &opts, |_| {
            count += 1;
            if first.is_none() {
                first = Some(Instant::now());
            }
            ControlFlow::Continue(())
        })?;
        if count < 2 {
            bail!("--decode-tokens must be at least 2 to time a decode step")
        }
        let secs = first.expect("tokens").elapsed().as_secs_f64();
        let rate = (count - 1) as f64 / secs;
        let weights_mb = exit_weight_bytes(m, exit) as f64 / 1e6;
        say(&format!(
            "  greedy decode, batch 1, exit layer {exit}/{n_layer}: {rate:.1} tokens/s ({:.1} ms/token; {:.0} MB of weights read per token → {:.1} GB/s)",
            1e3 / rate,
            weights_mb,
            weights_mb * rate / 1e3
        ));
        decode.push(serde_json::json!({
            "exit_layer": exit,
            "tokens_per_sec": rate,
            "ms_per_token": 1e3 / rate,
            "weights_mb_per_token": weights_mb,
            "gb_per_sec": weights_mb * rate / 1e3,
            "tokens": count - 1,
        }));
    }
    let profile = match a.profile {
        true => decode_profile::profile(m, &ids[..8.min(ids.len())], a.decode_tokens)?,
        false => None,
    };
    if let Some(p) = &profile {
        decode_profile::print(p, say);
    }
    Ok(serde_json::json!({
        "model": s.name,
        "label": s.label,
        "layers": n_layer,
        "prompt_tokens": ids.len(),
        "analysis_ms_median": analysis_ms,
        "analysis_runs": a.reps,
        "decode": decode,
        "decode_profile": profile,
    }))
}

/// Bytes of f32 weights one decode step reads when exiting at `exit`.
fn exit_weight_bytes(m: &Gpt2, exit: usize) -> usize {
    let c = &m.config;
    let per_block = 12 * c.n_embd * c.n_embd + 13 * c.n_embd; // c_attn, c_proj, c_fc, c_proj, norms, biases (n_inner = 4d)
    4 * exit * per_block + crate::model::decoder::greedy_head_bytes(c.vocab_size, c.n_embd)
}

fn bench_train(s: Subject, a: &BenchArgs, device: &Device, batch: usize, say: &dyn Fn(&str)) -> Result<serde_json::Value> {
    let n_layer = s.model.n_layer();
    let ctx = s.model.config.n_positions.min(256);
    let vocab = s.model.config.vocab_size as u32;
    say(&format!("{}: training, batch {batch} x ctx {ctx}", s.label));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut losses = vec![];
    for (name, weights) in [("standard", standard_weights(n_layer)), ("aligned", aligned_weights(n_layer))] {
        let t = Trainable::new(s.model.clone())?;
        let mut opt = t.optimizer(AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }, true)?;
        // Per-layer monitoring of the standard loss as in real runs.
        let obj = Objective { layer_weights: weights, cos_beta: 0.0, monitor_positions: crate::train::job::MONITOR_POSITIONS };
        let mut batch_data = || -> Result<Vec<(Tensor, Vec<u32>)>> {
            let ids: Vec<u32> = (0..batch * (ctx + 1)).map(|_| rng.random_range(0..vocab)).collect();
            let (mut x, mut y) = (vec![], vec![]);
            for r in ids.chunks(ctx + 1) {
                x.extend_from_slice(&r[..ctx]);
                y.extend_from_slice(&r[1..]);
            }
            Ok(vec![(Tensor::from_vec(x, (batch, ctx), device)?, y)])
        };
        let w = Instant::now();
        train_step(&t, &mut opt, &batch_data()?, &obj, 1e-4, 1.0)?; // warm-up
        device.synchronize()?;
        // At least --train-steps, and at least ~3 s of steps so small models time well.
        let steps = a.train_steps.max((3.0 / w.elapsed().as_secs_f64().max(1e-3)) as usize);
        reset_profile(&t);
        let (w0, c0) = (Instant::now(), crate::util::process_cpu_seconds());
        let mut data_secs = 0.0;
        for _ in 0..steps {
            let d0 = Instant::now();
            let batch = batch_data()?;
            data_secs += d0.elapsed().as_secs_f64();
            train_step(&t, &mut opt, &batch, &obj, 1e-4, 1.0)?;
        }
        // The last optimizer update may still be queued on the device.
        device.synchronize()?;
        let wall = w0.elapsed().as_secs_f64();
        let cpu = match (c0, crate::util::process_cpu_seconds()) {
            (Some(a), Some(b)) => Some((b - a) / steps as f64),
            _ => None,
        };
        // Of the cores the threads may use: CPU seconds of all threads over wall seconds x
        // threads, the whole step (what `--profile` gives per section).
        let busy = cpu.map(|c| c / (wall / steps as f64 * rayon::current_num_threads() as f64));
        let cpu_text = match (cpu, busy) {
            (Some(c), Some(b)) => format!("{c:.2} s/step CPU, cores {:.0}% busy", 100.0 * b),
            _ => "CPU time n/a".to_string(),
        };
        let toks = (steps * batch * ctx) as f64;
        say(&format!(
            "  {name:>8} loss: {:.0} tokens/s ({:.2} s/step wall, {cpu_text} over {steps} steps)",
            toks / wall,
            wall / steps as f64
        ));
        let profile = step_profile(&t, steps, wall, data_secs);
        // The head beside each block's backward pass is timed as one section; steps with
        // the two in turn give each section alone (the same result, a little slower).
        let mut profile_in_turn = serde_json::Value::Null;
        if a.profile {
            print_profile(&profile, say);
            if let Some((steps, wall)) = steps_in_turn(&t, &mut opt, &mut batch_data, &obj)? {
                say(&format!("    each section alone (the head and the block backward in turn, {steps} steps):"));
                profile_in_turn = step_profile(&t, steps, wall, 0.0);
                print_profile(&profile_in_turn, say);
            }
        }
        // Off the CPU's fused step (a GPU), the phases of a step, each timed alone.
        let device_profile = match a.profile && !crate::ops::cpu_fast_path(device) {
            true => {
                let batch = batch_data()?.remove(0);
                let p = device_profile::profile(&t, &mut opt, &batch, &obj, device, 5)?;
                device_profile::print(&p, say);
                Some(p)
            }
            false => None,
        };
        losses.push(serde_json::json!({
            "profile": profile,
            "profile_in_turn": profile_in_turn,
            "device_profile": device_profile,
            "loss": name,
            "tokens_per_sec": toks / wall,
            "wall_secs_per_step": wall / steps as f64,
            "cpu_secs_per_step": cpu,
            "cores_busy": busy,
            "steps": steps,
        }));
    }
    Ok(serde_json::json!({
        "model": s.name,
        "label": s.label,
        "layers": n_layer,
        "n_embd": s.model.config.n_embd,
        "n_head": s.model.config.n_head,
        "vocab": s.model.config.vocab_size,
        "batch": batch,
        "ctx": ctx,
        "losses": losses,
    }))
}

pub fn run(a: BenchArgs) -> Result<()> {
    let device = crate::model::device::parse_device(&a.device)?;
    crate::model::device::set_tf32(&device, a.tf32)?;
    let threads = candle_core::utils::get_num_threads();
    let what = a.what.as_str();
    if !["all", "inference", "decode", "train", "tui", "gemm"].contains(&what) {
        bail!("--what must be inference, decode, train, gemm, tui or all")
    }
    for (name, n) in
        [("--reps", a.reps), ("--decode-tokens", a.decode_tokens), ("--train-steps", a.train_steps), ("--batch", a.batch.unwrap_or(1))]
    {
        if n == 0 {
            bail!("{name} must be at least 1")
        }
    }
    if what == "tui" {
        return bench_tui(&a);
    }
    let quiet = a.json;
    let say = |line: &str| {
        if !quiet {
            println!("{line}");
        }
    };
    let device_text = crate::model::device::describe_device(&device);
    let matmul = crate::kernels::blas::BACKEND;
    say(&format!("alignscope bench · {} · {threads} threads · device {device_text} · matrix products: {matmul}", std::env::consts::ARCH));
    let mut inference = vec![];
    let mut decoding = vec![];
    let mut training = vec![];
    if what == "gemm" {
        let products = gemm::run(threads, a.compare_torch, &say)?;
        if a.json {
            println!(
                "{}",
                serde_json::json!({ "arch": std::env::consts::ARCH, "cpu_threads": threads, "matmul": matmul, "gemm": products })
            );
        }
        return Ok(());
    }
    if what == "inference" || what == "all" {
        let models = if a.model.is_empty() { vec!["fixture".to_string(), "gpt2".to_string()] } else { a.model.clone() };
        for m in &models {
            inference.push(bench_inference(&subject(m, &device)?, &a, &say)?);
        }
    }
    if what == "decode" || what == "all" {
        let models = if a.model.is_empty() { vec!["austen-aligned".to_string(), "austen-standard".to_string()] } else { a.model.clone() };
        say(&format!(
            "decode: plain greedy vs self-speculative decoding, {} prompts x {} new tokens (the same for both), wall clock (each prompt both ways in turn), median of {} rounds",
            DECODE_PROMPTS,
            a.decode_tokens,
            a.reps.clamp(3, 9)
        ));
        for m in &models {
            decoding.push(bench_decode(&subject(m, &device)?, &a, &say)?);
        }
    }
    if what == "train" || what == "all" {
        let models = if a.model.is_empty() { vec!["fixture".to_string(), "austen12".to_string()] } else { a.model.clone() };
        for m in &models {
            let s = subject(m, &device)?;
            let batch = a.batch.unwrap_or(if s.model.config.n_embd >= 128 { 16 } else { 8 });
            training.push(bench_train(s, &a, &device, batch, &say)?);
        }
    }
    // Decoding batch 1 reads every weight once per token: memory bandwidth is its ceiling.
    let bandwidth = (what == "inference" || what == "all").then(|| {
        let bw = compare::read_bandwidth();
        say(&format!("memory read bandwidth: {bw:.1} GB/s (parallel sum over 512 MiB, {threads} threads, best of 5)"));
        bw
    });
    let torch = match a.compare_torch {
        true => Some(compare::torch(threads, a.decode_tokens, &inference, &training, bandwidth, &say)?),
        false => None,
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "arch": std::env::consts::ARCH,
                "read_bandwidth_gb_per_sec": bandwidth,
                "torch": torch,
                "cpu_threads": threads,
                "matmul": matmul,
                "device": crate::model::device::device_name(&device),
                "device_detail": device_text,
                "tf32": a.tf32,
                "inference": inference,
                "decode": decoding,
                "training": training,
            })
        );
    }
    Ok(())
}

/// Prompts of the decode benchmark: this many, of `DECODE_PROMPT_LEN` tokens, spread over the
/// held-out text.
const DECODE_PROMPTS: usize = 8;
const DECODE_PROMPT_LEN: usize = 24;

/// Plain greedy decoding vs self-speculative decoding on the same prompts and lengths.
fn bench_decode(s: &Subject, a: &BenchArgs, say: &dyn Fn(&str)) -> Result<serde_json::Value> {
    let m = &s.model;
    let n_layer = m.n_layer();
    let ids = prompt_ids(s, usize::MAX)?;
    let room = m.config.n_positions.saturating_sub(a.decode_tokens);
    let len = DECODE_PROMPT_LEN.min(room.max(1));
    let step = (ids.len() - len) / (DECODE_PROMPTS + 1);
    // The calibration prompt lies between the start of the text and the first timed prompt.
    let calib: Vec<u32> = ids[step / 2..step / 2 + len].to_vec();
    let prompts: Vec<Vec<u32>> = (1..=DECODE_PROMPTS).map(|i| ids[i * step..i * step + len].to_vec()).collect();
    say(&s.label);
    let mut calibration = serde_json::Value::Null;
    let (e, k, gamma) = match (a.draft_layer, a.draft, a.draft_confidence) {
        (e, k, _) if a.int8 => (e.unwrap_or(0), k.unwrap_or(default_int8_draft(int8_pipelined(a, m))), 0.0),
        (Some(e), k, _) if a.pipelined => (e, k.unwrap_or(DEFAULT_LOOKAHEAD), 0.0),
        (Some(e), Some(k), Some(g)) => (e, k, g),
        (e, k, g) => {
            let c = calibrate(m, &calib, CALIBRATION_TOKENS, Sampling::Greedy.greedy_tokens(a.decode_tokens), a.lookup)?;
            say(&format!(
                "  calibration ({} positions): draft layer {}, up to {} drafts, draft confidence {} (predicted acceptance {}, speedup {:.2}x); block {:.3} ms, head {:.3} ms on 1 row, {:.1}x and {:.1}x that on {} rows{}; agreement with the last layer by layer: {}",
                c.positions,
                c.draft_layer,
                c.draft_len,
                c.draft_confidence,
                crate::util::percent(c.predicted_acceptance),
                c.predicted_speedup,
                c.block_ms[0],
                c.head_ms[0],
                c.block_ms[c.block_ms.len() - 1] / c.block_ms[0],
                c.head_ms[c.head_ms.len() - 1] / c.head_ms[0],
                c.block_ms.len(),
                c.greedy_ms.map_or(String::new(), |g| format!("; a greedy token (the drafts' and plain greedy's head) {g:.3} ms")),
                c.agreement[1..n_layer]
                    .iter()
                    .map(|v| v.map_or("n/a".into(), |v| format!("{:.0}%", 100.0 * v)))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            calibration = serde_json::json!({
                "positions": c.positions,
                "draft_layer": c.draft_layer,
                "draft": c.draft_len,
                "draft_confidence": c.draft_confidence,
                "predicted_acceptance": c.predicted_acceptance,
                "predicted_speedup": c.predicted_speedup,
                "agreement": c.agreement,
                "lookup_agreement": c.lookup_agreement,
                "lookup_share": c.lookup_share,
                "block_ms_by_rows": c.block_ms,
                "head_ms_by_rows": c.head_ms,
                "greedy_ms": c.greedy_ms,
            });
            say(&format!("  pipelined (--pipelined): draft layer {}, predicted speedup {:.2}x", c.pipelined_layer, c.pipelined_speedup));
            calibration["pipelined_layer"] = c.pipelined_layer.into();
            calibration["pipelined_speedup"] = c.pipelined_speedup.into();
            match a.pipelined {
                true => (e.unwrap_or(c.pipelined_layer), k.unwrap_or(DEFAULT_LOOKAHEAD), 0.0),
                false => (e.unwrap_or(c.draft_layer), k.unwrap_or(c.draft_len), g.unwrap_or(c.draft_confidence)),
            }
        }
    };
    let layers: Vec<usize> = if a.sweep { (1..n_layer).collect() } else { vec![e] };
    let mut speculative = vec![];
    for e in layers {
        speculative.push(decode_pair(m, &prompts, e, k, gamma, a, say)?);
    }
    // What plain decoding cost before the CPU engine: the candle tensor path, one round.
    let opts = GenerateOptions { exit_layer: n_layer, max_new_tokens: a.decode_tokens, sampling: Sampling::Greedy, eos: None };
    let run = |f: &dyn Fn(&[u32]) -> Result<Vec<u32>>| -> Result<(f64, Vec<Vec<u32>>)> {
        let t = Instant::now();
        let outs = prompts.iter().map(|p| f(p)).collect::<Result<Vec<_>>>()?;
        Ok((t.elapsed().as_secs_f64(), outs))
    };
    let tensor = |p: &[u32]| Ok(generate_tensor(m, p, &opts, |_| ControlFlow::Continue(()))?.ids);
    let engine = |p: &[u32]| Ok(generate(m, p, &opts, |_| ControlFlow::Continue(()))?.ids);
    let (t_tensor, out_tensor) = run(&tensor)?;
    let (t_engine, out_engine) = run(&engine)?;
    let tokens: usize = out_engine.iter().map(Vec::len).sum();
    say(&format!(
        "  plain greedy on candle tensors (the path before the CPU engine): {:.0} tokens/s vs the engine's {:.0} tokens/s in the same run ({:.1}x); the same tokens: {}",
        tokens as f64 / t_tensor,
        tokens as f64 / t_engine,
        t_tensor / t_engine,
        if out_tensor == out_engine { "yes" } else { "no (rounding differs between the paths)" }
    ));
    Ok(serde_json::json!({
        "model": s.name,
        "label": s.label,
        "layers": n_layer,
        "prompts": prompts.len(),
        "prompt_tokens": len,
        "new_tokens": a.decode_tokens,
        "calibration": calibration,
        "speculative": speculative,
        "tensor_path": {
            "tok_per_s": tokens as f64 / t_tensor,
            "engine_tok_per_s": tokens as f64 / t_engine,
            "engine_speedup": t_tensor / t_engine,
            "same_tokens": out_tensor == out_engine,
        },
    }))
}

/// Whether the 8-bit drafter (`--int8`) runs pipelined: asked for, or where a row keeps to
/// one core, as `generate --speculative int8` runs it.
fn int8_pipelined(a: &BenchArgs, m: &Gpt2) -> bool {
    a.int8 && (a.pipelined || pipelining_pays(m))
}

/// Tokens of greedy continuation the decode benchmark calibrates on.
const CALIBRATION_TOKENS: usize = 128;

/// One pass over the decode benchmark's prompts.
#[derive(Default)]
struct DecodeRun {
    secs: f64,
    outs: Vec<Vec<u32>>,
    drafted: usize,
    accepted: usize,
    /// Of those, the drafts from the text's repeats (`--lookup`).
    lookup_drafted: usize,
    lookup_accepted: usize,
    passes: usize,
}

/// Times plain greedy and speculative decoding over the prompts, each prompt both ways in
/// turn.
fn decode_pair(
    m: &Gpt2,
    prompts: &[Vec<u32>],
    e: usize,
    k: usize,
    gamma: f64,
    a: &BenchArgs,
    say: &dyn Fn(&str),
) -> Result<serde_json::Value> {
    let plain_opts = GenerateOptions { exit_layer: m.n_layer(), max_new_tokens: a.decode_tokens, sampling: Sampling::Greedy, eos: None };
    let spec_opts = SpeculativeOptions {
        draft_layer: e,
        draft_len: k,
        draft_confidence: gamma,
        max_new_tokens: a.decode_tokens,
        sampling: Sampling::Greedy,
        eos: None,
        lookup: a.lookup,
        int8: a.int8,
    };
    let pipelined = a.pipelined || int8_pipelined(a, m);
    let plain_one = |p: &[u32], r: &mut DecodeRun| -> Result<()> {
        let t = Instant::now();
        let ids = generate(m, p, &plain_opts, |_| ControlFlow::Continue(()))?.ids;
        r.secs += t.elapsed().as_secs_f64();
        r.outs.push(ids);
        Ok(())
    };
    let spec_one = |p: &[u32], r: &mut DecodeRun| -> Result<()> {
        let t = Instant::now();
        let g = match pipelined {
            true => generate_pipelined(m, p, &spec_opts, |_, _, _| ControlFlow::Continue(()))?,
            false => generate_speculative(m, p, &spec_opts, |_, _, _| ControlFlow::Continue(()))?,
        };
        r.secs += t.elapsed().as_secs_f64();
        r.drafted += g.drafted;
        r.accepted += g.accepted;
        r.lookup_drafted += g.lookup_drafted;
        r.lookup_accepted += g.lookup_accepted;
        r.passes += g.forward_passes;
        r.outs.push(g.ids);
        Ok(())
    };
    // A round decodes each prompt both ways back to back, which one first alternating from
    // prompt to prompt and round to round: this machine's speed moves within seconds, and
    // a round's two halves timed one after the other saw different machines.
    let round = |n: usize| -> Result<(DecodeRun, DecodeRun)> {
        let (mut plain, mut spec) = (DecodeRun::default(), DecodeRun::default());
        for (i, p) in prompts.iter().enumerate() {
            if (i + n).is_multiple_of(2) {
                plain_one(p, &mut plain)?;
                spec_one(p, &mut spec)?;
            } else {
                spec_one(p, &mut spec)?;
                plain_one(p, &mut plain)?;
            }
        }
        Ok((plain, spec))
    };
    round(0)?; // warm-up
    let rounds = a.reps.clamp(3, 9);
    let (mut tp, mut ts, mut ratios) = (vec![], vec![], vec![]);
    let mut same = true;
    let (mut tokens, mut last) = (0, DecodeRun::default());
    for n in 0..rounds {
        let (p, s) = round(n)?;
        same &= p.outs == s.outs;
        tokens = p.outs.iter().map(Vec::len).sum();
        tp.push(p.secs);
        ts.push(s.secs);
        ratios.push(p.secs / s.secs);
        last = s;
    }
    let DecodeRun { drafted, accepted, lookup_drafted, lookup_accepted, passes, .. } = last;
    let (p, s) = (median(tp), median(ts));
    // Acceptance is undefined when nothing was drafted.
    let rate = |a: usize, d: usize| (d > 0).then(|| a as f64 / d as f64);
    let pct = crate::util::percent;
    let acceptance = rate(accepted, drafted);
    let (lookup_acceptance, layer_acceptance) =
        (rate(lookup_accepted, lookup_drafted), rate(accepted - lookup_accepted, drafted - lookup_drafted));
    let drafter = match a.int8 {
        true => "the 8-bit copy".to_string(),
        false => format!("layer {e}"),
    };
    let sources = match a.lookup {
        true => format!(
            "; from repeats {} ({lookup_accepted}/{lookup_drafted}), from {drafter} {} ({}/{})",
            pct(lookup_acceptance),
            pct(layer_acceptance),
            accepted - lookup_accepted,
            drafted - lookup_drafted
        ),
        false => String::new(),
    };
    say(&format!(
        "  plain greedy: {:.0} tokens/s | {}: {:.0} tokens/s, acceptance {} ({accepted}/{drafted}{sources}), {:.2} tokens per full-depth pass | speedup {:.2}x (median of per-round ratios {:.2}x); output identical: {}",
        tokens as f64 / p,
        match (pipelined, a.lookup) {
            _ if a.int8 => format!(
                "{}speculative, the 8-bit copy drafting{}{}, up to {k} drafts{}",
                if pipelined { "pipelined " } else { "" },
                if e > 0 { format!(" after the model's blocks 1..{e}") } else { String::new() },
                if a.lookup && pipelined {
                    " and checking the repeats' drafts"
                } else if a.lookup {
                    " where the repeats do not"
                } else {
                    ""
                },
                if pipelined { " ahead" } else { "" }
            ),
            (true, false) => format!("pipelined speculative, draft layer {e}, up to {k} drafts ahead"),
            (true, true) => format!("pipelined speculative, repeats or draft layer {e}, up to {k} drafts ahead"),
            (false, false) => format!("speculative, draft layer {e}, up to {k} drafts, confidence {gamma}"),
            (false, true) => format!("speculative, repeats or draft layer {e}, up to {k} drafts, confidence {gamma}"),
        },
        tokens as f64 / s,
        pct(acceptance),
        tokens as f64 / passes as f64,
        p / s,
        median(ratios.clone()),
        if same { "yes" } else { "NO" }
    ));
    Ok(serde_json::json!({
        "pipelined": pipelined,
        "int8": a.int8,
        "draft_layer": e,
        "draft": k,
        "draft_confidence": gamma,
        "rounds": rounds,
        "tokens": tokens,
        "plain_tok_per_s": tokens as f64 / p,
        "speculative_tok_per_s": tokens as f64 / s,
        "drafted": drafted,
        "accepted": accepted,
        "acceptance": acceptance,
        "lookup": a.lookup,
        "lookup_drafted": a.lookup.then_some(lookup_drafted),
        "lookup_accepted": a.lookup.then_some(lookup_accepted),
        "lookup_acceptance": lookup_acceptance,
        "layer_acceptance": layer_acceptance,
        "forward_passes": passes,
        "speedup": p / s,
        "speedup_median_ratio": median(ratios),
        "identical": same,
    }))
}

/// Frame times of the explorer while scrubbing layers, per view, on the shipped pair at
/// 160×50: key handling plus a full redraw, which must stay well inside a 60 Hz frame
/// (16 ms). The state is driven synchronously, so only the UI thread's work is timed.
fn bench_tui(a: &BenchArgs) -> Result<()> {
    use crate::tui::app::{AppOptions, DEFAULT_PROMPT};
    use crate::tui::headless::Headless;
    use crate::tui::theme::{ColorDepth, Theme};
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    let device = Device::Cpu;
    let pair = vec![Checkpoint::open(crate::paths::DEFAULT_CKPT, &device)?, Checkpoint::open(crate::paths::DEFAULT_COMPARE, &device)?];
    println!("explorer frames while scrubbing: {} vs {}, 160×50, {} frames per view", pair[0].name, pair[1].name, a.reps.max(20));
    let opts = AppOptions { prompt: DEFAULT_PROMPT.to_string(), eval_data: crate::paths::default_eval_file(), device: "cpu".into() };
    let mut h = Headless::start(pair, opts);
    let theme = Theme::new(ColorDepth::Indexed256);
    let mut term = ratatui::Terminal::new(ratatui::backend::TestBackend::new(160, 50))?;
    for view in crate::tui::view::View::ALL {
        h.press(KeyCode::Char(char::from(b'1' + view.index() as u8)));
        h.settle();
        let mut times = Vec::new();
        for i in 0..a.reps.max(20) {
            let key = if i % 10 < 5 { KeyCode::Left } else { KeyCode::Right };
            let t0 = Instant::now();
            let fx = h.app.handle_key(KeyEvent::new(key, KeyModifiers::NONE), h.now);
            term.draw(|f| crate::tui::ui::render(&h.app, &theme, f))?;
            times.push(t0.elapsed().as_secs_f64());
            h.run(fx);
            h.settle();
        }
        let max = times.iter().copied().fold(0.0, f64::max);
        println!("  {:<14} median {:.2} ms, max {:.2} ms", view.title(), 1e3 * median(times), 1e3 * max);
    }
    Ok(())
}

/// Steps with the shared head and each block's backward pass in turn, their profile in
/// the workspace: (steps, wall seconds), or `None` off the CPU's step.
fn steps_in_turn(
    t: &Trainable,
    opt: &mut crate::train::optim::AdamW,
    batch_data: &mut dyn FnMut() -> Result<Vec<(Tensor, Vec<u32>)>>,
    obj: &Objective,
) -> Result<Option<(usize, f64)>> {
    let set = |on: bool| t.workspace.lock().map(|mut ws| ws.head_in_turn = on).is_ok();
    if !crate::train::cpu_step::supports(&t.model) || !set(true) {
        return Ok(None);
    }
    reset_profile(t);
    const STEPS: usize = 3;
    let mut wall = 0.0;
    let mut run = || -> Result<()> {
        for _ in 0..STEPS {
            let batch = batch_data()?;
            let w = Instant::now();
            train_step(t, opt, &batch, obj, 1e-4, 1.0)?;
            wall += w.elapsed().as_secs_f64();
        }
        Ok(())
    };
    let done = run();
    set(false);
    done.map(|()| Some((STEPS, wall)))
}

fn reset_profile(t: &Trainable) {
    if let Ok(mut ws) = t.workspace.lock() {
        ws.profile = Default::default();
    }
}

/// Seconds per step in each section of the CPU training step (empty on other devices),
/// with the data and what none of the sections saw.
fn step_profile(t: &Trainable, steps: usize, wall: f64, data_secs: f64) -> serde_json::Value {
    use crate::train::cpu_step::Section;
    let Ok(ws) = t.workspace.lock() else { return serde_json::Value::Null };
    let p = &ws.profile;
    if p.total().is_zero() {
        return serde_json::Value::Null;
    }
    let per = |d: std::time::Duration| d.as_secs_f64() / steps as f64;
    // Busy: CPU seconds of all threads over (wall seconds x threads) while the section ran.
    let threads = rayon::current_num_threads() as f64;
    let busy = |s: Section| p.cpu(s).filter(|_| !p.get(s).is_zero()).map(|c| c / (p.get(s).as_secs_f64() * threads));
    let mut sections: Vec<serde_json::Value> = Section::ALL
        .iter()
        .map(|&s| serde_json::json!({ "section": s.name(), "secs_per_step": per(p.get(s)), "cores_busy": busy(s) }))
        .collect();
    sections.push(serde_json::json!({ "section": "data", "secs_per_step": data_secs / steps as f64 }));
    let rest = wall / steps as f64 - per(p.total()) - data_secs / steps as f64;
    sections.push(serde_json::json!({ "section": "other", "secs_per_step": rest }));
    let gflops = |fmas: u64, d: std::time::Duration| if d.is_zero() { None } else { Some(2.0 * fmas as f64 / d.as_secs_f64() / 1e9) };
    serde_json::json!({
        "wall_secs_per_step": wall / steps as f64,
        "sections": sections,
        "trunk_matmul_gflops": gflops(p.trunk_fmas, p.get(Section::TrunkMatmul)),
        "head_matmul_gflops": gflops(p.head_fmas, p.get(Section::HeadMatmul)),
    })
}

fn print_profile(p: &serde_json::Value, say: &dyn Fn(&str)) {
    let Some(sections) = p["sections"].as_array() else { return };
    let wall = p["wall_secs_per_step"].as_f64().unwrap_or(f64::NAN);
    for s in sections {
        let secs = s["secs_per_step"].as_f64().unwrap_or(f64::NAN);
        if secs == 0.0 {
            // A section this kind of step has not run (ce-reg's cosine term; the head
            // beside the block backward when they ran in turn).
            continue;
        }
        let busy = s["cores_busy"].as_f64().map(|b| format!("   cores {:>3.0}% busy", 100.0 * b)).unwrap_or_default();
        say(&format!("      {:<20} {:>8.1} ms/step {:>5.1}%{busy}", s["section"].as_str().unwrap_or("?"), 1e3 * secs, 100.0 * secs / wall));
    }
    let g = |k: &str| p[k].as_f64().map(|v| format!("{v:.1}")).unwrap_or_else(|| "n/a".into());
    say(&format!("      matmul GFLOP/s: trunk {}, shared head {}", g("trunk_matmul_gflops"), g("head_matmul_gflops")));
}
