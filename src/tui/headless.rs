//! The explorer without a terminal or threads: the app's effects are carried out
//! synchronously, the real engine answering worker commands through the same
//! [`execute`] the worker threads run. Tests snapshot views and check state with it, and
//! `alignscope bench --what tui` times frames with it. Training effects are recorded; with
//! [`Headless::run_training`] they are also carried out by the explorer's own runtime
//! code (real runs, in-process or followed), polled with [`Headless::poll_training`].

use super::app::{App, AppOptions, Effect};
use super::theme::{ColorDepth, Theme};
use super::training_job::Trainer;
use super::worker::{ModelInfo, WorkerCommand, WorkerReply, execute};
use crate::model::Checkpoint;
use candle_core::Device;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The app, the checkpoints standing in for its workers, and a clock the caller moves.
pub struct Headless {
    pub app: App,
    pub models: HashMap<u64, Checkpoint>,
    pub now: Instant,
    /// Training effects the app asked for, in order (the runtime would start the job).
    pub training: Vec<Effect>,
    /// Where exports (`w`) are written.
    pub export_dir: std::path::PathBuf,
    trainer: Option<Trainer>,
}

impl Headless {
    /// An explorer over loaded checkpoints (columns A, B, ...), after its first analysis.
    pub fn start(checkpoints: Vec<Checkpoint>, opts: AppOptions) -> Self {
        let mut models = HashMap::new();
        let mut columns = Vec::new();
        for (i, ck) in checkpoints.into_iter().enumerate() {
            let id = i as u64 + 1;
            columns.push((id, ModelInfo::of(&ck)));
            models.insert(id, ck);
        }
        let app = App::new(columns, opts);
        let mut h = Self { app, models, now: Instant::now(), training: vec![], export_dir: crate::paths::export_dir(), trainer: None };
        let fx = h.app.start();
        h.run(fx);
        h
    }

    /// Carries out effects until none are left, feeding the replies back.
    pub fn run(&mut self, effects: Vec<Effect>) {
        let mut queue: VecDeque<Effect> = effects.into();
        while let Some(e) = queue.pop_front() {
            match e {
                Effect::Worker { worker, cmd: WorkerCommand::Load { spec } } => {
                    let reply = match crate::train::recipe::open(&spec, &Device::Cpu) {
                        Ok(ck) => {
                            let info = ModelInfo::of(&ck);
                            self.models.insert(worker, ck);
                            WorkerReply::Loaded(info)
                        }
                        Err(e) => WorkerReply::LoadFailed(crate::util::one_line(&e)),
                    };
                    queue.extend(self.app.on_worker(worker, reply, self.now));
                }
                Effect::Worker { worker, cmd } => {
                    let Some(ck) = self.models.get(&worker) else { continue };
                    let mut replies = Vec::new();
                    execute(
                        ck,
                        &cmd,
                        &mut |r| {
                            replies.push(r);
                            true
                        },
                        &|| false,
                    );
                    for r in replies {
                        queue.extend(self.app.on_worker(worker, r, self.now));
                    }
                }
                Effect::SpawnWorker { worker, spec } => {
                    queue.push_back(Effect::Worker { worker, cmd: WorkerCommand::Load { spec } });
                }
                Effect::DropWorker { worker } => {
                    self.models.remove(&worker);
                }
                Effect::OpenTrainMenu => {
                    let d = super::menu_defaults(&self.app);
                    self.app.open_train_menu(d);
                }
                Effect::Export(job) => {
                    let result = super::export::write(&job, &self.export_dir).map_err(|e| crate::util::one_line(&e));
                    self.app.on_exported(result);
                }
                other => {
                    self.training.push(other.clone());
                    if let Some(t) = &mut self.trainer {
                        t.apply(&mut self.app, other);
                    }
                }
            }
        }
    }

    /// From now on training effects start real runs (on the CPU), as in the explorer.
    pub fn run_training(&mut self) {
        self.trainer = Some(Trainer::new(Device::Cpu));
    }

    /// Folds in the events the run has sent so far (as the explorer does on every frame).
    pub fn poll_training(&mut self) {
        if let Some(t) = &mut self.trainer {
            let fx = t.poll(&mut self.app);
            self.run(fx);
        }
    }

    /// Polls the run until `done` holds for the app, or `limit` passes (false then).
    pub fn wait_training(&mut self, limit: Duration, done: impl Fn(&App) -> bool) -> bool {
        let until = Instant::now() + limit;
        loop {
            self.poll_training();
            if done(&self.app) {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Presses a key and carries out what it asked for; returns the effects it produced.
    pub fn press(&mut self, code: KeyCode) -> Vec<Effect> {
        self.press_mod(code, KeyModifiers::NONE)
    }

    pub fn press_mod(&mut self, code: KeyCode, mods: KeyModifiers) -> Vec<Effect> {
        let fx = self.app.handle_key(KeyEvent::new(code, mods), self.now);
        self.run(fx.clone());
        fx
    }

    /// Presses the keys of a string, one character each.
    pub fn type_text(&mut self, s: &str) {
        for c in s.chars() {
            self.press(KeyCode::Char(c));
        }
    }

    /// Lets time pass beyond every debounce, and carries out what comes due.
    pub fn settle(&mut self) -> Vec<Effect> {
        self.now += Duration::from_secs(1);
        let fx = self.app.tick(self.now);
        self.run(fx.clone());
        fx
    }

    /// The screen as text at `width`×`height`, in the 256-colour theme.
    pub fn screen(&self, width: u16, height: u16) -> String {
        super::ui::render_to_text(&self.app, &Theme::new(ColorDepth::Indexed256), width, height)
    }
}
