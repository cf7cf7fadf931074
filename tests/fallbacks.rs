//! The portable paths, which CUDA runs, checked on the CPU. The fused CPU ops, the
//! batch-1 kernels, the hand-written cross-entropy and the CPU AdamW pass exist on the CPU
//! only; under `alignscope::ops::with_portable_ops` the CPU takes the basic-op paths
//! instead, op for op what a GPU computes. Each test runs the same work both ways and
//! holds the portable result to the fused one (within 1e-5) and to the PyTorch/transformers
//! reference of the fixture, so CI covers the GPU's math without a GPU.

mod common;
use alignscope::analysis::early_exit::{EarlyExitOptions, ExitMeasure, generate_early_exit};
use alignscope::analysis::eval::{EvalOptions, evaluate, read_text};
use alignscope::analysis::generate::{GenerateOptions, Sampling, generate};
use alignscope::analysis::inspect::{LensAt, analyze};
use alignscope::analysis::{encode_prompt, ids_tensor};
use alignscope::ops::{cpu_fast_path, with_portable_ops};
use alignscope::train::loss::{Objective, aligned_weights, collect_grads, loss_and_grads, standard_weights};
use alignscope::train::optim::AdamWConfig;
use alignscope::train::trainer::Trainable;
use candle_core::{Device, Tensor};
use common::*;
use std::ops::ControlFlow;

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(|x| x as f64).collect()
}

/// Runs `f` on the fused CPU path and on the portable path.
fn both<R>(f: impl Fn() -> R) -> (R, R) {
    let fused = f();
    let portable = with_portable_ops(&f);
    (fused, portable)
}

#[test]
fn the_switch_is_per_thread_and_restored() {
    assert!(cpu_fast_path(&Device::Cpu));
    with_portable_ops(|| {
        assert!(!cpu_fast_path(&Device::Cpu));
        // Other threads keep their fast paths.
        std::thread::spawn(|| assert!(cpu_fast_path(&Device::Cpu))).join().unwrap();
        with_portable_ops(|| assert!(!cpu_fast_path(&Device::Cpu)));
        assert!(!cpu_fast_path(&Device::Cpu), "a nested use must not switch the fast paths back on");
    });
    assert!(cpu_fast_path(&Device::Cpu));
}

#[test]
fn forward_lens_and_similarity_match() {
    let exp = expected();
    let ck = fixture();
    for case in exp["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let ids = encode_prompt(&ck.tokenizer, &ck.model, prompt).unwrap();
        let x = ids_tensor(&ck.model, &ids).unwrap();
        let (fused, portable) = both(|| {
            let hs = ck.model.residuals(&x).unwrap();
            let logits = ck.model.head(hs.last().unwrap()).unwrap();
            (hs.iter().map(values).collect::<Vec<_>>(), values(&logits))
        });
        for (l, (f, p)) in fused.0.iter().zip(&portable.0).enumerate() {
            assert_close(&format!("{prompt:?} residual[{l}], portable vs fused"), p, f, 1e-5);
            assert_close(&format!("{prompt:?} residual[{l}], portable vs transformers"), p, &flat(&case["residual"][l]), 1e-4);
        }
        assert_close(&format!("{prompt:?} logits, portable vs fused"), &portable.1, &fused.1, 1e-5);
        assert_close(&format!("{prompt:?} logits, portable vs transformers"), &portable.1, &flat(&case["logits"]), 1e-4);

        // The lens at one position: a single row through the classifier (the batch-1
        // kernel on the fast path).
        let (fa, pa) = both(|| analyze(&ck.model, &ck.tokenizer, &ids, 5, LensAt::Last).unwrap());
        for (l, want) in case["lens_top5_last"].as_array().unwrap().iter().enumerate() {
            let (f, p) = (&fa.lens[l][0], &pa.lens[l][0]);
            let want_ids: Vec<u32> = want.as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap() as u32).collect();
            assert_eq!(p.iter().map(|t| t.id).collect::<Vec<_>>(), want_ids, "{prompt:?} portable lens top-5 at layer {l}");
            for ((pt, ft), w) in p.iter().zip(f).zip(want.as_array().unwrap()) {
                assert!((pt.prob - ft.prob).abs() < 1e-5, "{prompt:?} lens prob at layer {l}: portable {} vs fused {}", pt.prob, ft.prob);
                assert!((pt.prob - w["prob"].as_f64().unwrap()).abs() < 1e-5, "{prompt:?} lens prob at layer {l} vs transformers");
            }
        }
        for (key, f, p) in [("cos_centered", &fa.cos, &pa.cos), ("cos_raw", &fa.cos_raw, &pa.cos_raw), ("cka_linear", &fa.cka, &pa.cka)] {
            assert_close(&format!("{prompt:?} {key}, portable vs fused"), &defined(&p.concat()), &defined(&f.concat()), 1e-5);
            assert_close(&format!("{prompt:?} {key}, portable vs transformers"), &defined(&p.concat()), &matrix(&case[key]).concat(), 1e-5);
        }
    }
}

#[test]
fn greedy_generation_per_exit_layer_matches() {
    let exp = expected();
    let ck = fixture();
    for case in exp["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let ids = encode_prompt(&ck.tokenizer, &ck.model, prompt).unwrap();
        for (l, want) in case["greedy16_by_exit_layer"].as_object().unwrap() {
            let l: usize = l.parse().unwrap();
            let opts = GenerateOptions { exit_layer: l, max_new_tokens: 16, sampling: Sampling::Greedy, eos: None };
            let (f, p) = both(|| generate(&ck.model, &ids, &opts, |_| ControlFlow::Continue(())).unwrap().ids);
            assert_eq!(p, u32s(want), "{prompt:?}: portable greedy from exit layer {l} vs transformers");
            assert_eq!(p, f, "{prompt:?}: portable greedy from exit layer {l} vs fused");
        }
    }
}

/// Early exit runs single tokens block by block through the KV cache and fills the caches
/// of the skipped blocks from the exit layer's state.
#[test]
fn early_exit_generation_matches() {
    let ck = fixture();
    let ids = encode_prompt(&ck.tokenizer, &ck.model, "It is a truth universally acknowledged").unwrap();
    let opts = EarlyExitOptions {
        threshold: 0.15,
        measure: ExitMeasure::MaxProb,
        max_new_tokens: 24,
        sampling: Sampling::Greedy,
        eos: None,
        pipelined: false,
    };
    let run = || generate_early_exit(&ck.model, &ids, &opts, |_, _| ControlFlow::Continue(())).unwrap();
    let (f, p) = both(run);
    assert!(f.exit_layers.iter().any(|&l| l < 4), "the threshold must make some token exit early: {:?}", f.exit_layers);
    assert!(f.exit_layers.iter().skip(1).any(|&l| l == 4), "and some run all layers: {:?}", f.exit_layers);
    assert_eq!(p.ids, f.ids, "portable vs fused early-exit tokens");
    assert_eq!(p.exit_layers, f.exit_layers, "portable vs fused exit layers");
}

#[test]
fn eval_matches() {
    let exp = expected();
    let ev = &exp["eval"];
    let ck = fixture();
    let text = read_text(&assets_dir().join("austen").join(ev["file"].as_str().unwrap())).unwrap();
    let ids = ck.tokenizer.encode(text.as_str(), false).unwrap().get_ids().to_vec();
    let opts = EvalOptions { ctx: ev["ctx"].as_u64().unwrap() as usize, max_chunks: Some(ev["chunks"].as_u64().unwrap() as usize) };
    let (f, p) = both(|| evaluate(&ck.model, &ids, &opts, |_, _| ControlFlow::Continue(())).unwrap());
    assert_eq!(p.tokens, ev["tokens"].as_u64().unwrap() as usize);
    assert_close("eval ce, portable vs fused", &p.ce, &f.ce, 1e-5);
    assert_close("eval ce, portable vs transformers", &p.ce, &f64s(&ev["ce"]), 1e-4);
    for (l, ((pa, fa), w)) in p.acc.iter().zip(&f.acc).zip(f64s(&ev["acc"])).enumerate() {
        // Accuracy is a count over the same tokens: it must be equal.
        assert!(pa == fa && (pa - w).abs() < 1e-12, "accuracy at layer {l}: portable {pa}, fused {fa}, transformers {w}");
    }
    assert_close("eval COS with the last layer, portable vs fused", &defined(&p.cos_last), &defined(&f.cos_last), 1e-5);
    assert_close("eval CKA with the last layer, portable vs fused", &defined(&p.cka_last), &defined(&f.cka_last), 1e-5);
}

fn batch() -> (Tensor, Vec<u32>) {
    let exp = expected();
    let rows: Vec<Vec<u32>> = exp["train"]["batch"].as_array().unwrap().iter().map(u32s).collect();
    let (b, t) = (rows.len(), rows[0].len() - 1);
    let inputs: Vec<u32> = rows.iter().flat_map(|r| r[..t].to_vec()).collect();
    let targets: Vec<u32> = rows.iter().flat_map(|r| r[1..].to_vec()).collect();
    (Tensor::from_vec(inputs, (b, t), &Device::Cpu).unwrap(), targets)
}

/// Every parameter's gradient, by name.
type NamedGrads = Vec<(String, Vec<f64>)>;

/// Loss, per-layer losses and every parameter's gradient.
fn loss_and_gradients(obj: &Objective) -> (f64, Vec<f64>, NamedGrads) {
    let tr = Trainable::new(fixture().model).unwrap();
    let (inputs, targets) = batch();
    let (v, grads, head) = loss_and_grads(&tr.model, &inputs, &targets, obj, 1.0).unwrap();
    let g = collect_grads(&tr.model, &tr.vars, &grads, &head).unwrap();
    (v.loss, v.layer_losses, tr.names.iter().cloned().zip(g.iter().map(values)).collect())
}

fn check_loss_and_grads(kind: &str, weights: Vec<f64>, grads_file: &str) {
    let exp = expected();
    let want = &exp["train"][kind];
    let obj = Objective { layer_weights: weights, cos_beta: 0.0, monitor_positions: 0 };
    let (f, p) = both(|| loss_and_gradients(&obj));
    assert!((p.0 - f.0).abs() < 1e-5, "{kind} loss: portable {} vs fused {}", p.0, f.0);
    let want_loss = want["loss"].as_f64().unwrap();
    assert!(((p.0 - want_loss) / want_loss).abs() < 1e-5, "{kind} loss: portable {} vs PyTorch {want_loss}", p.0);
    assert_close(&format!("{kind} layer losses, portable vs fused"), &p.1, &f.1, 1e-5);
    assert_close(&format!("{kind} layer losses, portable vs PyTorch"), &p.1, &f64s(&want["layer_losses"]), 1e-4);
    let reference = candle_core::safetensors::load(fixture_dir().join(grads_file), &Device::Cpu).unwrap();
    assert_eq!(p.2.len(), reference.len());
    for ((name, pg), (_, fg)) in p.2.iter().zip(&f.2) {
        assert_close(&format!("{kind} d loss / d {name}, portable vs fused"), pg, fg, 1e-5);
        assert_close(&format!("{kind} d loss / d {name}, portable vs PyTorch"), pg, &values(&reference[name]), 1e-5);
    }
}

#[test]
fn aligned_loss_and_gradients_match() {
    check_loss_and_grads("aligned", aligned_weights(4), "grads_aligned.safetensors");
}

#[test]
fn standard_loss_and_gradients_match() {
    check_loss_and_grads("standard", standard_weights(4), "grads_standard.safetensors");
}

/// ce-reg adds a cosine term that is differentiated by autograd on both paths, and the
/// monitored (zero-weight) layers take the forward-only cross-entropy.
#[test]
fn ce_reg_loss_and_gradients_match() {
    let obj = Objective { layer_weights: standard_weights(4), cos_beta: 0.5, monitor_positions: 16 };
    let (f, p) = both(|| loss_and_gradients(&obj));
    assert!((p.0 - f.0).abs() < 1e-5, "ce-reg loss: portable {} vs fused {}", p.0, f.0);
    assert_close("ce-reg layer losses (monitored), portable vs fused", &p.1, &f.1, 1e-5);
    for ((name, pg), (_, fg)) in p.2.iter().zip(&f.2) {
        assert_close(&format!("ce-reg d loss / d {name}, portable vs fused"), pg, fg, 1e-5);
    }
}

/// Every `|got - want|` within `rel` of the largest `|want|` (moments span many scales).
fn assert_relative(what: &str, got: &[f64], want: &[f64], rel: f64) {
    let scale = want.iter().fold(0.0f64, |a, w| a.max(w.abs()));
    assert_close(what, got, want, rel * scale.max(f64::MIN_POSITIVE));
}

/// The tensor-op AdamW (what a GPU runs) against the CPU pass, fed the same gradients:
/// three steps with weight decay on the matrices only and a clipping scale.
#[test]
fn adamw_steps_match() {
    let exp = expected();
    let a = &exp["train"]["adamw"];
    let betas = f64s(&a["betas"]);
    let cfg = AdamWConfig {
        beta1: betas[0],
        beta2: betas[1],
        eps: a["eps"].as_f64().unwrap(),
        weight_decay: a["weight_decay"].as_f64().unwrap(),
    };
    let lr = a["lr"].as_f64().unwrap();
    let grads = {
        let tr = Trainable::new(fixture().model).unwrap();
        let (inputs, targets) = batch();
        let obj = Objective { layer_weights: aligned_weights(4), cos_beta: 0.0, monitor_positions: 0 };
        let (_, g, head) = loss_and_grads(&tr.model, &inputs, &targets, &obj, 1.0).unwrap();
        collect_grads(&tr.model, &tr.vars, &g, &head).unwrap()
    };
    let run = || {
        let tr = Trainable::new(fixture().model).unwrap();
        let mut opt = tr.optimizer(cfg.clone(), true).unwrap();
        for step in 0..3 {
            // Different gradients each step, so the moments' history matters.
            let g: Vec<Tensor> = grads.iter().map(|g| (g * (1.0 + 0.5 * step as f64)).unwrap()).collect();
            opt.step_scaled(&tr.vars, &g, lr, 0.7).unwrap();
        }
        assert!(opt.m.iter().chain(&opt.v).all(|t| !t.track_op()), "optimizer moments hold the autograd graph");
        let params: Vec<Vec<f64>> = tr.vars.iter().map(|v| values(v.as_tensor())).collect();
        (params, opt.m.iter().map(values).collect::<Vec<_>>(), opt.v.iter().map(values).collect::<Vec<_>>(), tr.names.clone())
    };
    let (f, p) = both(run);
    let start = fixture().model.params();
    for (i, name) in f.3.iter().enumerate() {
        assert_close(&format!("{name} after 3 AdamW steps, portable vs CPU pass"), &p.0[i], &f.0[i], 1e-5);
        assert_relative(&format!("first moment of {name}"), &p.1[i], &f.1[i], 1e-6);
        assert_relative(&format!("second moment of {name}"), &p.2[i], &f.2[i], 1e-6);
        let moved = p.0[i].iter().zip(values(&start[i].1)).any(|(a, b)| *a != b);
        assert!(moved, "{name} did not move");
    }
}
