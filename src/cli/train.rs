//! `alignscope train` and `alignscope tokenizer train`: the terminal front of the
//! training engine (a progress line on stderr, Ctrl-C saves and stops).

use crate::corpus::{Role, select};
use crate::model::device::parse_device;
use crate::paths::output_dir;
use crate::train::config::{InitFrom, LossKind, TrainConfig};
use crate::train::data::collect_files;
use crate::train::events::TrainEvent;
use crate::train::job::{RunPlan, TrainJob};
use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Base checkpoint to fine-tune (a folder, a name under checkpoints/, or a hub id)
    #[arg(long, conflicts_with_all = ["resume", "init"])]
    pub ckpt: Option<String>,
    /// Start from random weights with this GPT-2 config.json (needs --tokenizer)
    #[arg(long, requires = "tokenizer", conflicts_with = "resume")]
    pub init: Option<PathBuf>,
    /// Folder (or tokenizer.json) of the tokenizer for --init
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Continue the run saved in this checkpoint (name or folder)
    #[arg(long)]
    pub resume: Option<String>,
    /// Output checkpoint: a name under checkpoints/ or a path
    #[arg(long)]
    pub out: Option<String>,
    /// Replace an existing output checkpoint (its files are replaced when the new run starts;
    /// files a checkpoint does not own, such as notes, stay)
    #[arg(long)]
    pub overwrite: bool,
    /// Objective: aligned (all layers through the shared head), standard (last layer), ce-reg
    #[arg(long, default_value = "aligned")]
    pub loss: LossKind,
    /// Aligned loss on every step instead of alternating with last-layer CE
    #[arg(long)]
    pub no_alternate: bool,
    /// ce-reg: weight of the cosine term
    #[arg(long, default_value_t = 1.0)]
    pub beta: f64,
    /// Training data (repeatable): .txt, .jsonl (a "text" field) or .parquet (a text column)
    /// files, folders of them (a folder named by split gives its train split), or
    /// hf://datasets/OWNER/NAME/PATH (a file, folder or glob of a hub dataset). Default: the
    /// five Austen novels
    #[arg(long)]
    pub data: Vec<PathBuf>,
    /// Held-out data for evaluation, like --data (a folder named by split gives its
    /// validation split). Default: persuasion.txt with the default data, else the validation
    /// split of a --data folder that has one
    #[arg(long)]
    pub eval_data: Vec<PathBuf>,
    /// Total steps of the run (default: 1000; a resume trains up to this, default: the
    /// saved run's total)
    #[arg(long)]
    pub steps: Option<usize>,
    /// Sequences per optimizer step
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Gradient accumulation: micro-batches per step
    #[arg(long, default_value_t = 1)]
    pub accum: usize,
    /// Tokens per training window (default: 256, or the model's context if shorter)
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Peak learning rate (AdamW; the paper's GPT-2 fine-tuning uses 2e-5)
    #[arg(long, default_value_t = 2e-5)]
    pub lr: f64,
    /// Final learning rate of the cosine schedule (default: lr / 10)
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Linear warmup steps before the cosine decay
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Decoupled weight decay
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Decay every parameter (default: only the blocks' weight matrices)
    #[arg(long)]
    pub decay_all: bool,
    /// Clip the global gradient norm to this (0: off)
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    /// AdamW's first-moment decay
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f64,
    /// AdamW's second-moment decay
    #[arg(long, default_value_t = 0.999)]
    pub beta2: f64,
    /// Evaluate on the held-out text every N steps (0: never)
    #[arg(long, default_value_t = 100)]
    pub eval_every: usize,
    /// Held-out batches per evaluation
    #[arg(long, default_value_t = 8)]
    pub eval_batches: usize,
    /// Save a checkpoint every N steps (and at the end, and on stop; 0: only then)
    #[arg(long, default_value_t = 100)]
    pub save_every: usize,
    /// Seed of the batch order (and of random initialisation)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Device: auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CUDA only: f32 matrix products on TF32 tensor cores (faster, ~1e-3 relative error
    /// per product; off by default)
    #[arg(long)]
    pub tf32: bool,
    /// Print a line per step instead of a progress bar
    #[arg(long)]
    pub log_lines: bool,
    /// Also print each step's metrics (and each evaluation) as one JSON object per line on
    /// stdout, as metrics.jsonl records them (an evaluation's record there also counts its
    /// tokens, `eval_tokens`)
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE (like GPT-2's) on text files
    Train {
        /// Vocabulary size, the 256 bytes and end-of-text included
        #[arg(long, default_value_t = 4096)]
        vocab: usize,
        /// Text files or folders (repeatable; default: the five Austen training novels)
        #[arg(long)]
        data: Vec<PathBuf>,
        /// Pairs seen fewer times than this are never merged
        #[arg(long, default_value_t = 2)]
        min_frequency: u64,
        /// Output folder (tokenizer.json is written inside)
        #[arg(long)]
        out: PathBuf,
    },
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // Second Ctrl-C: leave now.
        // SAFETY: _exit is async-signal-safe and ends the process without unwinding.
        unsafe { libc::_exit(130) };
    }
}

fn install_sigint() {
    // SAFETY: the handler only touches an atomic and calls the async-signal-safe _exit.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
}

fn config_from(a: &TrainArgs) -> Result<TrainConfig> {
    let init = match (&a.ckpt, &a.init) {
        (Some(c), None) => InitFrom::Checkpoint(c.clone()),
        (None, Some(cfg)) => InitFrom::Random { config: cfg.clone(), tokenizer: a.tokenizer.clone().expect("clap requires --tokenizer") },
        _ => bail!("give --ckpt BASE (fine-tune), --init CONFIG.json --tokenizer DIR (from scratch), or --resume NAME"),
    };
    let Some(out) = &a.out else { bail!("give --out NAME for the new checkpoint") };
    if a.tokenizer.is_some() && a.init.is_none() {
        bail!("--tokenizer is the tokenizer of --init (random weights); a checkpoint brings its own")
    }
    // Settings of one loss given with another would be silently unused.
    if a.no_alternate && a.loss != LossKind::Aligned {
        bail!("--no-alternate applies to the aligned loss only (--loss {} does not alternate)", a.loss)
    }
    if a.beta != 1.0 && a.loss != LossKind::CeReg {
        bail!("--beta weights the cosine term of --loss ce-reg; --loss {} has none", a.loss)
    }
    let out = output_dir(out);
    // A folder without a checkpoint (a run killed before its first save, an empty folder)
    // is simply trained into.
    if (crate::train::save::has_checkpoint(&out) || out.is_file()) && !a.overwrite {
        bail!("{} already exists: continue it with --resume, pick another --out, or pass --overwrite", out.display())
    }
    let default_data = a.data.is_empty();
    let data = if default_data { crate::paths::default_training_files() } else { a.data.clone() };
    // Checked (and fetched, for hub data) before the model loads: bad data fails fast.
    let train_data = select(&data, Role::Train)?;
    let eval_data = match (a.eval_data.is_empty(), default_data) {
        (false, _) => a.eval_data.clone(),
        (true, true) => vec![crate::paths::default_eval_file()],
        // A folder named by split holds out its validation split.
        (true, false) => train_data.held_out.clone(),
    };
    select(&eval_data, Role::Eval)?;
    let mut c = TrainConfig::finetune(init, out, a.loss, data);
    c.eval_data = eval_data;
    c.alternate = !a.no_alternate;
    c.beta = a.beta;
    c.steps = a.steps.unwrap_or(1000);
    c.batch = a.batch;
    c.accum = a.accum;
    c.ctx = a.ctx.unwrap_or(0);
    c.lr = a.lr;
    c.min_lr = a.min_lr.unwrap_or(a.lr / 10.0);
    c.warmup = a.warmup;
    c.weight_decay = a.weight_decay;
    c.decay_matrices_only = !a.decay_all;
    c.grad_clip = a.grad_clip;
    c.beta1 = a.beta1;
    c.beta2 = a.beta2;
    c.eval_every = a.eval_every;
    c.eval_batches = a.eval_batches;
    c.save_every = a.save_every;
    c.seed = a.seed;
    // Before the model loads.
    crate::train::job::check_settings(&c)?;
    Ok(c)
}

fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 { format!("{}h{:02}m", s / 3600, s / 60 % 60) } else { format!("{}:{:02}", s / 60, s % 60) }
}

/// The progress line: bar, step/total, loss (and which), a few layers' CE, lr, speed, ETA.
pub fn progress_line(m: &crate::train::StepMetrics, width: usize) -> String {
    let frac = m.step as f64 / m.total_steps.max(1) as f64;
    let bar_w = 20;
    let filled = (frac * bar_w as f64).round() as usize;
    let bar: String = "█".repeat(filled) + &"░".repeat(bar_w - filled);
    let l = m.layer_losses.len();
    let picks: Vec<usize> = if l <= 4 { (1..=l).collect() } else { vec![1, l / 4, l / 2, 3 * l / 4, l] };
    let layers: Vec<String> = picks.iter().map(|&i| format!("L{i} {:.2}", m.layer_losses[i - 1])).collect();
    let s = format!(
        "{bar} {}/{} loss {:.4} ({}) | {} | lr {:.2e} | {:.0} tok/s | ETA {}",
        m.step,
        m.total_steps,
        m.loss,
        m.objective,
        layers.join(" "),
        m.lr,
        m.tokens_per_sec,
        fmt_secs(m.eta_secs)
    );
    s.chars().take(width.max(40)).collect()
}

pub fn train(a: TrainArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    crate::model::device::set_tf32(&device, a.tf32)?;
    let plan = match &a.resume {
        Some(name) => {
            if a.ckpt.is_some() || a.init.is_some() {
                bail!("--resume continues a saved run: do not combine it with --ckpt or --init")
            }
            RunPlan::Resume { dir: PathBuf::from(name), steps: a.steps }
        }
        None => RunPlan::New(Box::new(config_from(&a)?)),
    };
    install_sigint();
    let job = TrainJob::spawn(plan, device, Some(&INTERRUPTED));
    let tty = std::io::stderr().is_terminal() && !a.log_lines;
    let width = terminal_width();
    let mut failed = None;
    let mut last_progress_print = std::time::Instant::now() - std::time::Duration::from_secs(60);
    for ev in job.events().iter() {
        let mut err = std::io::stderr().lock();
        match ev {
            TrainEvent::Preparing { message } => {
                let _ = writeln!(err, "{message}");
            }
            TrainEvent::Started { start_step, total_steps, out, n_layer } => {
                let _ = writeln!(err, "training {} layers → {} (steps {}..{})", n_layer, out.display(), start_step + 1, total_steps);
            }
            TrainEvent::Progress(m) => {
                if a.json {
                    super::out(&serde_json::json!(m).to_string());
                }
                if tty {
                    let _ = write!(err, "\r\x1b[2K{}", progress_line(&m, width));
                } else if last_progress_print.elapsed().as_secs_f64() >= 10.0 || m.step == m.total_steps || m.step <= 1 {
                    last_progress_print = std::time::Instant::now();
                    let _ = writeln!(err, "{}", progress_line(&m, 200));
                }
            }
            TrainEvent::Eval(e) => {
                if a.json {
                    super::out(&serde_json::json!({ "step": e.step, "eval": e }).to_string());
                }
                let l = e.layer_losses.len();
                let cells: Vec<String> = (0..l).map(|i| format!("{:.2}/{:.1}%", e.layer_losses[i], 100.0 * e.layer_acc[i])).collect();
                let _ = writeln!(
                    err,
                    "{}eval @ {}: held-out CE/acc per layer 1..{l}: {}",
                    if tty { "\r\x1b[2K" } else { "" },
                    e.step,
                    cells.join(" ")
                );
            }
            TrainEvent::CheckpointSaved { step, dir } => {
                if !tty {
                    let _ = writeln!(err, "saved step {step} → {}", dir.display());
                }
            }
            TrainEvent::Finished { step, dir, stopped_early } => {
                let _ = writeln!(
                    err,
                    "{}{} at step {step}: {}",
                    if tty { "\r\x1b[2K" } else { "" },
                    if stopped_early { "stopped" } else { "finished" },
                    dir.display()
                );
            }
            TrainEvent::Failed { message } => {
                if tty {
                    let _ = writeln!(err);
                }
                failed = Some(message);
            }
        }
    }
    job.join();
    if let Some(m) = failed {
        bail!("{m}")
    }
    Ok(())
}

fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .or_else(|| crossterm::terminal::size().ok().map(|(w, _)| w as usize))
        .unwrap_or(120)
}

pub fn tokenizer(c: TokenizerCommand) -> Result<()> {
    match c {
        TokenizerCommand::Train { vocab, data, min_frequency, out } => {
            let path = out.join("tokenizer.json");
            // A checkpoint's tokenizer must match its embeddings: never replaced in place.
            if path.exists() {
                bail!("{} already exists: not overwritten (pick another --out)", path.display())
            }
            let files = if data.is_empty() { crate::paths::default_training_files() } else { collect_files(&data)? };
            let bytes: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
            if bytes == 0 {
                bail!("--data holds no text to train a tokenizer on")
            }
            let tok = crate::train::tokenizer::train_bpe(&files, vocab, min_frequency)?;
            std::fs::create_dir_all(&out).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
            let tmp = out.join(".tokenizer.json.tmp");
            let written = tok.save(&tmp, true).map_err(|e| anyhow::anyhow!("{e}")).and_then(|()| Ok(std::fs::rename(&tmp, &path)?));
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                bail!("cannot write {}: {e}", path.display())
            }
            super::out(&format!("tokenizer with {} tokens → {}", tok.get_vocab_size(true), path.display()));
            Ok(())
        }
    }
}
