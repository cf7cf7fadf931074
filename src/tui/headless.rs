//! The explorer without a terminal or threads: the app's effects are carried out
//! synchronously, the real engine answering worker commands through the same
//! [`execute`] the worker threads run. Tests snapshot views and check state with it, and
//! `alignscope bench --what tui` times frames with it.

use super::app::{App, AppOptions, Effect};
use super::theme::{ColorDepth, Theme};
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
        let mut h = Self { app, models, now: Instant::now(), training: vec![] };
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
                    let reply = match Checkpoint::open(&spec, &Device::Cpu) {
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
                other => self.training.push(other),
            }
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
