//! `w` in the explorer: every view saves a picture (SVG and PNG) and its data (CSV or
//! JSON) into the export folder, the status line names the files, and the data is what the
//! view shows.

mod tui_support;

use alignscope::train::{EvalMetrics, LossKind, StepMetrics, TrainEvent};
use alignscope::tui::app::Effect;
use alignscope::tui::column::EvalState;
use ratatui::crossterm::event::KeyCode;
use std::path::{Path, PathBuf};
use tui_support::*;

fn harness(tmp: &Path) -> Harness {
    let b = random_checkpoint(tmp, "random-4l", 4, 7);
    let mut h = Harness::new(&[&fixture_dir(), &b]);
    h.export_dir = tmp.join("exports");
    h
}

/// Presses `w`; returns the files the status line names (which must all exist).
fn export(h: &mut Harness) -> Vec<PathBuf> {
    let fx = h.press(KeyCode::Char('w'));
    assert!(fx.iter().any(|e| matches!(e, Effect::Export(_))), "w asked for no export: {fx:?}");
    let status = h.app.status.clone().expect("a status line");
    assert!(!status.error, "{}", status.text);
    assert!(status.text.starts_with("saved ") && status.text.contains("exports/"), "{}", status.text);
    let names: Vec<&str> = status.text["saved ".len()..status.text.find(" in ").unwrap()].split(", ").collect();
    assert_eq!(names.len(), 3, "{}", status.text);
    let files: Vec<PathBuf> = names.iter().map(|n| h.export_dir.join(n)).collect();
    for f in &files {
        assert!(f.is_file(), "{} was not written", f.display());
    }
    let png = std::fs::read(&files[1]).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(std::fs::read_to_string(&files[0]).unwrap().starts_with("<svg"));
    files
}

/// CSV records (a quoted field may hold a line break).
fn records(csv: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (vec![], String::new(), false);
    for ch in csv.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                cur.push(ch);
            }
            '\n' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    out
}

fn close(a: &serde_json::Value, b: &[Vec<Option<f64>>]) {
    let rows = a.as_array().unwrap();
    assert_eq!(rows.len(), b.len());
    for (r, w) in rows.iter().zip(b) {
        for (x, y) in r.as_array().unwrap().iter().zip(w) {
            assert!((x.as_f64().unwrap() - y.unwrap()).abs() < 1e-14);
        }
    }
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn similarity_export_holds_the_heatmaps_shown_and_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path());
    let files = export(&mut h);
    assert!(files[0].ends_with("similarity-centered-cos-1.svg"), "{files:?}");
    let v = json(&files[2]);
    assert_eq!(v["metric"], "centered COS");
    let a = h.app.columns[0].analysis.clone().unwrap();
    close(&v["checkpoints"][0]["matrix"], &a.cos);
    assert_eq!(v["checkpoints"][1]["column"], "B");
    // Two columns of the same depth: the difference is saved too.
    let d = &v["difference"];
    let b = h.app.columns[1].analysis.clone().unwrap();
    let want = a.cos[1][2].unwrap() - b.cos[1][2].unwrap();
    assert!((d[1][2].as_f64().unwrap() - want).abs() < 1e-12);
    // The metric key changes what is saved; a second save gets the next number.
    h.press(KeyCode::Char('m'));
    h.press(KeyCode::Char('m'));
    let files = export(&mut h);
    assert!(files[2].ends_with("similarity-linear-cka-1.json"));
    close(&json(&files[2])["checkpoints"][0]["matrix"], &a.cka);
    let again = export(&mut h);
    assert!(again[2].ends_with("similarity-linear-cka-2.json"), "{again:?}");
}

#[test]
fn lens_export_is_every_layer_position_and_rank() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path());
    h.press(KeyCode::Char('2'));
    let files = export(&mut h);
    assert!(files[2].ends_with("lens-1.csv"));
    let csv = std::fs::read_to_string(&files[2]).unwrap();
    let a = h.app.columns[0].analysis.as_ref().unwrap();
    let n = a.input_ids.len();
    // Header + 2 columns × 5 layers × n positions × top-10.
    let rows = records(&csv);
    assert_eq!(rows.len(), 1 + 2 * 5 * n * alignscope::tui::app::TOP_K);
    assert!(csv.starts_with("column,checkpoint,layer,position,input_token,next_token,rank,token_id,token,prob,is_next\n"));
    // The top-1 at the last layer and last position, as the view has it.
    let top = &a.lens_at(4, n - 1).unwrap()[0];
    let row = format!("A,tests/fixtures/tiny-gpt2,4,{},", n - 1);
    let line = rows.iter().find(|l| l.starts_with(&row) && l.split(',').nth(6) == Some("1")).expect("the row");
    assert!(line.contains(&format!(",{},", top.id)) && line.contains(&format!("{:.6}", top.prob)), "{line}");
}

#[test]
fn generation_and_metrics_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path());
    h.press(KeyCode::Char('3'));
    // Nothing generated yet: the status line says so and nothing is written.
    h.press(KeyCode::Char('w'));
    let st = h.app.status.clone().unwrap();
    assert!(st.error && st.text.contains("nothing to save yet"), "{}", st.text);
    assert!(!h.export_dir.exists());
    h.press(KeyCode::Char('a'));
    h.settle();
    let files = export(&mut h);
    let v = json(&files[2]);
    let layers = v["outputs"][0]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4);
    assert_eq!(layers[2]["text"].as_str().unwrap(), h.app.columns[0].outputs[&3].text);
    assert_eq!(v["sampling"]["mode"], "greedy");

    h.press(KeyCode::Char('4'));
    let files = export(&mut h);
    let csv = std::fs::read_to_string(&files[2]).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 5);
    let EvalState::Done { report, .. } = &h.app.columns[0].eval else { panic!("evaluated") };
    let row = csv.lines().find(|l| l.starts_with("A,") && l.split(',').nth(3) == Some("2")).unwrap();
    assert!(row.contains(&format!("{:.6}", report.acc[2])), "{row}");
}

#[test]
fn training_export_after_steps_and_an_error_before() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path());
    h.press(KeyCode::Char('5'));
    h.press(KeyCode::Char('w'));
    assert!(h.app.status.clone().unwrap().text.contains("no training step"));
    h.app.on_train(TrainEvent::Started { start_step: 0, total_steps: 10, out: "checkpoints/x".into(), n_layer: 4 });
    for s in 1..=6 {
        h.app.on_train(TrainEvent::Progress(StepMetrics {
            step: s,
            total_steps: 10,
            loss: 5.0 - 0.1 * s as f64,
            objective: if s % 2 == 1 { LossKind::Aligned } else { LossKind::Standard },
            layer_losses: vec![6.0, 5.5, 5.0, 4.5],
            lr: 1e-4,
            grad_norm: 1.0,
            tokens_per_sec: 1000.0,
            eta_secs: 1.0,
        }));
    }
    h.app.on_train(TrainEvent::Eval(EvalMetrics { step: 5, layer_losses: vec![5.0, 4.0, 3.5, 3.0], layer_acc: vec![0.1, 0.2, 0.3, 0.4] }));
    let files = export(&mut h);
    let v = json(&files[2]);
    let loss = v["loss"].as_array().unwrap();
    assert_eq!(loss.len(), 2);
    assert_eq!(loss[0]["objective"], "aligned");
    assert_eq!(loss[0]["points"].as_array().unwrap().len(), 3);
    assert_eq!(v["layer_ce"].as_array().unwrap().len(), 4);
    assert_eq!(v["last_eval"]["step"], 5);
}
