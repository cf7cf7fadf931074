//! The training side of the explorer's state: the menu that prefills a run, and what the
//! UI knows about the background job (folded from its events). No engine calls here; the
//! runtime starts and stops the job.

use super::text::TextField;
use crate::train::{EvalMetrics, InitFrom, LossKind, StepMetrics, TrainConfig, TrainEvent};
use std::path::PathBuf;

/// What the menu starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    AlignedFinetune,
    StandardFinetune,
    Continue,
}

impl RunKind {
    pub const ALL: [RunKind; 3] = [RunKind::AlignedFinetune, RunKind::StandardFinetune, RunKind::Continue];
    pub fn label(&self) -> &'static str {
        match self {
            RunKind::AlignedFinetune => "aligned fine-tune",
            RunKind::StandardFinetune => "standard fine-tune",
            RunKind::Continue => "continue a saved run",
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
    /// What the status line says while the menu waits for Enter.
    pub fn status(&self) -> String {
        let c = &self.config;
        let data: Vec<String> = c.data.iter().map(|p| crate::paths::short_name(&p.to_string_lossy())).collect();
        format!(
            "{} is not built yet. Enter trains it: {} fine-tune of {} on {}, {} steps × {} × {} tokens, lr {:e}. Esc explores {}.",
            self.name,
            c.loss,
            self.base,
            data.join(", "),
            c.steps,
            c.batch,
            c.ctx,
            c.lr,
            self.base
        )
    }
}

/// What the menu asks the runtime to do.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainRequest {
    Start(Box<TrainConfig>),
    Resume { dir: PathBuf, steps: Option<usize> },
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
            note: None,
        }
    }

    /// The menu prefilled with a recipe's run, ready for Enter.
    pub fn for_recipe(offer: &RecipeOffer, resumable: Vec<(String, PathBuf)>) -> Self {
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
            run: 0,
            resumable,
            eval_data: c.eval_data.first().cloned().unwrap_or_default(),
            selected: 0,
            error: None,
            note: Some(format!("{} is not built yet: Enter trains it with the paper's recipe", offer.name)),
        }
    }

    pub fn run_kind(&self) -> RunKind {
        RunKind::ALL[self.kind]
    }

    /// The fields shown for the chosen kind of run, in order.
    pub fn fields(&self) -> Vec<Field> {
        match self.run_kind() {
            RunKind::Continue => vec![Field::Kind, Field::Run, Field::Steps],
            _ => vec![Field::Kind, Field::Base, Field::Output, Field::Data, Field::Steps, Field::Lr, Field::Batch, Field::Ctx],
        }
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
            Field::Kind | Field::Run => return None,
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
            Field::Kind | Field::Run => return None,
        })
    }

    /// The value of a field as shown.
    pub fn value(&self, f: Field) -> String {
        match f {
            Field::Kind => self.run_kind().label().to_string(),
            Field::Run => match self.resumable.get(self.run) {
                Some((name, _)) => name.clone(),
                None => "(no saved run can be continued)".to_string(),
            },
            _ => self.text(f).map(|t| t.text.clone()).unwrap_or_default(),
        }
    }

    /// Applies an editing key to the selected text field; an edit clears the error.
    pub fn edit(&mut self, key: &ratatui::crossterm::event::KeyEvent) {
        let f = self.selected_field();
        if let Some(t) = self.text_mut(f)
            && t.edit(key)
        {
            self.error = None;
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
            f => {
                if let Some(t) = self.text_mut(f) {
                    if delta < 0 { t.left() } else { t.right() }
                }
            }
        }
        self.error = None;
    }

    /// Checks the fields and builds the request; the error names the field.
    pub fn request(&self) -> Result<TrainRequest, String> {
        fn num<T: std::str::FromStr>(f: &TextField, what: &str) -> Result<T, String> {
            f.text.trim().parse::<T>().map_err(|_| format!("{what} must be a number, got {:?}", f.text.trim()))
        }
        if self.run_kind() == RunKind::Continue {
            let (_, dir) = self.resumable.get(self.run).ok_or("no saved run can be continued: start a fine-tune first")?;
            let steps = if self.steps.text.trim().is_empty() { None } else { Some(num::<usize>(&self.steps, "Steps")?) };
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
        let steps: usize = num(&self.steps, "Steps")?;
        let lr: f64 = num(&self.lr, "Learning rate")?;
        let batch: usize = num(&self.batch, "Batch")?;
        let ctx: usize = num(&self.ctx, "Context")?;
        if steps == 0 || batch == 0 {
            return Err("Steps and Batch must be at least 1".into());
        }
        if !(lr > 0.0 && lr < 1.0) {
            return Err(format!("Learning rate must be in (0, 1), got {lr}"));
        }
        if ctx < 2 {
            return Err("Context must be at least 2 tokens".into());
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
        Ok(TrainRequest::Start(Box::new(cfg)))
    }
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
                let msg = format!("training started at step {start_step} of {total_steps}, writing {}", out.display());
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
        m.choice(-1); // aligned -> continue (wraps)
        assert_eq!(m.run_kind(), RunKind::Continue);
        assert_eq!(m.fields(), vec![Field::Kind, Field::Run, Field::Steps]);
        m.move_field(1);
        m.choice(1);
        m.steps.set("");
        assert_eq!(m.request(), Ok(TrainRequest::Resume { dir: PathBuf::from("/x/b-ft"), steps: None }));
        m.steps.set("500");
        assert_eq!(m.request(), Ok(TrainRequest::Resume { dir: PathBuf::from("/x/b-ft"), steps: Some(500) }));
        let mut none = TrainMenu::new(defaults(vec![]));
        none.choice(-1);
        assert!(none.request().unwrap_err().contains("no saved run"));
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
