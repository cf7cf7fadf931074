//! End to end: the real `alignscope` binary in a pseudo-terminal. It types a prompt, scrubs
//! layers, opens help, starts and stops a short fine-tune on the fixture model (written to
//! a temporary ALIGNSCOPE_CHECKPOINTS), and quits, checking the screen at each step and
//! that the terminal is restored. And `alignscope --ckpt gpt2-aligned` against a local hub:
//! the base downloaded, the menu that builds the recipe, its first save shown beside the
//! base, and the next start opening the pair.

mod hub_support;

use portable_pty::{CommandBuilder, PtySize, native_pty_system};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const COLS: u16 = 100;
const ROWS: u16 = 30;

struct Session {
    screen: Arc<Mutex<vt100::Parser>>,
    writer: Box<dyn Write + Send>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
}

impl Session {
    fn start(args: &[&str], checkpoints: &Path) -> Self {
        Self::start_env(args, checkpoints, &[("HF_HUB_OFFLINE", "1")])
    }

    /// With these environment variables (and without a hub token or offline switch of the
    /// caller's).
    fn start_env(args: &[&str], checkpoints: &Path, env: &[(&str, &str)]) -> Self {
        let pty = native_pty_system().openpty(PtySize { rows: ROWS, cols: COLS, pixel_width: 0, pixel_height: 0 }).expect("a pty");
        let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_alignscope"));
        cmd.args(args);
        cmd.cwd(env!("CARGO_MANIFEST_DIR"));
        cmd.env("ALIGNSCOPE_CHECKPOINTS", checkpoints);
        cmd.env("TERM", "xterm-256color");
        for k in ["HF_HUB_OFFLINE", "HF_TOKEN", "HF_HUB_CACHE", "HF_ENDPOINT"] {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = pty.slave.spawn_command(cmd).expect("spawn alignscope");
        drop(pty.slave);
        let mut reader = pty.master.try_clone_reader().unwrap();
        let writer = pty.master.take_writer().unwrap();
        let screen =
            Arc::new(Mutex::new(vt100::Parser::new(std::num::NonZero::new(ROWS).unwrap(), std::num::NonZero::new(COLS).unwrap(), 0)));
        let sink = screen.clone();
        std::thread::spawn(move || {
            // Keeps the master alive while the child runs.
            let _master = pty.master;
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().process(&buf[..n]);
            }
        });
        Self { screen, writer, child }
    }

    fn text(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    fn send(&mut self, bytes: &str) {
        self.writer.write_all(bytes.as_bytes()).unwrap();
        self.writer.flush().unwrap();
        // Separate keys, as a person types: an Esc followed at once by more bytes would be
        // read as one escape sequence.
        std::thread::sleep(Duration::from_millis(40));
    }

    /// Waits until the screen satisfies `what`, or fails with the screen.
    fn wait_for(&self, label: &str, timeout_s: u64, what: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + Duration::from_secs(timeout_s);
        loop {
            let t = self.text();
            if what(&t) {
                return t;
            }
            if Instant::now() > until {
                panic!("timed out waiting for {label}; the screen:\n{t}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_text(&self, needle: &str, timeout_s: u64) -> String {
        self.wait_for(needle, timeout_s, |t| t.contains(needle))
    }
}

const LEFT: &str = "\x1b[D";
const HOME: &str = "\x1b[H";
const END: &str = "\x1b[F";
const DOWN: &str = "\x1b[B";
const CTRL_U: &str = "\x15";
const BACKSPACE: &str = "\x7f";

#[test]
fn explorer_end_to_end_in_a_pseudo_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2");
    let mut s = Session::start(&["--ckpt", fixture.to_str().unwrap()], tmp.path());

    // Start: one column, the default prompt analyzed, the last layer selected.
    let t = s.wait_text("layer 4/4", 30);
    assert!(t.contains("A tiny-gpt2"), "{t}");
    assert!(t.contains("centered COS"), "{t}");

    // Type a prompt.
    s.send("i");
    s.wait_text("prompt›", 5);
    s.send(CTRL_U);
    for c in "Emma Woodhouse, handsome, clever".chars() {
        s.send(&c.to_string());
    }
    s.send("\r");
    s.wait_for("the new prompt analyzed", 20, |t| t.lines().nth(1).is_some_and(|l| l.contains("Emma Woodhouse")) && !t.contains("prompt›"));

    // Scrub the layers: every view follows.
    s.send(LEFT);
    s.send("h");
    s.wait_text("layer 2/4", 5);
    s.send("2");
    let t = s.wait_text("lens top-1", 5);
    assert!(t.contains("L2 @"), "the predictions follow the layer:\n{t}");
    s.send(HOME);
    s.wait_text("layer 0/4", 5);
    s.send(END);
    s.wait_text("layer 4/4", 5);

    // Help, generated from the keymap.
    s.send("?");
    let t = s.wait_text("Keys", 5);
    assert!(t.contains("previous layer"), "{t}");
    s.send("?");
    s.wait_for("help closed", 5, |t| !t.contains("previous layer"));

    // A short fine-tune on the fixture: open the menu, set 200 steps, start, stop.
    s.send("t");
    s.wait_text("Output name", 5);
    for _ in 0..4 {
        s.send(DOWN);
    }
    for _ in 0..3 {
        s.send(BACKSPACE);
    }
    for c in "200".chars() {
        s.send(&c.to_string());
    }
    s.send("\r");
    s.wait_text("aligned fine-tune of", 10);
    // The run reports steps while the explorer stays responsive.
    s.wait_text("tok/s", 120);
    s.send("1");
    s.wait_text("centered COS", 5);
    s.send("5");
    s.wait_text("tok/s", 5);
    s.send("x");
    let t = s.wait_text("training stopped at step", 60);
    assert!(t.contains("r loads it"), "{t}");
    let out = tmp.path().join("tiny-gpt2-ft");
    assert!(out.join("config.json").is_file(), "the stopped run saved into ALIGNSCOPE_CHECKPOINTS");

    // Quit: the process ends well and the terminal leaves the alternate screen.
    s.send("q");
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < until, "alignscope did not quit:\n{}", s.text());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!s.screen.lock().unwrap().screen().alternate_screen(), "the alternate screen was left");
}

#[test]
fn a_missing_checkpoint_is_one_error_line_before_the_screen() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Session::start(&["--ckpt", "no-such-checkpoint"], tmp.path());
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < until, "did not exit:\n{}", s.text());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    std::thread::sleep(Duration::from_millis(200));
    let parser = s.screen.lock().unwrap();
    let text = parser.screen().contents();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].starts_with("error: checkpoint \"no-such-checkpoint\" not found"), "{text}");
    assert!(!parser.screen().alternate_screen());
    let _ = &mut s.writer;
}

/// Waits for the explorer to quit after `q`, well, with the terminal restored.
fn quit(s: &mut Session) {
    s.send("q");
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < until, "alignscope did not quit:\n{}", s.text());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn gpt2_aligned_builds_itself_from_the_menu_then_opens_beside_gpt2() {
    let server = hub_support::HubServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let hf_home = tmp.path().join("hf");
    let checkpoints = tmp.path().join("checkpoints");
    let url = server.url.clone();
    let env = [("HF_ENDPOINT", url.as_str()), ("HF_HOME", hf_home.to_str().unwrap())];
    let mut s = Session::start_env(&["--ckpt", "gpt2-aligned"], &checkpoints, &env);

    // Not built: the base (downloaded from the hub) and the menu that builds the recipe.
    let t = s.wait_text("Enter trains it with the paper's recipe", 60);
    assert!(t.contains("A gpt2 · 4L"), "{t}");
    assert!(t.contains("gpt2-aligned is not built yet"), "{t}");
    assert!(t.contains("hf://datasets/Salesforce/wikitext/wikitext-103-raw-v1"), "{t}");
    assert!(hf_home.join("hub/models--openai-community--gpt2/refs/main").is_file());
    // Two steps instead of 1000 (Steps is the fifth field), then Enter.
    for _ in 0..4 {
        s.send(DOWN);
    }
    for _ in 0..4 {
        s.send(BACKSPACE);
    }
    s.send("2");
    s.send("\r");
    // The run shows in the training view; its first save is loaded beside the base
    // without a key.
    s.wait_text("gpt2-aligned into A", 120);
    s.send("1");
    s.wait_for("the trained checkpoint beside its base", 30, |t| t.contains("A gpt2-aligned") && t.contains("B gpt2 "));
    assert!(checkpoints.join("gpt2-aligned/training_state.json").is_file());
    quit(&mut s);
    drop(s);

    // Built: the same command opens the pair, without the server.
    server.stop();
    let mut s = Session::start_env(&["--ckpt", "gpt2-aligned"], &checkpoints, &env);
    let t = s.wait_for("the pair", 60, |t| t.contains("A gpt2-aligned") && t.contains("B gpt2 "));
    assert!(!t.contains("not built yet"), "{t}");
    quit(&mut s);
}
