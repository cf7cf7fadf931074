//! The shipped Austen checkpoints: HF-format folders under 20 MB that keep their run, and
//! the paper's claims on the held-out persuasion.txt (standard vs aligned fine-tuning).

mod common;
use alignscope::analysis::eval::{EvalOptions, EvalReport, evaluate};
use alignscope::model::Checkpoint;
use candle_core::Device;
use common::*;
use std::ops::ControlFlow;
use std::path::PathBuf;

fn ckpt(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("checkpoints").join(name)
}

#[test]
fn folders_are_hf_checkpoints_under_20_mb_with_their_run() {
    for name in ["austen-base", "austen-standard", "austen-aligned"] {
        let dir = ckpt(name);
        for f in ["config.json", "model.safetensors", "tokenizer.json", "training_state.json", "metrics.jsonl", "eval_persuasion.json"] {
            assert!(dir.join(f).is_file(), "{name}/{f} missing");
        }
        let bytes: u64 = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum();
        assert!(bytes <= 20 * 1024 * 1024, "{name} is {bytes} bytes");
        let ck = Checkpoint::load_dir(&dir, &Device::Cpu).unwrap();
        assert_eq!(ck.model.n_layer(), 12);
        let state = alignscope::train::save::read_state(&dir).unwrap();
        // Never trained on the held-out novel.
        assert!(state.config.data.iter().all(|p| !p.to_string_lossy().contains("persuasion")), "{name} trained on persuasion.txt");
    }
    let s = alignscope::train::save::read_state(&ckpt("austen-standard")).unwrap().config;
    let a = alignscope::train::save::read_state(&ckpt("austen-aligned")).unwrap().config;
    // Same data, steps, batch order and learning rate; only the loss differs.
    assert_eq!((&s.data, s.steps, s.seed, s.lr, s.batch, s.ctx), (&a.data, a.steps, a.seed, a.lr, a.batch, a.ctx));
    assert_eq!(s.loss, alignscope::train::LossKind::Standard);
    assert_eq!(a.loss, alignscope::train::LossKind::Aligned);
}

fn report(name: &str) -> EvalReport {
    serde_json::from_str(&std::fs::read_to_string(ckpt(name).join("eval_persuasion.json")).unwrap()).unwrap()
}

/// The claims, as the README states them, on the whole of persuasion.txt (the stored
/// `alignscope eval --ctx 256` reports).
#[test]
fn aligned_beats_standard_at_every_early_layer() {
    let (s, a) = (report("austen-standard"), report("austen-aligned"));
    assert_eq!((s.ctx, s.chunks, a.tokens), (256, 512, s.tokens));
    for l in 1..12 {
        assert!(a.ce[l] < s.ce[l], "layer {l}: aligned CE {} vs standard {}", a.ce[l], s.ce[l]);
        assert!(a.cos_last[l].unwrap() > s.cos_last[l].unwrap(), "layer {l}: COS with the last layer");
    }
    let mean = |r: &EvalReport| r.ce[1..=6].iter().sum::<f64>() / 6.0;
    assert!(mean(&s) - mean(&a) >= 0.3, "mean CE over layers 1-6: {} vs {}", mean(&a), mean(&s));
    assert!((a.ppl[12] / s.ppl[12] - 1.0).abs() <= 0.10, "layer 12 perplexity {} vs {}", a.ppl[12], s.ppl[12]);
    assert!(a.acc[1..].windows(2).all(|w| w[1] >= w[0]), "aligned accuracy rises with depth: {:?}", a.acc);
}

/// The stored reports are what the shipped weights compute: a fresh evaluation of the
/// first 32 chunks agrees with the claims' direction and with a stored-report rerun.
#[test]
fn the_shipped_weights_behave_as_reported() {
    let text = alignscope::analysis::eval::read_text(&assets_dir().join("austen/persuasion.txt")).unwrap();
    let eval = |name: &str| {
        let ck = Checkpoint::load_dir(&ckpt(name), &Device::Cpu).unwrap();
        let ids = ck.tokenizer.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        evaluate(&ck.model, &ids, &EvalOptions { ctx: 256, max_chunks: Some(32) }, |_, _| ControlFlow::Continue(())).unwrap()
    };
    let (s, a) = (eval("austen-standard"), eval("austen-aligned"));
    let mean = |r: &EvalReport| r.ce[1..=6].iter().sum::<f64>() / 6.0;
    assert!(mean(&s) - mean(&a) >= 0.3);
    for l in 1..=9 {
        assert!(a.ce[l] < s.ce[l], "layer {l}");
    }
    // The first 32 chunks are part of the full evaluation: same order of magnitude.
    let full = report("austen-aligned");
    assert!((a.ce[12] - full.ce[12]).abs() < 0.5);
}

/// On the shipped weights, the greedy token a decoder finds through its reduced copy of the
/// classifier (see `CpuModel::greedy_token`) is the argmax of its f32 logits, after every
/// layer (drafts and early exits read early layers), along each model's own greedy text;
/// and the max-prob early-exit check through the 8-bit copy decides as the f32 logits do
/// (see `CpuModel::max_prob_check`).
#[test]
fn greedy_tokens_are_the_argmax_of_the_logits_on_the_shipped_weights() {
    use alignscope::model::decoder::{self, Decoder, MaxProbCheck};
    let text = alignscope::analysis::eval::read_text(&assets_dir().join("austen/persuasion.txt")).unwrap();
    for name in ["austen-aligned", "austen-standard"] {
        let ck = Checkpoint::load_dir(&ckpt(name), &Device::Cpu).unwrap();
        let ids = ck.tokenizer.encode(&text[..20_000], false).unwrap().get_ids().to_vec();
        decoder::with_cpu_model(&ck.model, |m| {
            let mut logits = Vec::new();
            for p in 1..=4 {
                let mut dec = Decoder::new(m);
                let prompt = &ids[p * 700..p * 700 + 16];
                let mut x = dec.embed(prompt, 0)?;
                dec.blocks(0, m.n_layer, &mut x, 0)?;
                let mut next = dec.greedy_token(&x[(prompt.len() - 1) * m.d..]);
                for pos in prompt.len()..prompt.len() + 96 {
                    let mut x = dec.embed(&[next], pos)?;
                    for l in 0..m.n_layer {
                        dec.block(l, &mut x, pos)?;
                        dec.logits(&x, &mut logits);
                        let want = decoder::argmax(&logits);
                        assert_eq!(dec.greedy_token(&x), want, "{name}, prompt {p}, position {pos}, layer {}", l + 1);
                        // The max-prob early-exit check through the reduced classifier
                        // takes the logits' decision, or leaves it to them only where the
                        // probability is next to the threshold.
                        let prob = alignscope::kernels::max_prob(&logits) as f64;
                        for tau in [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, prob] {
                            let at = format!("{name}, prompt {p}, position {pos}, layer {}, threshold {tau}, p {prob}", l + 1);
                            match dec.max_prob_check(&x, tau) {
                                MaxProbCheck::Reaches(t) => assert!(prob >= tau && t == want, "{at}: reaches, token {t}"),
                                MaxProbCheck::Below => assert!(prob < tau, "{at}: below"),
                                MaxProbCheck::Undecided => assert!((prob / tau - 1.0).abs() <= 0.1, "{at}: undecided"),
                            }
                        }
                        next = want;
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    }
}

/// Max-prob early exit with the checks on a second thread (`--pipelined`) gives the
/// one-thread path's tokens and exit layers on both shipped models, over the thresholds of
/// the README's sweep and to end-of-text, twice each (the threads' timing differs).
#[test]
fn pipelined_early_exit_is_the_one_thread_early_exit_on_the_shipped_weights() {
    use alignscope::analysis::early_exit::{EarlyExitOptions, ExitMeasure, generate_early_exit};
    use alignscope::analysis::generate::Sampling;
    let text = alignscope::analysis::eval::read_text(&assets_dir().join("austen/persuasion.txt")).unwrap();
    for name in ["austen-aligned", "austen-standard"] {
        let ck = Checkpoint::load_dir(&ckpt(name), &Device::Cpu).unwrap();
        let ids = ck.tokenizer.encode(&text[..20_000], false).unwrap().get_ids().to_vec();
        for (p, threshold) in [0.1, 0.2, 0.3, 0.5, 0.7, 0.9].into_iter().enumerate() {
            let prompt = &ids[(p + 1) * 600..(p + 1) * 600 + 24];
            let opts = EarlyExitOptions {
                threshold,
                measure: ExitMeasure::MaxProb,
                max_new_tokens: 96,
                sampling: Sampling::Greedy,
                eos: None,
                pipelined: false,
            };
            let serial = generate_early_exit(&ck.model, prompt, &opts, |_, _| ControlFlow::Continue(())).unwrap();
            // End-of-text: the serial output's 40th token ends the generation there.
            let eos = EarlyExitOptions { eos: Some(serial.ids[40]), ..opts.clone() };
            let serial_eos = generate_early_exit(&ck.model, prompt, &eos, |_, _| ControlFlow::Continue(())).unwrap();
            for _ in 0..2 {
                for (o, want) in [(&opts, &serial), (&eos, &serial_eos)] {
                    let piped = EarlyExitOptions { pipelined: true, ..o.clone() };
                    let g = generate_early_exit(&ck.model, prompt, &piped, |_, _| ControlFlow::Continue(())).unwrap();
                    let at = format!("{name}, threshold {threshold}, eos {:?}", o.eos);
                    assert_eq!(g.ids, want.ids, "{at}");
                    assert_eq!(g.exit_layers, want.exit_layers, "{at}");
                    assert_eq!(g.stop, want.stop, "{at}");
                }
            }
        }
    }
}
