//! The explorer's link to the engine's background training job, and the menu's prefill
//! from what is on disk. The only place in the TUI that names the job's API.
//!
//! Interim: the engine's `train::job` has not landed on main yet. Until it does, starting a
//! run reports that in the status line; the menu, the panel and the event folding are
//! complete and tested with the job's event types.

use super::app::App;
use super::train::MenuDefaults;
use crate::train::{TrainConfig, TrainEvent};
use anyhow::{bail, Result};
use candle_core::Device;
use std::path::PathBuf;

pub struct Job {
    _never: std::convert::Infallible,
}

impl Job {
    pub fn start(_config: TrainConfig, _device: &Device) -> Result<Job> {
        bail!("this build has no training job yet (the engine's train::job is not merged)")
    }

    pub fn resume(_dir: PathBuf, _steps: Option<usize>, _device: &Device) -> Result<Job> {
        bail!("this build has no training job yet (the engine's train::job is not merged)")
    }

    pub fn stop(&self) {}

    pub fn try_recv(&self) -> Option<TrainEvent> {
        None
    }

    pub fn is_running(&self) -> bool {
        false
    }

    pub fn wait(&self) {}
}

/// The training menu's prefill: the checkpoint in column A as the base, the shipped
/// training texts, the eval text, and the saved runs that can be continued.
pub fn menu_defaults(app: &App) -> MenuDefaults {
    let a = &app.columns[0];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/austen");
    let data = ["emma", "mansfield_park", "northanger_abbey", "pride_and_prejudice", "sense_and_sensibility"]
        .iter()
        .map(|n| root.join(format!("{n}.txt")))
        .collect();
    MenuDefaults {
        base: a.name().to_string(),
        n_positions: a.info.as_ref().map_or(256, |i| i.n_positions),
        data,
        eval_data: app.eval_data.clone(),
        resumable: vec![],
    }
}
