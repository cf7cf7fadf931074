//! Bad input: one clear error line naming the problem, a non-zero exit, no panic, no
//! backtrace — for every case the issue lists, run through the real binary.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

fn alignscope(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_alignscope"));
    cmd.args(args).env("RUST_BACKTRACE", "1").env("HF_HUB_OFFLINE", "1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run alignscope");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Asserts a failure with exactly one `error:` line that mentions every `needle`.
fn fails_with(args: &[&str], needles: &[&str]) {
    let (code, _out, err) = alignscope(args, &[]);
    assert_ne!(code, 0, "{args:?} should fail");
    assert!(!err.contains("panicked") && !err.contains("stack backtrace"), "{args:?} panicked:\n{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one error line, got:\n{err}");
    assert!(lines[0].starts_with("error: "), "{args:?}: {err}");
    for n in needles {
        assert!(lines[0].contains(n), "{args:?}: {:?} lacks {n:?}", lines[0]);
    }
}

fn fixture_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture_dir().join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn missing_checkpoint() {
    fails_with(&["inspect", "--ckpt", "no-such-checkpoint", "--prompt", "Hi"], &["no-such-checkpoint", "not found"]);
    fails_with(&["inspect", "--ckpt", "/definitely/not/here", "--prompt", "Hi"], &["/definitely/not/here"]);
}

#[test]
fn truncated_or_corrupt_weights() {
    let dir = fixture_copy();
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(&["inspect", "--ckpt", &s(dir.path()), "--prompt", "Hi"], &["model.safetensors", "corrupt or truncated"]);
    std::fs::write(&st, b"not a safetensors file at all").unwrap();
    fails_with(&["inspect", "--ckpt", &s(dir.path()), "--prompt", "Hi"], &["model.safetensors", "corrupt or truncated"]);
}

#[test]
fn config_that_does_not_match_the_weights() {
    let dir = fixture_copy();
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["n_embd"] = serde_json::json!(32);
    cfg["n_head"] = serde_json::json!(4);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    fails_with(&["inspect", "--ckpt", &s(dir.path()), "--prompt", "Hi"], &["does not match", "transformer.wte.weight"]);
    cfg["n_embd"] = serde_json::json!(64);
    cfg["n_layer"] = serde_json::json!(3);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    fails_with(&["inspect", "--ckpt", &s(dir.path()), "--prompt", "Hi"], &["does not match", "block 3"]);
    std::fs::write(&cfg_path, "{ not json").unwrap();
    fails_with(&["inspect", "--ckpt", &s(dir.path()), "--prompt", "Hi"], &["config.json"]);
}

#[test]
fn missing_tokenizer() {
    let dir = fixture_copy();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    fails_with(&["inspect", "--ckpt", &s(dir.path()), "--prompt", "Hi"], &["tokenizer.json"]);
}

#[test]
fn empty_prompt() {
    let ck = s(&fixture_dir());
    fails_with(&["inspect", "--ckpt", &ck, "--prompt", ""], &["prompt is empty"]);
    fails_with(&["generate", "--ckpt", &ck, "--prompt", ""], &["prompt is empty"]);
}

#[test]
fn exit_layer_out_of_range() {
    let ck = s(&fixture_dir());
    fails_with(&["generate", "--ckpt", &ck, "--prompt", "Hi", "--exit-layer", "0"], &["exit layer 0", "1..=4"]);
    fails_with(&["generate", "--ckpt", &ck, "--prompt", "Hi", "--exit-layer", "5"], &["exit layer 5", "1..=4"]);
    fails_with(&["generate", "--ckpt", &ck, "--prompt", "Hi", "--exit-layer", "deep"], &["--exit-layer"]);
}

#[test]
fn bad_decoding_flags() {
    let ck = s(&fixture_dir());
    let g = |extra: &[&str]| -> Vec<String> {
        ["generate", "--ckpt", ck.as_str(), "--prompt", "Hi"].iter().chain(extra).map(|x| x.to_string()).collect()
    };
    let fails_with = |args: &[String], needles: &[&str]| fails_with(&args.iter().map(String::as_str).collect::<Vec<_>>(), needles);
    fails_with(&g(&["--speculative", "0"]), &["--speculative 0", "1..=3"]);
    fails_with(&g(&["--speculative", "4"]), &["--speculative 4", "1..=3"]);
    fails_with(&g(&["--speculative", "half"]), &["--speculative", "auto", "half"]);
    fails_with(&g(&["--speculative", "2", "--draft", "0"]), &["--draft", "at least 1"]);
    fails_with(&g(&["--speculative", "2", "--draft-confidence", "1.5"]), &["--draft-confidence", "1.5"]);
    fails_with(&g(&["--draft", "3"]), &["--draft needs --speculative"]);
    fails_with(&g(&["--draft-confidence", "0.5"]), &["--draft-confidence needs --speculative"]);
    fails_with(&g(&["--speculative", "2", "--exit-layer", "2"]), &["--speculative", "--exit-layer"]);
    fails_with(&g(&["--speculative", "2", "--early-exit", "0.5"]), &["--speculative", "--early-exit"]);
    fails_with(&g(&["--early-exit", "0.5", "--exit-layer", "2"]), &["--early-exit", "--exit-layer"]);
    fails_with(&g(&["--early-exit", "1.5"]), &["--early-exit", "1.5"]);
    fails_with(&g(&["--exit-measure", "saturation"]), &["--exit-measure needs --early-exit"]);
    fails_with(&g(&["--pipelined"]), &["--pipelined needs --speculative or --early-exit"]);
    fails_with(&g(&["--lookup"]), &["--lookup needs --speculative"]);
    fails_with(&g(&["--speculative", "2", "--lookup", "--top-p", "0.9"]), &["--lookup", "greedy"]);
    fails_with(&g(&["--speculative", "int8", "--top-p", "0.9"]), &["--speculative int8", "greedily"]);
    fails_with(&g(&["--speculative", "int8", "--draft-confidence", "0.3"]), &["--speculative int8", "--draft-confidence"]);
    fails_with(&g(&["--speculative", "int4"]), &["--speculative", "int8", "int4"]);
    // Greedy decoding would ignore them.
    fails_with(&g(&["--temperature", "0.7"]), &["--temperature applies to sampling", "--top-p", "--sample"]);
    fails_with(&g(&["--seed", "3"]), &["--seed applies to sampling"]);
    fails_with(&g(&["--sample", "--temperature", "-1"]), &["--temperature must be positive"]);
    fails_with(&g(&["--early-exit", "0.5", "--exit-measure", "saturation", "--pipelined"]), &["--pipelined", "saturation"]);
    fails_with(&g(&["--early-exit", "0.5", "--pipelined", "--top-p", "0.9"]), &["--pipelined", "greedily"]);
    // auto needs room after the prompt to calibrate.
    let long = "word ".repeat(41);
    fails_with(
        &[&["generate", "--ckpt", &ck, "--prompt", &long, "--speculative", "auto"][..]]
            .concat()
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>(),
        &["calibrate"],
    );
}

#[test]
fn bad_exit_sweeps() {
    let ck = s(&fixture_dir());
    fails_with(&["exits", "--ckpt", &ck, "--thresholds", "0.1,x"], &["--thresholds", "\"x\""]);
    fails_with(&["exits", "--ckpt", &ck, "--thresholds", "0.5,2"], &["--thresholds", "2", "[0, 1]"]);
    fails_with(&["exits", "--ckpt", &ck, "--data", "/no/such/text.txt"], &["/no/such/text.txt"]);
    fails_with(&["exits", "--ckpt", &ck, "--ctx", "1000"], &["--ctx 1000", "context"]);
}

#[test]
fn position_out_of_range() {
    let ck = s(&fixture_dir());
    fails_with(&["inspect", "--ckpt", &ck, "--prompt", "The ", "--position", "3"], &["position 3", "out of range"]);
}

#[test]
fn data_file_missing_or_not_utf8() {
    let ck = s(&fixture_dir());
    fails_with(&["eval", "--ckpt", &ck, "--data", "/no/such/file.txt"], &["/no/such/file.txt"]);
    // A device, not a text: named for what it is, not as missing.
    fails_with(&["eval", "--ckpt", &ck, "--data", "/dev/null"], &["/dev/null", "not a regular file"]);
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("latin1.txt");
    std::fs::write(&bad, b"caf\xe9 au lait").unwrap();
    fails_with(&["eval", "--ckpt", &ck, "--data", &s(&bad)], &["latin1.txt", "not UTF-8"]);
    let out = s(&dir.path().join("run"));
    fails_with(&["train", "--ckpt", &ck, "--out", &out, "--data", &s(&bad), "--steps", "1"], &["latin1.txt", "not UTF-8"]);
    fails_with(&["train", "--ckpt", &ck, "--out", &out, "--data", "/no/such/dir", "--steps", "1"], &["/no/such/dir"]);
}

#[test]
fn zero_chunks_names_the_flag() {
    fails_with(&["eval", "--ckpt", &s(&fixture_dir()), "--max-chunks", "0"], &["--max-chunks", "at least 1"]);
}

#[test]
fn prompt_longer_than_the_context() {
    let ck = s(&fixture_dir());
    let long = "word ".repeat(400);
    fails_with(&["inspect", "--ckpt", &ck, "--prompt", &long], &["context"]);
}

#[test]
fn resume_of_something_that_is_not_a_run() {
    fails_with(&["train", "--resume", &s(&fixture_dir())], &["training state"]);
    fails_with(&["train", "--resume", "no-such-run"], &["no-such-run"]);
}

/// `--ckpt gpt2` offline, with no hub cache: one line that lists the local checkpoints.
#[test]
fn hub_name_offline_without_cache() {
    let home = tempfile::tempdir().unwrap();
    let (code, _o, err) = alignscope(&["inspect", "--ckpt", "gpt2", "--prompt", "Hi"], &[("HF_HOME", &s(home.path()))]);
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("openai-community/gpt2") && err.contains("HF_HUB_OFFLINE") && err.contains("local checkpoints"), "{err}");
}

/// A checkpoint already in the hub cache loads offline, by alias, through hf-hub's layout.
#[test]
fn hub_cache_is_read_offline() {
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub").join("models--openai-community--gpt2");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), commit).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture_dir().join(f), snap.join(f)).unwrap();
    }
    let (code, out, err) = alignscope(&["inspect", "--ckpt", "gpt2", "--prompt", "The ", "--json"], &[("HF_HOME", &s(home.path()))]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["layers"], 4);
}

/// Explorer options written before a subcommand: `--ckpt` and `--device` carry over to
/// inspect / generate / eval; the others, or a value given on both sides, are refused.
#[test]
fn explorer_options_before_a_subcommand() {
    let ck = s(&fixture_dir());
    let (code, out, err) = alignscope(&["--ckpt", &ck, "inspect", "--prompt", "The ", "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["layers"], 4, "the fixture (4 layers) was inspected, not the default checkpoint");
    let (code, _o, err) = alignscope(&["--ckpt", &ck, "--device", "cpu", "generate", "--prompt", "The ", "--max-new-tokens", "2"], &[]);
    assert_eq!(code, 0, "{err}");
    fails_with(&["--ckpt", "austen-aligned", "inspect", "--ckpt", &ck, "--prompt", "Hi"], &["--ckpt given twice"]);
    fails_with(
        &["--compare", &ck, "inspect", "--ckpt", &ck, "--prompt", "Hi"],
        &["--compare before `inspect` is an option of the explorer"],
    );
    fails_with(&["--single", "eval", "--ckpt", &ck], &["--single before `eval`"]);
    // One column and a second checkpoint: which was meant?
    fails_with(&["--single", "--compare", &ck], &["--single", "--compare"]);
    fails_with(
        &["--ckpt", &ck, "train", "--out", "x"],
        &["--ckpt before `train` is an option of the explorer", "alignscope train [OPTIONS]"],
    );
    // report takes --ckpt and --compare, and every subcommand with a device takes --device:
    // what they open shows that the value carried over (a recipe not built yet, a device
    // this build lacks).
    let unbuilt = format!("{ck}-aligned");
    let report_out = tempfile::tempdir().unwrap();
    let out = report_out.path().join("r");
    let out = s(&out);
    fails_with(&["--ckpt", &unbuilt, "report", "--out", &out], &[&format!("{unbuilt} is not built yet")]);
    fails_with(&["--compare", &unbuilt, "report", "--ckpt", &ck, "--out", &out], &[&format!("{unbuilt} is not built yet")]);
    fails_with(&["--compare", &ck, "report", "--compare", &unbuilt, "--out", &out], &["--compare given twice"]);
    if !cfg!(feature = "cuda") {
        for sub in [&["device"][..], &["train", "--out", &out], &["bench", "--what", "train", "--model", "fixture"]] {
            let args: Vec<&str> = ["--device", "cuda"].iter().copied().chain(sub.iter().copied()).collect();
            fails_with(&args, &["built without CUDA"]);
        }
    }
    fails_with(&["--device", "cpu", "tokenizer", "train", "--out", &out, "--vocab", "300"], &["--device before `tokenizer`"]);
    assert!(!report_out.path().join("r").exists(), "nothing was written");
}

#[test]
fn save_never_overwrites_a_text_or_the_data_it_reads() {
    let fx = s(&fixture_dir());
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "It is a truth universally acknowledged, that a single man in possession of a good fortune.").unwrap();
    let t = s(&text);
    let eval = |save: &str| {
        vec!["eval", "--ckpt", &fx, "--data", &t, "--ctx", "8", "--save", save].into_iter().map(String::from).collect::<Vec<_>>()
    };
    let args = eval(&t);
    fails_with(&args.iter().map(String::as_str).collect::<Vec<_>>(), &["--save", "the data this command reads"]);
    let notes = dir.path().join("notes.md");
    std::fs::write(&notes, "# my notes").unwrap();
    let args = eval(&s(&notes));
    fails_with(&args.iter().map(String::as_str).collect::<Vec<_>>(), &["--save", "notes.md", "not a JSON report"]);
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "# my notes");
    assert!(std::fs::read_to_string(&text).unwrap().starts_with("It is a truth"));
    // A report is written, and replaced by the next one; no temporary file is left.
    let report = s(&dir.path().join("report.json"));
    for _ in 0..2 {
        let args = eval(&report);
        let (code, _, err) = alignscope(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
        assert_eq!(code, 0, "{err}");
    }
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert!(saved["ce"].is_array());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
}

#[test]
fn training_settings_out_of_range_are_refused_before_any_step() {
    let fx = s(&fixture_dir());
    let dir = tempfile::tempdir().unwrap();
    let out = s(&dir.path().join("run"));
    for (flag, value, needle) in [
        ("--beta2", "nan", "--beta2"),
        ("--beta1", "1.5", "--beta1"),
        ("--weight-decay", "nan", "--weight-decay"),
        ("--weight-decay", "-1", "--weight-decay"),
        ("--grad-clip", "-1", "--grad-clip"),
        ("--min-lr", "nan", "--min-lr"),
        ("--beta", "nan", "--beta"),
        // A warmup longer than the run never reaches --lr (steps are 1 here).
        ("--warmup", "2", "--warmup 2 is longer than the run's 1 step:"),
    ] {
        fails_with(&["train", "--ckpt", &fx, "--out", &out, "--steps", "1", "--batch", "2", "--ctx", "16", flag, value], &[needle]);
        assert!(!dir.path().join("run").exists(), "{flag} {value}: the run left a folder");
    }
}

#[test]
fn tf32_off_the_gpu_is_refused_by_name() {
    let fx = s(&fixture_dir());
    let dir = tempfile::tempdir().unwrap();
    let out = s(&dir.path().join("run"));
    fails_with(&["train", "--ckpt", &fx, "--out", &out, "--steps", "1", "--tf32"], &["--tf32", "--device cuda"]);
    assert!(!dir.path().join("run").exists(), "--tf32 on the CPU left a folder");
    fails_with(&["bench", "--what", "train", "--model", "fixture", "--tf32"], &["--tf32", "--device cuda"]);
}

#[test]
fn bench_counts_of_zero_are_refused() {
    // Zero repetitions panicked, zero tokens or batch timed nothing as 0 tokens/s.
    for flag in ["--reps", "--decode-tokens", "--train-steps", "--batch"] {
        fails_with(&["bench", "--what", "train", "--model", "fixture", flag, "0"], &[flag, "at least 1"]);
    }
}

#[test]
fn resume_refuses_settings_it_would_ignore() {
    fails_with(
        &["train", "--resume", "austen-aligned", "--steps", "700", "--lr", "1"],
        &["--resume austen-aligned", "--lr", "saved settings"],
    );
    fails_with(&["train", "--resume", "austen-aligned", "--loss", "ce-reg"], &["--loss"]);
    fails_with(&["train", "--resume", "austen-aligned", "--batch", "2"], &["--batch"]);
}

#[test]
fn command_line_mistakes_are_one_line_naming_the_option() {
    fails_with(&["inspect", "--prompt", "Hi", "--position", "-1"], &["--position", "-1"]);
    fails_with(&["generate", "--prompt", "Hi", "--max-new-tokens", "-1"], &["--max-new-tokens"]);
    fails_with(&["inspect"], &["--prompt"]);
    fails_with(&["generate", "--prompt", "Hi", "--greedy", "--sample"], &["--greedy", "--sample"]);
}

#[test]
#[cfg(target_os = "linux")]
fn output_that_cannot_be_written_is_an_error() {
    let fx = s(&fixture_dir());
    for args in [
        vec!["inspect", "--ckpt", &fx, "--prompt", "Hi"],
        vec!["generate", "--ckpt", &fx, "--prompt", "Hi", "--max-new-tokens", "2"],
        vec!["device", "--device", "cpu"],
    ] {
        let full = std::fs::File::options().write(true).open("/dev/full").unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_alignscope")).args(&args).env("RUST_BACKTRACE", "1").stdout(full).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.trim().starts_with("error: cannot write the output") && err.trim().lines().count() == 1, "{args:?}: {err}");
    }
}

#[test]
fn resume_of_a_checkpoint_without_its_optimizer_state() {
    fails_with(&["train", "--resume", "austen-aligned", "--steps", "700"], &["no optimizer state", "--ckpt"]);
}

#[test]
fn report_refuses_a_prompt_set_that_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let out = s(&dir.path().join("rep"));
    let ck = s(&fixture_dir());
    fails_with(
        &["report", "--ckpt", &ck, "--prompt-tokens", "120", "--max-new-tokens", "16", "--out", &out],
        &["--prompt-tokens 120", "context of 128"],
    );
    assert!(!dir.path().join("rep").exists());
}

#[test]
fn tokenizer_train_never_replaces_a_tokenizer() {
    let ck = fixture_copy();
    let before = std::fs::read(ck.path().join("tokenizer.json")).unwrap();
    fails_with(
        &["tokenizer", "train", "--vocab", "300", "--data", "assets/austen/persuasion.txt", "--out", &s(ck.path())],
        &["tokenizer.json", "not overwritten"],
    );
    assert_eq!(std::fs::read(ck.path().join("tokenizer.json")).unwrap(), before);
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("empty.txt"), "").unwrap();
    let out = tempfile::tempdir().unwrap();
    fails_with(
        &["tokenizer", "train", "--data", &s(&empty.path().join("empty.txt")), "--out", &s(&out.path().join("tok"))],
        &["--data", "no text"],
    );
}

#[test]
fn an_empty_held_out_file_is_refused_before_the_run_writes_anything() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.txt"), "").unwrap();
    let out = dir.path().join("run");
    let args = [
        "train",
        "--ckpt",
        &s(&fixture_dir()),
        "--out",
        &s(&out),
        "--steps",
        "1",
        "--batch",
        "2",
        "--ctx",
        "16",
        "--data",
        "assets/austen/persuasion.txt",
        "--eval-data",
        &s(&dir.path().join("empty.txt")),
        "--eval-every",
        "1",
    ];
    // The run reports what it prepared on stderr first; the error is its last line.
    let (code, _, err) = alignscope(&args, &[]);
    assert_eq!(code, 1, "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: ") && last.contains("empty.txt") && last.contains("--eval-data"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.join("metrics.jsonl").exists());
}

#[test]
fn no_tokens_means_no_speedup() {
    let (code, out, err) = alignscope(
        &["generate", "--ckpt", &s(&fixture_dir()), "--prompt", "Hi", "--max-new-tokens", "0", "--early-exit", "0.5", "--json"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for k in ["speedup", "layer_speedup", "wall_speedup", "seconds"] {
        assert!(v[k].is_null(), "{k} = {}", v[k]);
    }
}

#[test]
fn sweep_and_lens_sizes_that_mean_nothing() {
    let ck = s(&fixture_dir());
    fails_with(&["exits", "--ckpt", &ck, "--gen-prompts", "0", "--gen-tokens", "4"], &["--gen-prompts"]);
    fails_with(&["exits", "--ckpt", &ck, "--gen-tokens", "100000"], &["--gen-tokens 100000", "context"]);
    fails_with(&["inspect", "--ckpt", &ck, "--prompt", "Hi", "--top-k", "0"], &["--top-k"]);
}

#[test]
fn settings_of_another_loss_are_refused() {
    let ck = s(&fixture_dir());
    let dir = tempfile::tempdir().unwrap();
    let out = s(&dir.path().join("run"));
    fails_with(&["train", "--ckpt", &ck, "--out", &out, "--loss", "standard", "--no-alternate"], &["--no-alternate"]);
    fails_with(&["train", "--ckpt", &ck, "--out", &out, "--loss", "aligned", "--beta", "0.5"], &["--beta"]);
    fails_with(&["train", "--ckpt", &ck, "--out", &out, "--tokenizer", &ck], &["--init"]);
}
