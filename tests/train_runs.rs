//! Training runs end to end: resuming is exact, a kill at any moment (also during a save)
//! leaves the last complete checkpoint, Ctrl-C saves and stops, a diverging run stops with
//! its last good checkpoint, and training from scratch works with our own tokenizer.

mod common;
use alignscope::model::Checkpoint;
use alignscope::train::job::{RunPlan, TrainJob};
use alignscope::train::save::{is_resumable, read_state};
use alignscope::train::{InitFrom, LossKind, TrainConfig, TrainEvent};
use candle_core::Device;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn data_file() -> PathBuf {
    assets_dir().join("austen/northanger_abbey.txt")
}

fn config(out: &Path, steps: usize) -> TrainConfig {
    let mut c = TrainConfig::finetune(
        InitFrom::Checkpoint(fixture_dir().to_string_lossy().into()),
        out.to_path_buf(),
        LossKind::Aligned,
        vec![data_file()],
    );
    c.steps = steps;
    c.batch = 4;
    c.ctx = 32;
    c.lr = 1e-3;
    c.min_lr = 1e-4;
    c.warmup = 2;
    c.eval_every = 0;
    c.save_every = 100;
    c.seed = 7;
    c
}

/// Every parameter of a saved checkpoint, as raw f32 values.
fn params(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let ck = Checkpoint::load_dir(dir, &Device::Cpu).unwrap();
    ck.model.params().into_iter().map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect()
}

fn run_to_end(job: TrainJob) -> Vec<TrainEvent> {
    let events: Vec<TrainEvent> = job.events().iter().collect();
    job.join();
    if let Some(TrainEvent::Failed { message }) = events.iter().find(|e| matches!(e, TrainEvent::Failed { .. })) {
        panic!("run failed: {message}");
    }
    events
}

#[test]
fn stopped_and_resumed_run_equals_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("interrupted"));
    run_to_end(TrainJob::start(config(&a, 8), &Device::Cpu));

    // Stop the second run after its third step (it may finish the step in flight).
    let job = TrainJob::start(config(&b, 8), &Device::Cpu);
    let mut stopped_at = None;
    for ev in job.events().iter() {
        match ev {
            TrainEvent::Progress(m) if m.step == 3 => job.stop(),
            TrainEvent::Finished { step, stopped_early, .. } => {
                assert!(stopped_early);
                stopped_at = Some(step);
            }
            TrainEvent::Failed { message } => panic!("{message}"),
            _ => {}
        }
    }
    job.join();
    let k = stopped_at.expect("finished event");
    assert!((3..8).contains(&k), "stopped at {k}");
    assert_eq!(read_state(&b).unwrap().step, k);
    assert!(is_resumable(&b));

    let events = run_to_end(TrainJob::resume(b.clone(), None, &Device::Cpu));
    // The first event after the data is prepared: the run starts where it stopped.
    let started = events.iter().find(|e| !matches!(e, TrainEvent::Preparing { .. }));
    assert!(matches!(started, Some(TrainEvent::Started { start_step, .. }) if *start_step == k));
    assert_eq!(params(&a), params(&b), "resumed parameters differ from the uninterrupted run");
    // The metrics history covers every step once: steps 1..=8, each exactly once, in order.
    assert_eq!(step_lines(&b), (1..=8).collect::<Vec<u64>>());
}

/// The steps of the metrics lines of a run folder, in file order.
fn step_lines(dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("each line is JSON"))
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().expect("a step number"))
        .collect()
}

fn cli_train(out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_alignscope"));
    cmd.args(["train", "--ckpt"])
        .arg(fixture_dir())
        .arg("--out")
        .arg(out)
        .arg("--data")
        .arg(data_file())
        .args(["--loss", "aligned", "--batch", "4", "--ctx", "32", "--warmup", "2", "--eval-every", "0", "--seed", "3", "--log-lines"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn cli_resume(out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_alignscope"));
    cmd.args(["train", "--resume"]).arg(out).arg("--log-lines").stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// kill -9 at many moments, saves included (a save after every step): the folder is always
/// a complete, loadable, resumable checkpoint, and resuming until the end gives exactly
/// the parameters of a run that was never killed.
#[test]
fn kill_dash_nine_at_any_moment_keeps_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (straight, killed) = (tmp.path().join("straight"), tmp.path().join("killed"));
    let steps = "30";
    let st = cli_train(&straight, &["--steps", steps, "--save-every", "1"]).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));

    // Each round waits for the run to save a new step, then kills it a few milliseconds
    // later: the phases spread the kills over training, writing and swapping folders.
    let phases_ms = [0u64, 1, 2, 3, 5, 7, 9, 11, 13, 17];
    let mut kills = 0;
    let mut last_step = 0;
    for phase in phases_ms {
        let mut cmd = if killed.exists() { cli_resume(&killed) } else { cli_train(&killed, &["--steps", steps, "--save-every", "1"]) };
        let mut child = cmd.spawn().unwrap();
        let t0 = std::time::Instant::now();
        let mut finished = false;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "training failed");
                finished = true;
                break;
            }
            let step = read_state(&killed).map(|s| s.step).unwrap_or(0);
            if step > last_step {
                break;
            }
            assert!(t0.elapsed().as_secs() < 120, "no progress");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if !finished {
            std::thread::sleep(std::time::Duration::from_millis(phase));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            kills += 1;
        }
        // Whatever the moment of the kill, the folder is a complete checkpoint.
        let state = read_state(&killed).expect("training state readable after kill -9");
        assert!(is_resumable(&killed));
        Checkpoint::load_dir(&killed, &Device::Cpu).expect("checkpoint loads after kill -9");
        assert!(state.step >= last_step);
        last_step = state.step;
        if finished {
            break;
        }
    }
    if last_step < 30 {
        let st = cli_resume(&killed).output().unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    }
    assert!(kills >= 1, "the runs finished before any kill: make them longer");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(read_state(&killed).unwrap().step, 30);
    assert_eq!(params(&straight), params(&killed), "killed-and-resumed parameters differ ({leftovers:?})");
    // Steps are logged live between saves; the lines a kill left past the saved step were
    // dropped by the resume, so the history holds every step once.
    assert_eq!(step_lines(&killed), (1..=30).collect::<Vec<u64>>());
}

#[test]
fn ctrl_c_saves_and_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut child = cli_train(&out, &["--steps", "100000", "--save-every", "1000", "--lr", "1e-3"]).spawn().unwrap();
    // Wait until it has trained a step (its first progress line), however slow the machine,
    // then interrupt like a terminal would.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all += &line;
            all.push('\n');
        }
        all
    });
    let trained = rx.iter().any(|line| line.contains("/100000 loss"));
    assert!(trained, "the run ended before its first step");
    // SAFETY: sends a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let err = reader.join().unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("stopped at step"), "{err}");
    let state = read_state(&out).unwrap();
    assert!(state.step >= 1 && state.step < 100000);
    assert!(is_resumable(&out));
}

#[test]
fn a_diverging_run_stops_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let output = cli_train(&out, &["--steps", "50", "--save-every", "1", "--lr", "1e9", "--grad-clip", "0"]).output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{err}");
    let last = err.lines().last().unwrap();
    assert!(last.starts_with("error: the loss became"), "{err}");
    assert!(last.contains("the last good checkpoint (step"), "{err}");
    let state = read_state(&out).unwrap();
    assert!(last.contains(&format!("(step {})", state.step)), "{err}");
    let ck = Checkpoint::load_dir(&out, &Device::Cpu).unwrap();
    for (name, t) in ck.model.params() {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{name} holds non-finite values");
    }
}

/// From scratch: our own byte-level BPE, random GPT-2 weights, a few steps, a checkpoint
/// that loads and generates.
#[test]
fn tokenizer_and_training_from_scratch() {
    let tmp = tempfile::tempdir().unwrap();
    let tok_dir = tmp.path().join("tok");
    let st = Command::new(env!("CARGO_BIN_EXE_alignscope"))
        .args(["tokenizer", "train", "--vocab", "300", "--data"])
        .arg(data_file())
        .arg("--out")
        .arg(&tok_dir)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let tok = tokenizers::Tokenizer::from_file(tok_dir.join("tokenizer.json")).unwrap();
    assert_eq!(tok.get_vocab_size(true), 300);
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(0));
    let text = "Catherine Morland, an heroine";
    assert_eq!(tok.decode(tok.encode(text, false).unwrap().get_ids(), false).unwrap(), text);

    let cfg = tmp.path().join("config.json");
    std::fs::write(&cfg, r#"{"n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 300, "n_positions": 64}"#).unwrap();
    let out = tmp.path().join("scratch");
    let st = Command::new(env!("CARGO_BIN_EXE_alignscope"))
        .args(["train", "--init"])
        .arg(&cfg)
        .arg("--tokenizer")
        .arg(&tok_dir)
        .arg("--out")
        .arg(&out)
        .arg("--data")
        .arg(data_file())
        .args(["--loss", "standard", "--steps", "20", "--batch", "4", "--ctx", "32", "--lr", "3e-3", "--log-lines"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(st.status.success(), "{err}");
    let ck = Checkpoint::load_dir(&out, &Device::Cpu).unwrap();
    assert_eq!(ck.model.n_layer(), 2);
    assert_eq!(ck.eos_id(), Some(0));
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let first = lines.first().unwrap()["loss"].as_f64().unwrap();
    let last = lines.iter().rev().find_map(|l| l["loss"].as_f64()).unwrap();
    assert!(last < first - 0.5, "loss did not fall: {first} -> {last}");
    // Random init is N(0, 0.02): the first loss is close to ln(vocab).
    assert!((first - (300f64).ln()).abs() < 0.2, "first loss {first}");
}

/// The run's files: HF model folder plus training state, metrics and config.
#[test]
fn a_checkpoint_folder_holds_the_model_and_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut c = config(&out, 3);
    c.eval_every = 3;
    c.eval_data = vec![assets_dir().join("austen/persuasion.txt")];
    c.eval_batches = 1;
    let events = run_to_end(TrainJob::spawn(RunPlan::New(Box::new(c.clone())), Device::Cpu, None));
    let n_layer = 4;
    let progress: Vec<_> = events.iter().filter_map(|e| if let TrainEvent::Progress(m) = e { Some(m) } else { None }).collect();
    assert_eq!(progress.len(), 3);
    assert_eq!(progress[0].objective, LossKind::Aligned);
    assert_eq!(progress[1].objective, LossKind::Standard);
    assert!(progress.iter().all(|m| m.layer_losses.len() == n_layer && m.layer_losses.iter().all(|l| l.is_finite())));
    assert!(events.iter().any(|e| matches!(e, TrainEvent::Eval(ev) if ev.layer_acc.len() == n_layer)));
    assert!(events.iter().any(|e| matches!(e, TrainEvent::CheckpointSaved { step: 3, .. })));
    for f in ["config.json", "model.safetensors", "tokenizer.json", "training_state.json", "optimizer.safetensors", "metrics.jsonl"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let state = read_state(&out).unwrap();
    assert_eq!(state.config.ctx, 32);
    assert_eq!(state.config.loss, LossKind::Aligned);
    // The tokenizer is the base checkpoint's, byte for byte.
    assert_eq!(std::fs::read(out.join("tokenizer.json")).unwrap(), std::fs::read(fixture_dir().join("tokenizer.json")).unwrap());
    // Tied head: no lm_head.weight, keys with the transformer. prefix (transformers 5's layout).
    let st = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(!st.contains_key("lm_head.weight") && st.contains_key("transformer.h.0.attn.c_attn.weight"));
}

/// A new run into a folder that holds a checkpoint needs --overwrite, and replaces the
/// checkpoint whole; a folder without one (here: a run killed before its first save, and
/// a user's notes) is trained into. Files a save does not own are kept either way.
#[test]
fn overwrite_replaces_a_checkpoint_and_a_folder_without_one_is_trained_into() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("metrics.jsonl"), "{\"step\":9,\"loss\":1.0}\n").unwrap();
    std::fs::write(out.join("run_status.json"), r#"{"engine":"alignscope","status":"running","pid":1,"host":"elsewhere"}"#).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let run = |extra: &[&str]| cli_train(&out, extra).output().unwrap();
    let o = run(&["--steps", "2", "--save-every", "0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(step_lines(&out), vec![1, 2]);
    let o = run(&["--steps", "3"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists: continue it with --resume"));
    assert_eq!(read_state(&out).unwrap().step, 2, "a refused run leaves the checkpoint as it was");
    let o = run(&["--steps", "3", "--overwrite"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!((read_state(&out).unwrap().step, step_lines(&out)), (3, vec![1, 2, 3]));
    assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "mine");
    assert_eq!(alignscope::train::follow::read_status(&out).unwrap().status, "finished");
}
