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
            // 16 tokens in a positive time: a rate; its wall time is the generation's own.
            assert!(g["tok_per_s"].as_f64().unwrap() > 0.0);
            assert!(g["seconds"].as_f64().unwrap() > 0.0);
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
    // No tokens: no rate (null, not 0).
    let none = run_json(&["generate", "--ckpt", &ck, "--prompt", "Hello", "--max-new-tokens", "0", "--json"]);
    assert!(none["ids"].as_array().unwrap().is_empty());
    assert!(none["tok_per_s"].is_null());
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

/// `--speculative E`: the full model's greedy tokens (transformers' reference), whatever the
/// draft layer, with the speculative counters.
#[test]
fn speculative_json() {
    let exp = expected();
    let ck = fixture_dir().to_string_lossy().into_owned();
    let case = &exp["cases"][1];
    for (e, k, conf) in [("1", "3", "0"), ("2", "5", "0.3"), ("3", "1", "0.9")] {
        let v = run_json(&[
            "generate",
            "--ckpt",
            &ck,
            "--prompt",
            case["prompt"].as_str().unwrap(),
            "--speculative",
            e,
            "--draft",
            k,
            "--draft-confidence",
            conf,
            "--max-new-tokens",
            "16",
            "--ignore-eos",
            "--json",
        ]);
        assert_eq!(v["ids"], case["greedy16_by_exit_layer"]["4"], "draft layer {e}");
        assert_eq!(v["draft_layer"].as_u64().unwrap().to_string(), e);
        assert_eq!(v["draft"].as_u64().unwrap().to_string(), k);
        let (drafted, accepted) = (v["drafted"].as_u64().unwrap(), v["accepted"].as_u64().unwrap());
        assert!(accepted <= drafted);
        match drafted {
            0 => assert!(v["acceptance"].is_null()),
            _ => assert!((v["acceptance"].as_f64().unwrap() - accepted as f64 / drafted as f64).abs() < 1e-12),
        }
        let passes = v["forward_passes"].as_u64().unwrap();
        assert!((1..=16).contains(&passes));
        // Every round emits the accepted drafts plus one token of the full model.
        assert_eq!(passes - 1 + accepted, 15, "16 tokens: the prompt pass's, then rounds of accepted + 1");
        let origins = v["origins"].as_array().unwrap();
        assert_eq!(origins.len(), 16);
        assert_eq!(origins.iter().filter(|o| *o == "accepted").count() as u64, accepted);
        assert!(v["tok_per_s"].as_f64().unwrap() > 0.0);
        assert_eq!(v["stop"], "max-tokens");
    }
    // auto: calibrated on the prompt's continuation; reports what it picked.
    let v = run_json(&[
        "generate",
        "--ckpt",
        &ck,
        "--prompt",
        case["prompt"].as_str().unwrap(),
        "--speculative",
        "auto",
        "--max-new-tokens",
        "16",
        "--ignore-eos",
        "--json",
    ]);
    assert_eq!(v["ids"], case["greedy16_by_exit_layer"]["4"]);
    let c = &v["calibration"];
    let e = c["draft_layer"].as_u64().unwrap();
    assert!((1..=3).contains(&e));
    assert_eq!(v["draft_layer"].as_u64().unwrap(), e);
    assert_eq!(v["draft"], c["draft"]);
    assert_eq!(c["agreement"].as_array().unwrap().len(), 5);
    assert!(c["agreement"][0].is_null() && c["agreement"][4].is_null() && c["agreement"][2].is_f64());
    assert!(c["predicted_speedup"].as_f64().unwrap() > 0.0);
    assert!(c["lookup_agreement"].is_null() && c["lookup_share"].is_null() && v["lookup"] == false);
    assert!(v["lookup_drafted"].is_null() && v["lookup_acceptance"].is_null());
    assert_eq!(v["layer_acceptance"], v["acceptance"]);
}

/// `--lookup`: drafts from the text's repeats where it can — here a prompt that repeats
/// itself — the full model's tokens still, with each source's counts; in one-thread rounds
/// and pipelined, and calibrated with `auto`.
#[test]
fn speculative_lookup_json() {
    let ck = fixture_dir().to_string_lossy().into_owned();
    let prompt = "Anne walked to the house, and Anne walked to the house, and Anne walked to the";
    let want = run_json(&["generate", "--ckpt", &ck, "--prompt", prompt, "--max-new-tokens", "24", "--ignore-eos", "--json"]);
    for extra in [&["--speculative", "2"][..], &["--speculative", "2", "--pipelined"], &["--speculative", "auto"]] {
        let mut args = vec!["generate", "--ckpt", &ck, "--prompt", prompt, "--max-new-tokens", "24", "--ignore-eos", "--json", "--lookup"];
        args.extend_from_slice(extra);
        let v = run_json(&args);
        assert_eq!(v["ids"], want["ids"], "{extra:?}");
        assert_eq!(v["lookup"], true);
        let n = |k: &str| v[k].as_u64().unwrap();
        assert!(n("lookup_drafted") > 0 && n("lookup_accepted") <= n("lookup_drafted") && n("lookup_drafted") <= n("drafted"), "{v}");
        match n("drafted") - n("lookup_drafted") {
            0 => assert!(v["layer_acceptance"].is_null()),
            d => {
                assert!((v["layer_acceptance"].as_f64().unwrap() - (n("accepted") - n("lookup_accepted")) as f64 / d as f64).abs() < 1e-12)
            }
        }
        if extra.contains(&"auto") {
            let share = v["calibration"]["lookup_share"].as_f64().unwrap();
            assert!(share > 0.0 && share <= 1.0);
            assert!(v["calibration"]["lookup_agreement"][2].is_f64());
        }
    }
}

/// Early exit reports both speedups and the measure; saturation at threshold 0 leaves
/// every token at layer 1.
#[test]
fn early_exit_json_reports_wall_clock() {
    let ck = fixture_dir().to_string_lossy().into_owned();
    let prompt = "Mr. Darcy looked at Elizabeth and said";
    let max_prob =
        ["generate", "--ckpt", &ck, "--prompt", prompt, "--early-exit", "0.3", "--max-new-tokens", "16", "--ignore-eos", "--json"];
    let v = run_json(&max_prob);
    assert_eq!(v["measure"], "max-prob");
    assert_eq!(v["pipelined"], false);
    assert_eq!(v["layer_speedup"], v["speedup"]);
    assert!(v["wall_speedup"].as_f64().unwrap() > 0.0);
    assert!(v["seconds"].as_f64().unwrap() > 0.0 && v["full_depth_seconds"].as_f64().unwrap() > 0.0);
    // The checks on a second thread: the same tokens at the same layers.
    let p = run_json(&[&max_prob[..], &["--pipelined"]].concat());
    assert_eq!(p["pipelined"], true);
    assert_eq!((&p["ids"], &p["exit_layers"]), (&v["ids"], &v["exit_layers"]));
    assert!(p["wall_speedup"].as_f64().unwrap() > 0.0);
    let s = run_json(&[
        "generate",
        "--ckpt",
        &ck,
        "--prompt",
        prompt,
        "--early-exit",
        "0",
        "--exit-measure",
        "saturation",
        "--max-new-tokens",
        "8",
        "--ignore-eos",
        "--json",
    ]);
    assert_eq!(s["measure"], "saturation");
    let exits: Vec<u64> = s["exit_layers"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    // The first token comes from the prompt's full pass.
    assert_eq!(exits, [4, 1, 1, 1, 1, 1, 1, 1]);
    assert!((s["speedup"].as_f64().unwrap() - 32.0 / 11.0).abs() < 1e-12);
    // ... and then the tokens are those of exit layer 1 after the first.
    let plain1 =
        run_json(&["generate", "--ckpt", &ck, "--prompt", prompt, "--exit-layer", "4", "--max-new-tokens", "1", "--ignore-eos", "--json"]);
    assert_eq!(s["ids"][0], plain1["ids"][0]);
}

/// The exit sweep against transformers' per-layer accuracy: threshold 0 leaves every
/// position at layer 1, threshold 1 (and the full row) at the last layer.
#[test]
fn exits_json_matches_the_reference_accuracy() {
    let exp = expected();
    let ck = fixture_dir().to_string_lossy().into_owned();
    let data = assets_dir().join("austen/persuasion.txt").to_string_lossy().into_owned();
    let v = run_json(&[
        "exits",
        "--ckpt",
        &ck,
        "--compare",
        &ck,
        "--data",
        &data,
        "--ctx",
        "128",
        "--max-chunks",
        "4",
        "--thresholds",
        "0,0.3,1",
        "--gen-tokens",
        "8",
        "--gen-prompts",
        "1",
        "--json",
    ]);
    assert_eq!(v["measure"], "max-prob");
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    let acc = f64s(&exp["eval"]["acc"]);
    for m in models {
        assert_eq!(m["tokens"], exp["eval"]["tokens"]);
        let rows = m["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 4);
        let (zero, mid, one, full) = (&rows[0], &rows[1], &rows[2], &rows[3]);
        assert!((zero["accuracy"].as_f64().unwrap() - acc[1]).abs() < 1e-9, "layer 1 accuracy");
        assert_eq!(zero["mean_exit_layer"], 1.0);
        assert_eq!(zero["layer_speedup"], 4.0);
        for r in [one, full] {
            assert!((r["accuracy"].as_f64().unwrap() - acc[4]).abs() < 1e-9, "layer 4 accuracy");
            assert_eq!(r["agreement"], 1.0);
            assert_eq!(r["mean_exit_layer"], 4.0);
        }
        assert!(full["threshold"].is_null());
        assert_eq!(full["wall_speedup"], 1.0);
        let l = mid["mean_exit_layer"].as_f64().unwrap();
        assert!((1.0..=4.0).contains(&l));
        assert!((mid["layer_speedup"].as_f64().unwrap() - 4.0 / l).abs() < 1e-12);
        assert!(mid["wall_speedup"].as_f64().unwrap() > 0.0 && mid["generation_layer_speedup"].as_f64().unwrap() >= 1.0);
    }
}

/// Every pass over a text reads data the same way: a JSON-lines file is its documents
/// joined by end-of-text for `exits` and `report` as for `eval`, not its raw JSON text.
#[test]
fn exits_and_eval_read_json_lines_alike() {
    let ck = fixture_dir().to_string_lossy().into_owned();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("docs.jsonl");
    let docs = ["It is a truth universally acknowledged, that a single man in possession of a good fortune.", "Anne Elliot had been"];
    std::fs::write(&data, docs.iter().map(|d| serde_json::json!({ "text": d }).to_string() + "\n").collect::<String>()).unwrap();
    let d = data.to_string_lossy().into_owned();
    let eval = run_json(&["eval", "--ckpt", &ck, "--data", &d, "--ctx", "16", "--json"]);
    let exits = run_json(&["exits", "--ckpt", &ck, "--data", &d, "--ctx", "16", "--thresholds", "0.5", "--gen-tokens", "0", "--json"]);
    assert_eq!(exits["models"][0]["tokens"], eval["tokens"], "exits: {exits}\neval: {eval}");
}
