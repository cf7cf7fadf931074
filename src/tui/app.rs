//! The explorer's state and its one `update`. Keys become [`Action`]s through the keymap;
//! worker replies and training events are folded in; every change that needs the model is
//! returned as an [`Effect`] for the runtime to carry out. Nothing here touches the model
//! or waits for a worker (the only system calls are quick file checks on a path the user
//! typed or a run being reloaded), so the state can be driven and checked without a
//! terminal.
//!
//! Scrubbing (layer and position keys) only changes indices into the analysis that was
//! computed once per prompt with the lens at every position.

use super::column::{Column, DecodeOutput, EvalState, Folded};
use super::input::remember;
use super::input::{InputLine, InputPurpose};
use super::keymap::{self, Action, Scope};
use super::train::{MenuDefaults, RecipeOffer, RunSource, TrainMenu, TrainRequest, TrainStatus, TrainingState};
use super::view::{SimMetric, View};
use super::worker::{DecodeMethod, ModelInfo, WorkerCommand, WorkerReply};
use crate::analysis::early_exit::ExitMeasure;
use crate::analysis::generate::Sampling;
use crate::analysis::speculative::DEFAULT_INT8_LOOKAHEAD;
use crate::train::follow::Launch;
use crate::train::{TrainConfig, TrainEvent};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The prompt on start: the opening of Pride and Prejudice, line break included, as the
/// shipped models read their (hard-wrapped, Project Gutenberg) texts.
pub const DEFAULT_PROMPT: &str =
    "It is a truth universally acknowledged, that a single man in possession\nof a good fortune, must be in want of a";
/// Tokens listed by the lens at each layer and position.
pub const TOP_K: usize = 10;
/// New tokens per generation: short, so scrubbing through layers stays quick.
pub const GEN_TOKENS: usize = 32;
/// Chunks of the eval text (of the model's default context) for the metrics view.
pub const EVAL_CHUNKS: usize = 24;
/// Scrubbing through the generation view starts a generation only once the layer rests.
pub const GEN_DEBOUNCE: Duration = Duration::from_millis(150);
pub const TOP_P: f64 = 0.9;

#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Normal,
    Help { scroll: u16 },
    Input(InputLine),
    TrainMenu(Box<TrainMenu>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplingMode {
    Greedy,
    TopP,
}

/// How the generation view decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenMethod {
    /// Exit at the current layer (or every layer at once).
    ExitLayer,
    /// Per-token early exit: each token coloured by the layer it left at.
    EarlyExit,
    /// Self-speculative decoding, drafting from the current layer.
    Speculative,
}

/// Early-exit thresholds on start and per step of `+`/`-`, by measure: max-prob is a
/// probability, saturation a cosine close to 1.
pub fn default_threshold(m: ExitMeasure) -> f64 {
    match m {
        ExitMeasure::MaxProb => 0.3,
        ExitMeasure::Saturation => 0.97,
    }
}

fn threshold_step(m: ExitMeasure) -> f64 {
    match m {
        ExitMeasure::MaxProb => 0.05,
        ExitMeasure::Saturation => 0.005,
    }
}

/// Drafts per verification on start, and the most `+` allows.
pub const DEFAULT_DRAFT: usize = 4;
pub const MAX_DRAFT: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenSettings {
    pub all_layers: bool,
    pub mode: SamplingMode,
    pub seed: u64,
    pub max_new_tokens: usize,
    pub method: GenMethod,
    pub threshold: f64,
    pub measure: ExitMeasure,
    pub draft_len: usize,
    /// Speculative decoding drafts from the text's repeats where it can (`--lookup`; greedy).
    pub lookup: bool,
    /// Speculative decoding drafts with the model's own 8-bit copy (`--speculative int8`;
    /// greedy) instead of the explorer's layer.
    pub int8: bool,
}

impl GenSettings {
    pub fn sampling(&self) -> Sampling {
        match self.mode {
            SamplingMode::Greedy => Sampling::Greedy,
            SamplingMode::TopP => Sampling::TopP { p: TOP_P, temperature: 1.0, seed: self.seed },
        }
    }

    pub fn label(&self) -> String {
        match self.mode {
            SamplingMode::Greedy => "greedy".to_string(),
            SamplingMode::TopP => format!("top-p {TOP_P} · seed {}", self.seed),
        }
    }

    /// The decoding mode's method for a model of `n_layer` layers with the explorer at
    /// `layer` (speculative drafts from that layer, kept within 1..L-1); `None` in the
    /// exit-layer mode, or when a one-layer model cannot draft.
    pub fn decode_method(&self, layer: usize, n_layer: usize) -> Option<DecodeMethod> {
        match self.method {
            GenMethod::ExitLayer => None,
            GenMethod::EarlyExit => Some(DecodeMethod::EarlyExit { threshold: self.threshold, measure: self.measure }),
            GenMethod::Speculative if n_layer >= 2 => {
                let int8 = self.int8 && self.mode == SamplingMode::Greedy;
                Some(DecodeMethod::Speculative {
                    draft_layer: if int8 { 0 } else { layer.clamp(1, n_layer - 1) },
                    draft_len: self.draft_len,
                    lookup: self.lookup && self.mode == SamplingMode::Greedy,
                    int8,
                })
            }
            GenMethod::Speculative => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusMessage {
    pub text: String,
    pub error: bool,
    /// A hint about the key just pressed ("press e first"): the next key takes it away,
    /// where other messages stay until something replaces them.
    pub hint: bool,
}

/// Something only the runtime can do: talk to workers and the training job.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Worker {
        worker: u64,
        cmd: WorkerCommand,
    },
    /// Start a worker with this id that loads `spec`.
    SpawnWorker {
        worker: u64,
        spec: String,
    },
    /// End a worker that no column uses any more.
    DropWorker {
        worker: u64,
    },
    /// The runtime answers with [`App::open_train_menu`] and what is on disk.
    OpenTrainMenu,
    StartTraining(Box<TrainConfig>),
    ResumeTraining {
        dir: PathBuf,
        steps: Option<usize>,
    },
    /// Start the PyTorch engine with this command as a child process, and follow it.
    LaunchRun(Box<Launch>),
    /// Follow the run in this folder.
    AttachRun(PathBuf),
    StopTraining,
    /// Save what the view shows (the runtime writes it and answers with
    /// [`App::on_exported`]).
    Export(Box<super::export::ExportJob>),
}

/// How the explorer starts.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub prompt: String,
    pub eval_data: PathBuf,
    pub device: String,
}

pub struct App {
    pub columns: Vec<Column>,
    pub view: View,
    /// The current layer 0..=L (0 = embeddings).
    pub layer: usize,
    /// The selected token position in the prompt.
    pub position: usize,
    pub mode: Mode,
    pub prompt: String,
    pub prompt_history: Vec<String>,
    pub eval_history: Vec<String>,
    pub metric: SimMetric,
    /// `d`: on wide screens hide the A−B heatmap; on narrow ones show it instead of B.
    pub diff_toggled: bool,
    pub decoding: GenSettings,
    /// When a debounced generation is due.
    pub gen_due: Option<Instant>,
    pub eval_data: PathBuf,
    pub status: Option<StatusMessage>,
    pub training: TrainingState,
    pub device: String,
    /// Tenths of a second since the start, set by the event loop: the spinner's frame.
    pub ticks: u64,
    pub should_quit: bool,
    /// A recipe name that was asked for before it existed: `t` offers it, and the first
    /// checkpoint its run saves is loaded beside the base.
    pub recipe: Option<RecipeOffer>,
    /// The menu as it was when it last started a run: `t` after that run failed reopens it
    /// with the user's fields, not the defaults.
    pub last_menu: Option<Box<super::train::TrainMenu>>,
    /// `q` was pressed once while a run started here trains on after the explorer: the
    /// next `q` quits (any other key disarms it).
    quit_armed: bool,
    next_req: u64,
    next_worker: u64,
}

impl App {
    /// An explorer over loaded checkpoints, given as (worker id, info). Call [`App::start`]
    /// for the first analysis.
    pub fn new(columns: Vec<(u64, ModelInfo)>, opts: AppOptions) -> Self {
        let next_worker = columns.iter().map(|c| c.0).max().unwrap_or(0) + 1;
        let columns = columns.into_iter().map(|(w, info)| Column::new(w, &info.name.clone(), Some(info))).collect();
        Self {
            columns,
            view: View::Similarity,
            layer: 0,
            position: 0,
            mode: Mode::Normal,
            prompt: opts.prompt,
            prompt_history: vec![],
            eval_history: vec![],
            metric: SimMetric::CenteredCos,
            diff_toggled: false,
            decoding: GenSettings {
                all_layers: false,
                mode: SamplingMode::Greedy,
                seed: 0,
                max_new_tokens: GEN_TOKENS,
                method: GenMethod::ExitLayer,
                threshold: default_threshold(ExitMeasure::MaxProb),
                measure: ExitMeasure::MaxProb,
                draft_len: DEFAULT_DRAFT,
                lookup: false,
                int8: false,
            },
            gen_due: None,
            eval_data: opts.eval_data,
            status: None,
            training: TrainingState::default(),
            device: opts.device,
            ticks: 0,
            should_quit: false,
            recipe: None,
            last_menu: None,
            quit_armed: false,
            next_req: 1,
            next_worker,
        }
    }

    /// The first analysis of the start prompt; the layer starts at the last layer, where the
    /// model's own prediction is.
    pub fn start(&mut self) -> Vec<Effect> {
        self.layer = self.max_layer();
        if !self.prompt.is_empty() {
            self.prompt_history.push(self.prompt.clone());
        }
        self.analyze_all()
    }

    // ---- queries used by the panels ----

    /// The deepest layer over the columns.
    pub fn max_layer(&self) -> usize {
        self.columns.iter().map(Column::n_layer).max().unwrap_or(0)
    }

    /// Token positions of the prompt (of the longest tokenization over the columns).
    pub fn n_positions(&self) -> usize {
        self.columns.iter().filter_map(|c| c.analysis.as_ref()).map(|a| a.input_ids.len()).max().unwrap_or(0)
    }

    /// The tokens of the prompt as the first analyzed column splits it.
    pub fn tokens(&self) -> Option<&[String]> {
        self.columns.iter().find_map(|c| c.analysis.as_ref()).map(|a| a.tokens.as_slice())
    }

    pub fn busy(&self) -> bool {
        self.columns.iter().any(|c| c.loading() || c.analyzing || c.generating || matches!(c.eval, EvalState::Running { .. }))
            || self.gen_due.is_some()
    }

    /// What is running, for the status line ("analyzing A", ...).
    pub fn busy_text(&self) -> String {
        let mut parts = Vec::new();
        for (i, c) in self.columns.iter().enumerate() {
            let tag = column_tag(i);
            if c.loading() {
                parts.push(format!("loading {tag}"));
            }
            if c.analyzing {
                parts.push(format!("analyzing {tag}"));
            }
            if c.generating {
                parts.push(format!("generating {tag}"));
            }
            if let EvalState::Running { done, total } = c.eval {
                parts.push(format!("evaluating {tag} {done}/{total}"));
            }
        }
        parts.join(" · ")
    }

    /// Where keys are looked up now, most specific first.
    pub fn scopes(&self) -> Vec<Scope> {
        let modal = match &self.mode {
            Mode::Normal => None,
            Mode::Help { .. } => Some(Scope::Help),
            Mode::Input(_) => Some(Scope::Input),
            Mode::TrainMenu(_) => Some(Scope::TrainMenu),
        };
        keymap::scopes_for(modal, self.view)
    }

    /// The wait until the next debounced job, for the event loop's timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.gen_due
    }

    // ---- input ----

    pub fn handle_key(&mut self, key: KeyEvent, now: Instant) -> Vec<Effect> {
        // Ctrl-C quits from anywhere, whatever is open.
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            self.should_quit = true;
            return vec![];
        }
        if let Some(action) = keymap::lookup(&self.scopes(), &key) {
            return self.update(action, now);
        }
        match &mut self.mode {
            Mode::Input(line) => {
                line.edit(&key);
                self.clear_error();
            }
            Mode::TrainMenu(menu) => menu.edit(&key),
            _ => {}
        }
        vec![]
    }

    /// An error the input line showed goes once the user edits the text it was about.
    fn clear_error(&mut self) {
        if self.status.as_ref().is_some_and(|m| m.error) {
            self.status = None;
        }
    }

    /// Text pasted into the terminal (bracketed paste): into the input line or the
    /// training menu's field when one is open, else nothing — a paste is never run as keys.
    pub fn handle_paste(&mut self, text: &str) -> Vec<Effect> {
        match &mut self.mode {
            Mode::Input(line) => {
                line.paste(text);
                self.clear_error();
            }
            Mode::TrainMenu(menu) => menu.paste(text),
            _ => {}
        }
        vec![]
    }

    /// The one place where actions change the state.
    pub fn update(&mut self, action: Action, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        let quit_armed = std::mem::take(&mut self.quit_armed);
        // A hint was about the key before this one.
        if self.status.as_ref().is_some_and(|m| m.hint) {
            self.status = None;
        }
        match action {
            Action::Quit => {
                // A PyTorch run started here goes on after the explorer (it is a process
                // of its own): say so once, so that quitting never stops it unawares.
                // (One asked to stop, saving now, ends by itself.)
                let child_trains = matches!(self.training.status, TrainStatus::Starting | TrainStatus::Running)
                    && matches!(self.training.source, RunSource::Child { .. });
                if child_trains && !quit_armed {
                    self.quit_armed = true;
                    self.hint("the PyTorch run keeps training after you quit: q again quits · x stops it (saving first)");
                } else {
                    self.should_quit = true;
                }
            }
            Action::ToggleHelp => {
                self.mode = match self.mode {
                    Mode::Help { .. } => Mode::Normal,
                    _ => Mode::Help { scroll: 0 },
                }
            }
            Action::ScrollUp => {
                if let Mode::Help { scroll } = &mut self.mode {
                    *scroll = scroll.saturating_sub(1);
                }
            }
            Action::ScrollDown => {
                if let Mode::Help { scroll } = &mut self.mode {
                    *scroll = scroll.saturating_add(1);
                }
            }
            Action::LayerPrev => self.set_layer(self.layer.saturating_sub(1), now),
            Action::LayerNext => self.set_layer((self.layer + 1).min(self.max_layer()), now),
            Action::LayerFirst => self.set_layer(0, now),
            Action::LayerLast => self.set_layer(self.max_layer(), now),
            Action::PositionPrev => self.position = self.position.saturating_sub(1),
            Action::PositionNext => self.position = (self.position + 1).min(self.n_positions().saturating_sub(1)),
            Action::NextView => fx.extend(self.show_view(self.view.next(), now)),
            Action::PrevView => fx.extend(self.show_view(self.view.previous(), now)),
            Action::ShowView(v) => fx.extend(self.show_view(v, now)),
            Action::EditPrompt => self.open_input(InputPurpose::Prompt),
            Action::EditEvalFile => self.open_input(InputPurpose::EvalFile),
            Action::CycleMetric => self.metric = self.metric.next(),
            Action::ToggleDifference => {
                if self.columns.len() < 2 {
                    self.hint("the difference needs two checkpoints: start with --compare");
                } else {
                    self.diff_toggled = !self.diff_toggled;
                }
            }
            Action::ToggleAllLayers => {
                if self.decoding.method != GenMethod::ExitLayer {
                    self.decoding.method = GenMethod::ExitLayer;
                    self.decoding.all_layers = true;
                } else {
                    self.decoding.all_layers = !self.decoding.all_layers;
                }
                self.gen_due = Some(now);
            }
            Action::ToggleEarlyExit => self.toggle_method(GenMethod::EarlyExit, now),
            Action::ToggleSpeculative => self.toggle_method(GenMethod::Speculative, now),
            Action::RaiseSetting | Action::LowerSetting => {
                let up = action == Action::RaiseSetting;
                match self.decoding.method {
                    GenMethod::EarlyExit => {
                        let step = threshold_step(self.decoding.measure);
                        let t = self.decoding.threshold + if up { step } else { -step };
                        // Rounded to the step, so that repeated steps land on round numbers.
                        self.decoding.threshold = ((t / step).round() * step).clamp(0.0, 1.0);
                    }
                    GenMethod::Speculative => {
                        let k = self.decoding.draft_len;
                        self.decoding.draft_len = if up { (k + 1).min(MAX_DRAFT) } else { k.saturating_sub(1).max(1) };
                    }
                    GenMethod::ExitLayer => {
                        self.hint("+/- set the early-exit threshold (e) or the draft length (v)");
                        return fx;
                    }
                }
                self.clear_decoded();
                self.gen_due = Some(now + GEN_DEBOUNCE);
            }
            Action::CycleExitMeasure => {
                if self.decoding.method != GenMethod::EarlyExit {
                    self.hint("the exit measure is for early exit: press e first");
                } else {
                    self.decoding.measure = match self.decoding.measure {
                        ExitMeasure::MaxProb => ExitMeasure::Saturation,
                        ExitMeasure::Saturation => ExitMeasure::MaxProb,
                    };
                    self.decoding.threshold = default_threshold(self.decoding.measure);
                    self.restart_generation(now);
                }
            }
            Action::ToggleLookup => {
                if self.greedy_speculation("drafts from the text's repeats are") {
                    self.decoding.lookup = !self.decoding.lookup;
                    self.restart_generation(now);
                }
            }
            Action::ToggleInt8 => {
                if self.greedy_speculation("the 8-bit drafter is") {
                    self.decoding.int8 = !self.decoding.int8;
                    // Its drafts are nearly always right: it pays to run further ahead.
                    self.decoding.draft_len = if self.decoding.int8 { DEFAULT_INT8_LOOKAHEAD.min(MAX_DRAFT) } else { DEFAULT_DRAFT };
                    self.restart_generation(now);
                }
            }
            Action::ToggleSampling => {
                self.decoding.mode = match self.decoding.mode {
                    SamplingMode::Greedy => SamplingMode::TopP,
                    SamplingMode::TopP => SamplingMode::Greedy,
                };
                self.restart_generation(now);
            }
            Action::NewSeed => {
                if self.decoding.mode == SamplingMode::Greedy {
                    self.hint("greedy decoding has no seed: press s for top-p sampling");
                } else {
                    self.decoding.seed = self.decoding.seed.wrapping_add(1);
                    self.restart_generation(now);
                }
            }
            Action::Regenerate => self.restart_generation(now),
            Action::RerunEval => fx.extend(self.start_eval(true)),
            Action::OpenTrainMenu => {
                // A followed run may be left to train on while another is started or followed.
                if self.training.is_active() && self.training.source == RunSource::InProcess {
                    self.hint("a run is in progress: x stops it");
                    self.view = View::Training;
                } else {
                    fx.push(Effect::OpenTrainMenu);
                }
            }
            Action::StopTraining => {
                if self.training.is_active() {
                    self.training.status = super::train::TrainStatus::Stopping;
                    let how = match self.training.source {
                        RunSource::InProcess => "stopping: saving the checkpoint first…",
                        _ => "asked the run to stop (its stop file): it saves first…",
                    };
                    self.say(how, false);
                    fx.push(Effect::StopTraining);
                } else {
                    self.hint("no training is running");
                }
            }
            Action::ReloadTrained => fx.extend(self.reload_trained()),
            Action::Export => match super::export::snapshot(self) {
                Ok(job) => {
                    self.say(format!("saving the {} view…", self.view.title().to_lowercase()), false);
                    fx.push(Effect::Export(Box::new(job)));
                }
                Err(why) => self.say(why, true),
            },
            Action::Submit => fx.extend(self.submit(now)),
            Action::Cancel => self.mode = Mode::Normal,
            Action::HistoryPrev => self.browse_history(-1),
            Action::HistoryNext => self.browse_history(1),
            Action::FieldPrev | Action::FieldNext | Action::ChoicePrev | Action::ChoiceNext => {
                if let Mode::TrainMenu(menu) = &mut self.mode {
                    match action {
                        Action::FieldPrev => menu.move_field(-1),
                        Action::FieldNext => menu.move_field(1),
                        Action::ChoicePrev => menu.choice(-1),
                        _ => menu.choice(1),
                    }
                }
            }
        }
        fx
    }

    fn set_layer(&mut self, layer: usize, now: Instant) {
        if layer == self.layer {
            return;
        }
        self.layer = layer;
        // The exit layer, or the draft layer, follows the explorer's layer; early exit
        // does not depend on it.
        let follows = match self.decoding.method {
            GenMethod::ExitLayer => !self.decoding.all_layers,
            GenMethod::Speculative => !self.decoding.int8,
            GenMethod::EarlyExit => false,
        };
        if self.view == View::Generation && follows {
            self.gen_due = Some(now + GEN_DEBOUNCE);
        }
    }

    fn toggle_method(&mut self, method: GenMethod, now: Instant) {
        self.decoding.method = if self.decoding.method == method { GenMethod::ExitLayer } else { method };
        self.restart_generation(now);
    }

    fn clear_decoded(&mut self) {
        for c in &mut self.columns {
            c.decoded = None;
        }
    }

    fn show_view(&mut self, v: View, now: Instant) -> Vec<Effect> {
        self.view = v;
        match v {
            View::Generation => {
                self.gen_due = Some(now);
                vec![]
            }
            View::Metrics => self.start_eval(false),
            _ => vec![],
        }
    }

    fn say(&mut self, text: impl Into<String>, error: bool) {
        self.status = Some(StatusMessage { text: text.into(), error, hint: false });
    }

    /// A hint about the key just pressed: it goes at the next key.
    /// Whether greedy speculative decoding is on, for an option of it (`what` "is"/"are" for
    /// it); when not, a hint says which key turns it on.
    fn greedy_speculation(&mut self, what: &str) -> bool {
        if self.decoding.method != GenMethod::Speculative {
            self.hint(format!("{what} for speculative decoding: press v first"));
        } else if self.decoding.mode != SamplingMode::Greedy {
            self.hint(format!("{what} for greedy decoding: press s first"));
        } else {
            return true;
        }
        false
    }

    fn hint(&mut self, text: impl Into<String>) {
        self.status = Some(StatusMessage { text: text.into(), error: false, hint: true });
    }

    fn req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    fn analyze_all(&mut self) -> Vec<Effect> {
        let mut fx = Vec::new();
        for i in 0..self.columns.len() {
            fx.extend(self.analyze_column(i));
        }
        fx
    }

    fn analyze_column(&mut self, i: usize) -> Vec<Effect> {
        if self.columns[i].loading() {
            return vec![]; // analyzed when it has loaded
        }
        let req = self.req();
        let c = &mut self.columns[i];
        c.analysis_req = req;
        c.analyzing = true;
        // The running generation is for the old prompt: the worker drops it.
        c.gen_req = 0;
        c.generating = false;
        vec![Effect::Worker { worker: c.worker, cmd: WorkerCommand::Analyze { req, prompt: self.prompt.clone(), top_k: TOP_K } }]
    }

    fn restart_generation(&mut self, now: Instant) {
        for c in &mut self.columns {
            c.outputs.clear();
            c.decoded = None;
        }
        self.gen_due = Some(now);
    }

    /// Requests the continuations the generation view shows and does not have yet.
    fn request_generation(&mut self) -> Vec<Effect> {
        if self.decoding.method != GenMethod::ExitLayer {
            return self.request_decoding();
        }
        let mut fx = Vec::new();
        for i in 0..self.columns.len() {
            let (n_layer, ids) = match (&self.columns[i].info, &self.columns[i].analysis) {
                (Some(info), Some(a)) => (info.n_layer, a.input_ids.clone()),
                _ => continue,
            };
            let wanted: Vec<usize> = if self.decoding.all_layers {
                (1..=n_layer).collect()
            } else if self.columns[i].layer_at(self.layer) == 0 {
                vec![] // layer 0 has no blocks to exit from
            } else {
                vec![self.columns[i].layer_at(self.layer)]
            };
            let c = &mut self.columns[i];
            // A half-streamed continuation is cancelled by the new request: drop it.
            c.outputs.retain(|_, o| o.stop.is_some());
            let missing: Vec<usize> = wanted.into_iter().filter(|l| !c.outputs.contains_key(l)).collect();
            if missing.is_empty() {
                continue;
            }
            self.next_req += 1;
            let req = self.next_req;
            let c = &mut self.columns[i];
            c.gen_req = req;
            c.generating = true;
            c.gen_last_layer = *missing.last().unwrap();
            let cmd = WorkerCommand::Generate {
                req,
                prompt_ids: ids,
                layers: missing,
                max_new_tokens: self.decoding.max_new_tokens,
                sampling: self.decoding.sampling(),
            };
            fx.push(Effect::Worker { worker: c.worker, cmd });
        }
        fx
    }

    /// Requests the decoding mode's continuation (early exit or speculative) of every column
    /// that does not have it for the current settings.
    fn request_decoding(&mut self) -> Vec<Effect> {
        let mut fx = Vec::new();
        for i in 0..self.columns.len() {
            let (n_layer, ids) = match (&self.columns[i].info, &self.columns[i].analysis) {
                (Some(info), Some(a)) => (info.n_layer, a.input_ids.clone()),
                _ => continue,
            };
            let Some(method) = self.decoding.decode_method(self.columns[i].layer_at(self.layer), n_layer) else { continue };
            if self.columns[i].decoded.as_ref().is_some_and(|d| d.method == method && (d.stop.is_some() || self.columns[i].generating)) {
                continue;
            }
            let req = self.req();
            let c = &mut self.columns[i];
            c.gen_req = req;
            c.generating = true;
            c.decoded = Some(DecodeOutput::new(method));
            let cmd = WorkerCommand::Decode {
                req,
                prompt_ids: ids,
                method,
                max_new_tokens: self.decoding.max_new_tokens,
                sampling: self.decoding.sampling(),
            };
            fx.push(Effect::Worker { worker: c.worker, cmd });
        }
        fx
    }

    /// Evaluates every column on the eval text (once, unless `again`).
    fn start_eval(&mut self, again: bool) -> Vec<Effect> {
        let mut fx = Vec::new();
        for i in 0..self.columns.len() {
            let c = &self.columns[i];
            let Some(info) = &c.info else { continue };
            let needed = again || matches!(c.eval, EvalState::NotStarted);
            if !needed {
                continue;
            }
            let ctx = crate::model::DEFAULT_CTX.min(info.n_positions);
            let worker = c.worker;
            let req = self.req();
            let c = &mut self.columns[i];
            c.eval_req = req;
            c.eval = EvalState::Running { done: 0, total: EVAL_CHUNKS };
            let cmd = WorkerCommand::Eval { req, data: self.eval_data.clone(), ctx, max_chunks: EVAL_CHUNKS };
            fx.push(Effect::Worker { worker, cmd });
        }
        fx
    }

    fn open_input(&mut self, purpose: InputPurpose) {
        let text = match purpose {
            InputPurpose::Prompt => self.prompt.clone(),
            InputPurpose::EvalFile => self.eval_data.display().to_string(),
        };
        self.mode = Mode::Input(InputLine::new(purpose, &text));
    }

    fn browse_history(&mut self, delta: isize) {
        let Mode::Input(line) = &mut self.mode else { return };
        let history = match line.purpose {
            InputPurpose::Prompt => &self.prompt_history,
            InputPurpose::EvalFile => &self.eval_history,
        };
        line.browse(history, delta);
    }

    fn submit(&mut self, now: Instant) -> Vec<Effect> {
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Input(line) => {
                let text = line.field.text;
                match line.purpose {
                    InputPurpose::Prompt => {
                        if text.trim().is_empty() {
                            self.say("the prompt is empty: type some text, Enter runs it", true);
                            self.mode = Mode::Input(InputLine::new(InputPurpose::Prompt, &text));
                            return vec![];
                        }
                        remember(&mut self.prompt_history, &text);
                        self.prompt = text;
                        self.status = None;
                        for c in &mut self.columns {
                            c.outputs.clear();
                            c.decoded = None;
                        }
                        let _ = now;
                        self.analyze_all()
                    }
                    InputPurpose::EvalFile => {
                        let path = crate::paths::resolve_asset(std::path::Path::new(text.trim()));
                        if !path.is_file() {
                            self.say(format!("{} is not a file", text.trim()), true);
                            return vec![];
                        }
                        remember(&mut self.eval_history, text.trim());
                        self.eval_data = path;
                        self.start_eval(true)
                    }
                }
            }
            Mode::TrainMenu(menu) => match menu.request() {
                Ok(req) => {
                    let description = match (&req, menu.run_request()) {
                        (TrainRequest::Launch(_), Ok(run)) => {
                            let n = menu.procs.text.trim();
                            format!("{} · PyTorch, {n} process{}", describe_request(&run), if n == "1" { "" } else { "es" })
                        }
                        _ => describe_request(&req),
                    };
                    // A run followed until now goes on without us.
                    let left = self.training.out.clone().filter(|_| self.training.is_active());
                    self.training = TrainingState::starting(description);
                    self.view = View::Training;
                    let (source, msg) = match &req {
                        TrainRequest::Launch(l) => {
                            // Known before the run says so: the view points at its log meanwhile.
                            self.training.out = Some(l.run_dir.clone());
                            (RunSource::Child { command: l.command_line() }, "starting the PyTorch engine…")
                        }
                        TrainRequest::Attach(dir) => {
                            self.training.out = Some(dir.clone());
                            (RunSource::Attached, "attaching to the run…")
                        }
                        _ => (RunSource::InProcess, "starting training…"),
                    };
                    self.training.source = source;
                    match left {
                        Some(dir) => self.say(format!("{msg} (no longer following {}; it trains on)", dir.display()), false),
                        None => self.say(msg, false),
                    }
                    // A run started from the recipe's menu is the recipe, even with fields
                    // changed: its first save is the one shown beside the base.
                    if let (Some(offer), Some(_)) = (&mut self.recipe, &menu.note) {
                        match &req {
                            TrainRequest::Start(cfg) => offer.config.out = cfg.out.clone(),
                            TrainRequest::Launch(l) => offer.config.out = l.run_dir.clone(),
                            _ => {}
                        }
                    }
                    self.last_menu = Some(menu);
                    vec![match req {
                        TrainRequest::Start(cfg) => Effect::StartTraining(cfg),
                        TrainRequest::Resume { dir, steps } => Effect::ResumeTraining { dir, steps },
                        TrainRequest::Launch(l) => Effect::LaunchRun(l),
                        TrainRequest::Attach(dir) => Effect::AttachRun(dir),
                    }]
                }
                Err(e) => {
                    let mut menu = menu;
                    menu.error = Some(e);
                    self.mode = Mode::TrainMenu(menu);
                    vec![]
                }
            },
            other => {
                self.mode = other;
                vec![]
            }
        }
    }

    /// Opens the training menu prefilled with `defaults` (the runtime's answer to
    /// [`Effect::OpenTrainMenu`]).
    pub fn open_train_menu(&mut self, defaults: MenuDefaults) {
        let failed = matches!(self.training.status, super::train::TrainStatus::Failed(_));
        if let (true, Some(last)) = (failed, self.last_menu.take()) {
            self.mode = Mode::TrainMenu(Box::new(last.reopened(defaults)));
            return;
        }
        let menu = match &self.recipe {
            Some(offer) if offer.config.loss != crate::train::LossKind::CeReg => TrainMenu::for_recipe(offer, defaults),
            _ => TrainMenu::new(defaults),
        };
        self.mode = Mode::TrainMenu(Box::new(menu));
    }

    /// The explorer was opened on a recipe name that is not built yet (column A holds its
    /// base): the training menu opens prefilled with the recipe, and the status line says
    /// what is missing and what Enter does. The menu has no ce-reg runs: for those the
    /// status line gives the command that builds it.
    pub fn offer_recipe(&mut self, offer: RecipeOffer, defaults: MenuDefaults) {
        if offer.config.loss == crate::train::LossKind::CeReg {
            self.say(format!("{} is not built yet: build it with {}", offer.name, offer.command), false);
        } else {
            self.say(offer.status(), false);
            self.mode = Mode::TrainMenu(Box::new(TrainMenu::for_recipe(&offer, defaults)));
        }
        self.recipe = Some(offer);
    }

    /// Loads the last saved checkpoint of the run into column A; the checkpoint it was
    /// trained from moves to column B, so the two can be compared layer by layer.
    fn reload_trained(&mut self) -> Vec<Effect> {
        let Some((step, dir)) = self.training.saved.clone() else {
            self.say("no training checkpoint has been saved yet", false);
            return vec![];
        };
        let spec = dir.display().to_string();
        let same = |c: &Column| c.info.as_ref().is_some_and(|i| same_dir(&i.dir, &dir)) || c.spec == spec;
        if let Some(i) = self.columns.iter().position(same) {
            // Already shown: load the newer weights in place.
            let c = &mut self.columns[i];
            let worker = c.worker;
            *c = Column::new(worker, &spec, None);
            self.say(format!("reloading {} (step {step})…", dir.display()), false);
            return vec![Effect::Worker { worker, cmd: WorkerCommand::Load { spec } }];
        }
        let mut fx = Vec::new();
        let worker = self.next_worker;
        self.next_worker += 1;
        fx.push(Effect::SpawnWorker { worker, spec: spec.clone() });
        let new = Column::new(worker, &spec, None);
        if self.columns.len() >= 2 {
            let dropped = self.columns.pop().unwrap();
            fx.push(Effect::DropWorker { worker: dropped.worker });
        }
        self.columns.insert(0, new);
        self.say(format!("loading {} (step {step}) next to {}…", dir.display(), self.columns[1].name()), false);
        fx
    }

    // ---- replies ----

    /// Folds a worker's reply in.
    pub fn on_worker(&mut self, worker: u64, reply: WorkerReply, now: Instant) -> Vec<Effect> {
        let Some(i) = self.columns.iter().position(|c| c.worker == worker) else {
            return vec![]; // a worker that was replaced
        };
        match self.columns[i].fold(reply) {
            Folded::Quiet => vec![],
            Folded::Loaded => {
                self.layer = self.layer.min(self.max_layer());
                self.say(format!("loaded {} into {}", self.columns[i].name(), column_tag(i)), false);
                let mut fx = self.analyze_column(i);
                if self.view == View::Metrics {
                    fx.extend(self.start_eval(false));
                }
                fx
            }
            Folded::Analyzed => {
                // Point at the last token, where the next-token prediction is.
                self.position = self.n_positions().saturating_sub(1);
                if self.view == View::Generation {
                    self.gen_due = Some(now);
                }
                vec![]
            }
            Folded::Failed(e) => {
                self.say(format!("{}: {e}", column_tag(i)), true);
                vec![]
            }
        }
    }

    /// An export finished: the status line names the files (or the error).
    pub fn on_exported(&mut self, result: Result<Vec<PathBuf>, String>) {
        match result {
            Ok(files) => self.say(super::export::saved_message(&files), false),
            Err(e) => self.say(format!("cannot save: {e}"), true),
        }
    }

    /// Folds a training event in. The first save of an offered recipe's run is loaded
    /// beside its base at once.
    pub fn on_train(&mut self, ev: TrainEvent) -> Vec<Effect> {
        let saved = match &ev {
            TrainEvent::CheckpointSaved { dir, .. } => Some(dir.clone()),
            _ => None,
        };
        if let Some((msg, error)) = self.training.apply(ev) {
            self.say(msg, error);
        }
        match (saved, &self.recipe) {
            (Some(dir), Some(offer)) if same_dir(&dir, &offer.config.out) => {
                self.recipe = None;
                self.reload_trained()
            }
            _ => vec![],
        }
    }

    /// A hub download made progress (the base of a run, or its data).
    pub fn on_download(&mut self, s: &crate::hub::DownloadStatus) {
        self.say(s.line(), false);
    }

    /// The runtime could not start the job (or it vanished).
    pub fn on_train_error(&mut self, message: String) {
        self.training.status = super::train::TrainStatus::Failed(message.clone());
        self.say(format!("training: {message}"), true);
    }

    /// The stop request could not be made (the run goes on).
    pub fn on_stop_failed(&mut self, message: String) {
        if self.training.status == super::train::TrainStatus::Stopping {
            self.training.status = super::train::TrainStatus::Running;
        }
        self.say(format!("cannot stop the run: {message}"), true);
    }

    /// Time passes: fires the debounced generation.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        match self.gen_due {
            Some(due) if due <= now => {
                self.gen_due = None;
                if self.view == View::Generation { self.request_generation() } else { vec![] }
            }
            _ => vec![],
        }
    }
}

/// "A", "B".
pub fn column_tag(i: usize) -> &'static str {
    ["A", "B", "C", "D"].get(i).copied().unwrap_or("?")
}

fn same_dir(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

fn describe_request(req: &TrainRequest) -> String {
    match req {
        TrainRequest::Start(cfg) => {
            let base = match &cfg.init {
                crate::train::InitFrom::Checkpoint(s) => s.clone(),
                crate::train::InitFrom::Random { .. } => "random weights".to_string(),
            };
            format!("{} fine-tune of {base} → {} · {} steps · lr {:e}", cfg.loss, cfg.out.display(), cfg.steps, cfg.lr)
        }
        TrainRequest::Resume { dir, steps } => match steps {
            Some(s) => format!("continuing {} to step {s}", dir.display()),
            None => format!("continuing {}", dir.display()),
        },
        TrainRequest::Launch(l) => format!("PyTorch run → {}", l.run_dir.display()),
        TrainRequest::Attach(dir) => format!("following {}", dir.display()),
    }
}
