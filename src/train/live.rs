//! The live files of a run folder, the same for both engines (alignscope's trainer here, the
//! PyTorch trainer in `scripts/torch/`), so that a run can be followed by anyone who sees
//! the folder ([`super::follow::RunFollower`]) whichever engine trains it:
//!
//! - `metrics.jsonl` grows by one line per step (and per evaluation) between saves; every
//!   save writes the whole history into the new checkpoint, and a resume drops the lines
//!   past the saved step (a kill may have left some);
//! - `run_status.json`: running, finished, stopped or failed (with a message), and which
//!   process on which machine writes the run;
//! - `stop`: created by a follower (or by hand) to ask the run to save and stop.
//!
//! Every write keeps the folder a complete checkpoint at every moment: the status is
//! replaced by a rename, the metrics history is replaced by a rename at the start of a run
//! and only appended to afterwards.

use super::save::METRICS_FILE;
use crate::model::checkpoint::write_synced;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The live status file in the run folder.
pub const STATUS_FILE: &str = "run_status.json";
/// Created in the run folder to ask the trainer to save and stop.
pub const STOP_FILE: &str = "stop";

/// `run_status.json` as both engines write it (fields an engine may omit are optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunStatus {
    /// "alignscope" or "torch".
    #[serde(default)]
    pub engine: String,
    /// running, finished, stopped or failed.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Seconds since the Unix epoch of the last write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_step: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_steps: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_layer: Option<usize>,
    /// Processes training the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world_size: Option<usize>,
    /// The step the run ended at (finished, stopped, failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The steps this run saved, in order (a follower that looks between two quick saves
    /// still reports both).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub saves: Vec<usize>,
}

impl RunStatus {
    /// Whether the run has ended (finished, stopped or failed).
    pub fn ended(&self) -> bool {
        matches!(self.status.as_str(), "finished" | "stopped" | "failed")
    }
}

pub fn read_status(dir: &Path) -> Option<RunStatus> {
    let text = std::fs::read_to_string(dir.join(STATUS_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

pub(crate) fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

pub(crate) fn hostname() -> Option<String> {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its whole length, and gethostname writes at
        // most that many bytes.
        let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if r != 0 {
            return None;
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        Some(String::from_utf8_lossy(&buf[..end]).into_owned())
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Whether process `pid` exists on this machine.
pub(crate) fn process_alive(pid: i64) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
        if pid <= 0 {
            return false;
        }
        // SAFETY: signal 0 only checks that the process exists; nothing is delivered.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// The process id of a trainer on this machine, other than this process, that is writing
/// `dir` right now (its status says running and the process lives). A run on another
/// machine cannot be checked from here and is not reported.
pub fn trainer_elsewhere(dir: &Path) -> Option<i64> {
    let s = read_status(dir)?;
    let pid = s.pid?;
    let here = s.host.is_some() && s.host == hostname();
    (s.status == "running" && here && pid != std::process::id() as i64 && process_alive(pid)).then_some(pid)
}

/// Writes `run_status.json` of `dir` by a rename, so a reader sees the old or the new one.
pub fn write_status(dir: &Path, status: &RunStatus) -> Result<()> {
    let tmp = dir.join(format!(".{STATUS_FILE}.tmp"));
    write_synced(&tmp, serde_json::to_string_pretty(status)?.as_bytes())?;
    std::fs::rename(&tmp, dir.join(STATUS_FILE)).with_context(|| format!("cannot write {}", dir.join(STATUS_FILE).display()))
}

/// The writer's side of a run's live files (alignscope's own trainer).
pub struct LiveRun {
    dir: PathBuf,
    metrics: File,
    status: RunStatus,
}

impl LiveRun {
    /// Starts the live files of a run in `dir` (created when missing): a stop request from
    /// before `run_started` is dropped (a run killed before answering it left it; one made
    /// while this run was setting up stands), the metrics file is replaced by the history
    /// this run continues, and the status says running.
    pub fn begin(
        dir: &Path,
        run_started: SystemTime,
        history: &[String],
        start_step: usize,
        total_steps: usize,
        n_layer: usize,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let stop = dir.join(STOP_FILE);
        if std::fs::metadata(&stop).and_then(|m| m.modified()).is_ok_and(|t| t < run_started) {
            std::fs::remove_file(&stop).with_context(|| format!("cannot clear the stale stop request {}", stop.display()))?;
        }
        let tmp = dir.join(format!(".{METRICS_FILE}.tmp"));
        write_synced(&tmp, history_text(history).as_bytes())?;
        std::fs::rename(&tmp, dir.join(METRICS_FILE)).with_context(|| format!("cannot write {}", dir.join(METRICS_FILE).display()))?;
        let status = RunStatus {
            engine: super::save::ENGINE.to_string(),
            status: "running".into(),
            pid: Some(std::process::id() as i64),
            host: hostname(),
            start_step: Some(start_step),
            total_steps: Some(total_steps),
            n_layer: Some(n_layer),
            world_size: Some(1),
            ..RunStatus::default()
        };
        let live = Self { dir: dir.to_path_buf(), metrics: open_append(dir)?, status };
        write_status(dir, &live.running())?;
        Ok(live)
    }

    /// The status "running", stamped now.
    pub fn running(&self) -> RunStatus {
        RunStatus { updated_at: Some(now_secs()), ..self.status.clone() }
    }

    /// The status a save of `step` writes into the new checkpoint: running, with this save
    /// listed ([`Self::saved`] keeps it once the save is on disk).
    pub fn saving(&self, step: usize) -> RunStatus {
        let mut s = self.running();
        s.saves.push(step);
        s
    }

    /// Appends one metrics line (a step or an evaluation) for followers.
    pub fn line(&mut self, line: &str) -> Result<()> {
        let path = self.dir.join(METRICS_FILE);
        writeln!(self.metrics, "{line}").and_then(|_| self.metrics.flush()).with_context(|| format!("cannot write {}", path.display()))
    }

    /// After the save of `step` swapped the folder: append to the new checkpoint's metrics
    /// file, and list the save in every later status.
    pub fn saved(&mut self, step: usize) -> Result<()> {
        self.status.saves.push(step);
        self.metrics = open_append(&self.dir)?;
        Ok(())
    }

    /// Whether a follower (or a user) asked the run to save and stop.
    pub fn stop_requested(&self) -> bool {
        self.dir.join(STOP_FILE).exists()
    }

    /// The last word: finished, stopped or failed at `step`. The stop request is answered.
    pub fn end(self, status: &str, step: usize, message: Option<String>) -> Result<()> {
        let _ = std::fs::remove_file(self.dir.join(STOP_FILE));
        let s = RunStatus { status: status.into(), step: Some(step), message, updated_at: Some(now_secs()), ..self.status };
        write_status(&self.dir, &s)
    }
}

fn open_append(dir: &Path) -> Result<File> {
    let path = dir.join(METRICS_FILE);
    std::fs::OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("cannot open {}", path.display()))
}

/// The metrics file's text for these lines (empty for none).
pub fn history_text(lines: &[String]) -> String {
    let mut s = lines.join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_begins_with_its_history_and_ends_with_its_status() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("run");
        let history = vec![r#"{"step":1}"#.to_string(), r#"{"step":2}"#.to_string()];
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join(METRICS_FILE), "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n{\"st").unwrap();
        std::fs::write(d.join(STOP_FILE), b"").unwrap();
        // A stop request from before the run started is stale.
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        let mut live = LiveRun::begin(&d, later, &history, 2, 10, 4).unwrap();
        assert!(!live.stop_requested());
        assert_eq!(std::fs::read_to_string(d.join(METRICS_FILE)).unwrap(), "{\"step\":1}\n{\"step\":2}\n", "the history it continues");
        let s = read_status(&d).unwrap();
        assert_eq!((s.engine.as_str(), s.status.as_str()), ("alignscope", "running"));
        assert_eq!((s.pid, s.start_step, s.total_steps, s.n_layer), (Some(std::process::id() as i64), Some(2), Some(10), Some(4)));
        assert_eq!(trainer_elsewhere(&d), None, "this process is not another trainer");
        live.line(r#"{"step":3}"#).unwrap();
        assert!(std::fs::read_to_string(d.join(METRICS_FILE)).unwrap().ends_with("{\"step\":2}\n{\"step\":3}\n"));
        // One made while the run goes on stands, and is answered at the end.
        std::fs::write(d.join(STOP_FILE), b"").unwrap();
        assert!(live.stop_requested());
        live.end("stopped", 3, None).unwrap();
        assert!(!d.join(STOP_FILE).exists());
        let s = read_status(&d).unwrap();
        assert_eq!((s.status.as_str(), s.step, s.ended()), ("stopped", Some(3), true));
        // A stop request made after the run started (while it set up) is kept.
        std::fs::write(d.join(STOP_FILE), b"").unwrap();
        let live = LiveRun::begin(&d, UNIX_EPOCH, &history, 2, 10, 4).unwrap();
        assert!(live.stop_requested());
    }
}
