//! The engine against what HF transformers computes for the fixture GPT-2
//! (`tests/fixtures/tiny-gpt2/expected.json`; its `conventions` define every number).

mod common;
use alignscope::analysis::eval::{EvalOptions, evaluate, read_text};
use alignscope::analysis::generate::{GenerateOptions, Sampling, generate};
use alignscope::analysis::inspect::{LensAt, analyze};
use alignscope::analysis::{encode_prompt, ids_tensor};
use alignscope::model::Checkpoint;
use candle_core::Device;
use common::*;
use std::ops::ControlFlow;

fn check_case_numerics(ck: &Checkpoint, label: &str) {
    let exp = expected();
    for case in exp["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let ids = encode_prompt(&ck.tokenizer, &ck.model, prompt).unwrap();
        assert_eq!(ids, u32s(&case["input_ids"]), "{label}: tokenization of {prompt:?}");
        let hs = ck.model.residuals(&ids_tensor(&ck.model, &ids).unwrap()).unwrap();
        assert_eq!(hs.len(), exp["layers"].as_u64().unwrap() as usize + 1);
        for (l, h) in hs.iter().enumerate() {
            let got: Vec<f64> = h.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(|x| x as f64).collect();
            assert_close(&format!("{label} {prompt:?} residual[{l}]"), &got, &flat(&case["residual"][l]), 1e-4);
        }
        let logits = ck.model.head(hs.last().unwrap()).unwrap();
        let got: Vec<f64> = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(|x| x as f64).collect();
        assert_close(&format!("{label} {prompt:?} logits"), &got, &flat(&case["logits"]), 1e-4);
        let full = ck.model.logits(&ids_tensor(&ck.model, &ids).unwrap()).unwrap();
        assert_eq!(full.flatten_all().unwrap().to_vec1::<f32>().unwrap(), logits.flatten_all().unwrap().to_vec1::<f32>().unwrap());

        let a = analyze(&ck.model, &ck.tokenizer, &ids, 5, LensAt::Last).unwrap();
        for (l, want) in case["lens_top5_last"].as_array().unwrap().iter().enumerate() {
            let want_ids: Vec<u32> = want.as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap() as u32).collect();
            let got = &a.lens[l][0];
            assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), want_ids, "{label} {prompt:?} lens top-5 at layer {l}");
            for (g, w) in got.iter().zip(want.as_array().unwrap()) {
                assert_eq!(g.token, w["token"].as_str().unwrap());
                assert!((g.prob - w["prob"].as_f64().unwrap()).abs() < 1e-5, "lens prob at layer {l}");
            }
        }
        for (key, got) in [("cos_centered", &a.cos), ("cos_raw", &a.cos_raw), ("cka_linear", &a.cka)] {
            let want = matrix(&case[key]);
            assert_close(&format!("{label} {prompt:?} {key}"), &defined(&got.concat()), &want.concat(), 1e-5);
        }
        for (l, want) in case["greedy16_by_exit_layer"].as_object().unwrap() {
            let l: usize = l.parse().unwrap();
            let opts = GenerateOptions { exit_layer: l, max_new_tokens: 16, sampling: Sampling::Greedy, eos: None };
            let g = generate(&ck.model, &ids, &opts, |_| ControlFlow::Continue(())).unwrap();
            assert_eq!(g.ids, u32s(want), "{label} {prompt:?} greedy from exit layer {l}");
        }
    }
}

#[test]
fn matches_transformers_on_every_case() {
    check_case_numerics(&fixture(), "prefixed");
}

/// The hub's original GPT-2 files have no `transformer.` prefix and carry attention-mask
/// buffers; the same weights in that layout must give identical results.
#[test]
fn hub_layout_gives_identical_results() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture_dir();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let tensors = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut rekeyed: std::collections::HashMap<String, candle_core::Tensor> =
        tensors.into_iter().map(|(k, v)| (k.strip_prefix("transformer.").unwrap_or(&k).to_string(), v)).collect();
    assert!(rekeyed.contains_key("wte.weight"));
    let n_ctx = 128;
    let mask = candle_core::Tensor::ones((1, 1, n_ctx, n_ctx), candle_core::DType::F32, &Device::Cpu).unwrap();
    rekeyed.insert("h.0.attn.bias".into(), mask);
    candle_core::safetensors::save(&rekeyed, tmp.path().join("model.safetensors")).unwrap();
    let hub = Checkpoint::load_dir(tmp.path(), &Device::Cpu).unwrap();
    check_case_numerics(&hub, "hub layout");
    let a = fixture();
    for ((na, ta), (nb, tb)) in a.model.params().iter().zip(hub.model.params().iter()) {
        assert_eq!(na, nb);
        assert_eq!(ta.flatten_all().unwrap().to_vec1::<f32>().unwrap(), tb.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
}

#[test]
fn eval_matches_transformers_on_persuasion() {
    let exp = expected();
    let ev = &exp["eval"];
    let ck = fixture();
    let text = read_text(&assets_dir().join("austen").join(ev["file"].as_str().unwrap())).unwrap();
    let ids = ck.tokenizer.encode(text.as_str(), false).unwrap().get_ids().to_vec();
    let opts = EvalOptions { ctx: ev["ctx"].as_u64().unwrap() as usize, max_chunks: Some(ev["chunks"].as_u64().unwrap() as usize) };
    let r = evaluate(&ck.model, &ids, &opts, |_, _| ControlFlow::Continue(())).unwrap();
    assert_eq!(r.tokens, ev["tokens"].as_u64().unwrap() as usize);
    assert_close("eval ce", &r.ce, &f64s(&ev["ce"]), 1e-4);
    let acc = f64s(&ev["acc"]);
    for (l, (g, w)) in r.acc.iter().zip(&acc).enumerate() {
        // Accuracy is a count over the same tokens: it must be equal.
        assert!((g - w).abs() < 1e-12, "accuracy at layer {l}: got {g}, want {w}");
    }
    for (l, (g, w)) in r.ppl.iter().zip(f64s(&ev["ppl"])).enumerate() {
        assert!((g - w).abs() / w < 1e-4, "perplexity at layer {l}: got {g}, want {w}");
    }
    assert!((r.cos_last[4].unwrap() - 1.0).abs() < 1e-5 && (r.cka_last[4].unwrap() - 1.0).abs() < 1e-6);
}

/// A sharded checkpoint (model.safetensors.index.json + shards) loads to the same model.
#[test]
fn sharded_checkpoint_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture_dir();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let tensors = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let (mut a, mut b) = (std::collections::HashMap::new(), std::collections::HashMap::new());
    let mut map = serde_json::Map::new();
    for (k, v) in tensors {
        let shard = if k.contains(".h.0.") || k.contains(".h.1.") {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        map.insert(k.clone(), serde_json::json!(shard));
        if shard.starts_with("model-00001") {
            a.insert(k, v)
        } else {
            b.insert(k, v)
        };
    }
    candle_core::safetensors::save(&a, tmp.path().join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&b, tmp.path().join("model-00002-of-00002.safetensors")).unwrap();
    std::fs::write(tmp.path().join("model.safetensors.index.json"), serde_json::json!({"metadata": {}, "weight_map": map}).to_string())
        .unwrap();
    let sharded = Checkpoint::load_dir(tmp.path(), &Device::Cpu).unwrap();
    let plain = fixture();
    for ((na, ta), (nb, tb)) in plain.model.params().iter().zip(sharded.model.params().iter()) {
        assert_eq!(na, nb);
        assert_eq!(ta.flatten_all().unwrap().to_vec1::<f32>().unwrap(), tb.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
}
