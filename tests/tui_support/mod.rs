#![allow(dead_code)]
//! Drives the explorer's state without a terminal (the library's headless driver) on
//! checkpoints of the test fixtures, so views can be snapshotted and state checked
//! deterministically.

use alignscope::model::checkpoint::write_model_files;
use alignscope::model::{Checkpoint, Gpt2, Gpt2Config};
use alignscope::tui::app::AppOptions;
use candle_core::Device;
use std::path::{Path, PathBuf};

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

/// The explorer driven synchronously (see [`alignscope::tui::headless`]).
pub use alignscope::tui::headless::Headless as Harness;

/// Builds a [`Harness`] from checkpoint folders.
pub trait HarnessFromDirs: Sized {
    fn new(dirs: &[&Path]) -> Self;
    fn with_prompt(dirs: &[&Path], prompt: &str) -> Self;
}

impl HarnessFromDirs for Harness {
    fn new(dirs: &[&Path]) -> Self {
        Self::with_prompt(dirs, alignscope::tui::app::DEFAULT_PROMPT)
    }

    fn with_prompt(dirs: &[&Path], prompt: &str) -> Self {
        let opts = AppOptions { prompt: prompt.to_string(), eval_data: eval_text(), device: "cpu".into() };
        Harness::start(dirs.iter().map(|d| open(d)).collect(), opts)
    }
}

/// A checkpoint opened by path, named as the explorer names it (the spec), so titles read
/// "tiny-gpt2" whatever the temporary folder.
fn open(dir: &Path) -> Checkpoint {
    // Tests run in the package folder: the fixture by its relative path, as a user would
    // name it, so that no absolute path of this machine ends up in a snapshot.
    let dir = dir.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(dir);
    Checkpoint::open(dir.to_str().unwrap(), &Device::Cpu).expect("checkpoint loads")
}
