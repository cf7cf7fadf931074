//! A training run, in a background thread that speaks typed messages: commands in
//! ([`TrainCommand`]), events out ([`TrainEvent`]). The CLI and the TUI both drive runs
//! through [`TrainJob`].

use super::config::{InitFrom, TrainConfig};
use super::data::Batcher;
use super::events::{EvalMetrics, StepMetrics, TrainCommand, TrainEvent};
use super::live::{LiveRun, STOP_FILE, trainer_elsewhere};
use super::optim::{AdamW, AdamWConfig, lr_at};
use super::save::{
    ENGINE, SaveContents, TrainState, clear_checkpoint, has_checkpoint, read_metrics_upto, read_optimizer, read_state, save_checkpoint,
};
use super::trainer::{Trainable, objective_for, train_step};
use crate::analysis::eval::{EvalOptions, evaluate};
use crate::corpus::tokens::{Budget, tokenize_documents};
use crate::corpus::{Role, read_documents, select};
use crate::model::checkpoint::{load_tokenizer, resolve};
use crate::model::{Checkpoint, Gpt2, Gpt2Config};
use anyhow::{Context, Result, anyhow, bail};
use candle_core::{Device, Tensor};
use serde_json::json;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::time::Instant;

/// Positions of each batch on which non-aligned steps measure the per-layer CE (forward
/// only) for the live curves: cheap next to the step, enough for a smooth curve.
pub const MONITOR_POSITIONS: usize = 512;

/// What to run: a new run from its config, or the continuation of a saved one.
#[derive(Debug, Clone)]
pub enum RunPlan {
    New(Box<TrainConfig>),
    Resume { dir: PathBuf, steps: Option<usize> },
}

/// A training run in a background thread.
pub struct TrainJob {
    commands: Sender<TrainCommand>,
    events: Receiver<TrainEvent>,
    running: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl TrainJob {
    /// Starts a new run on `device`.
    pub fn start(config: TrainConfig, device: &Device) -> Self {
        Self::spawn(RunPlan::New(Box::new(config)), device.clone(), None)
    }

    /// Continues the run saved in `dir` on `device` (up to `steps`, or its own total).
    pub fn resume(dir: PathBuf, steps: Option<usize>, device: &Device) -> Self {
        Self::spawn(RunPlan::Resume { dir, steps }, device.clone(), None)
    }

    /// Runs `plan` on `device`. `interrupt` (e.g. set by Ctrl-C) acts like a Stop command.
    pub fn spawn(plan: RunPlan, device: Device, interrupt: Option<&'static AtomicBool>) -> Self {
        let (cmd_tx, cmd_rx) = channel();
        let (ev_tx, ev_rx) = channel();
        let running = Arc::new(AtomicBool::new(true));
        let flag = running.clone();
        let handle = std::thread::Builder::new()
            .name("alignscope-train".into())
            .spawn(move || {
                let ctl = Control { commands: cmd_rx, events: ev_tx.clone(), interrupt };
                if let Err(e) = run(plan, &device, &ctl) {
                    let _ = ev_tx.send(TrainEvent::Failed { message: crate::util::one_line(&e) });
                }
                flag.store(false, Ordering::SeqCst);
            })
            .expect("spawn training thread");
        Self { commands: cmd_tx, events: ev_rx, running, handle: Some(handle) }
    }

    /// Asks the run to save a checkpoint and stop.
    pub fn stop(&self) {
        let _ = self.commands.send(TrainCommand::Stop);
    }

    pub fn try_recv(&self) -> Option<TrainEvent> {
        self.events.try_recv().ok()
    }

    pub fn events(&self) -> &Receiver<TrainEvent> {
        &self.events
    }

    /// False once the run has finished, failed or stopped (its last events may still be
    /// waiting in the channel).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Waits for the thread to end.
    pub fn join(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The worker's side of the channels.
pub struct Control {
    pub commands: Receiver<TrainCommand>,
    pub events: Sender<TrainEvent>,
    pub interrupt: Option<&'static AtomicBool>,
}

impl Control {
    fn send(&self, e: TrainEvent) {
        let _ = self.events.send(e);
    }

    fn stop_requested(&self) -> bool {
        if self.interrupt.is_some_and(|f| f.load(Ordering::SeqCst)) {
            return true;
        }
        // Stop is the only command; a closed channel (the client went away) is not one.
        match self.commands.try_recv() {
            Ok(TrainCommand::Stop) => true,
            Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => false,
        }
    }
}

/// Everything a run needs, set up from a new config or a saved checkpoint.
struct Setup {
    config: TrainConfig,
    model: Gpt2,
    tokenizer_json: String,
    tokenizer: tokenizers::Tokenizer,
    eos: u32,
    start_step: usize,
    resume: Option<(PathBuf, TrainState)>,
    metrics: Vec<String>,
}

fn eos_of(tok: &tokenizers::Tokenizer, cfg: &Gpt2Config) -> Result<u32> {
    cfg.eos_token_id
        .or_else(|| tok.token_to_id(super::tokenizer::END_OF_TEXT))
        .ok_or_else(|| anyhow!("the tokenizer has no {} token and the config no eos_token_id", super::tokenizer::END_OF_TEXT))
}

fn validate(cfg: &mut TrainConfig, model: &Gpt2) -> Result<()> {
    if cfg.ctx == 0 {
        cfg.ctx = model.config.default_ctx();
    }
    if cfg.steps == 0 {
        bail!("--steps must be at least 1")
    }
    if cfg.batch == 0 || cfg.accum == 0 || !cfg.batch.is_multiple_of(cfg.accum) {
        bail!("--batch {} must be a positive multiple of --accum {}", cfg.batch, cfg.accum)
    }
    if cfg.ctx < 2 || cfg.ctx > model.config.n_positions {
        bail!("--ctx {} must be between 2 and the model's context of {} tokens", cfg.ctx, model.config.n_positions)
    }
    check_settings(cfg)?;
    if cfg.data.is_empty() {
        bail!("no training data: give --data FILE or FOLDER")
    }
    Ok(())
}

/// The run's numeric settings that need no model: each out of its range is named, before
/// any step (a NaN weight decay or beta2 trained, saved and exited 0 with every weight NaN).
pub fn check_settings(cfg: &TrainConfig) -> Result<()> {
    // Written so that NaN fails every check.
    if !(cfg.lr > 0.0 && cfg.lr.is_finite() && cfg.min_lr >= 0.0 && cfg.min_lr <= cfg.lr) {
        bail!("--lr must be positive and --min-lr between 0 and --lr")
    }
    if !(cfg.weight_decay >= 0.0 && cfg.weight_decay.is_finite()) {
        bail!("--weight-decay {} must be 0 or more", cfg.weight_decay)
    }
    if !(cfg.grad_clip >= 0.0 && cfg.grad_clip.is_finite()) {
        bail!("--grad-clip {} must be positive, or 0 for no clipping", cfg.grad_clip)
    }
    for (name, b) in [("--beta1", cfg.beta1), ("--beta2", cfg.beta2)] {
        if !(0.0..1.0).contains(&b) {
            bail!("{name} {b} must be at least 0 and below 1")
        }
    }
    if !(cfg.beta >= 0.0 && cfg.beta.is_finite()) {
        bail!("--beta {} must be 0 or more", cfg.beta)
    }
    if cfg.eval_every > 0 && cfg.eval_batches == 0 {
        bail!("--eval-batches must be at least 1 when evaluating (--eval-every 0 turns evaluation off)")
    }
    if cfg.warmup > cfg.steps {
        bail!(
            "--warmup {} is longer than the run's {}: the learning rate would never reach --lr, nor decay",
            cfg.warmup,
            crate::util::count_of(cfg.steps, "step")
        )
    }
    Ok(())
}

fn setup(plan: RunPlan, device: &Device) -> Result<Setup> {
    match plan {
        RunPlan::New(config) => {
            let mut config = *config;
            let (model, tokenizer_json, tokenizer) = match &config.init {
                InitFrom::Checkpoint(spec) => {
                    let ck = super::recipe::open(spec, device)?;
                    let json = std::fs::read_to_string(ck.dir.join("tokenizer.json"))?;
                    (ck.model, json, ck.tokenizer)
                }
                InitFrom::Random { config: cfg_path, tokenizer } => {
                    let mut cfg = Gpt2Config::from_file(cfg_path)?;
                    if tokenizer.is_file() && tokenizer.file_name().is_none_or(|n| n != "tokenizer.json") {
                        bail!("--tokenizer {}: give a folder holding tokenizer.json, or that tokenizer.json file", tokenizer.display())
                    }
                    let tok_dir =
                        if tokenizer.is_dir() { tokenizer.clone() } else { tokenizer.parent().map(Path::to_path_buf).unwrap_or_default() };
                    let tok = load_tokenizer(&tok_dir)?;
                    let n_vocab = tok.get_vocab_size(true);
                    if n_vocab > cfg.vocab_size {
                        bail!("{} has vocab_size {} but the tokenizer has {n_vocab} tokens", cfg_path.display(), cfg.vocab_size)
                    }
                    let eos = tok.token_to_id(super::tokenizer::END_OF_TEXT);
                    cfg.eos_token_id = cfg.eos_token_id.or(eos);
                    cfg.bos_token_id = cfg.bos_token_id.or(eos);
                    let json = std::fs::read_to_string(tok_dir.join("tokenizer.json"))?;
                    (Gpt2::random(cfg, config.seed, device)?, json, tok)
                }
            };
            validate(&mut config, &model)?;
            let eos = eos_of(&tokenizer, &model.config)?;
            Ok(Setup { config, model, tokenizer_json, tokenizer, eos, start_step: 0, resume: None, metrics: vec![] })
        }
        RunPlan::Resume { dir, steps } => {
            let dir = resolve(&dir.to_string_lossy())?;
            let state = read_state(&dir)?;
            // Before the data is read: a run without its moments cannot go on.
            if !dir.join(super::save::OPTIMIZER_FILE).exists() {
                bail!(
                    "{} holds no optimizer state ({}; the shipped checkpoints leave it out) and cannot be resumed: fine-tune it further with train --ckpt {} --out NEW",
                    dir.display(),
                    super::save::OPTIMIZER_FILE,
                    dir.display()
                )
            }
            let mut config = state.config.clone();
            if let Some(s) = steps {
                config.steps = s;
            }
            // The run keeps writing where it was found.
            config.out = dir.clone();
            if state.step >= config.steps {
                bail!("{} is already at step {} of {}: give a larger --steps to continue", dir.display(), state.step, config.steps)
            }
            let ck = Checkpoint::load_dir(&dir, device)?;
            let tokenizer_json = std::fs::read_to_string(dir.join("tokenizer.json"))?;
            validate(&mut config, &ck.model)?;
            let eos = eos_of(&ck.tokenizer, &ck.model.config)?;
            let metrics = read_metrics_upto(&dir, state.step)?;
            Ok(Setup {
                config,
                model: ck.model,
                tokenizer_json,
                tokenizer: ck.tokenizer,
                eos,
                start_step: state.step,
                resume: Some((dir, state)),
                metrics,
            })
        }
    }
}

/// A run tokenizes this many times the tokens it trains on (see [`crate::corpus::tokens`]).
pub const DATA_POOL_FACTOR: usize = 4;

/// Selects, reads and tokenizes the training and held-out data, saying what it chose.
fn prepare_data(cfg: &TrainConfig, tok: &tokenizers::Tokenizer, eos: u32, ctl: &Control) -> Result<(Vec<u32>, Vec<u32>)> {
    let say = |message: String| ctl.send(TrainEvent::Preparing { message });
    let train = select(&cfg.data, Role::Train)?;
    let held_out = select(&cfg.eval_data, Role::Eval)?;
    for f in &held_out.files {
        if train.files.iter().any(|t| std::fs::canonicalize(t).ok() == std::fs::canonicalize(f).ok()) {
            bail!("{} is both training and evaluation data", f.display())
        }
    }
    train.notes.iter().chain(&held_out.notes).for_each(|n| say(n.clone()));
    let started = Instant::now();
    let docs = read_documents(&train.files)?;
    let window_tokens = cfg.batch.saturating_mul(cfg.ctx + 1);
    let budget = Budget { tokens: cfg.steps.saturating_mul(window_tokens).saturating_mul(DATA_POOL_FACTOR), shuffle_seed: Some(cfg.seed) };
    let mut last_said = Instant::now();
    let t = tokenize_documents(tok, &docs, eos, Some(budget), |done, n| {
        if done < n && last_said.elapsed().as_secs_f64() >= 2.0 {
            last_said = Instant::now();
            say(format!("tokenizing the training data: {done} of {n} documents"));
        }
    })?;
    let secs = started.elapsed().as_secs_f64();
    if t.used < t.documents {
        say(format!(
            "training data: {} tokens from a random {} of its {} documents ({DATA_POOL_FACTOR}× the {} tokens {} steps read), ready in {secs:.0} s",
            t.ids.len(),
            t.used,
            t.documents,
            cfg.steps.saturating_mul(window_tokens),
            cfg.steps,
        ));
    } else {
        say(format!("training data: {} tokens from all {} documents, ready in {secs:.0} s", t.ids.len(), t.documents));
    }
    let eval_tokens = if held_out.files.is_empty() {
        vec![]
    } else {
        let eval_budget = Budget { tokens: cfg.eval_batches.max(1) * cfg.batch * cfg.ctx + 1, shuffle_seed: None };
        tokenize_documents(tok, &read_documents(&held_out.files)?, eos, Some(eval_budget), |_, _| {})?.ids
    };
    // Found here, before the run writes anything, not at its first evaluation.
    if cfg.eval_every > 0 && !held_out.files.is_empty() && eval_tokens.len() < 2 {
        let names: Vec<String> = cfg.eval_data.iter().map(|p| p.display().to_string()).collect();
        bail!("the held-out data {} has no text to evaluate on: give --eval-data with text, or --eval-every 0", names.join(", "))
    }
    Ok((t.ids, eval_tokens))
}

/// Runs a plan to the end (or until stopped), reporting through `ctl` and through the run
/// folder's live files (see [`super::live`]), so that a run in another process is followed
/// and stopped like one of the PyTorch engine.
pub fn run(plan: RunPlan, device: &Device, ctl: &Control) -> Result<()> {
    let run_started = std::time::SystemTime::now();
    let s = setup(plan, device)?;
    let cfg = s.config.clone();
    let n_layer = s.model.n_layer();
    let out = cfg.out.clone();
    if let Some(pid) = trainer_elsewhere(&out) {
        bail!(
            "{} is being trained right now (pid {pid}): stop it first (x in the explorer that follows it, or touch {})",
            out.display(),
            out.join(STOP_FILE).display()
        )
    }
    let (tokens, eval_tokens) = prepare_data(&cfg, &s.tokenizer, s.eos, ctl)?;
    let mut batcher = Batcher::new(Arc::new(tokens), cfg.ctx, cfg.seed)?;
    let trainable = Trainable::new(s.model)?;
    let adam = AdamWConfig { beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, weight_decay: cfg.weight_decay };
    let mut opt = trainable.optimizer(adam, cfg.decay_matrices_only)?;
    let (mut tokens_seen, mut elapsed_before) = (0u64, 0.0);
    if let Some((dir, state)) = &s.resume {
        read_optimizer(dir, &trainable.names, &mut opt, state.step)?;
        let pos: u128 = state.data_rng_position.parse().context("invalid data_rng_position in the training state")?;
        batcher.set_position(pos);
        tokens_seen = state.tokens_seen;
        elapsed_before = state.elapsed_secs;
    }
    // The folder shows the run live from here on; a new run replaces a checkpoint already
    // there (the CLI's --overwrite) in one atomic swap first.
    if s.resume.is_none() && has_checkpoint(&out) {
        clear_checkpoint(&out).with_context(|| format!("replacing the checkpoint {}", out.display()))?;
    }
    let mut live = LiveRun::begin(&out, run_started, &s.metrics, s.start_step, cfg.steps, n_layer)?;
    ctl.send(TrainEvent::Started { start_step: s.start_step, total_steps: cfg.steps, out: out.clone(), n_layer });
    let mut run = Run {
        cfg: &cfg,
        trainable: &trainable,
        tokenizer_json: &s.tokenizer_json,
        opt: &mut opt,
        batcher: &mut batcher,
        metrics: s.metrics,
        eval_tokens: &eval_tokens,
        tokens_seen,
        elapsed_before,
        started: Instant::now(),
        step: s.start_step,
        last_saved: s.resume.as_ref().map(|(_, st)| st.step),
        live: &mut live,
    };
    match run.steps(device, ctl) {
        Ok(stopped_early) => {
            let step = run.step;
            live.end(if stopped_early { "stopped" } else { "finished" }, step, None)?;
            ctl.send(TrainEvent::Finished { step, dir: out, stopped_early });
            Ok(())
        }
        Err(e) => {
            // Followers learn why from the status; the caller reports the error itself.
            let step = run.step;
            let _ = live.end("failed", step, Some(crate::util::one_line(&e)));
            Err(e)
        }
    }
}

/// A set-up run going through its steps.
struct Run<'a> {
    cfg: &'a TrainConfig,
    trainable: &'a Trainable,
    tokenizer_json: &'a str,
    opt: &'a mut AdamW,
    batcher: &'a mut Batcher,
    /// Every metrics line of the run so far (the history it continues included).
    metrics: Vec<String>,
    eval_tokens: &'a [u32],
    tokens_seen: u64,
    elapsed_before: f64,
    started: Instant,
    /// Optimizer steps done.
    step: usize,
    last_saved: Option<usize>,
    live: &'a mut LiveRun,
}

impl Run<'_> {
    fn save(&mut self) -> Result<()> {
        let (cfg, out) = (self.cfg, &self.cfg.out);
        let snapshot = self.trainable.snapshot()?;
        let state = TrainState {
            alignscope_version: env!("CARGO_PKG_VERSION").to_string(),
            step: self.step,
            data_rng_position: self.batcher.position().to_string(),
            tokens_seen: self.tokens_seen,
            elapsed_secs: self.elapsed_before + self.started.elapsed().as_secs_f64(),
            config: cfg.clone(),
            engine: ENGINE.to_string(),
        };
        let status = self.live.saving(self.step);
        save_checkpoint(
            out,
            &SaveContents {
                model: &snapshot,
                tokenizer_json: self.tokenizer_json,
                optimizer: self.opt,
                param_names: &self.trainable.names,
                state: &state,
                metrics: &self.metrics,
                status: Some(&status),
            },
        )
        .with_context(|| format!("saving the checkpoint {}", out.display()))?;
        // The swap left the live metrics file with the old folder.
        self.live.saved(self.step)?;
        self.last_saved = Some(self.step);
        Ok(())
    }

    /// A metrics line: kept for the next save, and written live for followers.
    fn record(&mut self, line: String) -> Result<()> {
        self.live.line(&line)?;
        self.metrics.push(line);
        Ok(())
    }

    /// Trains until the last step or a stop (returns whether it stopped early).
    fn steps(&mut self, device: &Device, ctl: &Control) -> Result<bool> {
        let cfg = self.cfg;
        let out = cfg.out.clone();
        let n_layer = self.trainable.model.n_layer();
        let micro = cfg.batch / cfg.accum;
        let mut recent: std::collections::VecDeque<(f64, usize)> = Default::default();
        let mut stopped_early = false;
        while self.step < cfg.steps {
            if ctl.stop_requested() || self.live.stop_requested() {
                stopped_early = true;
                break;
            }
            let t0 = Instant::now();
            let step = self.step;
            let lr = lr_at(step, cfg.steps, cfg.warmup, cfg.lr, cfg.min_lr);
            let objective = cfg.objective_at(step + 1);
            let obj = objective_for(objective, n_layer, cfg.beta, MONITOR_POSITIONS);
            let mut batches = Vec::with_capacity(cfg.accum);
            for _ in 0..cfg.accum {
                let (x, y) = self.batcher.next_batch(micro);
                batches.push((Tensor::from_vec(x, (micro, cfg.ctx), device)?, y));
            }
            let outcome = train_step(self.trainable, self.opt, &batches, &obj, lr, cfg.grad_clip)?;
            let loss = outcome.value.loss;
            if !loss.is_finite() || !outcome.grad_norm.is_finite() {
                let kept = match self.last_saved {
                    Some(k) => format!("the last good checkpoint (step {k}) is kept in {}", out.display()),
                    None => "no checkpoint had been saved yet".to_string(),
                };
                bail!("the loss became {} at step {}: stopping; {kept}", if loss.is_nan() { "NaN" } else { "infinite" }, step + 1)
            }
            self.step += 1;
            let step = self.step;
            let n_tok = cfg.batch * cfg.ctx;
            self.tokens_seen += n_tok as u64;
            let dt = t0.elapsed().as_secs_f64();
            recent.push_back((dt, n_tok));
            if recent.len() > 20 {
                recent.pop_front();
            }
            let (sum_t, sum_n) = recent.iter().fold((0.0, 0usize), |a, b| (a.0 + b.0, a.1 + b.1));
            let per_step = sum_t / recent.len() as f64;
            let m = StepMetrics {
                step,
                total_steps: cfg.steps,
                loss,
                objective,
                layer_losses: outcome.value.layer_losses.clone(),
                lr,
                grad_norm: outcome.grad_norm,
                tokens_per_sec: sum_n as f64 / sum_t.max(1e-9),
                eta_secs: per_step * (cfg.steps - step) as f64,
            };
            self.record(serde_json::to_string(&m)?)?;
            ctl.send(TrainEvent::Progress(m));
            if !self.eval_tokens.is_empty() && cfg.eval_every > 0 && (step.is_multiple_of(cfg.eval_every) || step == cfg.steps) {
                let snapshot = self.trainable.snapshot()?;
                let opts = EvalOptions { ctx: cfg.ctx, max_chunks: Some(cfg.eval_batches.max(1) * cfg.batch) };
                let r = evaluate(&snapshot, self.eval_tokens, &opts, |_, _| ControlFlow::Continue(()))?;
                let e = EvalMetrics { step, layer_losses: r.ce[1..].to_vec(), layer_acc: r.acc[1..].to_vec() };
                self.record(json!({ "step": step, "eval": e, "eval_tokens": r.tokens }).to_string())?;
                ctl.send(TrainEvent::Eval(e));
            }
            if (cfg.save_every > 0 && step.is_multiple_of(cfg.save_every)) || step == cfg.steps {
                self.save()?;
                ctl.send(TrainEvent::CheckpointSaved { step, dir: out.clone() });
            }
        }
        if stopped_early && self.last_saved != Some(self.step) && self.step > 0 {
            self.save()?;
            ctl.send(TrainEvent::CheckpointSaved { step: self.step, dir: out.clone() });
        }
        Ok(stopped_early)
    }
}
