//! `alignscope report` end to end through the binary: the files it writes, the numbers in
//! report.json against the fixture's transformers reference, and bad input.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn alignscope(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_alignscope")).args(args).env("HF_HUB_OFFLINE", "1").output().unwrap()
}

fn bert() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert").to_string_lossy().into_owned()
}

fn persuasion() -> String {
    assets_dir().join("austen/persuasion.txt").to_string_lossy().into_owned()
}

/// The PNG's size from its IHDR chunk.
fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
    assert_eq!(&b[12..16], b"IHDR");
    (u32::from_be_bytes(b[16..20].try_into().unwrap()), u32::from_be_bytes(b[20..24].try_into().unwrap()))
}

fn eval_json(ck: &str, data: &str) -> Value {
    let o = alignscope(&["eval", "--ckpt", ck, "--data", data, "--ctx", "128", "--max-chunks", "4", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn fixture_report_matches_the_reference_evaluation() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("rep");
    let ck = fixture_dir().to_string_lossy().into_owned();
    let data = persuasion();
    let o = alignscope(&[
        "report",
        "--ckpt",
        &ck,
        "--data",
        &data,
        "--ctx",
        "128",
        "--max-chunks",
        "4",
        "--prompts",
        "3",
        "--prompt-tokens",
        "8",
        "--max-new-tokens",
        "6",
        "--embedder",
        &bert(),
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // No progress bar when stderr is not a terminal.
    assert!(o.stderr.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = read_json(&dir.join("report.json"));
    let exp = expected();
    let m = &r["models"][0];
    assert_eq!(m["layers"], 4);
    assert_eq!(r["chunks"], 4);
    assert_eq!(m["eval_tokens"], exp["eval"]["tokens"]);
    // The per-layer evaluation is transformers' (expected.json: the first 4 chunks of 128).
    assert_close("ce", &f64s(&m["per_layer"]["ce"]), &f64s(&exp["eval"]["ce"]), 1e-4);
    assert_close("acc", &f64s(&m["per_layer"]["acc"]), &f64s(&exp["eval"]["acc"]), 1e-9);
    // Similarity over all 512 positions; COS/CKA with the last layer are its last column.
    let cos = matrix(&m["similarity"]["cos"]);
    assert_eq!((cos.len(), m["similarity"]["positions"].as_u64()), (5, Some(512)));
    let last: Vec<f64> = cos.iter().map(|row| row[4]).collect();
    // The same as `alignscope eval`'s COS with the last layer (computed another way).
    assert_close("cos_last vs eval", &last, &f64s(&eval_json(&ck, &data)["cos_last"]), 1e-5);
    assert_close("cos_last", &f64s(&m["per_layer"]["cos_last"]), &last, 0.0);
    // Quality per exit layer: index 0 is not an exit layer (null), 1..4 are.
    for key in ["diversity", "coherence"] {
        let v = m["per_layer"][key].as_array().unwrap();
        assert_eq!(v.len(), 5, "{key}");
        assert!(v[0].is_null(), "{key}[0]");
        assert!(v[1..].iter().all(|x| x.is_f64()), "{key}: {v:?}");
    }
    assert_eq!(m["generations"].as_array().unwrap().len(), 4);
    assert_eq!(m["generations"][0]["samples"].as_array().unwrap().len(), 3);
    assert_eq!(r["prompts"].as_array().unwrap().len(), 3);
    assert_eq!(r["embedder"]["kind"], "sentence-encoder");
    assert!(m["agreement"]["pearson"].is_f64());
    assert_eq!(m["agreement"]["pairs"], 10);
    // One checkpoint: no difference, no training history, no sweep.
    assert!(r["difference"].is_null() && m["training"].is_null() && m["exits"].is_null());
    let figs: Vec<&str> = r["figures"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(figs, ["similarity_cos", "similarity_cka", "agreement", "quality"]);
    for f in &figs {
        let svg = std::fs::read_to_string(dir.join(format!("{f}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<text"), "{f}.svg");
        let (w, h) = png_size(&dir.join(format!("{f}.png")));
        assert!(w >= 800 && h >= 600, "{f}.png is {w}x{h}");
    }
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    for needle in
        ["![", "similarity_cos.png", "quality.png", "| layer |", "No exit sweep", "No checkpoint has a training history", "tiny-bert"]
    {
        assert!(md.contains(needle), "report.md lacks {needle:?}");
    }
    // Nothing but the report's files is left behind (no staging folder).
    let siblings: Vec<String> =
        std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(siblings, ["rep"]);
}

#[test]
fn shipped_pair_with_training_curves_and_an_exit_sweep() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("pair");
    let sweep = out.path().join("exits.json");
    // A real sweep of both checkpoints, as a user makes one (no generation timing).
    let o = alignscope(&[
        "exits",
        "--ckpt",
        "austen-aligned",
        "--compare",
        "austen-standard",
        "--max-chunks",
        "2",
        "--gen-tokens",
        "0",
        "--thresholds",
        "0.5,0.9",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(&sweep, &o.stdout).unwrap();
    let swept: Value = serde_json::from_slice(&o.stdout).unwrap();
    let o = alignscope(&[
        "report",
        "--ckpt",
        "austen-aligned",
        "--compare",
        "austen-standard",
        "--max-chunks",
        "2",
        "--prompts",
        "1",
        "--max-new-tokens",
        "6",
        "--embedder",
        "self",
        "--exits",
        sweep.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("coherence: self-embedding of austen-aligned"), "{stdout}");
    let r = read_json(&dir.join("report.json"));
    let (a, b) = (&r["models"][0], &r["models"][1]);
    assert_eq!((a["role"].as_str(), b["role"].as_str()), (Some("A"), Some("B")));
    // A − B is the entry-wise difference of the two matrices.
    let d = matrix(&r["difference"]["cka"]);
    let (ma, mb) = (matrix(&a["similarity"]["cka"]), matrix(&b["similarity"]["cka"]));
    for i in 0..13 {
        for j in 0..13 {
            assert!((d[i][j] - (ma[i][j] - mb[i][j])).abs() < 1e-12);
        }
    }
    // Training histories from metrics.jsonl: 600 steps and 6 evaluations each.
    for m in [a, b] {
        assert_eq!(m["training"]["steps"].as_array().unwrap().len(), 600);
        let evals = m["training"]["evals"].as_array().unwrap();
        assert_eq!(evals.len(), 6);
        assert!(evals[0]["ce"][0].is_null() && evals[0]["ce"][12].is_f64());
    }
    // Each checkpoint gets its own curve: the two thresholds, and the full model's accuracy
    // from the sweep's full-depth row.
    for (m, s) in [(a, &swept["models"][0]), (b, &swept["models"][1])] {
        let points = m["exits"]["points"].as_array().unwrap();
        assert_eq!(points.len(), 2);
        assert_eq!(points[0]["accuracy"], s["rows"][0]["accuracy"]);
        assert_eq!(points[1]["speedup"], s["rows"][1]["layer_speedup"]);
        assert_eq!(m["exits"]["full_accuracy"], s["rows"][2]["accuracy"]);
    }
    let figs: Vec<&str> = r["figures"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(figs, ["similarity_cos", "similarity_cka", "agreement", "quality", "early_exit", "training"]);
    for f in figs {
        png_size(&dir.join(format!("{f}.png")));
    }
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("A `austen-aligned` vs B `austen-standard`") && md.contains("early_exit.png") && md.contains("training.png"));
    assert!(md.contains("| acc A | acc B |"), "{md}");
}

fn fails(args: &[&str], needle: &str) {
    let o = alignscope(args);
    assert!(!o.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: {err}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(needle), "{args:?}: {err}");
}

#[test]
fn bad_input_is_one_error_line_and_leaves_the_folder_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = fixture_dir().to_string_lossy().into_owned();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let o = out.to_str().unwrap();
    fails(&["report", "--ckpt", &ck, "--out", file.to_str().unwrap()], "is a file, not a folder");
    fails(&["report", "--ckpt", &ck, "--data", "/nonexistent/text.txt", "--out", o], "/nonexistent/text.txt");
    fails(&["report", "--ckpt", &ck, "--exits", "/nonexistent/exits.json", "--out", o], "exit sweep /nonexistent/exits.json");
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, r#"{"rows":[{"accuracy":0.1}]}"#).unwrap();
    fails(&["report", "--ckpt", &ck, "--exits", bad.to_str().unwrap(), "--out", o], "not one alignscope understands");
    fails(&["report", "--ckpt", &ck, "--prompts", "0", "--out", o], "--prompts");
    fails(&["report", "--ckpt", &ck, "--top-p", "1.5", "--out", o], "--top-p");
    let tiny = tmp.path().join("tiny.txt");
    std::fs::write(&tiny, "Anne Elliot").unwrap();
    fails(&["report", "--ckpt", &ck, "--data", tiny.to_str().unwrap(), "--out", o], "too short for a prompt of 32 tokens");
    std::fs::write(&tiny, "A").unwrap();
    fails(&["report", "--ckpt", &ck, "--data", tiny.to_str().unwrap(), "--out", o], "fewer than 2 tokens");
    let names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["keep.txt"]);
}
