#![allow(dead_code)]
//! Drives the explorer's state without a terminal: the real engine answers the app's
//! worker commands synchronously through the same `worker::execute` the worker threads
//! run, so views can be snapshotted and state checked deterministically.

use alignscope::model::checkpoint::write_model_files;
use alignscope::model::{Checkpoint, Gpt2, Gpt2Config};
use alignscope::tui::app::{App, AppOptions, Effect};
use alignscope::tui::theme::{ColorDepth, Theme};
use alignscope::tui::worker::{ModelInfo, WorkerCommand, execute};
use candle_core::Device;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2")
}

pub fn eval_text() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/austen/persuasion.txt")
}

/// A random GPT-2 with the fixture's tokenizer, written to `root/name` (for layouts of
/// other depths, and a second checkpoint that differs from the fixture).
pub fn random_checkpoint(root: &Path, name: &str, n_layer: usize, seed: u64) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let model = Gpt2::random(Gpt2Config::new(n_layer, 64, 4, 512, 128), seed, &Device::Cpu).unwrap();
    let tokenizer = std::fs::read_to_string(fixture_dir().join("tokenizer.json")).unwrap();
    write_model_files(&dir, &model, &tokenizer).unwrap();
    dir
}

/// The app, the checkpoints standing in for its workers, and a clock the test moves.
pub struct Harness {
    pub app: App,
    pub models: HashMap<u64, Checkpoint>,
    pub now: Instant,
    /// Training effects the app asked for, in order (the runtime would start the job).
    pub training: Vec<Effect>,
}

/// A checkpoint opened by path, named as the explorer names it (the spec), so titles read
/// "tiny-gpt2" whatever the temporary folder.
fn open(dir: &Path) -> Checkpoint {
    // Tests run in the package folder: the fixture by its relative path, as a user would
    // name it, so that no absolute path of this machine ends up in a snapshot.
    let dir = dir.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(dir);
    Checkpoint::open(dir.to_str().unwrap(), &Device::Cpu).expect("checkpoint loads")
}

impl Harness {
    pub fn new(dirs: &[&Path]) -> Self {
        Self::with_prompt(dirs, alignscope::tui::app::DEFAULT_PROMPT)
    }

    pub fn with_prompt(dirs: &[&Path], prompt: &str) -> Self {
        let mut models = HashMap::new();
        let mut columns = Vec::new();
        for (i, d) in dirs.iter().enumerate() {
            let ck = open(d);
            let id = i as u64 + 1;
            columns.push((id, ModelInfo::of(&ck)));
            models.insert(id, ck);
        }
        let opts = AppOptions { prompt: prompt.to_string(), eval_data: eval_text(), device: "cpu".into() };
        let app = App::new(columns, opts);
        let mut h = Self { app, models, now: Instant::now(), training: vec![] };
        let fx = h.app.start();
        h.run(fx);
        h
    }

    /// Carries out effects until none are left, feeding the replies back.
    pub fn run(&mut self, effects: Vec<Effect>) {
        let mut queue: std::collections::VecDeque<Effect> = effects.into();
        while let Some(e) = queue.pop_front() {
            match e {
                Effect::Worker { worker, cmd } => {
                    if let WorkerCommand::Load { spec } = &cmd {
                        let ck = Checkpoint::open(spec, &Device::Cpu).expect("reload");
                        let info = ModelInfo::of(&ck);
                        self.models.insert(worker, ck);
                        let fx = self.app.on_worker(worker, alignscope::tui::worker::WorkerReply::Loaded(info), self.now);
                        queue.extend(fx);
                        continue;
                    }
                    let ck = self.models.get(&worker).expect("a worker for the effect");
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
                    let d = alignscope::tui::menu_defaults(&self.app);
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

    pub fn screen(&self, width: u16, height: u16) -> String {
        alignscope::tui::ui::render_to_text(&self.app, &Theme::new(ColorDepth::Indexed256), width, height)
    }
}
