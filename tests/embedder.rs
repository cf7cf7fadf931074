//! The sentence encoder behind coherence, against transformers (the tiny BERT fixture made
//! by scripts/make_tiny_bert.py), and how the CLI resolves it, falls back and says which
//! one it used.

mod common;
use alignscope::analysis::embedder::{BertEncoder, Pooling};
use candle_core::Device;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bert_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert")
}

fn bert_expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(bert_dir().join("expected.json")).unwrap()).unwrap()
}

fn sentences(exp: &Value) -> Vec<String> {
    exp["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

#[test]
fn tiny_bert_matches_transformers() {
    let exp = bert_expected();
    let enc = BertEncoder::load_dir(&bert_dir(), "tiny-bert", &Device::Cpu).unwrap();
    assert_eq!(enc.max_len, exp["max_seq_length"].as_u64().unwrap() as usize);
    assert_eq!(enc.pooling, Pooling::Mean);
    let s = sentences(&exp);
    let refs: Vec<&str> = s.iter().map(String::as_str).collect();
    // In one padded batch, and one at a time: padding must not change an embedding.
    let batch = enc.embed(&refs).unwrap();
    for (i, want) in exp["embeddings"].as_array().unwrap().iter().enumerate() {
        assert_close(&format!("sentence {i} (batched)"), &batch[i], &f64s(want), 1e-5);
        let alone = enc.embed(&refs[i..i + 1]).unwrap();
        assert_close(&format!("sentence {i} (alone)"), &alone[0], &f64s(want), 1e-5);
        let norm: f64 = alone[0].iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6);
    }
    // The long sentence was truncated to max_seq_length (the reference saw 24 ids).
    assert_eq!(exp["input_ids"][1].as_array().unwrap().len(), 24);
}

fn alignscope(args: &[&str], envs: &[(&str, &Path)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_alignscope"));
    cmd.args(args).env("HF_HUB_OFFLINE", "1").env_remove("HF_HOME");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn json_of(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A hub cache holding the tiny BERT under `test/tiny-bert`, laid out as
/// scripts/fetch-minilm.sh lays out all-MiniLM-L6-v2.
fn hub_cache_with_tiny_bert() -> tempfile::TempDir {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--test--tiny-bert");
    let rev = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo.join("snapshots").join(rev);
    std::fs::create_dir_all(snap.join("1_Pooling")).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "sentence_bert_config.json", "modules.json", "1_Pooling/config.json"] {
        std::fs::copy(bert_dir().join(f), snap.join(f)).unwrap();
    }
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), rev).unwrap();
    cache
}

#[test]
fn embed_resolves_a_folder_and_a_hub_name_offline() {
    let exp = bert_expected();
    let s = sentences(&exp);
    let mut args = vec!["embed", "--embedder"];
    let dir = bert_dir().to_string_lossy().into_owned();
    args.push(&dir);
    for t in &s {
        args.push("--text");
        args.push(t);
    }
    let v = json_of(&alignscope(&args, &[]));
    assert_eq!(v["dim"], 32);
    assert_eq!(v["max_seq_length"], 24);
    assert_eq!(v["pooling"], "mean");
    for (i, want) in exp["embeddings"].as_array().unwrap().iter().enumerate() {
        assert_close(&format!("sentence {i}"), &f64s(&v["embeddings"][i]), &f64s(want), 1e-5);
    }
    let cache = hub_cache_with_tiny_bert();
    let by_name = json_of(&alignscope(&["embed", "--embedder", "test/tiny-bert", "--text", &s[0]], &[("HF_HUB_CACHE", cache.path())]));
    assert_close("by hub name", &f64s(&by_name["embeddings"][0]), &f64s(&exp["embeddings"][0]), 1e-5);
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    d / (a.iter().map(|x| x * x).sum::<f64>().sqrt() * b.iter().map(|x| x * x).sum::<f64>().sqrt())
}

#[test]
fn generate_measures_coherence_with_the_named_encoder_and_says_so() {
    let ck = fixture_dir().to_string_lossy().into_owned();
    let dir = bert_dir().to_string_lossy().into_owned();
    let prompt = "It is a truth universally acknowledged";
    let v = json_of(&alignscope(
        &[
            "generate",
            "--ckpt",
            &ck,
            "--prompt",
            prompt,
            "--exit-layer",
            "all",
            "--max-new-tokens",
            "12",
            "--ignore-eos",
            "--embedder",
            &dir,
            "--json",
        ],
        &[],
    ));
    assert_eq!(v["embedder"]["name"], dir.as_str());
    assert_eq!(v["embedder"]["kind"], "sentence-encoder");
    let gens = v["generations"].as_array().unwrap();
    assert_eq!(gens.len(), 4);
    let enc = BertEncoder::load_dir(&bert_dir(), "tiny-bert", &Device::Cpu).unwrap();
    for g in gens {
        let text = g["text"].as_str().unwrap();
        let e = enc.embed(&[prompt, text]).unwrap();
        let want = cosine(&e[0], &e[1]);
        assert!((g["coherence"].as_f64().unwrap() - want).abs() < 1e-6, "layer {}: coherence", g["exit_layer"]);
        assert!(g["diversity"].as_f64().is_some());
    }
    // The text output names the encoder too.
    let out = alignscope(
        &["generate", "--ckpt", &ck, "--prompt", prompt, "--exit-layer", "all", "--max-new-tokens", "4", "--embedder", &dir],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("coherence: sentence encoder {dir}")), "{text}");
}

#[test]
fn without_an_encoder_coherence_falls_back_to_the_self_embedding_and_says_so() {
    let ck = fixture_dir().to_string_lossy().into_owned();
    let empty = tempfile::tempdir().unwrap();
    let envs: [(&str, &Path); 2] = [("HF_HUB_CACHE", empty.path()), ("ALIGNSCOPE_CHECKPOINTS", empty.path())];
    let v = json_of(&alignscope(
        &["generate", "--ckpt", &ck, "--prompt", "Anne Elliot", "--max-new-tokens", "3", "--ignore-eos", "--json"],
        &envs,
    ));
    assert_eq!(v["embedder"]["kind"], "self-embedding");
    assert!(v["embedder"]["note"].as_str().unwrap().contains("all-MiniLM-L6-v2 is not available"));
    // Three new tokens hold no 4-gram: diversity is undefined, not 0.
    assert!(v["diversity"].is_null(), "{v}");
    assert!(v["coherence"].as_f64().is_some());
    let out = alignscope(&["generate", "--ckpt", &ck, "--prompt", "Anne Elliot", "--max-new-tokens", "3", "--exit-layer", "all"], &envs);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("diversity n/a") && text.contains("coherence: self-embedding ("), "{text}");
    // `--embedder self` chooses it without a note.
    let v = json_of(&alignscope(
        &["generate", "--ckpt", &ck, "--prompt", "Anne Elliot", "--max-new-tokens", "3", "--embedder", "self", "--json"],
        &envs,
    ));
    assert_eq!(v["embedder"]["kind"], "self-embedding");
    assert!(v["embedder"].get("note").is_none());
}

#[test]
fn a_named_encoder_that_is_missing_or_not_a_bert_is_an_error() {
    let ck = fixture_dir().to_string_lossy().into_owned();
    let empty = tempfile::tempdir().unwrap();
    let envs: [(&str, &Path); 1] = [("HF_HUB_CACHE", empty.path())];
    for (embedder, needle) in [("nobody/no-such-encoder", "embedder \"nobody/no-such-encoder\""), (ck.as_str(), "model_type \"gpt2\"")] {
        let out =
            alignscope(&["generate", "--ckpt", &ck, "--prompt", "Anne", "--max-new-tokens", "2", "--embedder", embedder, "--json"], &envs);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].starts_with("error: ") && lines[0].contains(needle), "{err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn eval_quality_reports_diversity_and_coherence_per_exit_layer() {
    let ck = fixture_dir().to_string_lossy().into_owned();
    let data = assets_dir().join("austen/persuasion.txt").to_string_lossy().into_owned();
    let dir = bert_dir().to_string_lossy().into_owned();
    let v = json_of(&alignscope(
        &[
            "eval",
            "--ckpt",
            &ck,
            "--data",
            &data,
            "--ctx",
            "64",
            "--max-chunks",
            "1",
            "--quality",
            "--prompts",
            "2",
            "--max-new-tokens",
            "6",
            "--embedder",
            &dir,
            "--json",
        ],
        &[],
    ));
    let q = &v["quality"];
    assert_eq!(q["embedder"]["name"], dir.as_str());
    assert_eq!(q["prompts"], 2);
    for key in ["diversity", "coherence"] {
        let a = q[key].as_array().unwrap();
        assert_eq!(a.len(), 5, "{key}: one per layer 0..L");
        assert!(a[0].is_null() && a[1..].iter().all(|x| x.is_f64()), "{key}: {a:?}");
    }
    // The per-layer evaluation itself is unchanged by --quality.
    assert_eq!(v["layers"], 4);
    assert_eq!(v["ce"].as_array().unwrap().len(), 5);
}
