//! The explorer without a terminal: snapshots of every view at 80×24 and 120×40 on the
//! fixture checkpoint (and random checkpoints of other depths for the layouts), and state
//! tests that drive the app with keys and check layer, position, mode and the work it asks
//! the model workers for.

mod tui_support;

use alignscope::train::{EvalMetrics, LossKind, StepMetrics, TrainEvent};
use alignscope::tui::app::Effect;
use alignscope::tui::app::{DEFAULT_PROMPT, Mode, SamplingMode};
use alignscope::tui::column::EvalState;
use alignscope::tui::train::{Engine, Field, RunKind, RunSource};
use alignscope::tui::view::View;
use alignscope::tui::worker::WorkerCommand;
use ratatui::crossterm::event::{KeyCode, KeyModifiers};
use tui_support::*;

const SMALL: (u16, u16) = (80, 24);
const LARGE: (u16, u16) = (120, 40);

fn snap(name: &str, h: &Harness) {
    for (w, ht) in [SMALL, LARGE] {
        let text = h.screen(w, ht);
        insta::assert_snapshot!(format!("{name}_{w}x{ht}"), text);
    }
}

fn fixture_pair(tmp: &std::path::Path) -> Harness {
    let b = random_checkpoint(tmp, "random-4l", 4, 7);
    Harness::new(&[&fixture_dir(), &b])
}

fn is_worker_cmd(e: &Effect, pred: impl Fn(&WorkerCommand) -> bool) -> bool {
    matches!(e, Effect::Worker { cmd, .. } if pred(cmd))
}

// ---------------------------------------------------------------- snapshots

#[test]
fn similarity_view_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = fixture_pair(tmp.path());
    h.press(KeyCode::Left);
    snap("similarity_pair", &h);
    h.press(KeyCode::Char('m'));
    h.press(KeyCode::Char('m'));
    snap("similarity_pair_cka", &h);
    let single = Harness::new(&[&fixture_dir()]);
    snap("similarity_single", &single);
}

#[test]
fn twelve_layer_heatmaps_fit_80x24_with_two_column_cells() {
    let tmp = tempfile::tempdir().unwrap();
    let a = random_checkpoint(tmp.path(), "random-12l", 12, 1);
    let b = random_checkpoint(tmp.path(), "random-12l-b", 12, 2);
    let mut h = Harness::new(&[&a, &b]);
    h.press(KeyCode::Char('h'));
    h.press(KeyCode::Char('h'));
    let screen = h.screen(80, 24);
    // All 13 rows of both maps are on screen, in cells two columns wide.
    for l in 0..=12 {
        assert!(screen.lines().any(|line| line.starts_with(&format!("│{l:>2} "))), "row {l} missing:\n{screen}");
    }
    assert!(screen.contains("   0 1 2 3 4 5 6 7 8 9101112"), "two-column cells:\n{screen}");
    snap("similarity_12_layers", &h);
    h.press(KeyCode::Char('d'));
    insta::assert_snapshot!("similarity_12_layers_diff_80x24", h.screen(80, 24));
}

#[test]
fn predictions_view_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = fixture_pair(tmp.path());
    h.press(KeyCode::Char('2'));
    h.press(KeyCode::Left);
    h.press(KeyCode::Up);
    h.press(KeyCode::Up);
    snap("predictions_pair", &h);
    let mut single = Harness::new(&[&fixture_dir()]);
    single.press(KeyCode::Char('2'));
    snap("predictions_single", &single);
}

#[test]
fn generation_view_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = fixture_pair(tmp.path());
    h.press(KeyCode::Char('3'));
    h.settle();
    snap("generation_pair_last_layer", &h);
    h.press(KeyCode::Char('h'));
    h.press(KeyCode::Char('h'));
    h.settle();
    snap("generation_pair_layer_2", &h);
    h.press(KeyCode::Char('a'));
    h.settle();
    snap("generation_pair_all_layers", &h);
    h.press(KeyCode::Char('s'));
    h.settle();
    snap("generation_pair_top_p", &h);
}

#[test]
fn metrics_view_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = fixture_pair(tmp.path());
    h.press(KeyCode::Char('4'));
    for c in &h.app.columns {
        match &c.eval {
            EvalState::Done { report, .. } => {
                assert_eq!(report.ctx, 128, "ctx = min(256, n_positions)");
                assert_eq!(report.chunks, 24);
            }
            other => panic!("evaluation did not finish: {other:?}"),
        }
    }
    h.press(KeyCode::Char('h'));
    snap("metrics_pair", &h);
}

fn step(step: usize, total: usize, n_layer: usize) -> StepMetrics {
    // A made-up but plausible run: every layer's loss falls, shallow layers from higher.
    let s = step as f64;
    let layer_losses: Vec<f64> = (1..=n_layer).map(|l| 6.0 - 0.3 * l as f64 - s * 0.01 * (1.0 + l as f64 / n_layer as f64)).collect();
    StepMetrics {
        step,
        total_steps: total,
        loss: layer_losses.iter().sum::<f64>() / n_layer as f64,
        objective: if step % 2 == 1 { LossKind::Aligned } else { LossKind::Standard },
        layer_losses,
        lr: 1e-4,
        grad_norm: 1.0,
        tokens_per_sec: 5120.0,
        eta_secs: (total - step) as f64 * 0.2,
    }
}

#[test]
fn training_view_snapshots() {
    let mut h = Harness::new(&[&fixture_dir()]);
    h.press(KeyCode::Char('5'));
    snap("training_idle", &h);
    h.press(KeyCode::Char('t'));
    assert!(matches!(h.app.mode, Mode::TrainMenu(_)));
    snap("training_menu", &h);
    h.press(KeyCode::Enter);
    assert!(matches!(h.training.last(), Some(Effect::StartTraining(_))));
    // Before the run's first event: no step count, no empty charts.
    snap("training_starting", &h);
    let out = std::path::PathBuf::from("checkpoints/tiny-gpt2-ft");
    h.app.on_train(TrainEvent::Started { start_step: 0, total_steps: 200, out: out.clone(), n_layer: 4 });
    for s in 1..=120 {
        h.app.on_train(TrainEvent::Progress(step(s, 200, 4)));
    }
    h.app.on_train(TrainEvent::Eval(EvalMetrics {
        step: 100,
        layer_losses: vec![5.1, 4.6, 4.2, 3.9],
        layer_acc: vec![0.08, 0.11, 0.14, 0.17],
    }));
    h.app.on_train(TrainEvent::CheckpointSaved { step: 100, dir: out.clone() });
    snap("training_running", &h);
}

/// The menu with the PyTorch engine chosen, made machine-independent: the interpreter is
/// named as on a machine without the venv, the eval text by its path in the project.
fn torch_menu(h: &mut Harness) {
    h.press(KeyCode::Char('t'));
    let Mode::TrainMenu(menu) = &mut h.app.mode else { panic!("menu") };
    menu.python = "python3".into();
    menu.eval_data = "assets/austen/persuasion.txt".into();
    menu.refresh();
    assert_eq!(menu.preview, None, "no command for the in-process engine");
    h.press(KeyCode::Up); // from "Run" up to the last field, "Engine"
    h.press(KeyCode::Right);
}

#[test]
fn training_menu_engine_and_follow_snapshots() {
    let mut h = Harness::new(&[&fixture_dir()]);
    h.press(KeyCode::Char('5'));
    torch_menu(&mut h);
    snap("training_menu_pytorch", &h);
    h.press(KeyCode::Esc);
    h.press(KeyCode::Char('t'));
    h.press(KeyCode::Left); // aligned fine-tune → (wraps to) follow a run
    snap("training_menu_follow", &h);
}

#[test]
fn the_pytorch_engine_is_started_with_the_command_shown_and_q_asks_once() {
    let mut h = Harness::new(&[&fixture_dir()]);
    torch_menu(&mut h);
    let Mode::TrainMenu(menu) = &h.app.mode else { panic!("menu") };
    assert_eq!(menu.engine(), Engine::Torch);
    let one = menu.preview.clone().expect("the command is shown");
    assert!(one.starts_with("python3 scripts/torch/train.py --ckpt tests/fixtures/tiny-gpt2 --out checkpoints/tiny-gpt2-ft"), "{one}");
    // Two processes through the Processes field: torchrun.
    h.press(KeyCode::Down);
    h.press(KeyCode::Backspace);
    h.type_text("2");
    let Mode::TrainMenu(menu) = &h.app.mode else { panic!("menu") };
    assert_eq!(menu.selected_field(), Field::Procs);
    let two = menu.preview.clone().unwrap();
    assert!(two.starts_with("python3 -m torch.distributed.run --standalone --nproc_per_node 2 scripts/torch/train.py"), "{two}");
    assert_eq!(two.split_once("train.py").unwrap().1, one.split_once("train.py").unwrap().1, "the same run");
    // An invalid count shows no command, and Enter names the field.
    h.press(KeyCode::Backspace);
    h.type_text("3");
    let Mode::TrainMenu(menu) = &h.app.mode else { panic!("menu") };
    assert_eq!(menu.preview, None);
    h.press(KeyCode::Enter);
    let Mode::TrainMenu(menu) = &h.app.mode else { panic!("the menu stays open") };
    assert_eq!(menu.error.as_deref(), Some("Batch 8 must be a multiple of Processes 3"));
    h.press(KeyCode::Backspace);
    h.type_text("2");
    let fx = h.press(KeyCode::Enter);
    let [Effect::LaunchRun(launch)] = fx.as_slice() else { panic!("{fx:?}") };
    assert_eq!(launch.command_line(), two, "the command shown is the one started");
    assert!(launch.run_dir.ends_with("tiny-gpt2-ft"));
    assert_eq!(h.app.view, View::Training);
    assert!(h.app.training.description.ends_with("· PyTorch, 2 processes"), "{}", h.app.training.description);
    assert!(matches!(&h.app.training.source, RunSource::Child { command } if *command == two));
    // While it trains, q says that it goes on after the explorer; another key disarms it.
    h.press(KeyCode::Char('q'));
    assert!(!h.app.should_quit);
    assert!(h.app.status.as_ref().unwrap().text.contains("keeps training after you quit"));
    h.press(KeyCode::Char('l'));
    h.press(KeyCode::Char('q'));
    assert!(!h.app.should_quit, "asked again after another key");
    h.press(KeyCode::Char('q'));
    assert!(h.app.should_quit, "q twice quits");
    // x asks through the stop file.
    assert_eq!(h.press(KeyCode::Char('x')), vec![Effect::StopTraining]);
    assert!(h.app.status.as_ref().unwrap().text.contains("stop file"));
}

#[test]
fn following_a_run_by_its_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = Harness::new(&[&fixture_dir()]);
    h.press(KeyCode::Char('t'));
    h.press(KeyCode::Left);
    let Mode::TrainMenu(menu) = &h.app.mode else { panic!("menu") };
    assert_eq!(menu.run_kind(), RunKind::Attach);
    h.press(KeyCode::Down);
    let missing = tmp.path().join("nothing-here");
    h.type_text(&missing.display().to_string());
    h.press(KeyCode::Enter);
    let Mode::TrainMenu(menu) = &h.app.mode else { panic!("the menu stays open") };
    assert_eq!(menu.error, Some(format!("Run folder: {} is not a folder", missing.display())));
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("run_status.json"), r#"{"engine":"torch","status":"running"}"#).unwrap();
    h.press_mod(KeyCode::Char('u'), KeyModifiers::CONTROL);
    h.type_text(&run.display().to_string());
    assert_eq!(h.press(KeyCode::Enter), vec![Effect::AttachRun(run.clone())]);
    assert_eq!(h.app.training.source, RunSource::Attached);
    assert!(h.app.training.is_active());
    // The followed run's events draw the view like an in-process run's, and q quits at once
    // (the run was not started here).
    h.app.on_train(TrainEvent::Started { start_step: 100, total_steps: 200, out: run.clone(), n_layer: 4 });
    assert!(h.app.status.as_ref().unwrap().text.starts_with(&format!("following {}", run.display())));
    for s in 1..=120 {
        h.app.on_train(TrainEvent::Progress(step(s, 200, 4)));
    }
    h.app.on_train(TrainEvent::CheckpointSaved { step: 100, dir: run.clone() });
    assert_eq!(h.app.training.saved, Some((100, run.clone())));
    // Another run can be followed instead: this one trains on.
    h.press(KeyCode::Char('t'));
    assert!(matches!(h.app.mode, Mode::TrainMenu(_)), "the menu opens while a run is only followed");
    h.press(KeyCode::Esc);
    h.press(KeyCode::Char('q'));
    assert!(h.app.should_quit);
}

#[test]
fn help_and_small_terminal_snapshots() {
    let mut h = Harness::new(&[&fixture_dir()]);
    h.press(KeyCode::Char('?'));
    snap("help", &h);
    insta::assert_snapshot!("too_small_60x16", h.screen(60, 16));
}

#[test]
fn prompt_input_snapshot() {
    let mut h = Harness::new(&[&fixture_dir()]);
    h.press(KeyCode::Char('i'));
    h.press_mod(KeyCode::Char('u'), KeyModifiers::CONTROL);
    h.type_text("She was a woman of mean understanding");
    insta::assert_snapshot!("prompt_input_80x24", h.screen(80, 24));
}

// ---------------------------------------------------------------- state

#[test]
fn scrubbing_moves_indices_and_never_asks_the_model() {
    let mut h = Harness::new(&[&fixture_dir()]);
    let n_tokens = h.app.n_positions();
    assert_eq!(h.app.layer, 4, "starts at the last layer");
    assert_eq!(h.app.position, n_tokens - 1, "starts at the last token");
    for view in ['1', '2', '4', '5'] {
        h.press(KeyCode::Char(view));
        for key in [
            KeyCode::Left,
            KeyCode::Char('h'),
            KeyCode::Right,
            KeyCode::Char('l'),
            KeyCode::Home,
            KeyCode::End,
            KeyCode::Up,
            KeyCode::Char('k'),
            KeyCode::Down,
            KeyCode::Char('j'),
        ] {
            let fx = h.press(key);
            assert!(fx.is_empty(), "{key:?} in view {view} asked for {fx:?}");
            assert!(h.app.gen_due.is_none());
        }
    }
    h.press(KeyCode::Home);
    assert_eq!(h.app.layer, 0);
    h.press(KeyCode::Left);
    assert_eq!(h.app.layer, 0, "clamped at 0");
    h.press(KeyCode::Right);
    h.press(KeyCode::Char('l'));
    assert_eq!(h.app.layer, 2);
    h.press(KeyCode::End);
    h.press(KeyCode::Right);
    assert_eq!(h.app.layer, 4, "clamped at L");
    for _ in 0..n_tokens + 3 {
        h.press(KeyCode::Down);
    }
    assert_eq!(h.app.position, n_tokens - 1);
    for _ in 0..3 {
        h.press(KeyCode::Char('k'));
    }
    assert_eq!(h.app.position, n_tokens - 4);
}

/// A one-token prompt has no centered COS or CKA: the heatmap says n/a and colours nothing,
/// and raw COS (defined for one token) still shows numbers.
#[test]
fn a_one_token_prompt_shows_undefined_similarities_as_na() {
    let h = Harness::with_prompt(&[&fixture_dir()], "a");
    assert_eq!(h.app.columns[0].analysis.as_ref().unwrap().input_ids.len(), 1);
    let screen = h.screen(120, 40);
    assert!(screen.contains(" n/a"), "{screen}");
    assert!(screen.contains("undefined for one token"), "{screen}");
    assert!(!screen.contains("1.00"), "no defined centered COS on screen:\n{screen}");
    let mut h = h;
    h.press(KeyCode::Char('m'));
    let screen = h.screen(120, 40);
    assert!(screen.contains("1.00") && !screen.contains(" n/a"), "raw COS is defined:\n{screen}");
}

#[test]
fn views_switch_by_number_and_tab() {
    let mut h = Harness::new(&[&fixture_dir()]);
    assert_eq!(h.app.view, View::Similarity);
    h.press(KeyCode::Tab);
    assert_eq!(h.app.view, View::Predictions);
    h.press(KeyCode::BackTab);
    h.press(KeyCode::BackTab);
    assert_eq!(h.app.view, View::Training);
    h.press(KeyCode::Char('3'));
    assert_eq!(h.app.view, View::Generation);
}

#[test]
fn a_new_prompt_is_analyzed_once_and_kept_in_history() {
    let mut h = Harness::new(&[&fixture_dir()]);
    h.press(KeyCode::Char('/'));
    assert!(matches!(h.app.mode, Mode::Input(_)));
    h.press_mod(KeyCode::Char('u'), KeyModifiers::CONTROL);
    h.type_text("Emma Woodhouse, handsome");
    let fx = h.press(KeyCode::Enter);
    assert_eq!(fx.len(), 1, "{fx:?}");
    assert!(is_worker_cmd(&fx[0], |c| matches!(c, WorkerCommand::Analyze { prompt, .. } if prompt == "Emma Woodhouse, handsome")));
    assert_eq!(h.app.mode, Mode::Normal);
    assert_eq!(h.app.prompt, "Emma Woodhouse, handsome");
    let a = h.app.columns[0].analysis.as_ref().unwrap();
    assert_eq!(h.app.position, a.input_ids.len() - 1);
    // History: Up brings back the earlier prompt, Down the draft.
    h.press(KeyCode::Char('i'));
    h.press_mod(KeyCode::Char('u'), KeyModifiers::CONTROL);
    h.type_text("draft");
    h.press(KeyCode::Up);
    h.press(KeyCode::Up);
    match &h.app.mode {
        Mode::Input(line) => assert_eq!(line.field.text, DEFAULT_PROMPT),
        m => panic!("{m:?}"),
    }
    h.press(KeyCode::Down);
    h.press(KeyCode::Down);
    match &h.app.mode {
        Mode::Input(line) => assert_eq!(line.field.text, "draft"),
        m => panic!("{m:?}"),
    }
    h.press(KeyCode::Esc);
    assert_eq!(h.app.mode, Mode::Normal);
    assert!(!h.app.should_quit, "Esc closes the input line first");
}

#[test]
fn engine_errors_go_to_the_status_line() {
    let mut h = Harness::new(&[&fixture_dir()]);
    // Empty prompt: refused in the input line.
    h.press(KeyCode::Char('i'));
    h.press_mod(KeyCode::Char('u'), KeyModifiers::CONTROL);
    h.press(KeyCode::Enter);
    assert!(matches!(h.app.mode, Mode::Input(_)));
    assert!(h.app.status.as_ref().unwrap().error);
    // Longer than the model's context (128 tokens): the engine's error, shown.
    h.type_text(&"la ".repeat(200));
    h.press(KeyCode::Enter);
    let status = h.app.status.clone().unwrap();
    assert!(status.error && status.text.contains("context"), "{status:?}");
    assert!(h.screen(80, 24).contains("context"));
    // The last prompt's analysis goes: its tokens must not be continued under the new
    // prompt's text; the column says why it is empty (↑ in the input line brings the last
    // prompt back).
    assert!(h.app.columns[0].analysis.is_none());
    h.press(KeyCode::Char('3'));
    assert!(!h.settle().iter().any(|e| is_worker_cmd(e, |c| matches!(c, WorkerCommand::Generate { .. }))));
    assert!(h.screen(80, 24).contains("context"));
    // A file that does not exist for the metrics.
    h.press(KeyCode::Char('4'));
    h.press(KeyCode::Char('f'));
    h.press_mod(KeyCode::Char('u'), KeyModifiers::CONTROL);
    h.type_text("no/such/file.txt");
    h.press(KeyCode::Enter);
    assert!(h.app.status.as_ref().unwrap().text.contains("not a file"));
}

#[test]
fn generation_is_debounced_while_scrubbing_and_cached_per_layer() {
    let mut h = Harness::new(&[&fixture_dir()]);
    h.press(KeyCode::Char('3'));
    let fx = h.settle();
    assert!(fx.iter().any(|e| is_worker_cmd(e, |c| matches!(c, WorkerCommand::Generate { layers, .. } if layers == &vec![4]))), "{fx:?}");
    assert!(h.app.columns[0].outputs[&4].stop.is_some());
    // Quick scrubbing asks for nothing until the layer rests, then for that layer only.
    for _ in 0..3 {
        assert!(h.press(KeyCode::Left).is_empty());
    }
    let fx = h.settle();
    let gens: Vec<_> = fx.iter().filter(|e| is_worker_cmd(e, |c| matches!(c, WorkerCommand::Generate { .. }))).collect();
    assert_eq!(gens.len(), 1);
    assert!(is_worker_cmd(gens[0], |c| matches!(c, WorkerCommand::Generate { layers, .. } if layers == &vec![1])));
    // Back to a layer already generated: nothing to do.
    h.press(KeyCode::End);
    assert!(h.settle().is_empty());
    // Layer 0 has nothing to exit from.
    h.press(KeyCode::Home);
    assert!(h.settle().is_empty());
    assert!(h.screen(80, 24).contains("Layer 0 is the embeddings"));
}

#[test]
fn all_layers_mode_and_sampling_toggle() {
    let mut h = Harness::new(&[&fixture_dir()]);
    h.press(KeyCode::Char('3'));
    h.press(KeyCode::Char('a'));
    let fx = h.settle();
    assert!(
        fx.iter().any(|e| is_worker_cmd(e, |c| matches!(c, WorkerCommand::Generate { layers, .. } if layers == &vec![1, 2, 3, 4]))),
        "{fx:?}"
    );
    assert_eq!(h.app.columns[0].outputs.len(), 4);
    assert!(!h.app.columns[0].generating);
    h.press(KeyCode::Char('s'));
    assert_eq!(h.app.decoding.mode, SamplingMode::TopP);
    let fx = h.settle();
    assert!(fx.iter().any(|e| is_worker_cmd(e, |c| matches!(c, WorkerCommand::Generate { layers, sampling, .. }
        if layers.len() == 4 && matches!(sampling, alignscope::analysis::generate::Sampling::TopP { seed: 0, .. })))));
    h.press(KeyCode::Char('n'));
    assert_eq!(h.app.decoding.seed, 1);
    assert!(h.screen(80, 24).contains("seed 1"));
}

#[test]
fn stale_replies_are_ignored() {
    use alignscope::tui::worker::WorkerReply;
    let mut h = Harness::new(&[&fixture_dir()]);
    let before = h.app.columns[0].analysis.clone();
    let stale = WorkerReply::Analysis { req: 1, result: Err("old".into()) };
    h.app.on_worker(1, stale, h.now);
    assert_eq!(h.app.columns[0].analysis.as_ref().map(|a| a.input_ids.clone()), before.map(|a| a.input_ids));
    assert!(h.app.status.is_none());
    // A worker that no longer exists.
    h.app.on_worker(99, WorkerReply::LoadFailed("gone".into()), h.now);
    assert!(h.app.status.is_none());
}

#[test]
fn help_opens_and_quit_keys_quit() {
    let mut h = Harness::new(&[&fixture_dir()]);
    h.press(KeyCode::Char('?'));
    assert!(matches!(h.app.mode, Mode::Help { .. }));
    h.press(KeyCode::Char('j'));
    assert_eq!(h.app.mode, Mode::Help { scroll: 1 });
    h.press(KeyCode::Esc);
    assert_eq!(h.app.mode, Mode::Normal);
    assert!(!h.app.should_quit);
    h.press(KeyCode::Char('q'));
    assert!(h.app.should_quit);
    let mut h = Harness::new(&[&fixture_dir()]);
    h.press(KeyCode::Char('i'));
    h.press_mod(KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert!(h.app.should_quit, "Ctrl-C quits even while typing");
}

#[test]
fn training_menu_builds_the_run_and_validates() {
    let mut h = Harness::new(&[&fixture_dir()]);
    h.press(KeyCode::F(2));
    let Mode::TrainMenu(menu) = &h.app.mode else { panic!("menu") };
    assert_eq!(menu.output.text, "tiny-gpt2-ft");
    assert_eq!(menu.steps.text, "200");
    assert_eq!(menu.ctx.text, "128");
    // Standard instead of aligned; 30 steps; a bad learning rate first.
    h.press(KeyCode::Right);
    for _ in 0..4 {
        h.press(KeyCode::Down);
    }
    h.press(KeyCode::Backspace);
    h.press(KeyCode::Backspace);
    h.press(KeyCode::Backspace);
    h.type_text("30");
    h.press(KeyCode::Down);
    h.press_mod(KeyCode::Char('u'), KeyModifiers::CONTROL);
    h.type_text("fast");
    h.press(KeyCode::Enter);
    let Mode::TrainMenu(menu) = &h.app.mode else { panic!("menu stays open on an error") };
    assert!(menu.error.as_ref().unwrap().contains("Learning rate"));
    h.press_mod(KeyCode::Char('u'), KeyModifiers::CONTROL);
    h.type_text("3e-4");
    h.press(KeyCode::Enter);
    assert_eq!(h.app.mode, Mode::Normal);
    assert_eq!(h.app.view, View::Training);
    let Some(Effect::StartTraining(cfg)) = h.training.last() else { panic!("{:?}", h.training) };
    assert_eq!(cfg.loss, LossKind::Standard);
    assert_eq!((cfg.steps, cfg.lr, cfg.batch, cfg.ctx), (30, 3e-4, 8, 128));
    assert!(cfg.out.ends_with("tiny-gpt2-ft"));
    assert_eq!(cfg.data.len(), 5);
    assert!(cfg.eval_data[0].ends_with("persuasion.txt"));
    // While it runs, t shows the run instead of a second menu; x stops it.
    assert!(h.app.training.is_active());
    assert!(h.press(KeyCode::Char('t')).is_empty());
    assert_eq!(h.press(KeyCode::Char('x')), vec![Effect::StopTraining]);
}

#[test]
fn training_menu_checks_the_context_and_keeps_its_fields_after_a_failed_run() {
    let mut h = Harness::new(&[&fixture_dir()]);
    h.press(KeyCode::F(2));
    // Down to Context (kind, base, output, data, steps, lr, batch, context).
    for _ in 0..7 {
        h.press(KeyCode::Down);
    }
    h.press_mod(KeyCode::Char('u'), KeyModifiers::CONTROL);
    h.type_text("4096");
    h.press(KeyCode::Enter);
    let Mode::TrainMenu(menu) = &h.app.mode else { panic!("menu stays open on an error") };
    assert!(menu.error.as_ref().unwrap().contains("Context must be at most 128"), "{:?}", menu.error);
    h.press_mod(KeyCode::Char('u'), KeyModifiers::CONTROL);
    h.type_text("64");
    h.press(KeyCode::Enter);
    assert!(matches!(h.training.last(), Some(Effect::StartTraining(cfg)) if cfg.ctx == 64), "{:?}", h.training);
    // The run fails: t opens the menu as the user left it, not the defaults.
    h.app.on_train_error("the data could not be read".into());
    assert!(!h.app.training.is_active());
    h.press(KeyCode::Char('t'));
    let Mode::TrainMenu(menu) = &h.app.mode else { panic!("t opens the menu after a failure: {:?}", h.app.mode) };
    assert_eq!(menu.ctx.text, "64");
    assert_eq!(menu.error, None);
}

#[test]
fn a_hint_about_a_key_goes_at_the_next_key() {
    let mut h = Harness::new(&[&fixture_dir()]);
    h.press(KeyCode::Char('3'));
    h.press(KeyCode::Char('n'));
    let status = h.app.status.clone().expect("a hint");
    assert!(status.text.contains("greedy decoding has no seed"), "{status:?}");
    h.press(KeyCode::Right);
    assert_eq!(h.app.status, None, "the hint outlived the next key");
    // An error stays until something replaces it.
    h.app.on_train_error("the data could not be read".into());
    h.press(KeyCode::Right);
    assert!(h.app.status.as_ref().is_some_and(|m| m.error));
}

#[test]
fn a_saved_checkpoint_reloads_next_to_its_base() {
    let tmp = tempfile::tempdir().unwrap();
    let saved = random_checkpoint(tmp.path(), "tiny-gpt2-ft", 4, 3);
    let mut h = Harness::new(&[&fixture_dir()]);
    h.press(KeyCode::Char('r'));
    assert!(h.app.status.as_ref().unwrap().text.contains("no training checkpoint"));
    h.app.on_train(TrainEvent::Started { start_step: 0, total_steps: 10, out: saved.clone(), n_layer: 4 });
    h.app.on_train(TrainEvent::CheckpointSaved { step: 10, dir: saved.clone() });
    h.app.on_train(TrainEvent::Finished { step: 10, dir: saved.clone(), stopped_early: false });
    let fx = h.press(KeyCode::Char('r'));
    assert!(matches!(fx[0], Effect::SpawnWorker { .. }), "{fx:?}");
    assert_eq!(h.app.columns.len(), 2);
    assert_eq!(h.app.columns[0].short_name(), "tiny-gpt2-ft");
    assert_eq!(h.app.columns[1].short_name(), "tiny-gpt2");
    assert!(h.app.columns[0].analysis.is_some(), "the new checkpoint is analyzed");
    // Reloading again refreshes column A in place.
    let fx = h.press(KeyCode::Char('r'));
    assert!(is_worker_cmd(&fx[0], |c| matches!(c, WorkerCommand::Load { .. })), "{fx:?}");
    assert_eq!(h.app.columns.len(), 2);
}

#[test]
fn key_table_lists_every_binding() {
    let md = alignscope::tui::key_table_markdown();
    for b in alignscope::tui::keymap::BINDINGS {
        assert!(md.contains(b.help), "{} missing", b.help);
    }
    let help = h_lines();
    assert!(help.contains("scroll"));
}

fn h_lines() -> String {
    let theme = alignscope::tui::theme::Theme::new(alignscope::tui::theme::ColorDepth::Mono);
    alignscope::tui::panels::help::lines(&theme).iter().map(|l| l.to_string()).collect::<Vec<_>>().join("\n")
}

#[test]
fn a_new_generation_cancels_the_running_one_in_the_worker_thread() {
    use alignscope::tui::event::Event;
    use alignscope::tui::worker::{WorkerHandle, WorkerReply};
    use std::sync::mpsc;
    use std::time::Duration;
    let ck = alignscope::model::Checkpoint::open("tests/fixtures/tiny-gpt2", &candle_core::Device::Cpu).unwrap();
    let ids = alignscope::analysis::encode_prompt(&ck.tokenizer, &ck.model, "It is a truth").unwrap();
    let (tx, rx) = mpsc::channel();
    let worker = WorkerHandle::spawn(1, Some(ck), candle_core::Device::Cpu, tx);
    let generate = |req, layers: Vec<usize>| WorkerCommand::Generate {
        req,
        prompt_ids: ids.clone(),
        layers,
        max_new_tokens: 100,
        sampling: alignscope::analysis::generate::Sampling::Greedy,
    };
    // A newer request right behind a long one: the worker either skips the old one (it
    // was still queued) or cancels it at its next token; it never runs it to the end.
    worker.send(generate(1, vec![1, 2, 3, 4]));
    worker.send(generate(2, vec![2]));
    let reply = |rx: &mpsc::Receiver<Event>| match rx.recv_timeout(Duration::from_secs(30)).expect("a reply") {
        Event::Worker { reply, .. } => *reply,
        other => panic!("{other:?}"),
    };
    let mut first_done = vec![];
    loop {
        match reply(&rx) {
            WorkerReply::LayerDone { req: 1, layer, .. } => first_done.push(layer),
            WorkerReply::LayerDone { req: 2, layer: 2, tokens, .. } => {
                assert_eq!(tokens, 100);
                break;
            }
            WorkerReply::Token { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(!first_done.contains(&4), "the superseded generation ran to the end: {first_done:?}");
}

// ---------------------------------------------------------------- decoding modes

/// Timings vary from run to run: fix them before a snapshot.
fn fix_timings(h: &mut Harness) {
    for c in &mut h.app.columns {
        if let Some(d) = &mut c.decoded {
            d.seconds = 0.5;
            d.baseline = Some(0.6);
        }
    }
}

fn decode_cmds(fx: &[Effect]) -> Vec<alignscope::tui::worker::DecodeMethod> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Worker { cmd: WorkerCommand::Decode { method, .. }, .. } => Some(*method),
            _ => None,
        })
        .collect()
}

#[test]
fn decoding_mode_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = fixture_pair(tmp.path());
    h.press(KeyCode::Char('3'));
    h.settle();
    h.press(KeyCode::Char('e'));
    h.settle();
    fix_timings(&mut h);
    snap("decoding_early_exit", &h);
    h.press(KeyCode::Char('c'));
    h.settle();
    fix_timings(&mut h);
    snap("decoding_early_exit_saturation", &h);
    h.press(KeyCode::Char('v'));
    h.press(KeyCode::Char('h'));
    h.press(KeyCode::Char('h'));
    h.settle();
    fix_timings(&mut h);
    snap("decoding_speculative", &h);
}

#[test]
fn decoding_keys_set_the_method_and_ask_the_workers() {
    use alignscope::analysis::early_exit::ExitMeasure;
    use alignscope::tui::app::GenMethod;
    use alignscope::tui::worker::DecodeMethod;
    let mut h = Harness::new(&[&fixture_dir()]);
    h.press(KeyCode::Char('3'));
    h.settle();
    // e: early exit at the max-prob threshold 0.3.
    h.press(KeyCode::Char('e'));
    assert_eq!(h.app.decoding.method, GenMethod::EarlyExit);
    let fx = h.settle();
    assert_eq!(decode_cmds(&fx), [DecodeMethod::EarlyExit { threshold: 0.3, measure: ExitMeasure::MaxProb }]);
    let d = h.app.columns[0].decoded.clone().unwrap();
    assert_eq!(d.tokens, 32);
    assert_eq!(d.pieces.iter().filter(|p| matches!(p.kind, alignscope::tui::worker::PieceKind::Exit(_))).count(), 32);
    assert!(d.stop.is_some() && d.baseline.is_some() && d.layer_speedup.unwrap() >= 1.0);
    assert!(!h.app.columns[0].generating);
    // The layer does not matter to early exit: scrubbing asks for nothing.
    h.press(KeyCode::Left);
    assert!(decode_cmds(&h.settle()).is_empty());
    // +/- step the threshold (debounced), c switches the measure (and its threshold).
    h.press(KeyCode::Char('+'));
    h.press(KeyCode::Char('+'));
    let fx = h.settle();
    assert_eq!(decode_cmds(&fx), [DecodeMethod::EarlyExit { threshold: 0.4, measure: ExitMeasure::MaxProb }]);
    h.press(KeyCode::Char('-'));
    h.press(KeyCode::Char('c'));
    let fx = h.settle();
    assert_eq!(decode_cmds(&fx), [DecodeMethod::EarlyExit { threshold: 0.97, measure: ExitMeasure::Saturation }]);
    // v: speculative, drafting from the explorer's layer (3 after the Left above).
    h.press(KeyCode::Char('v'));
    let fx = h.settle();
    assert_eq!(decode_cmds(&fx), [DecodeMethod::Speculative { draft_layer: 3, draft_len: 4, lookup: false, int8: false }]);
    h.press(KeyCode::Char('-'));
    h.press(KeyCode::Left);
    let fx = h.settle();
    assert_eq!(decode_cmds(&fx), [DecodeMethod::Speculative { draft_layer: 2, draft_len: 3, lookup: false, int8: false }]);
    // p: drafts from the text's repeats too (greedy), and off again.
    h.press(KeyCode::Char('p'));
    let fx = h.settle();
    assert_eq!(decode_cmds(&fx), [DecodeMethod::Speculative { draft_layer: 2, draft_len: 3, lookup: true, int8: false }]);
    assert!(h.app.columns[0].decoded.as_ref().is_some_and(|d| d.tokens > 0));
    h.press(KeyCode::Char('p'));
    h.settle();
    // 8: the model's 8-bit copy drafts, from the embeddings, 16 ahead; scrubbing asks for
    // nothing; 8 again goes back to the layer.
    h.press(KeyCode::Char('8'));
    let fx = h.settle();
    assert_eq!(decode_cmds(&fx), [DecodeMethod::Speculative { draft_layer: 0, draft_len: 16, lookup: false, int8: true }]);
    assert!(h.app.columns[0].decoded.as_ref().is_some_and(|d| d.tokens > 0 && d.pipelined));
    h.press(KeyCode::Right);
    assert!(decode_cmds(&h.settle()).is_empty());
    h.press(KeyCode::Left);
    h.settle();
    h.press(KeyCode::Char('8'));
    let fx = h.settle();
    assert_eq!(decode_cmds(&fx), [DecodeMethod::Speculative { draft_layer: 2, draft_len: 4, lookup: false, int8: false }]);
    h.press(KeyCode::Char('-'));
    h.settle();
    // The last layer cannot draft: the draft layer stays at L-1.
    h.press(KeyCode::End);
    let fx = h.settle();
    assert_eq!(decode_cmds(&fx), [DecodeMethod::Speculative { draft_layer: 3, draft_len: 3, lookup: false, int8: false }]);
    // c outside early exit says so; v again leaves the mode; a goes to all layers.
    h.press(KeyCode::Char('c'));
    assert!(h.app.status.as_ref().unwrap().text.contains("press e"));
    h.press(KeyCode::Char('v'));
    assert_eq!(h.app.decoding.method, GenMethod::ExitLayer);
    // p and 8 outside speculative decoding say so.
    h.press(KeyCode::Char('p'));
    assert!(h.app.status.as_ref().unwrap().text.contains("press v"));
    h.press(KeyCode::Char('8'));
    assert!(h.app.status.as_ref().unwrap().text.contains("press v"));
    h.press(KeyCode::Char('e'));
    h.press(KeyCode::Char('a'));
    assert_eq!((h.app.decoding.method, h.app.decoding.all_layers), (GenMethod::ExitLayer, true));
}

/// Speculative decoding in the explorer is lossless too: its text is the full model's.
#[test]
fn speculative_text_is_the_full_models() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = fixture_pair(tmp.path());
    h.press(KeyCode::Char('3'));
    h.settle();
    let full: Vec<String> = h.app.columns.iter().map(|c| c.outputs[&4].text.clone()).collect();
    h.press(KeyCode::Char('v'));
    for layer in [1, 2, 3] {
        while h.app.layer > layer {
            h.press(KeyCode::Left);
        }
        h.settle();
        for (c, want) in h.app.columns.iter().zip(&full) {
            let d = c.decoded.as_ref().unwrap();
            let text: String = d.pieces.iter().map(|p| p.text.as_str()).collect();
            assert_eq!(&text, want, "draft layer {layer}");
            assert!(d.drafts.accepted <= d.drafts.drafted);
            // Greedy, on a model whose rows keep to one core: drafting and verifying on two
            // threads, as `generate --pipelined`.
            assert!(d.pipelined, "draft layer {layer}");
        }
    }
    // The 8-bit drafter's text is the full model's too.
    h.press(KeyCode::Char('8'));
    h.settle();
    for (c, want) in h.app.columns.iter().zip(&full) {
        let d = c.decoded.as_ref().unwrap();
        let text: String = d.pieces.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(&text, want, "8-bit drafter");
        assert!(d.pipelined && d.drafts.accepted <= d.drafts.drafted);
    }
    h.press(KeyCode::Char('8'));
    // Sampling decodes in one-thread rounds: a pass per round, its drafts accepted or not.
    h.press(KeyCode::Char('s'));
    h.settle();
    for c in &h.app.columns {
        let d = c.decoded.as_ref().unwrap();
        assert!(!d.pipelined && d.tokens > 0 && d.drafts.accepted <= d.drafts.drafted);
        assert_eq!(d.forward_passes.unwrap() - 1 + d.drafts.accepted, d.tokens - 1);
    }
}

// ---------------------------------------------------------------- recipe names

fn explore_args(ckpt: &str) -> alignscope::cli::ExploreArgs {
    alignscope::cli::ExploreArgs {
        ckpt: Some(ckpt.into()),
        compare: None,
        single: false,
        device: "cpu".into(),
        eval_data: None,
        prompt: None,
    }
}

/// A copy of the fixture at `dir`, and, with `base`, the training state of a fine-tune of it.
fn checkpoint_at(dir: &std::path::Path, base: Option<&std::path::Path>) {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture_dir().join(f), dir.join(f)).unwrap();
    }
    if let Some(base) = base {
        let init = alignscope::train::InitFrom::Checkpoint(base.display().to_string());
        let config = alignscope::train::TrainConfig::finetune(init, dir.to_path_buf(), LossKind::Aligned, vec![]);
        let state = serde_json::json!({ "alignscope_version": "0", "step": 3, "data_rng_position": "0", "tokens_seen": 0, "elapsed_secs": 1.0, "config": config });
        std::fs::write(dir.join("training_state.json"), state.to_string()).unwrap();
    }
}

#[test]
fn a_recipe_name_opens_its_base_and_the_menu_that_builds_it() {
    // The recipe of a folder is its sibling: tests/fixtures/tiny-gpt2-aligned (not built).
    let plan = alignscope::tui::plan_start(&explore_args("tests/fixtures/tiny-gpt2-aligned")).unwrap();
    assert_eq!(plan.a, "tests/fixtures/tiny-gpt2");
    let recipe = plan.recipe.expect("a recipe to offer");
    assert_eq!(
        (recipe.base.as_str(), recipe.out.as_str(), recipe.loss),
        ("tests/fixtures/tiny-gpt2", "tests/fixtures/tiny-gpt2-aligned", LossKind::Aligned)
    );
    let mut h = Harness::new(&[&fixture_dir()]);
    let defaults = alignscope::tui::menu_defaults(&h.app);
    h.app.offer_recipe(alignscope::tui::recipe_offer(&recipe), defaults);
    let Mode::TrainMenu(menu) = &h.app.mode else { panic!("the menu opens by itself") };
    assert_eq!(menu.run_kind(), alignscope::tui::train::RunKind::AlignedFinetune);
    assert_eq!((menu.base.text.as_str(), menu.output.text.as_str()), ("tests/fixtures/tiny-gpt2", "tests/fixtures/tiny-gpt2-aligned"));
    assert_eq!(menu.data.text, "hf://datasets/Salesforce/wikitext/wikitext-103-raw-v1");
    // The paper's recipe, at the base's context (the fixture has 128 positions).
    assert_eq!(
        (menu.steps.text.as_str(), menu.lr.text.as_str(), menu.batch.text.as_str(), menu.ctx.text.as_str()),
        ("1000", "2e-5", "8", "128")
    );
    let status = &h.app.status.as_ref().unwrap().text;
    assert_eq!(
        status,
        "tests/fixtures/tiny-gpt2-aligned is not built yet. Enter trains it, Esc explores tests/fixtures/tiny-gpt2: the aligned fine-tune of tests/fixtures/tiny-gpt2 on wikitext-103-raw-v1, 1000 steps × 8 × 128 tokens, lr 2e-5."
    );
    snap("recipe_menu", &h);
    // Esc explores the base; t offers the recipe again.
    h.press(KeyCode::Esc);
    assert_eq!(h.app.mode, Mode::Normal);
    h.press(KeyCode::Char('t'));
    let Mode::TrainMenu(menu) = &h.app.mode else { panic!("menu") };
    assert_eq!(menu.output.text, "tests/fixtures/tiny-gpt2-aligned");
}

#[test]
fn the_recipe_run_under_another_output_name_is_still_shown_beside_its_base() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny");
    checkpoint_at(&base, None);
    let recipe = alignscope::tui::plan_start(&explore_args(&format!("{}-aligned", base.display()))).unwrap().recipe.unwrap();
    let mut h = Harness::new(&[&base]);
    let defaults = alignscope::tui::menu_defaults(&h.app);
    h.app.offer_recipe(alignscope::tui::recipe_offer(&recipe), defaults);
    // Output name is the third field: "…-aligned" becomes "…-aligned2".
    h.press(KeyCode::Down);
    h.press(KeyCode::Down);
    h.press(KeyCode::End);
    h.press(KeyCode::Char('2'));
    h.press(KeyCode::Enter);
    let Some(Effect::StartTraining(cfg)) = h.training.last().cloned() else { panic!("{:?}", h.training) };
    assert_eq!(cfg.out, tmp.path().join("tiny-aligned2"));
    checkpoint_at(&cfg.out, Some(&base));
    let fx = h.app.on_train(TrainEvent::CheckpointSaved { step: 50, dir: cfg.out.clone() });
    assert!(matches!(fx.first(), Some(Effect::SpawnWorker { .. })), "{fx:?}");
    h.run(fx);
    assert_eq!((h.app.columns[0].short_name(), h.app.columns[1].short_name()), ("tiny-aligned2".to_string(), "tiny".to_string()));
}

#[test]
fn the_first_save_of_the_recipe_run_is_shown_beside_its_base() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny");
    checkpoint_at(&base, None);
    let spec = format!("{}-aligned", base.display());
    let plan = alignscope::tui::plan_start(&explore_args(&spec)).unwrap();
    let recipe = plan.recipe.expect("not built yet");
    let mut h = Harness::new(&[&base]);
    let defaults = alignscope::tui::menu_defaults(&h.app);
    h.app.offer_recipe(alignscope::tui::recipe_offer(&recipe), defaults);
    h.press(KeyCode::Enter);
    let Some(Effect::StartTraining(cfg)) = h.training.last().cloned() else { panic!("{:?}", h.training) };
    assert_eq!(cfg.out, tmp.path().join("tiny-aligned"));
    assert_eq!((cfg.loss, cfg.alternate, cfg.lr, cfg.batch, cfg.ctx, cfg.steps), (LossKind::Aligned, true, 2e-5, 8, 128, 1000));
    assert_eq!(cfg.data, [std::path::PathBuf::from("hf://datasets/Salesforce/wikitext/wikitext-103-raw-v1")]);
    assert_eq!(cfg.eval_data, cfg.data, "held out: the validation split of the same folder");
    // The run saves its first checkpoint: it is loaded beside the base without a key.
    checkpoint_at(&cfg.out, Some(&base));
    h.app.on_train(TrainEvent::Started { start_step: 0, total_steps: 1000, out: cfg.out.clone(), n_layer: 4 });
    let fx = h.app.on_train(TrainEvent::CheckpointSaved { step: 50, dir: cfg.out.clone() });
    assert!(matches!(fx.first(), Some(Effect::SpawnWorker { .. })), "{fx:?}");
    h.run(fx);
    assert_eq!(h.app.columns.len(), 2);
    assert_eq!(h.app.columns[0].short_name(), "tiny-aligned");
    assert_eq!(h.app.columns[1].short_name(), "tiny");
    assert!(h.app.columns[0].analysis.is_some());
    // Later saves wait for r, as for any run.
    assert!(h.app.on_train(TrainEvent::CheckpointSaved { step: 100, dir: cfg.out.clone() }).is_empty());

    // Built: the name opens it beside its base, or beside its -standard twin when there is one.
    let plan = alignscope::tui::plan_start(&explore_args(&spec)).unwrap();
    assert_eq!((plan.a.as_str(), plan.b.as_deref(), plan.recipe.is_none()), (spec.as_str(), Some(base.to_str().unwrap()), true));
    let twin = format!("{}-standard", base.display());
    checkpoint_at(std::path::Path::new(&twin), Some(&base));
    let plan = alignscope::tui::plan_start(&explore_args(&spec)).unwrap();
    assert_eq!(plan.b.as_deref(), Some(twin.as_str()));
    let mut args = explore_args(&spec);
    args.compare = Some(base.display().to_string());
    assert_eq!(alignscope::tui::plan_start(&args).unwrap().b.as_deref(), Some(base.to_str().unwrap()), "--compare overrides");
    args.single = true;
    assert_eq!(alignscope::tui::plan_start(&args).unwrap().b, None);
}

/// A paste goes into the input line whole, line breaks included: it is never run as keys
/// (a line break as Enter ran the first line, and a `q` after it quit).
#[test]
fn a_paste_is_text_not_keys() {
    let mut h = Harness::new(&[&fixture_dir()]);
    h.press(KeyCode::Char('i'));
    h.press_mod(KeyCode::Char('u'), KeyModifiers::CONTROL);
    assert!(h.app.handle_paste("Hello there,\nquite so.").is_empty());
    assert!(!h.app.should_quit);
    let Mode::Input(line) = &h.app.mode else { panic!("the input line closed") };
    assert_eq!(line.field.text, "Hello there,\nquite so.");
    // Outside the input line a paste does nothing.
    h.press(KeyCode::Esc);
    assert!(h.app.handle_paste("q").is_empty());
    assert!(!h.app.should_quit && matches!(h.app.mode, Mode::Normal));
}
