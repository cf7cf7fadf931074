//! Training checkpoints: an HF model folder plus the state that resumes the run exactly
//! (optimizer moments, step, data RNG position, run config, metrics history).
//!
//! Saves are atomic: everything is written to a sibling temporary folder and fsynced,
//! then swapped with the old folder in one `renameat2(RENAME_EXCHANGE)` (elsewhere: two
//! renames, with recovery on the next load). A kill at any moment leaves the last complete
//! checkpoint in place.

use super::config::TrainConfig;
use super::optim::AdamW;
use crate::model::Gpt2;
use crate::model::checkpoint::{write_model_files, write_synced, write_tensors};
use anyhow::{Context, Result, anyhow, bail};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "training_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const METRICS_FILE: &str = "metrics.jsonl";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub alignscope_version: String,
    /// Optimizer steps completed.
    pub step: usize,
    /// Word position of the data RNG (a u128, as text).
    pub data_rng_position: String,
    pub tokens_seen: u64,
    pub elapsed_secs: f64,
    pub config: TrainConfig,
    /// Which trainer wrote this state: "alignscope", or "torch" for scripts/torch/train.py
    /// (which also records its own details under a `torch` key that this struct ignores).
    /// States from before the field existed were all written by alignscope.
    #[serde(default = "default_engine")]
    pub engine: String,
}

pub const ENGINE: &str = "alignscope";

fn default_engine() -> String {
    ENGINE.to_string()
}

/// Whether `dir` holds a run that `train --resume` can continue.
pub fn is_resumable(dir: &Path) -> bool {
    dir.join(STATE_FILE).is_file() && dir.join(OPTIMIZER_FILE).is_file()
}

pub fn read_state(dir: &Path) -> Result<TrainState> {
    let p = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&p).with_context(|| format!("{} holds no training state ({STATE_FILE})", dir.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a valid training state", p.display()))
}

/// The run configuration saved in a checkpoint folder.
pub fn read_run_config(dir: &Path) -> Result<TrainConfig> {
    Ok(read_state(dir)?.config)
}

pub fn read_metrics(dir: &Path) -> Result<Vec<String>> {
    match std::fs::read_to_string(dir.join(METRICS_FILE)) {
        Ok(t) => Ok(t.lines().filter(|l| !l.trim().is_empty()).map(String::from).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(anyhow!("cannot read {}: {e}", dir.join(METRICS_FILE).display())),
    }
}

/// The metrics lines of steps up to `step`: the history a resume from that step continues.
/// The PyTorch trainer appends lines live between saves, so a run killed after its last
/// save holds lines past it (and perhaps one cut short); those are dropped.
pub fn read_metrics_upto(dir: &Path, step: usize) -> Result<Vec<String>> {
    Ok(read_metrics(dir)?
        .into_iter()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step as u64)
        })
        .collect())
}

/// Restores the optimizer's moments and step from a checkpoint folder.
pub fn read_optimizer(dir: &Path, names: &[String], opt: &mut AdamW, step: usize) -> Result<()> {
    let p = dir.join(OPTIMIZER_FILE);
    let tensors = candle_core::safetensors::load(&p, &Device::Cpu)
        .map_err(|e| anyhow!("{} is not a valid optimizer state: {}", p.display(), crate::model::checkpoint::first_line(&e.to_string())))?;
    for (i, name) in names.iter().enumerate() {
        let (dims, device) = (opt.m[i].dims().to_vec(), opt.m[i].device().clone());
        let get = |k: String| -> Result<Tensor> {
            let t = tensors.get(&k).ok_or_else(|| anyhow!("{} lacks {k}", p.display()))?;
            if t.dims() != dims.as_slice() {
                bail!("{} holds {k} of shape {:?}, expected {:?}", p.display(), t.dims(), dims)
            }
            Ok(t.to_device(&device)?)
        };
        opt.m[i] = get(format!("m.{name}"))?;
        opt.v[i] = get(format!("v.{name}"))?;
    }
    opt.step = step;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    let f = std::fs::File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    f.sync_all().with_context(|| format!("cannot sync {}", dir.display()))?;
    Ok(())
}

use crate::model::checkpoint::{recover_interrupted_save as recover, save_sibling as sibling};

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let cb = CString::new(b.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // RENAME_EXCHANGE = 2: swap both names atomically.
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), 2u32) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Files a save writes (or, for another engine's live status and stop request, must not
/// keep); every other regular file of the folder is carried into the new save.
const OWNED: [&str; 9] = [
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    STATE_FILE,
    OPTIMIZER_FILE,
    METRICS_FILE,
    super::live::STATUS_FILE,
    super::live::STOP_FILE,
];

/// Hard-links the files of `dir` that a save does not write (a launcher's train.log, notes)
/// into the new checkpoint `tmp`: a process still appending to one keeps writing into the
/// run, and nothing a user put there is lost when the folder is swapped.
fn carry_over(dir: &Path, tmp: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in entries.flatten() {
        let name = e.file_name();
        let n = name.to_string_lossy();
        let is_shard = n.starts_with("model-") && n.ends_with(".safetensors");
        if n.starts_with('.') || OWNED.contains(&n.as_ref()) || is_shard || !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let to = tmp.join(&name);
        if std::fs::hard_link(e.path(), &to).is_err() {
            std::fs::copy(e.path(), &to).with_context(|| format!("cannot carry {} into the new checkpoint", e.path().display()))?;
        }
    }
    Ok(())
}

/// Everything a save writes.
pub struct SaveContents<'a> {
    pub model: &'a Gpt2,
    pub tokenizer_json: &'a str,
    pub optimizer: &'a AdamW,
    pub param_names: &'a [String],
    pub state: &'a TrainState,
    pub metrics: &'a [String],
    /// The run's live status, written into the new checkpoint so that the folder never
    /// lacks it while the run goes on.
    pub status: Option<&'a super::live::RunStatus>,
}

/// Writes a complete checkpoint to `dir`, atomically replacing what was there.
pub fn save_checkpoint(dir: &Path, c: &SaveContents) -> Result<()> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
    recover(dir);
    let tmp = sibling(dir, "saving");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot clear {}", tmp.display()))?;
    }
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    write_model_files(&tmp, c.model, c.tokenizer_json)?;
    let mut moments = Vec::with_capacity(2 * c.param_names.len());
    for (i, n) in c.param_names.iter().enumerate() {
        moments.push((format!("m.{n}"), c.optimizer.m[i].clone()));
        moments.push((format!("v.{n}"), c.optimizer.v[i].clone()));
    }
    write_tensors(&tmp.join(OPTIMIZER_FILE), &moments)?;
    write_synced(&tmp.join(METRICS_FILE), super::live::history_text(c.metrics).as_bytes())?;
    write_synced(&tmp.join(STATE_FILE), serde_json::to_string_pretty(c.state)?.as_bytes())?;
    if let Some(status) = c.status {
        write_synced(&tmp.join(super::live::STATUS_FILE), serde_json::to_string_pretty(status)?.as_bytes())?;
    }
    carry_over(dir, &tmp)?;
    sync_dir(&tmp)?;
    swap_in(&tmp, dir, &parent)
}

/// Moves the complete folder `tmp` to `dir`, atomically replacing what was there, and
/// removes the previous contents.
fn swap_in(tmp: &Path, dir: &Path, parent: &Path) -> Result<()> {
    if !dir.exists() {
        std::fs::rename(tmp, dir).with_context(|| format!("cannot move the checkpoint into {}", dir.display()))?;
    } else {
        match exchange(tmp, dir) {
            Ok(()) => {}
            Err(_) => {
                let old = sibling(dir, "old");
                std::fs::rename(dir, &old).with_context(|| format!("cannot move {} aside", dir.display()))?;
                std::fs::rename(tmp, dir).with_context(|| format!("cannot move the checkpoint into {}", dir.display()))?;
                sync_dir(parent)?;
                keep_stop_request(&old, dir);
                std::fs::remove_dir_all(&old).ok();
                return Ok(());
            }
        }
    }
    sync_dir(parent)?;
    // After the exchange `tmp` holds the previous checkpoint.
    if tmp.exists() {
        keep_stop_request(tmp, dir);
        std::fs::remove_dir_all(tmp).ok();
    }
    Ok(())
}

/// A stop request written into the folder while it was being replaced landed in the old
/// one: it still asks the run to stop.
fn keep_stop_request(old: &Path, dir: &Path) {
    let stop = old.join(super::live::STOP_FILE);
    if stop.exists() {
        let _ = std::fs::rename(&stop, dir.join(super::live::STOP_FILE));
    }
}

/// Empties a checkpoint folder for a new run that replaces it (`--overwrite`): in one
/// atomic swap the folder holds only the files a save does not own (a log, notes), so a
/// kill leaves either the old checkpoint whole or the new run's folder, never a mix.
pub fn clear_checkpoint(dir: &Path) -> Result<()> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    recover(dir);
    let tmp = sibling(dir, "saving");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot clear {}", tmp.display()))?;
    }
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    carry_over(dir, &tmp)?;
    sync_dir(&tmp)?;
    swap_in(&tmp, dir, &parent)
}

/// Whether `dir` holds a checkpoint (a model or a run's state) that a new run would replace.
pub fn has_checkpoint(dir: &Path) -> bool {
    dir.join("config.json").is_file() || dir.join(STATE_FILE).is_file()
}
