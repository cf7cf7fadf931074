//! The headless CLI's JSON contract, end to end through the binary, against the numbers
//! transformers computes for the fixture.

mod common;
use common::*;
use std::process::Command;

fn run_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_alignscope")).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: not one JSON object: {e}"))
}

/// One token: centered COS and CKA are undefined (the centered features are all zero) and
/// say so — null in JSON, n/a on screen — while raw COS, which needs no centering, is there.
#[test]
fn one_token_prompt_reports_undefined_similarities() {
    let ck = fixture_dir().to_string_lossy().into_owned();
    let v = run_json(&["inspect", "--ckpt", &ck, "--prompt", "a", "--json"]);
    assert_eq!(v["input_ids"].as_array().unwrap().len(), 1, "the prompt must be one token");
    for key in ["cos", "cka"] {
        let m = v[key].as_array().unwrap();
        assert_eq!(m.len(), 5);
        assert!(m.iter().flat_map(|r| r.as_array().unwrap()).all(|x| x.is_null()), "{key}: {m:?}");
    }
    assert!(v["cos_raw"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap()).all(|x| x.is_f64()));
    assert!(v["adjacent_cos"].as_array().unwrap().iter().all(|x| x.is_null()));
    let out = Command::new(env!("CARGO_BIN_EXE_alignscope")).args(["inspect", "--ckpt", &ck, "--prompt", "a"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    let centered = text.split("COS (raw):").next().unwrap().split("COS (centered):").nth(1).unwrap();
    assert!(centered.contains("n/a") && !centered.contains("0.000"), "{centered}");
    assert!(text.contains("undefined for a one-token prompt"), "{text}");
}

#[test]
fn inspect_json() {
    let exp = expected();
    let case = &exp["cases"][0];
    let ck = fixture_dir().to_string_lossy().into_owned();
    let v = run_json(&["inspect", "--ckpt", &ck, "--prompt", case["prompt"].as_str().unwrap(), "--json"]);
    assert_eq!(v["layers"], 4);
    assert_eq!(v["input_ids"], case["input_ids"]);
    for (key, want) in [("cos", "cos_centered"), ("cos_raw", "cos_raw"), ("cka", "cka_linear")] {
        assert_close(key, &matrix(&v[key]).concat(), &matrix(&case[want]).concat(), 1e-5);
    }
    let lens = v["lens"].as_array().unwrap();
    assert_eq!(lens.len(), 5);
    for (l, entry) in lens.iter().enumerate() {
        assert_eq!(entry["layer"], l);
        let ids: Vec<u64> = entry["top"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
        let want: Vec<u64> = case["lens_top5_last"][l].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, want, "lens at layer {l}");
        assert!(entry["top"][0]["token"].is_string() && entry["top"][0]["prob"].is_f64());
    }
    // --position picks the lens position.
    let v = run_json(&["inspect", "--ckpt", &ck, "--prompt", "The ", "--position", "1", "--top-k", "3", "--json"]);
    assert_eq!(v["position"], 1);
    assert_eq!(v["lens"][0]["top"].as_array().unwrap().len(), 3);
}

#[test]
fn generate_json_every_exit_layer() {
    let exp = expected();
    let ck = fixture_dir().to_string_lossy().into_owned();
    for case in exp["cases"].as_array().unwrap() {
        let v = run_json(&[
            "generate",
            "--ckpt",
            &ck,
            "--prompt",
            case["prompt"].as_str().unwrap(),
            "--exit-layer",
            "all",
            "--greedy",
            "--max-new-tokens",
            "16",
            "--ignore-eos",
            "--json",
        ]);
        let gens = v["generations"].as_array().unwrap();
        assert_eq!(gens.len(), 4);
        for g in gens {
            let l = g["exit_layer"].as_u64().unwrap().to_string();
            assert_eq!(g["ids"], case["greedy16_by_exit_layer"][&l], "exit layer {l}");
            assert!(g["text"].is_string());
        }
        let one = run_json(&[
            "generate",
            "--ckpt",
            &ck,
            "--prompt",
            case["prompt"].as_str().unwrap(),
            "--exit-layer",
            "2",
            "--max-new-tokens",
            "16",
            "--ignore-eos",
            "--json",
        ]);
        assert_eq!(one["exit_layer"], 2);
        assert_eq!(one["ids"], case["greedy16_by_exit_layer"]["2"]);
    }
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let ck = fixture_dir().to_string_lossy().into_owned();
    let args = |seed: &str| {
        run_json(&[
            "generate",
            "--ckpt",
            &ck,
            "--prompt",
            "Mr. Darcy",
            "--top-p",
            "0.95",
            "--temperature",
            "1.0",
            "--seed",
            seed,
            "--max-new-tokens",
            "24",
            "--ignore-eos",
            "--json",
        ])
    };
    let (a, b, c) = (args("7"), args("7"), args("8"));
    assert_eq!(a["ids"], b["ids"]);
    assert_ne!(a["ids"], c["ids"]);
    assert_eq!(a["ids"].as_array().unwrap().len(), 24);
}

#[test]
fn early_exit_json() {
    let ck = fixture_dir().to_string_lossy().into_owned();
    let v = run_json(&[
        "generate",
        "--ckpt",
        &ck,
        "--prompt",
        "Mr. Darcy looked at Elizabeth and said",
        "--early-exit",
        "0.3",
        "--max-new-tokens",
        "16",
        "--ignore-eos",
        "--json",
    ]);
    let exits: Vec<u64> = v["exit_layers"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(exits.len(), 16);
    assert!(exits.iter().all(|&l| (1..=4).contains(&l)));
    let want = (4 * exits.len()) as f64 / exits.iter().sum::<u64>() as f64;
    assert!((v["speedup"].as_f64().unwrap() - want).abs() < 1e-12);
    // Threshold 1: nothing is confident enough, every token runs all layers, and the text
    // is the plain greedy one.
    let full = run_json(&[
        "generate",
        "--ckpt",
        &ck,
        "--prompt",
        "Mr. Darcy looked at Elizabeth and said",
        "--early-exit",
        "1.0",
        "--max-new-tokens",
        "16",
        "--ignore-eos",
        "--json",
    ]);
    assert_eq!(full["speedup"].as_f64().unwrap(), 1.0);
    assert_eq!(full["ids"], expected()["cases"][1]["greedy16_by_exit_layer"]["4"]);
}

#[test]
fn eval_json() {
    let exp = expected();
    let ck = fixture_dir().to_string_lossy().into_owned();
    let data = assets_dir().join("austen/persuasion.txt").to_string_lossy().into_owned();
    let v = run_json(&["eval", "--ckpt", &ck, "--data", &data, "--ctx", "128", "--max-chunks", "4", "--json"]);
    assert_eq!(v["layers"], 4);
    assert_eq!(v["tokens"], exp["eval"]["tokens"]);
    assert_close("ce", &f64s(&v["ce"]), &f64s(&exp["eval"]["ce"]), 1e-4);
    assert_eq!(v["acc"].as_array().unwrap().len(), 5);
    for key in ["ppl", "cos_last", "cka_last"] {
        assert_eq!(v[key].as_array().unwrap().len(), 5, "{key}");
    }
}
