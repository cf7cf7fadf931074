//! The explorer's link to the engine's training runs, and the menu's prefill from what is
//! on disk. The only place in the TUI that names the job's and the follower's API.
//!
//! A run is either alignscope's own job in a thread of this process, or a run followed
//! through its folder: the PyTorch engine started here as a child process, or a run of
//! either engine started elsewhere. Both speak the same `TrainEvent`s, polled on the UI
//! thread without blocking.

use super::app::{App, Effect};
use super::train::{EngineDefaults, MenuDefaults, RecipeOffer};
use crate::model::checkpoint::resolve;
use crate::paths::local_checkpoints;
use crate::train::TrainEvent;
use crate::train::follow::{RunFollower, STOP_FILE, read_status};
use crate::train::job::TrainJob;
use crate::train::live::{hostname, process_alive, trainer_elsewhere};
use candle_core::Device;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A run the explorer shows.
enum Job {
    /// alignscope's trainer on the explorer's device.
    InProcess(TrainJob),
    /// A run followed through its folder; `child` for the PyTorch engine started here.
    Followed { follower: RunFollower, child: bool },
}

impl Job {
    fn try_recv(&self) -> Option<TrainEvent> {
        match self {
            Job::InProcess(j) => j.try_recv(),
            Job::Followed { follower, .. } => follower.try_recv(),
        }
    }

    fn is_running(&self) -> bool {
        match self {
            Job::InProcess(j) => j.is_running(),
            Job::Followed { follower, .. } => follower.is_running(),
        }
    }
}

/// Carries out the app's training effects and folds the run's events back in.
pub struct Trainer {
    device: Device,
    job: Option<Job>,
}

impl Trainer {
    pub fn new(device: Device) -> Self {
        Self { device, job: None }
    }

    /// Carries out a training effect; gives back any other effect.
    pub fn apply(&mut self, app: &mut App, effect: Effect) -> Option<Effect> {
        match effect {
            Effect::StartTraining(cfg) => self.job = Some(Job::InProcess(TrainJob::start(*cfg, &self.device))),
            Effect::ResumeTraining { dir, steps } => self.job = Some(Job::InProcess(TrainJob::resume(dir, steps, &self.device))),
            Effect::LaunchRun(launch) => self.follow(app, RunFollower::launch(&launch), true),
            Effect::AttachRun(dir) => self.follow(app, RunFollower::attach(&dir), false),
            Effect::StopTraining => match &self.job {
                Some(Job::InProcess(j)) => j.stop(),
                Some(Job::Followed { follower, .. }) => {
                    if let Err(e) = follower.stop() {
                        app.on_stop_failed(crate::util::one_line(&e));
                    }
                }
                None => {}
            },
            other => return Some(other),
        }
        None
    }

    fn follow(&mut self, app: &mut App, follower: anyhow::Result<RunFollower>, child: bool) {
        match follower {
            Ok(follower) => self.job = Some(Job::Followed { follower, child }),
            Err(e) => {
                self.job = None;
                app.on_train_error(crate::util::one_line(&e));
            }
        }
    }

    /// Folds the run's events in, giving back the effects they ask for (loading a save);
    /// a run that ended without saying so failed.
    pub fn poll(&mut self, app: &mut App) -> Vec<Effect> {
        let Some(job) = &self.job else { return vec![] };
        let mut fx = Vec::new();
        while let Some(ev) = job.try_recv() {
            fx.extend(app.on_train(ev));
        }
        if app.training.is_active() && !job.is_running() {
            // Events sent just before the end may still be queued.
            while let Some(ev) = job.try_recv() {
                fx.extend(app.on_train(ev));
            }
            if app.training.is_active() {
                app.on_train_error("the training job ended without a result".into());
            }
        }
        fx
    }

    /// What happens to the run when the explorer quits: alignscope's own run stops and
    /// saves (it cannot outlive this process; up to two minutes for the save); a run
    /// followed through its folder goes on, and the returned line says how to find it.
    pub fn on_quit(&self) -> Option<String> {
        match self.job.as_ref()? {
            Job::InProcess(job) => {
                if job.is_running() {
                    job.stop();
                    eprintln!("stopping the training run (saving a checkpoint)…");
                    let until = Instant::now() + Duration::from_secs(120);
                    while job.is_running() && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                None
            }
            Job::Followed { follower, child } => {
                let dir = follower.dir();
                // The child started here, or the writer the folder's status names (on another
                // machine it cannot be checked, and is taken at its word).
                let child_pid = follower.pid().map(i64::from).filter(|&p| process_alive(p));
                let writer = read_status(dir).filter(|s| s.status == "running");
                let writer_alive = writer.as_ref().is_some_and(|s| s.host != hostname() || s.pid.is_some_and(process_alive));
                if child_pid.is_none() && !writer_alive {
                    return None;
                }
                let pid = child_pid.or(writer.and_then(|s| s.pid)).map(|p| format!(" (pid {p})")).unwrap_or_default();
                let who = if *child { "the PyTorch run started here" } else { "the run" };
                let log = if *child { format!("; its output: {}", follower.log_path().display()) } else { String::new() };
                Some(format!(
                    "{who} in {} goes on{pid}{log}. Follow it again: t, then \"follow a run by its folder\"; stop it: touch {}",
                    dir.display(),
                    dir.join(STOP_FILE).display()
                ))
            }
        }
    }
}

/// The training menu's prefill: the checkpoint in column A as the base, the shipped
/// training texts, the eval text, the saved runs that can be continued, the PyTorch
/// engine's interpreter and the runs on disk that train right now.
pub fn menu_defaults(app: &App) -> MenuDefaults {
    let a = &app.columns[0];
    let resumable = resumable_runs();
    MenuDefaults {
        base: a.name().to_string(),
        n_positions: a.info.as_ref().map_or(crate::model::DEFAULT_CTX, |i| i.n_positions),
        data: crate::paths::default_training_files(),
        eval_data: app.eval_data.clone(),
        resumable,
        engines: EngineDefaults { python: crate::paths::torch_python(), running: running_runs() },
    }
}

/// What the explorer offers for a recipe name that is not built yet.
pub fn recipe_offer(r: &crate::train::recipe::Recipe) -> RecipeOffer {
    RecipeOffer { name: r.spec.clone(), base: r.base.clone(), out: r.out.clone(), config: r.config(), command: r.command() }
}

/// The saved runs that the menu can continue.
fn resumable_runs() -> Vec<(String, PathBuf)> {
    local_checkpoints()
        .into_iter()
        .filter_map(|name| {
            let dir = resolve(&name).ok()?;
            crate::train::save::is_resumable(&dir).then_some((name, dir))
        })
        .collect()
}

/// Run folders under the checkpoint folders whose trainer on this machine trains now
/// (a run before its first save has no config.json yet, so every subfolder is looked at).
fn running_runs() -> Vec<PathBuf> {
    let mut runs = vec![];
    for root in crate::paths::checkpoint_roots() {
        let Ok(entries) = std::fs::read_dir(&root) else { continue };
        for e in entries.flatten() {
            let dir = e.path();
            if !e.file_name().to_string_lossy().starts_with('.') && trainer_elsewhere(&dir).is_some() {
                runs.push(dir);
            }
        }
    }
    runs.sort();
    runs
}
