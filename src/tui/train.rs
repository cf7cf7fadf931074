//! The training side of the explorer's state: the menu that prefills a run, and what the
//! UI knows about the background job (folded from its events). No engine calls here; the
//! runtime starts and stops the job.

use super::text::TextField;
use crate::train::follow::{Launch, TorchOptions};
use crate::train::job::RunPlan;
use crate::train::{EvalMetrics, InitFrom, LossKind, StepMetrics, TrainConfig, TrainEvent};
use std::path::{Path, PathBuf};

/// What the menu starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    AlignedFinetune,
    StandardFinetune,
    Continue,
    /// Follow a run that is already training (or has ended), by its folder.
    Attach,
}

impl RunKind {
    pub const ALL: [RunKind; 4] = [RunKind::AlignedFinetune, RunKind::StandardFinetune, RunKind::Continue, RunKind::Attach];
    pub fn label(&self) -> &'static str {
        match self {
            RunKind::AlignedFinetune => "aligned fine-tune",
            RunKind::StandardFinetune => "standard fine-tune",
            RunKind::Continue => "continue a saved run",
            RunKind::Attach => "follow a run by its folder",
        }
    }
}

/// Which engine trains a run the menu starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// alignscope's own trainer, in a thread of the explorer.
    InProcess,
    /// The PyTorch engine (`scripts/torch/train.py`; torchrun for more than one process),
    /// started as a child process and followed through its run folder.
    Torch,
}

impl Engine {
    pub const ALL: [Engine; 2] = [Engine::InProcess, Engine::Torch];
    pub fn label(&self) -> &'static str {
        match self {
            Engine::InProcess => "alignscope, in this process",
            Engine::Torch => "PyTorch, a child process (torchrun for 2+)",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Kind,
    Base,
    Output,
    Data,
    Steps,
    Lr,
    Batch,
    Ctx,
    Run,
    Engine,
    Procs,
    Folder,
}

impl Field {
    pub fn label(&self) -> &'static str {
        match self {
            Field::Kind => "Run",
            Field::Base => "Base",
            Field::Output => "Output name",
            Field::Data => "Data",
            Field::Steps => "Steps",
            Field::Lr => "Learning rate",
            Field::Batch => "Batch",
            Field::Ctx => "Context",
            Field::Run => "Saved run",
            Field::Engine => "Engine",
            Field::Procs => "Processes",
            Field::Folder => "Run folder",
        }
    }
}

/// The prefill of the menu: the loaded checkpoint and what is on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct MenuDefaults {
    /// The checkpoint being explored (column A): the base of a fine-tune.
    pub base: String,
    pub n_positions: usize,
    pub data: Vec<PathBuf>,
    pub eval_data: PathBuf,
    /// Runs that can be continued: (name, folder).
    pub resumable: Vec<(String, PathBuf)>,
    /// The engine choices' prefill.
    pub engines: EngineDefaults,
}

/// What the menu needs to offer the PyTorch engine and to follow runs.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineDefaults {
    /// The interpreter that runs the PyTorch engine ([`crate::paths::torch_python`]).
    pub python: PathBuf,
    /// Run folders whose trainer is training right now (the first prefills "follow").
    pub running: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainMenu {
    pub kind: usize,
    pub base: TextField,
    pub output: TextField,
    pub data: TextField,
    pub steps: TextField,
    pub lr: TextField,
    pub batch: TextField,
    pub ctx: TextField,
    pub run: usize,
    pub resumable: Vec<(String, PathBuf)>,
    pub eval_data: PathBuf,
    pub selected: usize,
    pub error: Option<String>,
    pub engine: usize,
    /// Processes of the PyTorch engine on this machine.
    pub procs: TextField,
    /// The run folder to follow.
    pub folder: TextField,
    pub python: PathBuf,
    /// [`TrainMenu::command`] as of the last change through the menu's keys (the panel
    /// shows it without touching the disk).
    pub preview: Option<String>,
    /// The checkpoint the explorer has loaded and its context: a run on that base cannot
    /// train on longer sequences.
    pub loaded: (String, usize),
    /// Why the menu opened by itself (a recipe name that is not built yet).
    pub note: Option<String>,
}

/// A recipe name the explorer was asked to open before it exists: the menu offers to
/// build it, and its first save is loaded beside the base.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipeOffer {
    /// The name as given (`gpt2-aligned`).
    pub name: String,
    pub base: String,
    /// Its output as `--out` names it (a checkpoint name or a path).
    pub out: String,
    /// The run that builds it (the paper's recipe).
    pub config: TrainConfig,
    /// The command line that builds it, for the status line.
    pub command: String,
}

impl RecipeOffer {
    /// What the status line says while the menu waits for Enter (what matters first: a
    /// narrow terminal clips the end).
    pub fn status(&self) -> String {
        let c = &self.config;
        let data: Vec<String> = c.data.iter().map(|p| crate::paths::short_name(&p.to_string_lossy())).collect();
        format!(
            "{} is not built yet. Enter trains it, Esc explores {}: the {} fine-tune of {} on {}, {} steps × {} × {} tokens, lr {:e}.",
            self.name,
            self.base,
            c.loss,
            self.base,
            data.join(", "),
            c.steps,
            c.batch,
            c.ctx,
            c.lr,
        )
    }
}

/// What the menu asks the runtime to do.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainRequest {
    Start(Box<TrainConfig>),
    Resume {
        dir: PathBuf,
        steps: Option<usize>,
    },
    /// Run this command (the PyTorch engine) as a child process and follow its folder.
    Launch(Box<Launch>),
    /// Follow the run in this folder.
    Attach(PathBuf),
}

impl TrainMenu {
    pub fn new(d: MenuDefaults) -> Self {
        Self {
            kind: 0,
            output: TextField::new(&format!("{}-ft", crate::paths::short_name(&d.base))),
            base: TextField::new(&d.base),
            data: TextField::new(&d.data.iter().map(|p| crate::paths::display_path(p)).collect::<Vec<_>>().join(", ")),
            steps: TextField::new("200"),
            // The small Austen models fine-tune well at 1e-4; the paper's 2e-5 is for GPT-2.
            lr: TextField::new("1e-4"),
            batch: TextField::new("8"),
            ctx: TextField::new(&crate::model::DEFAULT_CTX.min(d.n_positions).to_string()),
            run: 0,
            resumable: d.resumable,
            eval_data: d.eval_data,
            selected: 0,
            error: None,
            engine: 0,
            procs: TextField::new("1"),
            folder: TextField::new(&d.engines.running.first().map(|p| crate::paths::display_path(p)).unwrap_or_default()),
            python: d.engines.python,
            preview: None,
            note: None,
            loaded: (d.base.clone(), d.n_positions),
        }
        .refreshed()
    }

    /// This menu again with what is on disk now (the runs that can be continued, the runs
    /// training, the engine's Python): the fields as the user left them.
    pub fn reopened(mut self, d: MenuDefaults) -> Self {
        self.resumable = d.resumable;
        self.python = d.engines.python;
        self.error = None;
        self.refreshed()
    }

    /// The menu prefilled with a recipe's run, ready for Enter (the rest as `d` has it).
    pub fn for_recipe(offer: &RecipeOffer, d: MenuDefaults) -> Self {
        let c = &offer.config;
        let kind = if c.loss == LossKind::Standard { RunKind::StandardFinetune } else { RunKind::AlignedFinetune };
        let base = match &c.init {
            InitFrom::Checkpoint(b) => b.clone(),
            InitFrom::Random { .. } => offer.base.clone(),
        };
        Self {
            kind: RunKind::ALL.iter().position(|k| *k == kind).unwrap_or(0),
            base: TextField::new(&base),
            output: TextField::new(&offer.out),
            data: TextField::new(&c.data.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")),
            steps: TextField::new(&c.steps.to_string()),
            lr: TextField::new(&format!("{:e}", c.lr)),
            batch: TextField::new(&c.batch.to_string()),
            ctx: TextField::new(&c.ctx.to_string()),
            eval_data: c.eval_data.first().cloned().unwrap_or_else(|| d.eval_data.clone()),
            note: Some(format!("{} is not built yet: Enter trains it with the paper's recipe", offer.name)),
            ..Self::new(d)
        }
        .refreshed()
    }

    fn refreshed(mut self) -> Self {
        self.refresh();
        self
    }

    /// Recomputes the command preview after a change.
    pub fn refresh(&mut self) {
        self.preview = self.command();
    }

    pub fn run_kind(&self) -> RunKind {
        RunKind::ALL[self.kind]
    }

    pub fn engine(&self) -> Engine {
        Engine::ALL[self.engine]
    }

    /// The fields shown for the chosen kind of run, in order.
    pub fn fields(&self) -> Vec<Field> {
        let mut f = match self.run_kind() {
            RunKind::Attach => return vec![Field::Kind, Field::Folder],
            RunKind::Continue => vec![Field::Kind, Field::Run, Field::Steps],
            _ => vec![Field::Kind, Field::Base, Field::Output, Field::Data, Field::Steps, Field::Lr, Field::Batch, Field::Ctx],
        };
        f.push(Field::Engine);
        if self.engine() == Engine::Torch {
            f.push(Field::Procs);
        }
        f
    }

    pub fn selected_field(&self) -> Field {
        let f = self.fields();
        f[self.selected.min(f.len() - 1)]
    }

    pub fn text_mut(&mut self, f: Field) -> Option<&mut TextField> {
        Some(match f {
            Field::Base => &mut self.base,
            Field::Output => &mut self.output,
            Field::Data => &mut self.data,
            Field::Steps => &mut self.steps,
            Field::Lr => &mut self.lr,
            Field::Batch => &mut self.batch,
            Field::Ctx => &mut self.ctx,
            Field::Procs => &mut self.procs,
            Field::Folder => &mut self.folder,
            Field::Kind | Field::Run | Field::Engine => return None,
        })
    }

    pub fn text(&self, f: Field) -> Option<&TextField> {
        Some(match f {
            Field::Base => &self.base,
            Field::Output => &self.output,
            Field::Data => &self.data,
            Field::Steps => &self.steps,
            Field::Lr => &self.lr,
            Field::Batch => &self.batch,
            Field::Ctx => &self.ctx,
            Field::Procs => &self.procs,
            Field::Folder => &self.folder,
            Field::Kind | Field::Run | Field::Engine => return None,
        })
    }

    /// The value of a field as shown.
    pub fn value(&self, f: Field) -> String {
        match f {
            Field::Kind => self.run_kind().label().to_string(),
            Field::Engine => self.engine().label().to_string(),
            Field::Run => match self.resumable.get(self.run) {
                Some((name, _)) => name.clone(),
                None => "(no saved run can be continued)".to_string(),
            },
            _ => self.text(f).map(|t| t.text.clone()).unwrap_or_default(),
        }
    }

    /// Inserts pasted text into the selected text field (one line).
    pub fn paste(&mut self, text: &str) {
        let f = self.selected_field();
        if let Some(t) = self.text_mut(f) {
            t.paste(text, false);
            self.error = None;
            self.refresh();
        }
    }

    /// Applies an editing key to the selected text field; an edit clears the error.
    pub fn edit(&mut self, key: &ratatui::crossterm::event::KeyEvent) {
        let f = self.selected_field();
        if let Some(t) = self.text_mut(f)
            && t.edit(key)
        {
            self.error = None;
            self.refresh();
        }
    }

    pub fn move_field(&mut self, delta: isize) {
        let n = self.fields().len() as isize;
        self.selected = (self.selected as isize + delta).rem_euclid(n) as usize;
    }

    /// Left/right: change a choice, or move the cursor in a text field.
    pub fn choice(&mut self, delta: isize) {
        match self.selected_field() {
            Field::Kind => {
                let n = RunKind::ALL.len() as isize;
                self.kind = (self.kind as isize + delta).rem_euclid(n) as usize;
                self.selected = 0;
            }
            Field::Run if !self.resumable.is_empty() => {
                let n = self.resumable.len() as isize;
                self.run = (self.run as isize + delta).rem_euclid(n) as usize;
            }
            Field::Engine => {
                let n = Engine::ALL.len() as isize;
                self.engine = (self.engine as isize + delta).rem_euclid(n) as usize;
            }
            f => {
                if let Some(t) = self.text_mut(f) {
                    if delta < 0 { t.left() } else { t.right() }
                }
            }
        }
        self.error = None;
        self.refresh();
    }

    /// Checks the fields and builds the request; the error names the field.
    pub fn request(&self) -> Result<TrainRequest, String> {
        if self.run_kind() == RunKind::Attach {
            return self.attach_request();
        }
        let run = self.run_request()?;
        match self.engine() {
            Engine::InProcess => Ok(run),
            Engine::Torch => Ok(TrainRequest::Launch(Box::new(self.torch_launch(run)?))),
        }
    }

    /// The command the PyTorch engine would run with the fields as they are (None for the
    /// other choices, or while a field is invalid): the menu shows it before it starts.
    pub fn command(&self) -> Option<String> {
        match self.request() {
            Ok(TrainRequest::Launch(l)) => Some(l.command_line()),
            _ => None,
        }
    }

    /// The run as alignscope would train it (the PyTorch engine trains the same run).
    pub fn run_request(&self) -> Result<TrainRequest, String> {
        fn num(f: &TextField, what: &str) -> Result<f64, String> {
            f.text.trim().parse().map_err(|_| format!("{what} must be a number, got {:?}", f.text.trim()))
        }
        // A count says what it needs: "-5" and 10^23 are numbers, but not counts.
        fn count(f: &TextField, what: &str) -> Result<usize, String> {
            f.text.trim().parse().map_err(|_| format!("{what} must be a whole number of 1 or more, got {:?}", f.text.trim()))
        }
        if self.run_kind() == RunKind::Continue {
            let (_, dir) = self.resumable.get(self.run).ok_or("no saved run can be continued: start a fine-tune first")?;
            let steps = if self.steps.text.trim().is_empty() { None } else { Some(count(&self.steps, "Steps")?) };
            if steps == Some(0) {
                return Err("Steps must be at least 1".into());
            }
            return Ok(TrainRequest::Resume { dir: dir.clone(), steps });
        }
        let base = self.base.text.trim();
        if base.is_empty() {
            return Err("Base must name a checkpoint".into());
        }
        let out = self.output.text.trim();
        if out.is_empty() {
            return Err("Output name must not be empty".into());
        }
        let data: Vec<PathBuf> = self
            .data
            .text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| crate::paths::resolve_asset(std::path::Path::new(s)))
            .collect();
        if data.is_empty() {
            return Err("Data must list at least one text file or folder".into());
        }
        // Hub data (hf://...) is listed and fetched when the run starts.
        if let Some(missing) = data.iter().find(|p| !p.exists() && !p.to_string_lossy().starts_with("hf://")) {
            return Err(format!("Data: {} does not exist", missing.display()));
        }
        let steps = count(&self.steps, "Steps")?;
        let lr = num(&self.lr, "Learning rate")?;
        let batch = count(&self.batch, "Batch")?;
        let ctx = count(&self.ctx, "Context")?;
        if steps == 0 || batch == 0 {
            return Err("Steps and Batch must be at least 1".into());
        }
        if !(lr > 0.0 && lr < 1.0) {
            return Err(format!("Learning rate must be in (0, 1), got {lr:e}"));
        }
        if ctx < 2 {
            return Err("Context must be at least 2 tokens".into());
        }
        if base == self.loaded.0 && ctx > self.loaded.1 {
            return Err(format!("Context must be at most {}, the context of {base}", self.loaded.1));
        }
        let loss = if self.run_kind() == RunKind::AlignedFinetune { LossKind::Aligned } else { LossKind::Standard };
        let mut cfg = TrainConfig::finetune(InitFrom::Checkpoint(base.to_string()), crate::paths::output_dir(out), loss, data);
        cfg.steps = steps;
        cfg.lr = lr;
        // Keep the paper's lr : min_lr ratio of 10 : 1 for the cosine schedule.
        cfg.min_lr = lr / 10.0;
        cfg.batch = batch;
        cfg.ctx = ctx;
        cfg.eval_every = 50.min(steps);
        cfg.save_every = 50.min(steps);
        cfg.eval_data = vec![self.eval_data.clone()];
        if crate::train::save::has_checkpoint(&cfg.out) {
            return Err(format!("Output name: {} already holds a checkpoint: pick another name, or continue it", cfg.out.display()));
        }
        Ok(TrainRequest::Start(Box::new(cfg)))
    }

    /// The PyTorch engine's command for a run.
    fn torch_launch(&self, run: TrainRequest) -> Result<Launch, String> {
        let nproc = match self.procs.text.trim().parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => return Err(format!("Processes must be a whole number of at least 1, got {:?}", self.procs.text.trim())),
        };
        let plan = match run {
            TrainRequest::Start(cfg) => {
                // Each process takes batch / N sequences of every step.
                if !cfg.batch.is_multiple_of(nproc) {
                    return Err(format!("Batch {} must be a multiple of Processes {nproc}", cfg.batch));
                }
                RunPlan::New(cfg)
            }
            TrainRequest::Resume { dir, steps } => RunPlan::Resume { dir, steps },
            other => unreachable!("not a run to train: {other:?}"),
        };
        let options = TorchOptions { python: self.python.clone(), nproc, overwrite: false, extra: vec![] };
        Launch::torch(&plan, &options).map_err(|e| crate::util::one_line(&e))
    }

    /// The folder to follow: as typed, or a name under the checkpoint folders.
    fn attach_request(&self) -> Result<TrainRequest, String> {
        let typed = self.folder.text.trim();
        if typed.is_empty() {
            return Err("Run folder must name the folder of a run (its --out)".into());
        }
        let dir = std::iter::once(PathBuf::from(typed))
            .chain(crate::paths::checkpoint_roots().into_iter().map(|r| r.join(typed)))
            .find(|d| d.is_dir())
            .ok_or_else(|| format!("Run folder: {typed} is not a folder"))?;
        if !is_run_folder(&dir) {
            return Err(format!(
                "Run folder: {} is not a training run (no run_status.json, training_state.json or metrics.jsonl)",
                dir.display()
            ));
        }
        Ok(TrainRequest::Attach(dir))
    }
}

/// Whether `dir` holds a run a follower can follow.
pub fn is_run_folder(dir: &Path) -> bool {
    use crate::train::{follow::STATUS_FILE, save::METRICS_FILE, save::STATE_FILE};
    [STATUS_FILE, STATE_FILE, METRICS_FILE].iter().any(|f| dir.join(f).is_file())
}

/// Who trains the run that the training view follows.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum RunSource {
    /// alignscope's engine in a thread of this explorer: it ends with the explorer.
    #[default]
    InProcess,
    /// The PyTorch engine, started by this explorer as a child process; it goes on after
    /// the explorer quits.
    Child { command: String },
    /// A run started elsewhere, followed through its folder.
    Attached,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TrainStatus {
    Idle,
    Starting,
    Running,
    Stopping,
    Finished { stopped_early: bool },
    Failed(String),
}

/// Everything the training panel shows, folded from the job's events.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingState {
    pub status: TrainStatus,
    /// "aligned fine-tune of X → Y".
    pub description: String,
    pub start_step: usize,
    pub total_steps: usize,
    pub out: Option<PathBuf>,
    pub n_layer: usize,
    pub last: Option<StepMetrics>,
    /// (step, loss) of every step, one curve per objective (aligned, standard): the
    /// aligned recipe alternates them, and their values are not comparable.
    pub loss_curves: Vec<(LossKind, Vec<(f64, f64)>)>,
    /// (step, CE) per layer 1..=L (index 0 = layer 1).
    pub layer_curves: Vec<Vec<(f64, f64)>>,
    pub last_eval: Option<EvalMetrics>,
    /// The latest saved checkpoint: (step, folder).
    pub saved: Option<(usize, PathBuf)>,
    pub source: RunSource,
}

impl Default for TrainingState {
    fn default() -> Self {
        Self {
            status: TrainStatus::Idle,
            description: String::new(),
            start_step: 0,
            total_steps: 0,
            out: None,
            n_layer: 0,
            last: None,
            loss_curves: vec![],
            layer_curves: vec![],
            last_eval: None,
            saved: None,
            source: RunSource::InProcess,
        }
    }
}

impl TrainingState {
    pub fn is_active(&self) -> bool {
        matches!(self.status, TrainStatus::Starting | TrainStatus::Running | TrainStatus::Stopping)
    }

    /// A fresh state for a run that is being started.
    pub fn starting(description: String) -> Self {
        Self { status: TrainStatus::Starting, description, ..Self::default() }
    }

    pub fn step(&self) -> usize {
        self.last.as_ref().map_or(self.start_step, |m| m.step)
    }

    /// Folds one event in; returns a message for the status line, if any.
    pub fn apply(&mut self, ev: TrainEvent) -> Option<(String, bool)> {
        match ev {
            TrainEvent::Preparing { message } => Some((message, false)),
            TrainEvent::Started { start_step, total_steps, out, n_layer } => {
                if self.status != TrainStatus::Stopping {
                    self.status = TrainStatus::Running;
                }
                self.start_step = start_step;
                self.total_steps = total_steps;
                self.n_layer = n_layer;
                self.layer_curves = vec![vec![]; n_layer];
                let msg = match self.source {
                    RunSource::Attached => format!("following {} (this run started at step {start_step} of {total_steps})", out.display()),
                    _ => format!("training started at step {start_step} of {total_steps}, writing {}", out.display()),
                };
                self.out = Some(out);
                Some((msg, false))
            }
            TrainEvent::Progress(m) => {
                let s = m.step as f64;
                match self.loss_curves.iter_mut().find(|(o, _)| *o == m.objective) {
                    Some((_, c)) => c.push((s, m.loss)),
                    None => self.loss_curves.push((m.objective, vec![(s, m.loss)])),
                }
                if self.layer_curves.len() < m.layer_losses.len() {
                    self.layer_curves.resize(m.layer_losses.len(), vec![]);
                }
                for (curve, &l) in self.layer_curves.iter_mut().zip(&m.layer_losses) {
                    curve.push((s, l));
                }
                self.total_steps = m.total_steps;
                self.last = Some(m);
                None
            }
            TrainEvent::Eval(e) => {
                self.last_eval = Some(e);
                None
            }
            TrainEvent::CheckpointSaved { step, dir } => {
                let msg = format!("saved step {step} to {} — r loads it", dir.display());
                self.saved = Some((step, dir));
                Some((msg, false))
            }
            TrainEvent::Finished { step, dir, stopped_early } => {
                self.status = TrainStatus::Finished { stopped_early };
                let how = if stopped_early { "stopped" } else { "finished" };
                // A run stopped before its first step has saved nothing.
                if step == 0 {
                    return Some((format!("training {how} before the first step: nothing saved"), false));
                }
                let msg = format!("training {how} at step {step}, saved to {} — r loads it", dir.display());
                self.saved = Some((step, dir));
                Some((msg, false))
            }
            TrainEvent::Failed { message } => {
                self.status = TrainStatus::Failed(message.clone());
                Some((format!("training failed: {message}"), true))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults(resumable: Vec<(String, PathBuf)>) -> MenuDefaults {
        MenuDefaults {
            base: "tests/fixtures/tiny-gpt2".into(),
            n_positions: 1024,
            data: vec![],
            eval_data: PathBuf::from("e.txt"),
            resumable,
            engines: EngineDefaults { python: "python3".into(), running: vec![] },
        }
    }

    #[test]
    fn prefill_names_the_output_after_the_base_and_caps_the_context() {
        let m = TrainMenu::new(defaults(vec![]));
        assert_eq!(m.output.text, "tiny-gpt2-ft");
        assert_eq!(m.ctx.text, "256");
        assert_eq!((m.steps.text.as_str(), m.lr.text.as_str(), m.batch.text.as_str()), ("200", "1e-4", "8"));
    }

    #[test]
    fn continuing_a_run_asks_for_its_folder_and_optional_steps() {
        let mut m = TrainMenu::new(defaults(vec![("a-ft".into(), PathBuf::from("/x/a-ft")), ("b-ft".into(), PathBuf::from("/x/b-ft"))]));
        m.choice(-2); // aligned -> continue (wraps past "follow")
        assert_eq!(m.run_kind(), RunKind::Continue);
        assert_eq!(m.fields(), vec![Field::Kind, Field::Run, Field::Steps, Field::Engine]);
        m.move_field(1);
        m.choice(1);
        m.steps.set("");
        assert_eq!(m.request(), Ok(TrainRequest::Resume { dir: PathBuf::from("/x/b-ft"), steps: None }));
        m.steps.set("500");
        assert_eq!(m.request(), Ok(TrainRequest::Resume { dir: PathBuf::from("/x/b-ft"), steps: Some(500) }));
        let mut none = TrainMenu::new(defaults(vec![]));
        none.choice(-2);
        assert!(none.request().unwrap_err().contains("no saved run"));
    }

    #[test]
    fn the_pytorch_engine_trains_the_same_run_with_the_command_shown() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("d.txt");
        std::fs::write(&data, "text").unwrap();
        let mut m = TrainMenu::new(defaults(vec![("a-ft".into(), tmp.path().to_path_buf())]));
        m.data.set(&data.display().to_string());
        m.output.set(&tmp.path().join("out").display().to_string());
        let Ok(TrainRequest::Start(cfg)) = m.request() else { panic!("in-process by default: {:?}", m.request()) };
        assert!(m.command().is_none(), "no command for the in-process engine");
        assert_eq!(m.fields().last(), Some(&Field::Engine));
        m.selected = m.fields().len() - 1;
        m.choice(1);
        assert_eq!(m.engine(), Engine::Torch);
        assert_eq!(&m.fields()[m.fields().len() - 2..], [Field::Engine, Field::Procs]);
        let Ok(TrainRequest::Launch(l)) = m.request() else { panic!("{:?}", m.request()) };
        let mut want = vec![crate::paths::torch_trainer_script().display().to_string()];
        want.extend(crate::train::follow::torch_args(&cfg));
        assert_eq!((l.program.as_path(), &l.args, l.run_dir.as_path()), (Path::new("python3"), &want, cfg.out.as_path()));
        assert_eq!(m.command(), Some(l.command_line()));
        // Two processes: torchrun; each takes half of every batch.
        m.procs.set("2");
        let Ok(TrainRequest::Launch(l)) = m.request() else { panic!() };
        assert_eq!(l.args[..5], ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]);
        m.procs.set("3");
        assert_eq!(m.request(), Err("Batch 8 must be a multiple of Processes 3".into()));
        assert_eq!(m.command(), None);
        m.procs.set("0");
        assert!(m.request().unwrap_err().starts_with("Processes must be"));
        // Continuing a saved run on PyTorch resumes its folder.
        m.procs.set("1");
        m.kind = 2;
        let Ok(TrainRequest::Launch(l)) = m.request() else { panic!() };
        assert_eq!(l.args[1..], ["--resume".to_string(), tmp.path().display().to_string(), "--steps".into(), "200".into()]);
    }

    #[test]
    fn following_a_run_needs_a_run_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        let mut m = TrainMenu::new(MenuDefaults {
            engines: EngineDefaults { python: "python3".into(), running: vec![run.clone()] },
            ..defaults(vec![])
        });
        m.choice(-1);
        assert_eq!(m.run_kind(), RunKind::Attach);
        assert_eq!(m.fields(), vec![Field::Kind, Field::Folder]);
        assert_eq!(m.folder.text, run.display().to_string(), "prefilled with the run that trains");
        assert_eq!(m.request(), Err(format!("Run folder: {} is not a folder", run.display())));
        std::fs::create_dir(&run).unwrap();
        assert!(m.request().unwrap_err().contains("is not a training run"));
        std::fs::write(run.join("metrics.jsonl"), "").unwrap();
        assert_eq!(m.request(), Ok(TrainRequest::Attach(run.clone())));
        m.folder.set("  ");
        assert!(m.request().unwrap_err().starts_with("Run folder must name"));
    }

    #[test]
    fn events_fold_into_curves_per_objective_and_layer() {
        let mut t = TrainingState::starting("run".into());
        t.apply(TrainEvent::Started { start_step: 0, total_steps: 4, out: PathBuf::from("o"), n_layer: 2 });
        for step in 1..=4 {
            let objective = if step % 2 == 1 { LossKind::Aligned } else { LossKind::Standard };
            t.apply(TrainEvent::Progress(StepMetrics {
                step,
                total_steps: 4,
                loss: 1.0,
                objective,
                layer_losses: vec![2.0, 1.0],
                lr: 1e-4,
                grad_norm: 1.0,
                tokens_per_sec: 1.0,
                eta_secs: 0.0,
            }));
        }
        assert_eq!(t.loss_curves.len(), 2);
        assert_eq!(t.loss_curves[0].1.len(), 2);
        assert_eq!(t.layer_curves.len(), 2);
        assert_eq!(t.layer_curves[1].len(), 4);
        assert_eq!(t.status, TrainStatus::Running);
        let msg = t.apply(TrainEvent::Failed { message: "disk full".into() });
        assert_eq!(msg, Some(("training failed: disk full".into(), true)));
        assert!(!t.is_active());
    }
}
