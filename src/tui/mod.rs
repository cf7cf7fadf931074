//! The explorer: a full-screen terminal client of the engine. It loads the checkpoints
//! (errors end the program with one line before the screen is touched), starts a model
//! worker per checkpoint, and runs the event loop: keys become actions, the app's `update`
//! changes the state and returns effects, the runtime carries them out (worker commands,
//! the training job), and events are followed by a redraw (at once after a key, at a
//! steady pace while the engine streams replies). The model never runs on this thread.

pub mod app;
pub mod column;
pub mod event;
pub mod export;
pub mod headless;
pub mod input;
pub mod keymap;
pub mod panels;
pub mod text;
pub mod theme;
pub mod train;
pub mod ui;
pub mod view;
pub mod worker;

mod training_job;

pub use keymap::key_table_markdown;
use training_job::Trainer;
pub use training_job::{menu_defaults, recipe_offer};

use crate::cli::ExploreArgs;
use crate::model::device::{device_name, parse_device};
use crate::paths::{DEFAULT_CKPT, DEFAULT_COMPARE, DEFAULT_EVAL_TEXT, resolve_asset};
use crate::train::recipe::{Found, Recipe, companion, find, open};
use anyhow::{Context, Result, bail};
use app::{App, AppOptions, Effect};
use candle_core::Device;
use event::Event;
use ratatui::crossterm::{execute, terminal};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};
use worker::{ModelInfo, WorkerCommand, WorkerHandle};

/// The checkpoints to show: (A, optional B). With no `--ckpt` the default pair (A alone
/// with `--single`); with `--ckpt` alone, one column.
pub fn choose_checkpoints(args: &ExploreArgs) -> (String, Option<String>) {
    let a = args.ckpt.clone().unwrap_or_else(|| DEFAULT_CKPT.to_string());
    let b = if args.single {
        None
    } else {
        match (&args.ckpt, &args.compare) {
            (_, Some(b)) => Some(b.clone()),
            (None, None) => Some(DEFAULT_COMPARE.to_string()),
            (Some(_), None) => None,
        }
    };
    (a, b)
}

/// What the explorer opens: column A, maybe B, and maybe a recipe to offer.
#[derive(Debug, Clone, PartialEq)]
pub struct StartPlan {
    pub a: String,
    pub b: Option<String>,
    /// `--ckpt` named a recipe that is not built yet: A is its base.
    pub recipe: Option<Recipe>,
    /// B was chosen by us (a twin or the base), not by `--compare`: failing to open it is
    /// a note, not an error.
    pub b_is_companion: bool,
}

/// [`choose_checkpoints`], knowing recipe names: `--ckpt X` alone opens X beside its
/// `-standard` (or `-aligned`) twin when that exists, else beside the base it was
/// fine-tuned from; a recipe name that is not built yet opens its base (and the menu that
/// builds it). `--compare` and `--single` still decide B.
pub fn plan_start(args: &ExploreArgs) -> Result<StartPlan> {
    let (a, b) = choose_checkpoints(args);
    if args.ckpt.is_none() {
        return Ok(StartPlan { a, b, recipe: None, b_is_companion: false });
    }
    match find(&a)? {
        Found::NotBuilt(r) => Ok(StartPlan { a: r.base.clone(), b, recipe: Some(r), b_is_companion: false }),
        Found::Dir(dir) => {
            let companion = if b.is_none() && !args.single { companion(&a, &dir) } else { None };
            let b_is_companion = companion.is_some();
            Ok(StartPlan { a, b: b.or(companion), recipe: None, b_is_companion })
        }
    }
}

pub fn run(args: ExploreArgs) -> Result<()> {
    let device = parse_device(&args.device)?;
    let eval_data = resolve_asset(&args.eval_data.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_EVAL_TEXT)));
    if !eval_data.is_file() {
        let what = if eval_data.exists() { "is not a regular file" } else { "does not exist" };
        bail!("the eval text {} {what} (--eval-data)", eval_data.display())
    }
    let plan = plan_start(&args)?;
    // Load before touching the screen, so that a bad checkpoint is one clear line.
    let mut loaded = vec![open(&plan.a, &device)?];
    let mut note = None;
    if let Some(b) = &plan.b {
        match open(b, &device) {
            Ok(ck) => loaded.push(ck),
            Err(e) if plan.b_is_companion => {
                note = Some(format!("{} alone: its base {b} did not open ({})", plan.a, crate::util::one_line(&e)))
            }
            Err(e) => return Err(e),
        }
    }
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!("the explorer needs a terminal; for scripts use the subcommands (inspect, generate, eval; see --help)")
    }
    let (tx, rx) = mpsc::channel();
    let mut runtime =
        Runtime { workers: HashMap::new(), device: device.clone(), events: tx.clone(), trainer: Trainer::new(device.clone()) };
    let mut columns = Vec::new();
    for (i, ck) in loaded.into_iter().enumerate() {
        let id = i as u64 + 1;
        columns.push((id, ModelInfo::of(&ck)));
        runtime.workers.insert(id, WorkerHandle::spawn(id, Some(ck), device.clone(), tx.clone()));
    }
    let prompt = args.prompt.clone().unwrap_or_else(|| app::DEFAULT_PROMPT.to_string());
    let mut app = App::new(columns, AppOptions { prompt, eval_data, device: device_name(&device) });
    if let Some(r) = &plan.recipe {
        let defaults = menu_defaults(&app);
        app.offer_recipe(recipe_offer(r), defaults);
    } else if let Some(n) = note {
        app.status = Some(app::StatusMessage { text: n, error: false, hint: false });
    }
    let theme = theme::Theme::detect();

    let mut term = enter_terminal().context("cannot set up the terminal")?;
    // From here on stderr is under the screen: downloads report to the status line.
    let downloads = tx.clone();
    crate::hub::set_progress_sink(move |s| {
        let _ = downloads.send(Event::Download(s.clone()));
    });
    event::spawn_input_reader(tx);
    let result = event_loop(&mut term, &mut app, &mut runtime, &rx, &theme);
    leave_terminal();
    // Quitting while a run trains: alignscope's own run saves and stops; a run followed
    // through its folder (the PyTorch engine started here included) goes on.
    if let Some(note) = runtime.trainer.on_quit() {
        eprintln!("{note}");
    }
    result
}

type Term = ratatui::Terminal<ratatui::backend::CrosstermBackend<std::io::Stdout>>;

/// Raw mode and the alternate screen, with a panic hook that restores the terminal when
/// the UI thread panics. A panicking worker thread prints nothing over the screen: the
/// worker reports it in the status line.
fn enter_terminal() -> Result<Term> {
    let ui_thread = std::thread::current().id();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() == ui_thread {
            leave_terminal();
            previous(info);
        }
    }));
    terminal::enable_raw_mode()?;
    // Bracketed paste: a paste arrives as one event, not as keys (its line breaks as Enter).
    if let Err(e) = execute!(std::io::stdout(), terminal::EnterAlternateScreen, ratatui::crossterm::event::EnableBracketedPaste) {
        leave_terminal();
        return Err(e.into());
    }
    match ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout())) {
        Ok(t) => Ok(t),
        Err(e) => {
            leave_terminal();
            Err(e.into())
        }
    }
}

fn leave_terminal() {
    let _ = execute!(std::io::stdout(), ratatui::crossterm::event::DisableBracketedPaste);
    ratatui::restore();
}

/// Frames drawn while only the engine's replies arrive come at most this often: a
/// continuation streams hundreds of tokens a second on the Austen models, and a frame per
/// token kept the UI thread busy on a core the decoders (two threads each when pipelined)
/// were timed on. Keys and resizes are drawn at once.
const STREAM_FRAME: Duration = Duration::from_millis(40);

/// Whether an event is drawn at once (a key, a resize, ...) rather than at the pace of
/// [`STREAM_FRAME`] (the engine's replies, download progress).
fn wants_a_frame_now(ev: &Event) -> bool {
    !matches!(ev, Event::Worker { .. } | Event::Download(_))
}

/// The loop of the explorer: draw, wait for an event (or the next deadline), fold it in.
fn event_loop(term: &mut Term, app: &mut App, rt: &mut Runtime, rx: &Receiver<Event>, theme: &theme::Theme) -> Result<()> {
    let started = Instant::now();
    let fx = app.start();
    rt.apply(app, fx);
    // Whether the state may have changed since the last frame, and whether a key (or a
    // resize) wants the next frame now rather than at the streaming pace.
    let (mut dirty, mut urgent) = (true, true);
    let mut last_frame = Instant::now();
    loop {
        if dirty && (urgent || last_frame.elapsed() >= STREAM_FRAME) {
            app.ticks = (started.elapsed().as_millis() / 100) as u64;
            term.draw(|f| ui::render(app, theme, f))?;
            last_frame = Instant::now();
            (dirty, urgent) = (false, false);
        }
        if app.should_quit {
            return Ok(());
        }
        let now = Instant::now();
        let mut timeout = if app.busy() || app.training.is_active() { Duration::from_millis(100) } else { Duration::from_secs(1) };
        if let Some(due) = app.next_deadline() {
            timeout = timeout.min(due.saturating_duration_since(now));
        }
        if dirty {
            timeout = timeout.min(STREAM_FRAME.saturating_sub(last_frame.elapsed()));
        }
        match rx.recv_timeout(timeout) {
            Ok(ev) => {
                urgent |= wants_a_frame_now(&ev);
                handle(app, rt, ev)?;
                // Fold in whatever else is queued (streamed tokens, key repeats) before the
                // next frame.
                for ev in rx.try_iter().take(512) {
                    urgent |= wants_a_frame_now(&ev);
                    handle(app, rt, ev)?;
                    if app.should_quit {
                        break;
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => bail!("the event channel closed"),
        }
        let fx = rt.trainer.poll(app);
        rt.apply(app, fx);
        let fx = app.tick(Instant::now());
        rt.apply(app, fx);
        // Any pass may have changed what is shown (a reply, a key, a tick of a spinner).
        dirty = true;
        urgent |= app.should_quit;
    }
}

fn handle(app: &mut App, rt: &mut Runtime, ev: Event) -> Result<()> {
    let now = Instant::now();
    let fx = match ev {
        Event::Key(k) => app.handle_key(k, now),
        Event::Paste(text) => app.handle_paste(&text),
        Event::Resize => vec![],
        Event::Worker { worker, reply } => app.on_worker(worker, *reply, now),
        Event::Download(s) => {
            app.on_download(&s);
            vec![]
        }
        Event::InputFailed(e) => bail!("cannot read the terminal: {e}"),
        Event::Exported(result) => {
            app.on_exported(result);
            vec![]
        }
    };
    rt.apply(app, fx);
    Ok(())
}

/// What the UI thread owns besides the state: the workers and the training run.
struct Runtime {
    workers: HashMap<u64, WorkerHandle>,
    device: Device,
    events: Sender<Event>,
    trainer: Trainer,
}

impl Runtime {
    fn apply(&mut self, app: &mut App, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Worker { worker, cmd } => {
                    if let Some(w) = self.workers.get(&worker) {
                        w.send(cmd);
                    }
                }
                Effect::SpawnWorker { worker, spec } => {
                    let w = WorkerHandle::spawn(worker, None, self.device.clone(), self.events.clone());
                    w.send(WorkerCommand::Load { spec });
                    self.workers.insert(worker, w);
                }
                Effect::DropWorker { worker } => {
                    self.workers.remove(&worker);
                }
                Effect::OpenTrainMenu => app.open_train_menu(menu_defaults(app)),
                Effect::Export(job) => {
                    // Drawing a PNG takes a moment: off the UI thread, answered as an event.
                    let events = self.events.clone();
                    std::thread::spawn(move || {
                        let result = export::write(&job, &crate::paths::export_dir()).map_err(|e| crate::util::one_line(&e));
                        let _ = events.send(Event::Exported(result));
                    });
                }
                training => {
                    self.trainer.apply(app, training);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(ckpt: Option<&str>, compare: Option<&str>, single: bool) -> ExploreArgs {
        ExploreArgs {
            ckpt: ckpt.map(String::from),
            compare: compare.map(String::from),
            single,
            device: "cpu".into(),
            eval_data: None,
            prompt: None,
        }
    }

    #[test]
    fn checkpoint_choice_follows_the_flags() {
        let pair = |a: &str, b: Option<&str>| (a.to_string(), b.map(String::from));
        assert_eq!(choose_checkpoints(&args(None, None, false)), pair(DEFAULT_CKPT, Some(DEFAULT_COMPARE)));
        assert_eq!(choose_checkpoints(&args(None, None, true)), pair(DEFAULT_CKPT, None));
        assert_eq!(choose_checkpoints(&args(Some("x"), None, false)), pair("x", None));
        assert_eq!(choose_checkpoints(&args(Some("x"), Some("y"), false)), pair("x", Some("y")));
        assert_eq!(choose_checkpoints(&args(None, Some("y"), false)), pair(DEFAULT_CKPT, Some("y")));
    }
}
