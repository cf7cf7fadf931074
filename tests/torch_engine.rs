//! The PyTorch engine (scripts/torch/) against alignscope and the reference fixture:
//! its objectives' losses and gradients, two torchrun processes against one, the same
//! numbers as alignscope's own trainer on the same run, checkpoints that alignscope loads
//! (with transformers' numerics) and continues, runs that each engine continues from the
//! other, and the follower that watches runs started outside this process.
//!
//! Needs a Python with torch, transformers, tokenizers and safetensors: `$ALIGNSCOPE_PYTHON`
//! (required to work when set, as `.ci/run` sets it), else the virtual environment
//! `.ci/run` creates, else `python3`. Without PyTorch the tests say so loudly and pass.

mod common;
mod tui_support;
use alignscope::model::Checkpoint;
use alignscope::train::follow::{Launch, RunFollower, RunStatus, TorchOptions, read_status};
use alignscope::train::job::{RunPlan, TrainJob};
use alignscope::train::save::read_state;
use alignscope::train::{EvalMetrics, InitFrom, LossKind, StepMetrics, TrainConfig, TrainEvent};
use candle_core::{Device, Tensor};
use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const MODULES: [&str; 4] = ["torch", "transformers", "tokenizers", "safetensors"];

/// The interpreter with PyTorch, or None (after a loud banner) when there is none.
fn python() -> Option<PathBuf> {
    static PY: OnceLock<Option<PathBuf>> = OnceLock::new();
    PY.get_or_init(|| {
        let required = std::env::var_os("ALIGNSCOPE_PYTHON").is_some_and(|p| !p.is_empty());
        let py = alignscope::paths::torch_python();
        let probe = format!("import importlib.util, sys; sys.exit(0 if all(importlib.util.find_spec(m) for m in {MODULES:?}) else 3)");
        let ok = Command::new(&py).args(["-c", &probe]).status().is_ok_and(|s| s.success());
        if ok {
            return Some(py);
        }
        if required {
            panic!("ALIGNSCOPE_PYTHON={} lacks one of {MODULES:?} (run .ci/run to set up the environment)", py.display());
        }
        // Written to the stderr handle, not with eprintln!: the test harness would swallow
        // that for a passing test, and this must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "\n{bar}\n  SKIPPED tests/torch_engine.rs: no Python with {MODULES:?} ({} has none).\n  \
             The PyTorch engine is NOT tested. Run .ci/run (it installs them into a venv) or\n  \
             set ALIGNSCOPE_PYTHON to an interpreter that has them.\n{bar}\n",
            py.display(),
            bar = "!".repeat(78)
        );
        None
    })
    .clone()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the interpreter with `args` from the repository root; panics with its output on failure.
fn run_python(py: &Path, args: &[String]) -> String {
    let out = Command::new(py)
        .args(args)
        .current_dir(repo())
        // Two cores shared with the rest of the suite: one thread per process is fastest.
        .env("OMP_NUM_THREADS", "1")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("start python");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "python {} failed:\n{text}", args.join(" "));
    text
}

fn trainer() -> String {
    repo().join("scripts/torch/train.py").to_string_lossy().into_owned()
}

fn s(x: impl ToString) -> String {
    x.to_string()
}

/// Small texts for the runs (the start of two Austen novels), written once.
fn texts() -> (PathBuf, PathBuf) {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let cut = |name: &str, n: usize, to: &str| {
            let text = std::fs::read_to_string(assets_dir().join("austen").join(name)).unwrap();
            let end = text.char_indices().map(|(i, _)| i).find(|&i| i >= n).unwrap();
            std::fs::write(d.path().join(to), &text[..end]).unwrap();
        };
        cut("emma.txt", 30_000, "train.txt");
        cut("persuasion.txt", 8_000, "eval.txt");
        d
    });
    (dir.path().join("train.txt"), dir.path().join("eval.txt"))
}

/// The run every test compares: 3 steps from the fixture, evaluations at steps 2 and 3,
/// saves at 2 and 3. lr 1e-4: see the torchrun test for why not larger.
fn config(out: &Path) -> TrainConfig {
    let (train, eval) = texts();
    let mut c = TrainConfig::finetune(
        InitFrom::Checkpoint(fixture_dir().to_string_lossy().into()),
        out.to_path_buf(),
        LossKind::Aligned,
        vec![train],
    );
    c.eval_data = vec![eval];
    c.steps = 3;
    c.batch = 4;
    c.ctx = 32;
    c.lr = 1e-4;
    c.min_lr = 1e-5;
    c.warmup = 1;
    c.eval_every = 2;
    c.eval_batches = 2;
    c.save_every = 2;
    c.seed = 3;
    c
}

/// The trainer's arguments for [`config`] (the follower builds the same from a config).
fn torch_args(out: &Path) -> Vec<String> {
    let mut a = vec![trainer()];
    a.extend(alignscope::train::follow::torch_args(&config(out)));
    a.extend([s("--log-every"), s("0")]);
    a
}

static WORK: OnceLock<tempfile::TempDir> = OnceLock::new();
fn work() -> &'static Path {
    WORK.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// The one-process PyTorch run of [`config`], trained once and shared (read-only).
fn torch_run(py: &Path) -> PathBuf {
    static DONE: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = done.as_ref() {
        return p.clone();
    }
    let out = work().join("torch-1proc");
    run_python(py, &torch_args(&out));
    *done = Some(out.clone());
    out
}

/// alignscope's own run of [`config`], trained once and shared (read-only).
fn alignscope_run() -> PathBuf {
    static DONE: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = done.as_ref() {
        return p.clone();
    }
    let out = work().join("alignscope");
    finish(TrainJob::start(config(&out), &Device::Cpu));
    *done = Some(out.clone());
    out
}

fn finish(job: TrainJob) -> Vec<TrainEvent> {
    let events: Vec<TrainEvent> = job.events().iter().collect();
    job.join();
    if let Some(TrainEvent::Failed { message }) = events.iter().find(|e| matches!(e, TrainEvent::Failed { .. })) {
        panic!("alignscope run failed: {message}");
    }
    events
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn tensors(path: &Path) -> HashMap<String, Vec<f64>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec1::<f64>().unwrap()))
        .collect()
}

enum Line {
    Step(StepMetrics),
    Eval(EvalMetrics, usize),
}

/// metrics.jsonl parsed as alignscope's records: step lines and eval lines.
fn metrics(dir: &Path) -> Vec<Line> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"));
            match v.get("eval") {
                Some(e) => Line::Eval(
                    serde_json::from_value(e.clone()).unwrap_or_else(|e| panic!("not an eval record: {l}: {e}")),
                    v["eval_tokens"].as_u64().expect("eval_tokens") as usize,
                ),
                None => Line::Step(serde_json::from_str(l).unwrap_or_else(|e| panic!("not a step record: {l}: {e}"))),
            }
        })
        .collect()
}

/// Two runs' metrics agree line by line: the same steps, objectives, learning rates and
/// eval token counts, losses within `tol` (relative), accuracies equal.
fn same_metrics(what: &str, a: &[Line], b: &[Line], tol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: number of metrics lines");
    let close = |x: f64, y: f64| (x - y).abs() <= tol * y.abs().max(1.0);
    for (x, y) in a.iter().zip(b) {
        match (x, y) {
            (Line::Step(x), Line::Step(y)) => {
                assert_eq!((x.step, x.total_steps, &x.objective), (y.step, y.total_steps, &y.objective), "{what}");
                assert!(close(x.loss, y.loss), "{what}: step {} loss {} vs {}", x.step, x.loss, y.loss);
                assert!(close(x.lr, y.lr), "{what}: step {} lr {} vs {}", x.step, x.lr, y.lr);
                assert!(close(x.grad_norm, y.grad_norm), "{what}: step {} grad norm {} vs {}", x.step, x.grad_norm, y.grad_norm);
                assert_eq!(x.layer_losses.len(), y.layer_losses.len());
                for (l, (p, q)) in x.layer_losses.iter().zip(&y.layer_losses).enumerate() {
                    assert!(close(*p, *q), "{what}: step {} layer {} CE {p} vs {q}", x.step, l + 1);
                }
            }
            (Line::Eval(x, nx), Line::Eval(y, ny)) => {
                assert_eq!((x.step, nx), (y.step, ny), "{what}: eval step and tokens");
                for (p, q) in x.layer_losses.iter().zip(&y.layer_losses) {
                    assert!(close(*p, *q), "{what}: eval @ {} CE {p} vs {q}", x.step);
                }
                assert_eq!(x.layer_acc, y.layer_acc, "{what}: eval @ {} accuracy", x.step);
            }
            _ => panic!("{what}: a step line against an eval line"),
        }
    }
}

#[test]
fn objectives_match_the_reference_fixture() {
    let Some(py) = python() else { return };
    let out = work().join("probe-grads");
    run_python(
        &py,
        &[
            repo().join("scripts/torch/probe.py").to_string_lossy().into_owned(),
            s("grads"),
            s("--ckpt"),
            fixture_dir().to_string_lossy().into_owned(),
            s("--batch-json"),
            fixture_dir().join("expected.json").to_string_lossy().into_owned(),
            s("--out"),
            out.to_string_lossy().into_owned(),
        ],
    );
    let exp = expected();
    let got: Value = serde_json::from_str(&std::fs::read_to_string(out.join("losses.json")).unwrap()).unwrap();
    for kind in ["aligned", "standard"] {
        let (g, w) = (got[kind]["loss"].as_f64().unwrap(), exp["train"][kind]["loss"].as_f64().unwrap());
        assert!(((g - w) / w).abs() < 1e-5, "{kind} loss {g} vs {w}");
        assert_close(&format!("{kind} layer losses"), &f64s(&got[kind]["layer_losses"]), &f64s(&exp["train"][kind]["layer_losses"]), 1e-5);
        let ours = tensors(&out.join(format!("grads_{kind}.safetensors")));
        let reference = tensors(&fixture_dir().join(format!("grads_{kind}.safetensors")));
        assert_eq!(ours.len(), reference.len(), "{kind}: a gradient for every parameter");
        for (name, want) in &reference {
            let g = ours.get(name).unwrap_or_else(|| panic!("no gradient for {name}"));
            assert_close(&format!("{kind} d loss / d {name}"), g, want, 1e-5);
        }
    }
}

/// Two processes with half the batch each (gloo on CPU) end where one process with the
/// whole batch does: every rank draws the whole step's windows and keeps its half.
#[test]
fn torchrun_two_processes_equal_one_process() {
    let Some(py) = python() else { return };
    let one = torch_run(&py);
    let two = work().join("torch-2proc");
    // Started the way the explorer starts it: torchrun as a child, followed.
    let mut o = options(&py);
    o.nproc = 2;
    let mut l = Launch::torch(&RunPlan::New(Box::new(config(&two))), &o).unwrap();
    assert!(l.command_line().contains("-m torch.distributed.run --standalone --nproc_per_node 2"), "{}", l.command_line());
    l.env.push((s("HF_HUB_OFFLINE"), s("1")));
    let f = RunFollower::launch(&l).unwrap();
    let ev = drain(&f, Duration::from_secs(300));
    assert!(matches!(ev.last(), Some(TrainEvent::Finished { step: 3, stopped_early: false, .. })), "{ev:?}\n{}", log(&f));
    assert_eq!(progress_steps(&ev), vec![1, 2, 3]);
    assert_eq!(saved_steps(&ev), vec![2, 3]);
    let status = read_status(&two).expect("run_status.json");
    assert_eq!(status.status, "finished");
    let state: Value = serde_json::from_str(&std::fs::read_to_string(two.join("training_state.json")).unwrap()).unwrap();
    assert_eq!(state["torch"]["world_size"], 2, "the run says it ran on two processes");
    assert_eq!(state["step"], 3);
    // Adam divides each gradient by its own magnitude, so elements whose true gradient is
    // zero (the attention key biases) move by whatever rounding leaves, differently for a
    // different reduction order; their gap grows with lr (1.6e-5 at lr 1e-3, 3 steps).
    // At lr 1e-4 every parameter must agree within 1e-5.
    let (a, b) = (tensors(&one.join("model.safetensors")), tensors(&two.join("model.safetensors")));
    assert_eq!(a.len(), b.len());
    for (name, x) in &a {
        assert_close(&format!("{name} after 3 steps, 2 processes vs 1"), &b[name], x, 1e-5);
    }
    same_metrics("2 processes vs 1", &metrics(&two), &metrics(&one), 1e-5);
}

#[test]
fn torch_runs_match_alignscope_and_each_engine_continues_the_other() {
    let Some(py) = python() else { return };
    let t = torch_run(&py);
    let a = alignscope_run();

    // The same run on both engines: same windows, objectives, schedule, clipping, AdamW.
    let (mt, ma) = (metrics(&t), metrics(&a));
    assert_eq!(mt.len(), 5, "3 step lines and evaluations at steps 2 and 3");
    same_metrics("PyTorch engine vs alignscope", &mt, &ma, 1e-5);
    let (st, sa) = (read_state(&t).unwrap(), read_state(&a).unwrap());
    assert_eq!((st.engine.as_str(), sa.engine.as_str()), ("torch", "alignscope"));
    assert_eq!((st.step, &st.data_rng_position, st.tokens_seen), (sa.step, &sa.data_rng_position, sa.tokens_seen));
    let mut cfg_t = st.config.clone();
    cfg_t.out = sa.config.out.clone();
    assert_eq!(cfg_t, sa.config, "the saved run configuration");
    let (wt, wa) = (tensors(&t.join("model.safetensors")), tensors(&a.join("model.safetensors")));
    let mut names: Vec<_> = wt.keys().cloned().collect();
    names.sort();
    let mut names_a: Vec<_> = wa.keys().cloned().collect();
    names_a.sort();
    assert_eq!(names, names_a, "the same key layout (transformer. prefix, tied head omitted)");
    let ot = tensors(&t.join("optimizer.safetensors"));
    assert_eq!(ot.len(), 2 * names.len(), "m. and v. moments of every parameter");

    // alignscope loads the PyTorch checkpoint with transformers' numerics: the logit lens
    // at every layer against transformers' own hidden states, ln_f and lm_head.
    let ids: Vec<u32> = u32s(&expected()["cases"][0]["input_ids"]);
    let lens_file = work().join("lens.safetensors");
    let id_list = ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    run_python(
        &py,
        &[
            repo().join("scripts/torch/probe.py").to_string_lossy().into_owned(),
            s("lens"),
            s("--ckpt"),
            t.to_string_lossy().into_owned(),
            s("--ids"),
            id_list,
            s("--out"),
            lens_file.to_string_lossy().into_owned(),
        ],
    );
    let hf = tensors(&lens_file);
    let ck = Checkpoint::load_dir(&t, &Device::Cpu).unwrap();
    let x = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).unwrap();
    let hs = ck.model.residuals(&x).unwrap();
    for (l, h) in hs.iter().enumerate() {
        let ours: Vec<f64> =
            ck.model.head(h).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect();
        assert_close(&format!("lens logits at layer {l}"), &ours, &hf[&format!("lens.{l}")], 1e-4);
    }

    // Continuations to step 5: alignscope continues the PyTorch run and its own, PyTorch
    // continues alignscope's. All three are the same run.
    let (t_by_a, a_by_a, a_by_t) = (work().join("t-by-alignscope"), work().join("a-by-alignscope"), work().join("a-by-torch"));
    copy_dir(&t, &t_by_a);
    copy_dir(&a, &a_by_a);
    copy_dir(&a, &a_by_t);
    finish(TrainJob::resume(t_by_a.clone(), Some(5), &Device::Cpu));
    finish(TrainJob::resume(a_by_a.clone(), Some(5), &Device::Cpu));
    let out = run_python(&py, &[trainer(), s("--resume"), a_by_t.to_string_lossy().into_owned(), s("--steps"), s("5")]);
    assert!(out.contains("continuing a run saved by alignscope"), "the PyTorch engine says whose run it continues:\n{out}");
    let reference = metrics(&a_by_a);
    assert_eq!(reference.len(), 9, "5 step lines and evaluations at steps 2, 3 (the end of the first run), 4 and 5");
    same_metrics("alignscope continuing the PyTorch run", &metrics(&t_by_a), &reference, 1e-5);
    same_metrics("PyTorch continuing alignscope's run", &metrics(&a_by_t), &reference, 1e-5);
    assert_eq!(read_state(&a_by_t).unwrap().engine, "torch");
    assert_eq!(read_state(&t_by_a).unwrap().engine, "alignscope");
    assert_eq!(read_state(&a_by_t).unwrap().data_rng_position, read_state(&a_by_a).unwrap().data_rng_position);
}

/// Events until the run ends (Finished or Failed), with a deadline.
fn drain(f: &RunFollower, limit: Duration) -> Vec<TrainEvent> {
    let deadline = Instant::now() + limit;
    let mut events = vec![];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the run did not end within {limit:?}; events so far: {events:?}; log:\n{}", log(f));
        match f.events().recv_timeout(left.min(Duration::from_millis(500))) {
            Ok(e) => {
                let end = matches!(e, TrainEvent::Finished { .. } | TrainEvent::Failed { .. });
                events.push(e);
                if end {
                    return events;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("the follower ended without a last word ({e}); events: {events:?}"),
        }
    }
}

fn log(f: &RunFollower) -> String {
    std::fs::read_to_string(f.log_path()).unwrap_or_default()
}

fn progress_steps(events: &[TrainEvent]) -> Vec<usize> {
    events.iter().filter_map(|e| if let TrainEvent::Progress(m) = e { Some(m.step) } else { None }).collect()
}

fn saved_steps(events: &[TrainEvent]) -> Vec<usize> {
    events.iter().filter_map(|e| if let TrainEvent::CheckpointSaved { step, .. } = e { Some(*step) } else { None }).collect()
}

fn eval_steps(events: &[TrainEvent]) -> Vec<usize> {
    events.iter().filter_map(|e| if let TrainEvent::Eval(m) = e { Some(m.step) } else { None }).collect()
}

fn options(py: &Path) -> TorchOptions {
    let mut o = TorchOptions::new(1);
    o.python = py.to_path_buf();
    o.extra = vec![s("--log-every"), s("0")];
    o
}

fn launch(plan: &RunPlan, py: &Path) -> RunFollower {
    let mut l = Launch::torch(plan, &options(py)).unwrap();
    l.env.push((s("OMP_NUM_THREADS"), s("1")));
    l.env.push((s("HF_HUB_OFFLINE"), s("1")));
    RunFollower::launch(&l).unwrap()
}

#[test]
fn follower_follows_started_and_attached_torch_runs() {
    let Some(py) = python() else { return };
    let t = torch_run(&py);

    // A PyTorch run started as a child: resume a copy of the 3-step run up to step 5.
    let dir = work().join("followed");
    copy_dir(&t, &dir);
    let f = launch(&RunPlan::Resume { dir: dir.clone(), steps: Some(5) }, &py);
    let ev = drain(&f, Duration::from_secs(300));
    assert!(
        matches!(&ev[0], TrainEvent::Started { start_step: 3, total_steps: 5, n_layer: 4, out } if out == &dir),
        "first event: {:?}",
        ev[0]
    );
    assert_eq!(progress_steps(&ev), vec![1, 2, 3, 4, 5], "the history, then the new steps");
    assert_eq!(eval_steps(&ev), vec![2, 3, 4, 5]);
    assert_eq!(saved_steps(&ev), vec![4, 5], "the saves of this run (not the checkpoint it started from)");
    assert!(matches!(ev.last(), Some(TrainEvent::Finished { step: 5, stopped_early: false, .. })), "{:?}", ev.last());
    f.join();
    let text = std::fs::read_to_string(dir.join("train.log")).expect("the run's output is logged in its folder");
    assert!(text.contains("finished at step 5"), "{text}");
    // The PyTorch engine continued its own run as alignscope continues it.
    let by_alignscope = work().join("t-by-alignscope-for-follow");
    copy_dir(&t, &by_alignscope);
    finish(TrainJob::resume(by_alignscope.clone(), Some(5), &Device::Cpu));
    same_metrics("PyTorch continuing its own run", &metrics(&dir), &metrics(&by_alignscope), 1e-5);

    // Attaching to the ended run replays it.
    let a = RunFollower::attach(&dir).unwrap();
    let ev = drain(&a, Duration::from_secs(30));
    assert!(matches!(&ev[0], TrainEvent::Started { start_step: 3, total_steps: 5, .. }), "{:?}", ev[0]);
    assert_eq!(progress_steps(&ev), vec![1, 2, 3, 4, 5]);
    assert_eq!(saved_steps(&ev), vec![5]);
    assert!(matches!(ev.last(), Some(TrainEvent::Finished { step: 5, stopped_early: false, .. })));

    // A long run started here, a second follower attached while it runs, and a stop.
    let long = work().join("stopped");
    let mut cfg = config(&long);
    cfg.steps = 100_000;
    cfg.eval_every = 0;
    cfg.save_every = 0;
    let f = launch(&RunPlan::New(Box::new(cfg)), &py);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut first = vec![];
    while !first.iter().any(|e| matches!(e, TrainEvent::Progress(_))) {
        assert!(Instant::now() < deadline, "no step within the deadline: {first:?}\n{}", log(&f));
        if let Ok(e) = f.events().recv_timeout(Duration::from_millis(500)) {
            assert!(!matches!(e, TrainEvent::Failed { .. }), "{e:?}\n{}", log(&f));
            first.push(e);
        }
    }
    assert!(matches!(first[0], TrainEvent::Started { start_step: 0, total_steps: 100_000, .. }), "{:?}", first[0]);
    let watcher = RunFollower::attach(&long).unwrap();
    let seen = loop {
        match watcher.events().recv_timeout(Duration::from_secs(60)).expect("the attached follower sees the run") {
            TrainEvent::Progress(m) => break m.step,
            TrainEvent::Started { total_steps, .. } => assert_eq!(total_steps, 100_000),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(seen >= 1);
    f.stop().unwrap();
    let rest = drain(&f, Duration::from_secs(120));
    let Some(TrainEvent::Finished { step, stopped_early: true, .. }) = rest.last() else { panic!("{rest:?}\n{}", log(&f)) };
    let step = *step;
    assert!((1..100_000).contains(&step));
    assert_eq!(saved_steps(&rest), vec![step], "a stop saves the step it stopped at");
    let watched = drain(&watcher, Duration::from_secs(30));
    assert!(matches!(watched.last(), Some(TrainEvent::Finished { step: s2, stopped_early: true, .. }) if *s2 == step), "{watched:?}");
    assert_eq!(read_state(&long).unwrap().step, step);
    let status: RunStatus = read_status(&long).unwrap();
    assert_eq!((status.status.as_str(), status.step), ("stopped", Some(step)));
    assert!(!long.join("stop").exists(), "the stop request is cleared");
    f.join();
}

/// alignscope's own CLI runs are followed live like the PyTorch engine's (this needs no
/// Python): every step as it is trained, long before any save, and a stop through the
/// folder's stop file saves and ends the run; attaching after the end replays it.
#[test]
fn follower_follows_an_alignscope_run_live_and_stops_it() {
    let dir = work().join("alignscope-followed");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_alignscope"));
    let (train, eval) = texts();
    let p = |p: &Path| p.to_string_lossy().into_owned();
    // No save before the end or a stop (--save-every 0): whatever is seen is live.
    #[rustfmt::skip]
    let args = [
        s("train"), s("--log-lines"), s("--ckpt"), p(&fixture_dir()), s("--out"), p(&dir),
        s("--data"), p(&train), s("--eval-data"), p(&eval), s("--steps"), s("100000"), s("--batch"), s("4"),
        s("--ctx"), s("32"), s("--lr"), s("1e-4"), s("--eval-every"), s("2"), s("--eval-batches"), s("1"),
        s("--save-every"), s("0"),
    ];
    let mut child = Command::new(bin).args(&args).stderr(std::process::Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while read_status(&dir).is_none() {
        assert!(Instant::now() < deadline, "alignscope wrote no run status");
        assert!(child.try_wait().unwrap().is_none(), "alignscope train ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = read_status(&dir).unwrap();
    assert_eq!((status.engine.as_str(), status.status.as_str()), ("alignscope", "running"));
    assert_eq!((status.pid, status.total_steps, status.n_layer), (Some(child.id() as i64), Some(100_000), Some(4)));
    let f = RunFollower::attach(&dir).unwrap();
    let mut ev = vec![];
    while progress_steps(&ev).last().is_none_or(|&s| s < 3) {
        match f.events().recv_timeout(Duration::from_secs(60)).expect("steps arrive while the run trains") {
            e @ TrainEvent::Failed { .. } => panic!("{e:?}"),
            e => ev.push(e),
        }
    }
    assert!(matches!(&ev[0], TrainEvent::Started { start_step: 0, total_steps: 100_000, n_layer: 4, .. }), "{:?}", ev[0]);
    assert!(saved_steps(&ev).is_empty() && read_state(&dir).is_err(), "nothing was saved yet: the steps came live");
    assert!(eval_steps(&ev).contains(&2), "{ev:?}");
    f.stop().unwrap();
    ev.extend(drain(&f, Duration::from_secs(120)));
    assert!(child.wait().unwrap().success());
    let Some(TrainEvent::Finished { step, stopped_early: true, .. }) = ev.last() else { panic!("{:?}", ev.last()) };
    let step = *step;
    assert_eq!(saved_steps(&ev), vec![step], "a stop saves the step it stopped at");
    assert_eq!(progress_steps(&ev), (1..=step).collect::<Vec<_>>(), "every step once, in order");
    assert_eq!(read_state(&dir).unwrap().step, step);
    let status = read_status(&dir).unwrap();
    assert_eq!((status.status.as_str(), status.step), ("stopped", Some(step)));
    assert!(!dir.join("stop").exists(), "the stop request is answered");

    let a = RunFollower::attach(&dir).unwrap();
    let replay = drain(&a, Duration::from_secs(30));
    assert_eq!(progress_steps(&replay), (1..=step).collect::<Vec<_>>());
    assert_eq!(saved_steps(&replay), vec![step]);
    assert!(matches!(replay.last(), Some(TrainEvent::Finished { step: s2, stopped_early: true, .. }) if *s2 == step));
}

/// Writes the stop file of a run when dropped: a test that fails midway does not leave a
/// long PyTorch run training behind it (the trainer is a process of its own).
struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("stop"), b"");
    }
}

/// The explorer's side: the training menu starts the PyTorch engine as a child process, the
/// training view follows it live, x stops it through its stop file (it saves first), r
/// loads that save next to the base checkpoint, and "follow a run" replays the run later.
#[test]
fn the_explorer_starts_follows_stops_and_reloads_a_pytorch_run() {
    use alignscope::tui::app::{Effect, Mode};
    use alignscope::tui::train::{RunKind, RunSource, TrainStatus};
    use ratatui::crossterm::event::{KeyCode, KeyModifiers};
    use tui_support::HarnessFromDirs;
    let Some(py) = python() else { return };
    let out = work().join("explorer-run");
    let _stop = StopOnDrop(out.clone());
    let (train, eval) = texts();
    let mut h = tui_support::Harness::new(&[&fixture_dir()]);
    h.run_training();
    h.press(KeyCode::Char('t'));
    let Mode::TrainMenu(menu) = &mut h.app.mode else { panic!("menu") };
    menu.python = py;
    menu.eval_data = eval;
    menu.data.set(&train.display().to_string());
    menu.output.set(&out.display().to_string());
    // Long enough to be stopped; evaluations and saves every 50 steps.
    menu.steps.set("100000");
    menu.batch.set("4");
    menu.ctx.set("32");
    menu.selected = menu.fields().len() - 1;
    menu.choice(1);
    let command = menu.preview.clone().expect("the PyTorch command");
    let fx = h.press(KeyCode::Enter);
    assert!(matches!(fx.as_slice(), [Effect::LaunchRun(l)] if l.command_line() == command), "{fx:?}");
    let log = || std::fs::read_to_string(out.join("train.log")).unwrap_or_default();
    let started = h.wait_training(Duration::from_secs(300), |app| app.training.last.is_some() || !app.training.is_active());
    assert!(started && h.app.training.is_active(), "{:?}\n{}", h.app.training.status, log());
    assert_eq!((h.app.training.total_steps, h.app.training.n_layer), (100_000, 4));
    let screen = h.screen(120, 40);
    assert!(screen.contains(" running ") && screen.contains("/100000"), "{screen}");
    assert_eq!(h.press(KeyCode::Char('x')), vec![Effect::StopTraining]);
    assert!(h.wait_training(Duration::from_secs(120), |app| !app.training.is_active()), "{}", log());
    let t = &h.app.training;
    assert_eq!(t.status, TrainStatus::Finished { stopped_early: true }, "{}", log());
    let step = t.step();
    assert!(step >= 1 && t.saved == Some((step, out.clone())), "stopped at {step}, saved {:?}", t.saved);
    assert_eq!(t.layer_curves.iter().map(Vec::len).collect::<Vec<_>>(), vec![step; 4], "every step's per-layer loss");
    assert_eq!(read_state(&out).unwrap().step, step);
    assert!(log().contains(&format!("stopped at step {step}")), "{}", log());
    let screen = h.screen(120, 40);
    assert!(screen.contains(" stopped ") && screen.contains(&format!("saved step {step}")), "{screen}");

    // The save loads next to the base, to compare them layer by layer.
    h.press(KeyCode::Char('r'));
    assert_eq!(h.app.columns.len(), 2);
    assert!(h.app.columns[0].info.as_ref().is_some_and(|i| i.dir == out), "{:?}", h.app.columns[0].spec);
    assert!(h.app.columns[0].analysis.is_some());

    // Following the ended run by its folder replays it to its end.
    h.press(KeyCode::Char('t'));
    h.press(KeyCode::Left);
    let Mode::TrainMenu(menu) = &h.app.mode else { panic!("menu") };
    assert_eq!(menu.run_kind(), RunKind::Attach);
    h.press(KeyCode::Down);
    h.press_mod(KeyCode::Char('u'), KeyModifiers::CONTROL);
    h.type_text(&out.display().to_string());
    assert_eq!(h.press(KeyCode::Enter), vec![Effect::AttachRun(out.clone())]);
    assert_eq!(h.app.training.source, RunSource::Attached);
    assert!(h.wait_training(Duration::from_secs(30), |app| !app.training.is_active()));
    assert_eq!(h.app.training.status, TrainStatus::Finished { stopped_early: true });
    assert_eq!((h.app.training.step(), h.app.training.saved.clone()), (step, Some((step, out.clone()))));
}
