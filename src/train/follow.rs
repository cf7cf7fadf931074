//! Following a training run that this process does not drive: the PyTorch engine
//! (`scripts/torch/train.py`, alone or under `torchrun`), started here as a child process
//! or already running and attached by its folder, or an `alignscope train` (or another
//! explorer's run) in another process. A [`RunFollower`] watches the run folder's live
//! files (written the same way by both engines, see [`super::live`]) and speaks the same
//! [`TrainEvent`]s as an in-process [`super::job::TrainJob`]:
//!
//! - `metrics.jsonl` grows by one line per step (and per evaluation) → `Progress`, `Eval`
//!   (the history already there is replayed first, so a view shows the whole run);
//! - `training_state.json` changes on every save → `CheckpointSaved`;
//! - `run_status.json` (running, finished, stopped, failed with a message, and the process
//!   that writes it) → `Started`, `Finished`, `Failed`;
//! - the child process exiting (when started here), or the writer's process vanishing
//!   (when attached on the same machine) → `Failed` unless the status says it finished.
//!
//! [`RunFollower::stop`] asks the run to save and stop by creating the folder's `stop`
//! file, which both trainers check at every step (so it works for attached runs, and
//! across machines sharing the folder). A started run outlives its follower: dropping the
//! follower stops the watching, not the training; attach again to pick it up.
//!
//! A folder written by an alignscope from before the live files (metrics only with each
//! save, no status) is still followed save by save, `Finished` coming with the last save.

use super::events::{EvalMetrics, StepMetrics, TrainEvent};
use super::job::RunPlan;
pub use super::live::{RunStatus, STATUS_FILE, STOP_FILE, read_status};
use super::live::{hostname, now_secs, process_alive};
use super::save::{METRICS_FILE, STATE_FILE};
use super::{InitFrom, LossKind, TrainConfig};
use anyhow::{Context, Result, anyhow, bail};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, SystemTime};

/// Where a run started here writes its output (stdout and stderr of every process).
pub const LOG_FILE: &str = "train.log";

/// How often the folder is looked at.
const POLL: Duration = Duration::from_millis(200);

/// A command that runs a trainer writing into `run_dir`.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The run folder the trainer writes (its `--out`, or the folder it resumes).
    pub run_dir: PathBuf,
    /// Extra environment for the child.
    pub env: Vec<(String, String)>,
}

/// How to run the PyTorch engine.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchOptions {
    /// The interpreter that has torch and transformers ([`crate::paths::torch_python`]).
    pub python: PathBuf,
    /// Processes on this machine: 1 runs the script directly, more run it under torchrun.
    pub nproc: usize,
    /// Replace an existing output checkpoint (new runs).
    pub overwrite: bool,
    /// Further trainer options (`--device cuda`, `--fsdp`, `--dtype f32`, ...).
    pub extra: Vec<String>,
}

impl TorchOptions {
    pub fn new(nproc: usize) -> Self {
        Self { python: crate::paths::torch_python(), nproc, overwrite: false, extra: vec![] }
    }
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The trainer's command-line options for a run configuration (the same names as
/// `alignscope train`'s).
pub fn torch_args(cfg: &TrainConfig) -> Vec<String> {
    let mut a: Vec<String> = vec![];
    let mut opt = |k: &str, v: String| {
        a.push(k.to_string());
        a.push(v);
    };
    match &cfg.init {
        InitFrom::Checkpoint(spec) => opt("--ckpt", spec.clone()),
        InitFrom::Random { config, tokenizer } => {
            opt("--init", path_arg(config));
            opt("--tokenizer", path_arg(tokenizer));
        }
    }
    opt("--out", path_arg(&cfg.out));
    opt("--loss", cfg.loss.to_string());
    if cfg.loss == LossKind::CeReg {
        opt("--beta", cfg.beta.to_string());
    }
    for d in &cfg.data {
        opt("--data", path_arg(d));
    }
    for d in &cfg.eval_data {
        opt("--eval-data", path_arg(d));
    }
    opt("--steps", cfg.steps.to_string());
    opt("--batch", cfg.batch.to_string());
    opt("--accum", cfg.accum.to_string());
    if cfg.ctx > 0 {
        opt("--ctx", cfg.ctx.to_string());
    }
    opt("--lr", cfg.lr.to_string());
    opt("--min-lr", cfg.min_lr.to_string());
    opt("--warmup", cfg.warmup.to_string());
    opt("--weight-decay", cfg.weight_decay.to_string());
    opt("--grad-clip", cfg.grad_clip.to_string());
    opt("--beta1", cfg.beta1.to_string());
    opt("--beta2", cfg.beta2.to_string());
    opt("--eps", cfg.eps.to_string());
    opt("--eval-every", cfg.eval_every.to_string());
    opt("--eval-batches", cfg.eval_batches.to_string());
    opt("--save-every", cfg.save_every.to_string());
    opt("--seed", cfg.seed.to_string());
    if !cfg.alternate {
        a.push("--no-alternate".into());
    }
    if !cfg.decay_matrices_only {
        a.push("--decay-all".into());
    }
    a
}

impl Launch {
    /// `python scripts/torch/train.py ...` for one process, `python -m torch.distributed.run
    /// --standalone --nproc_per_node N scripts/torch/train.py ...` (torchrun) for more.
    pub fn torch(plan: &RunPlan, o: &TorchOptions) -> Result<Self> {
        if o.nproc == 0 {
            bail!("the PyTorch engine needs at least one process")
        }
        let script = crate::paths::torch_trainer_script();
        if !script.is_file() {
            bail!("the PyTorch trainer {} is missing", script.display())
        }
        let (mut trainer, run_dir) = match plan {
            RunPlan::New(cfg) => {
                let mut a = torch_args(cfg);
                if o.overwrite {
                    a.push("--overwrite".into());
                }
                (a, cfg.out.clone())
            }
            RunPlan::Resume { dir, steps } => {
                let dir = crate::model::checkpoint::resolve(&dir.to_string_lossy())?;
                let mut a = vec!["--resume".to_string(), path_arg(&dir)];
                if let Some(s) = steps {
                    a.push("--steps".into());
                    a.push(s.to_string());
                }
                (a, dir)
            }
        };
        trainer.extend(o.extra.iter().cloned());
        let mut args = vec![];
        if o.nproc > 1 {
            args.extend(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node"].map(String::from));
            args.push(o.nproc.to_string());
        }
        args.push(path_arg(&script));
        args.extend(trainer);
        Ok(Self { program: o.python.clone(), args, run_dir, env: vec![("PYTHONUNBUFFERED".into(), "1".into())] })
    }

    /// The command as a shell line (for showing it).
    pub fn command_line(&self) -> String {
        let quote = |s: &str| -> String {
            if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@".contains(c)) {
                s.to_string()
            } else {
                format!("'{}'", s.replace('\'', r"'\''"))
            }
        };
        std::iter::once(path_arg(&self.program)).chain(self.args.iter().cloned()).map(|s| quote(&s)).collect::<Vec<_>>().join(" ")
    }
}

/// A run being followed.
pub struct RunFollower {
    events: Receiver<TrainEvent>,
    dir: PathBuf,
    quit: Arc<AtomicBool>,
    running: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
    pid: Option<u32>,
}

impl RunFollower {
    /// Starts the trainer as a child process (in its own process group, output appended to
    /// `RUN_DIR/train.log`) and follows it. A stale stop request in the folder is removed.
    pub fn launch(l: &Launch) -> Result<Self> {
        std::fs::create_dir_all(&l.run_dir).with_context(|| format!("cannot create the run folder {}", l.run_dir.display()))?;
        match std::fs::remove_file(l.run_dir.join(STOP_FILE)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("cannot clear the stop request in {}: {e}", l.run_dir.display()),
        }
        let log_path = l.run_dir.join(LOG_FILE);
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        writeln!(log, "\n=== {} started {:.0} (unix seconds): {}", env!("CARGO_PKG_NAME"), now_secs(), l.command_line())?;
        let err = log.try_clone()?;
        let launched_at = now_secs();
        // The status an earlier run left in the folder (a resumed checkpoint carries one):
        // never this run's, however recently it was written.
        let earlier_status = read_status(&l.run_dir).and_then(|s| s.updated_at);
        let mut cmd = Command::new(&l.program);
        cmd.args(&l.args).stdin(Stdio::null()).stdout(Stdio::from(log)).stderr(Stdio::from(err));
        for (k, v) in &l.env {
            cmd.env(k, v);
        }
        #[cfg(unix)]
        {
            // Its own process group: a Ctrl-C meant for the explorer's terminal does not
            // reach the trainer, which is stopped through its stop file instead.
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = cmd.spawn().map_err(|e| anyhow!("cannot start {}: {e}", l.program.display()))?;
        let pid = child.id();
        let mut f = Self::spawn(l.run_dir.clone(), Watch::Child { child, launched_at, earlier_status });
        f.pid = Some(pid);
        Ok(f)
    }

    /// Follows a run by its folder: one in progress (started elsewhere), or one that has
    /// ended (its history is replayed, then `Finished` or `Failed`).
    pub fn attach(dir: &Path) -> Result<Self> {
        let dir = crate::model::checkpoint::resolve(&dir.to_string_lossy())?;
        if !dir.join(STATUS_FILE).is_file() && !dir.join(STATE_FILE).is_file() && !dir.join(METRICS_FILE).is_file() {
            bail!("{} is not a training run (no {STATUS_FILE}, {STATE_FILE} or {METRICS_FILE})", dir.display())
        }
        Ok(Self::spawn(dir, Watch::Attached))
    }

    fn spawn(dir: PathBuf, watch: Watch) -> Self {
        let (tx, rx) = channel();
        let quit = Arc::new(AtomicBool::new(false));
        let running = Arc::new(AtomicBool::new(true));
        let (q, r, d) = (quit.clone(), running.clone(), dir.clone());
        let handle = std::thread::Builder::new()
            .name("alignscope-follow".into())
            .spawn(move || {
                let mut w = Watcher::new(d, watch, tx);
                w.run(&q);
                r.store(false, Ordering::SeqCst);
            })
            .expect("spawn follower thread");
        Self { events: rx, dir, quit, running, handle: Some(handle), pid: None }
    }

    /// Asks the run (of either engine) to save a checkpoint and stop at its next step.
    pub fn stop(&self) -> Result<()> {
        let p = self.dir.join(STOP_FILE);
        std::fs::write(&p, b"").with_context(|| format!("cannot write {}", p.display()))
    }

    pub fn try_recv(&self) -> Option<TrainEvent> {
        self.events.try_recv().ok()
    }

    pub fn events(&self) -> &Receiver<TrainEvent> {
        &self.events
    }

    /// False once the run has finished or failed (its last events may still be waiting in
    /// the channel).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The output of a run started here.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// The child's process id, for a run started here.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Waits for the run to end (after its `Finished` or `Failed`).
    pub fn join(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for RunFollower {
    fn drop(&mut self) {
        // Stop watching; the run itself goes on.
        self.quit.store(true, Ordering::SeqCst);
    }
}

enum Watch {
    Child { child: Child, launched_at: f64, earlier_status: Option<f64> },
    Attached,
}

impl Watch {
    /// Whether a status belongs to the watched run: for a run started here, one written
    /// after the start (the second of slack covers the two clocks' rounding) that is not
    /// the status the folder held before.
    fn owns(&self, s: &RunStatus) -> bool {
        match self {
            Watch::Child { launched_at, earlier_status, .. } => {
                s.updated_at.is_some_and(|t| t + 1.0 >= *launched_at && earlier_status.is_none_or(|e| t > e))
            }
            Watch::Attached => true,
        }
    }
}

/// The metrics file as far as it has been read.
#[derive(Default)]
struct MetricsCursor {
    /// (device, inode) of the file read, so a save that swaps the folder is noticed.
    identity: Option<(u64, u64)>,
    offset: u64,
    partial: String,
    /// Last step whose line was sent, to skip repeats after the file was rewritten.
    last_step: Option<usize>,
    last_eval: Option<usize>,
}

struct Watcher {
    dir: PathBuf,
    watch: Watch,
    tx: Sender<TrainEvent>,
    started: bool,
    metrics: MetricsCursor,
    /// The saved step last seen in training_state.json, and the file's identity then.
    saved_step: Option<usize>,
    /// How many of the status's listed saves were sent.
    saves_sent: usize,
    state_stamp: Option<(u64, u64, SystemTime, u64)>,
    /// Steps of the run (for runs without a status file).
    total_steps: Option<usize>,
    last_progress: usize,
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        (meta.dev(), meta.ino())
    }
    #[cfg(not(unix))]
    {
        (0, meta.len())
    }
}

/// Why a run failed, from its log: the last `error: ...` line (the trainer's own
/// message), else the last Python exception line (`SomeError: ...`), else the last
/// non-empty line. torchrun's `[rankN]: ` prefixes are dropped.
fn log_error(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let lines: Vec<&str> = text
        .lines()
        .rev()
        .take(400)
        .map(|l| match l.trim_start().strip_prefix("[rank") {
            Some(rest) => rest.split_once("]: ").map_or(l, |(_, msg)| msg),
            None => l,
        })
        .map(str::trim)
        .collect();
    // torchrun's own ChildFailedError only says that a process failed; the process said why.
    let exception = |l: &&&str| {
        l.split_once(": ").is_some_and(|(head, _)| head.ends_with("Error") && !head.contains(' ') && !head.ends_with("ChildFailedError"))
    };
    lines
        .iter()
        .find(|l| l.starts_with("error: "))
        .or_else(|| lines.iter().find(exception))
        .or_else(|| lines.iter().find(|l| !l.is_empty()))
        .map(|l| l.to_string())
}

impl Watcher {
    fn new(dir: PathBuf, watch: Watch, tx: Sender<TrainEvent>) -> Self {
        Self {
            dir,
            watch,
            tx,
            started: false,
            metrics: MetricsCursor::default(),
            saved_step: None,
            saves_sent: 0,
            state_stamp: None,
            total_steps: None,
            last_progress: 0,
        }
    }

    fn send(&self, e: TrainEvent) {
        let _ = self.tx.send(e);
    }

    fn run(&mut self, quit: &AtomicBool) {
        // A run started here: what the folder held before (a resumed checkpoint) is its
        // starting point, not a save of this run.
        if matches!(self.watch, Watch::Child { .. }) {
            self.saved_step = self.read_state_step().map(|(s, _)| s);
            self.state_stamp = self.state_identity();
        } else if let Some(s) = read_status(&self.dir) {
            // An attached run: its checkpoint in the folder is reported, not the saves it
            // overwrote before we looked.
            self.saves_sent = s.saves.len().saturating_sub(1);
        }
        loop {
            if quit.load(Ordering::SeqCst) {
                self.release_child();
                return;
            }
            match self.poll() {
                Ok(Poll::Continue) => {}
                Ok(Poll::Done) => return,
                Err(e) => {
                    self.send(TrainEvent::Failed { message: crate::util::one_line(&e) });
                    self.release_child();
                    return;
                }
            }
            std::thread::sleep(POLL);
        }
    }

    /// A child still running when the follower goes away is reaped by a thread of its own
    /// (the run goes on; no zombie is left behind when it ends).
    fn release_child(&mut self) {
        if let Watch::Child { .. } = self.watch {
            let w = std::mem::replace(&mut self.watch, Watch::Attached);
            if let Watch::Child { mut child, .. } = w {
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
            }
        }
    }

    fn state_identity(&self) -> Option<(u64, u64, SystemTime, u64)> {
        let meta = std::fs::metadata(self.dir.join(STATE_FILE)).ok()?;
        let (dev, ino) = identity(&meta);
        Some((dev, ino, meta.modified().ok()?, meta.len()))
    }

    fn read_state_step(&self) -> Option<(usize, usize)> {
        let text = std::fs::read_to_string(self.dir.join(STATE_FILE)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let step = v.get("step")?.as_u64()? as usize;
        let total = v.get("config")?.get("steps")?.as_u64()? as usize;
        Some((step, total))
    }

    fn n_layer(&self) -> usize {
        std::fs::read_to_string(self.dir.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("n_layer").and_then(|n| n.as_u64()))
            .unwrap_or(0) as usize
    }

    fn poll(&mut self) -> Result<Poll> {
        let status = read_status(&self.dir);
        let child_exit = match &mut self.watch {
            Watch::Child { child, .. } => child.try_wait().context("cannot watch the trainer process")?,
            Watch::Attached => None,
        };
        // This run's status: for a run started here, only one written after the start (an
        // older file belongs to an earlier run in the same folder).
        let status = status.filter(|s| self.watch.owns(s));
        if !self.started {
            if let Some(s) = &status {
                self.start_from_status(s);
            } else if matches!(self.watch, Watch::Attached) {
                // A run without a status (written by an older alignscope): its saved
                // state says where it is.
                let (step, total) = self.read_state_step().unwrap_or((0, 0));
                self.total_steps = (total > 0).then_some(total);
                self.send(TrainEvent::Started { start_step: step, total_steps: total, out: self.dir.clone(), n_layer: self.n_layer() });
                self.started = true;
            }
        }
        if self.started {
            self.read_metrics()?;
            self.check_saved(status.as_ref());
        }
        let ended = |s: &RunStatus| matches!(s.status.as_str(), "finished" | "stopped" | "failed");
        if let Some(s) = status.as_ref().filter(|s| ended(s)) {
            if !self.started {
                self.start_from_status(s);
            }
            // Whatever the run wrote last is on disk: read it before the last word.
            self.read_metrics()?;
            self.check_saved(Some(s));
            self.finish(s);
            self.release_child();
            return Ok(Poll::Done);
        }
        if let Some(code) = child_exit {
            // The status may be written just before the exit: look once more.
            std::thread::sleep(POLL);
            if let Some(s) = read_status(&self.dir).filter(|s| ended(s) && self.is_fresh(s)) {
                if !self.started {
                    self.start_from_status(&s);
                }
                self.read_metrics()?;
                self.check_saved(Some(&s));
                self.finish(&s);
                return Ok(Poll::Done);
            }
            if self.started {
                self.read_metrics()?;
                self.check_saved(status.as_ref());
            }
            let why = log_error(&self.dir.join(LOG_FILE)).unwrap_or_default();
            let how = match code.code() {
                Some(c) => format!("the trainer exited with code {c}"),
                None => "the trainer was killed".to_string(),
            };
            self.send(TrainEvent::Failed { message: if why.is_empty() { how } else { format!("{how}: {why}") } });
            return Ok(Poll::Done);
        }
        if let (Watch::Attached, Some(s)) = (&self.watch, &status) {
            // A trainer on this machine that is gone without saying so was killed.
            let here = s.host.is_some() && s.host == hostname();
            if s.status == "running" && here && s.pid.is_some_and(|p| !process_alive(p)) {
                self.read_metrics()?;
                self.check_saved(Some(s));
                let kept = match self.saved_step {
                    Some(k) => format!("the last checkpoint (step {k}) is kept"),
                    None => "no checkpoint was saved".to_string(),
                };
                self.send(TrainEvent::Failed {
                    message: format!("the trainer (pid {}) ended without finishing (killed?); {kept}", s.pid.unwrap_or(0)),
                });
                return Ok(Poll::Done);
            }
        }
        if status.is_none()
            && matches!(self.watch, Watch::Attached)
            && self.saved_step.is_some()
            && self.total_steps.is_some()
            && self.saved_step >= self.total_steps
        {
            // A run without a status (an older alignscope): a final save means it finished.
            let step = self.saved_step.unwrap_or(0);
            self.send(TrainEvent::Finished { step, dir: self.dir.clone(), stopped_early: false });
            return Ok(Poll::Done);
        }
        Ok(Poll::Continue)
    }

    fn is_fresh(&self, s: &RunStatus) -> bool {
        self.watch.owns(s)
    }

    fn start_from_status(&mut self, s: &RunStatus) {
        let state = self.read_state_step();
        let start_step = s.start_step.or(state.map(|(st, _)| st)).unwrap_or(0);
        let total = s.total_steps.or(state.map(|(_, t)| t)).unwrap_or(0);
        let n_layer = s.n_layer.unwrap_or_else(|| self.n_layer());
        self.total_steps = (total > 0).then_some(total);
        self.send(TrainEvent::Started { start_step, total_steps: total, out: self.dir.clone(), n_layer });
        self.started = true;
    }

    fn finish(&mut self, s: &RunStatus) {
        match s.status.as_str() {
            "failed" => {
                let message = s.message.clone().unwrap_or_else(|| "the trainer failed".to_string());
                self.send(TrainEvent::Failed { message });
            }
            how => {
                let step = s.step.or(self.saved_step).unwrap_or(self.last_progress);
                self.send(TrainEvent::Finished { step, dir: self.dir.clone(), stopped_early: how == "stopped" });
            }
        }
    }

    /// Sends `CheckpointSaved` for the saves the status lists that were not sent yet, or,
    /// for a writer that does not list them, when training_state.json holds a new step.
    fn check_saved(&mut self, status: Option<&RunStatus>) {
        if let Some(saves) = status.map(|s| &s.saves).filter(|s| !s.is_empty()) {
            for &step in saves.iter().skip(self.saves_sent) {
                if self.saved_step != Some(step) {
                    self.saved_step = Some(step);
                    self.send(TrainEvent::CheckpointSaved { step, dir: self.dir.clone() });
                }
            }
            self.saves_sent = self.saves_sent.max(saves.len());
            self.state_stamp = self.state_identity();
            return;
        }
        let stamp = self.state_identity();
        if stamp.is_none() || stamp == self.state_stamp {
            return;
        }
        if let Some((step, total)) = self.read_state_step() {
            self.state_stamp = stamp;
            if self.total_steps.is_none() && total > 0 {
                self.total_steps = Some(total);
            }
            if self.saved_step != Some(step) {
                self.saved_step = Some(step);
                self.send(TrainEvent::CheckpointSaved { step, dir: self.dir.clone() });
            }
        }
    }

    /// Sends the metrics lines written since the last look.
    fn read_metrics(&mut self) -> Result<()> {
        let path = self.dir.join(METRICS_FILE);
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(anyhow!("cannot read {}: {e}", path.display())),
        };
        let meta = file.metadata()?;
        let id = identity(&meta);
        let c = &mut self.metrics;
        if c.identity != Some(id) {
            // A save swapped the folder (the new file repeats what was read) or a resume
            // rewrote the file: continue at the same place when it is at least as long,
            // else read it again and skip the steps already sent.
            if c.identity.is_some() && meta.len() < c.offset {
                c.offset = 0;
                c.partial.clear();
            }
            c.identity = Some(id);
        }
        if meta.len() < c.offset {
            c.offset = 0;
            c.partial.clear();
        }
        file.seek(SeekFrom::Start(c.offset))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        c.offset += buf.len() as u64;
        c.partial.push_str(&String::from_utf8_lossy(&buf));
        let Some(last_nl) = c.partial.rfind('\n') else { return Ok(()) };
        let complete: String = c.partial.drain(..=last_nl).collect();
        for line in complete.lines().filter(|l| !l.trim().is_empty()) {
            self.line(line);
        }
        Ok(())
    }

    fn line(&mut self, line: &str) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { return };
        if let Some(e) = v.get("eval") {
            let Ok(e) = serde_json::from_value::<EvalMetrics>(e.clone()) else { return };
            if self.metrics.last_eval.is_some_and(|s| e.step <= s) {
                return;
            }
            self.metrics.last_eval = Some(e.step);
            self.send(TrainEvent::Eval(e));
        } else if let Ok(m) = serde_json::from_value::<StepMetrics>(v) {
            if self.metrics.last_step.is_some_and(|s| m.step <= s) {
                return;
            }
            self.metrics.last_step = Some(m.step);
            self.last_progress = m.step;
            if self.total_steps.is_none() {
                self.total_steps = Some(m.total_steps);
            }
            self.send(TrainEvent::Progress(m));
        }
    }
}

enum Poll {
    Continue,
    Done,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reason_from_a_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(LOG_FILE);
        let write = |text: &str| std::fs::write(&log, text).unwrap();
        write("training 4 layers\nerror: data file x.txt does not exist\n");
        assert_eq!(log_error(&log).as_deref(), Some("error: data file x.txt does not exist"));
        write(
            "[rank1]: Traceback (most recent call last):\n[rank1]:   File \"t.py\"\n[rank1]: ValueError: bad shape\nE1128 failed\ntorch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n====\n",
        );
        assert_eq!(log_error(&log).as_deref(), Some("ValueError: bad shape"));
        write("just output\n\n");
        assert_eq!(log_error(&log).as_deref(), Some("just output"));
        assert_eq!(log_error(&dir.path().join("none")), None);
    }

    #[test]
    fn trainer_options_name_the_whole_config() {
        let mut c = TrainConfig::finetune(
            InitFrom::Random { config: "c.json".into(), tokenizer: "tok".into() },
            "out/run".into(),
            LossKind::CeReg,
            vec!["a.txt".into(), "b".into()],
        );
        c.alternate = false;
        c.decay_matrices_only = false;
        c.ctx = 0;
        let a = torch_args(&c).join(" ");
        for want in [
            "--init c.json --tokenizer tok",
            "--out out/run",
            "--loss ce-reg --beta 1",
            "--data a.txt --data b",
            "--steps 1000 --batch 8 --accum 1 --lr 0.00002 --min-lr 0.000002 --warmup 0",
            "--eps 0.00000001",
            "--no-alternate",
            "--decay-all",
        ] {
            assert!(a.contains(want), "{want:?} missing from {a}");
        }
        assert!(!a.contains("--ctx"), "ctx 0 leaves the model's default: {a}");
        let l = Launch::torch(&RunPlan::New(Box::new(c)), &TorchOptions { python: "py".into(), nproc: 1, overwrite: true, extra: vec![] })
            .unwrap();
        assert!(l.args[0].ends_with("scripts/torch/train.py") && l.args.contains(&"--overwrite".to_string()), "{:?}", l.args);
        assert_eq!(l.run_dir, PathBuf::from("out/run"));
    }
}
