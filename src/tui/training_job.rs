//! The explorer's link to the engine's background training job, and the menu's prefill
//! from what is on disk. The only place in the TUI that names the job's API.

use super::app::App;
use super::train::{MenuDefaults, RecipeOffer};
use crate::model::checkpoint::resolve;
use crate::paths::local_checkpoints;
use crate::train::job::TrainJob;
use crate::train::{TrainConfig, TrainEvent};
use anyhow::Result;
use candle_core::Device;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A run in the background, on the explorer's device.
pub struct Job {
    job: TrainJob,
}

impl Job {
    pub fn start(config: TrainConfig, device: &Device) -> Result<Job> {
        Ok(Job { job: TrainJob::start(config, device) })
    }

    pub fn resume(dir: PathBuf, steps: Option<usize>, device: &Device) -> Result<Job> {
        Ok(Job { job: TrainJob::resume(dir, steps, device) })
    }

    /// Asks the run to save and stop; its events say when it has.
    pub fn stop(&self) {
        self.job.stop();
    }

    pub fn try_recv(&self) -> Option<TrainEvent> {
        self.job.try_recv()
    }

    pub fn is_running(&self) -> bool {
        self.job.is_running()
    }

    /// Waits (up to two minutes) for a stopped run to save and end, when the explorer quits.
    pub fn wait(&self) {
        let until = Instant::now() + Duration::from_secs(120);
        while self.job.is_running() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The training menu's prefill: the checkpoint in column A as the base, the shipped
/// training texts, the eval text, and the saved runs that can be continued.
pub fn menu_defaults(app: &App) -> MenuDefaults {
    let a = &app.columns[0];
    let resumable = resumable_runs();
    MenuDefaults {
        base: a.name().to_string(),
        n_positions: a.info.as_ref().map_or(crate::model::DEFAULT_CTX, |i| i.n_positions),
        data: crate::paths::default_training_files(),
        eval_data: app.eval_data.clone(),
        resumable,
    }
}

/// What the explorer offers for a recipe name that is not built yet.
pub fn recipe_offer(r: &crate::train::recipe::Recipe) -> RecipeOffer {
    RecipeOffer { name: r.spec.clone(), base: r.base.clone(), out: r.out.clone(), config: r.config(), command: r.command() }
}

/// The saved runs that the menu can continue.
pub fn resumable_runs() -> Vec<(String, PathBuf)> {
    local_checkpoints()
        .into_iter()
        .filter_map(|name| {
            let dir = resolve(&name).ok()?;
            crate::train::save::is_resumable(&dir).then_some((name, dir))
        })
        .collect()
}
