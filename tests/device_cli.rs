//! The command-line pieces the GPU check (scripts/device-check.sh) reads: `alignscope
//! device`, `train --json` and `bench --json`, end to end through the binary.

mod common;
use common::*;
use std::process::Command;

fn alignscope(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_alignscope")).args(args).output().unwrap()
}

fn json_lines(out: &std::process::Output, what: &str) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: not a JSON line ({e}): {l}")))
        .collect()
}

#[test]
fn device_names_the_device() {
    let v = json_lines(&alignscope(&["device", "--device", "cpu", "--json"]), "device --json");
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["device"], "cpu");
    assert_eq!(v[0]["detail"], "cpu");
    assert_eq!(v[0]["cuda_built"], cfg!(feature = "cuda"));
    let text = alignscope(&["device", "--device", "cpu"]);
    assert_eq!(String::from_utf8_lossy(&text.stdout).trim(), "cpu");
    let bad = alignscope(&["device", "--device", "tpu"]);
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&bad.stderr).trim(), "error: unknown device \"tpu\": use auto, cpu, cuda or cuda:N");
    if !cfg!(feature = "cuda") {
        let cuda = alignscope(&["device", "--device", "cuda"]);
        assert_eq!(cuda.status.code(), Some(1));
        let err = String::from_utf8_lossy(&cuda.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("error: this alignscope was built without CUDA"), "{err}");
    }
}

/// `train --json` prints on stdout exactly the step and eval records metrics.jsonl keeps.
#[test]
fn train_json_prints_what_metrics_jsonl_records() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("run");
    let data = assets_dir().join("austen/northanger_abbey.txt");
    let eval = assets_dir().join("austen/persuasion.txt");
    let fixture = fixture_dir();
    let args = [
        "train",
        "--ckpt",
        fixture.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--eval-data",
        eval.to_str().unwrap(),
        "--steps",
        "2",
        "--batch",
        "2",
        "--ctx",
        "32",
        "--eval-every",
        "2",
        "--eval-batches",
        "1",
        "--log-lines",
        "--json",
    ];
    let lines = json_lines(&alignscope(&args), "train --json");
    let recorded: Vec<serde_json::Value> =
        std::fs::read_to_string(out_dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "two steps and one evaluation: {lines:?}");
    assert_eq!(recorded.len(), 3);
    assert_eq!(lines[0], recorded[0]);
    assert_eq!(lines[1], recorded[1]);
    assert_eq!(lines[0]["objective"], "aligned");
    assert_eq!(lines[1]["objective"], "standard");
    assert_eq!(lines[0]["layer_losses"].as_array().unwrap().len(), 4);
    assert!(lines[0]["loss"].as_f64().unwrap() > 0.0);
    assert_eq!(lines[2]["step"], 2);
    assert_eq!(lines[2]["eval"], recorded[2]["eval"]);
}

#[test]
fn bench_json_holds_every_measurement() {
    let v = json_lines(
        &alignscope(&[
            "bench",
            "--model",
            "fixture",
            "--reps",
            "1",
            "--decode-tokens",
            "3",
            "--train-steps",
            "1",
            "--batch",
            "2",
            "--device",
            "cpu",
            "--json",
        ]),
        "bench --json",
    );
    assert_eq!(v.len(), 1, "one JSON object and nothing else on stdout");
    let b = &v[0];
    assert_eq!(b["device"], "cpu");
    let inf = &b["inference"][0];
    assert_eq!(inf["model"], "fixture");
    assert!(inf["analysis_ms_median"].as_f64().unwrap() > 0.0);
    let exits: Vec<u64> = inf["decode"].as_array().unwrap().iter().map(|d| d["exit_layer"].as_u64().unwrap()).collect();
    assert_eq!(exits, vec![4, 2]);
    for d in inf["decode"].as_array().unwrap() {
        assert_eq!(d["tokens"], 2, "three tokens, timed from the first");
        assert!(d["tokens_per_sec"].as_f64().unwrap() > 0.0);
    }
    let tr = &b["training"][0];
    assert_eq!((tr["batch"].as_u64(), tr["ctx"].as_u64()), (Some(2), Some(128)));
    let losses: Vec<&str> = tr["losses"].as_array().unwrap().iter().map(|l| l["loss"].as_str().unwrap()).collect();
    assert_eq!(losses, vec!["standard", "aligned"]);
    for l in tr["losses"].as_array().unwrap() {
        assert!(l["tokens_per_sec"].as_f64().unwrap() > 0.0 && l["steps"].as_u64().unwrap() >= 1);
        // A share of the cores where the process's CPU time can be read (Unix), else null.
        if cfg!(unix) {
            assert!(l["cores_busy"].as_f64().is_some_and(|b| b > 0.0), "{l}");
        }
    }
}
