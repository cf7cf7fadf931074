//! Path policy, in one place at the bottom of the layers: where the shipped assets and
//! the named checkpoints are, where new checkpoints go, and how paths are shown.
//!
//! Everything that ships with alignscope (the Austen texts, the GPT-2 tokenizer, the
//! shipped checkpoints) is found from any working directory: a relative path that does not
//! exist here is looked up in the project folder this binary was built from.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The checkpoint the explorer opens when none is named, and the one it compares with.
pub const DEFAULT_CKPT: &str = "austen-aligned";
pub const DEFAULT_COMPARE: &str = "austen-standard";
/// The held-out text every default evaluation uses (never trained on).
pub const DEFAULT_EVAL_TEXT: &str = "assets/austen/persuasion.txt";
/// The five Austen novels the shipped models were trained on.
pub const DEFAULT_TRAINING_TEXTS: [&str; 5] = [
    "assets/austen/emma.txt",
    "assets/austen/mansfield_park.txt",
    "assets/austen/northanger_abbey.txt",
    "assets/austen/pride_and_prejudice.txt",
    "assets/austen/sense_and_sensibility.txt",
];
/// The real GPT-2 tokenizer (for GPT-2-sized models with random weights).
pub const GPT2_TOKENIZER_DIR: &str = "assets/gpt2-tokenizer";

/// The folder of the project this binary was built from.
pub fn project_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A path as given when it exists (or is absolute); else the same relative path inside
/// the project folder when that exists; else the path as given (so errors name it).
pub fn resolve_asset(p: &Path) -> PathBuf {
    if p.exists() || p.is_absolute() {
        return p.to_path_buf();
    }
    let project = project_dir().join(p);
    if project.exists() { project } else { p.to_path_buf() }
}

/// The default training texts, resolved.
pub fn default_training_files() -> Vec<PathBuf> {
    DEFAULT_TRAINING_TEXTS.iter().map(|p| resolve_asset(Path::new(p))).collect()
}

/// The held-out text, resolved.
pub fn default_eval_file() -> PathBuf {
    resolve_asset(Path::new(DEFAULT_EVAL_TEXT))
}

/// The folders that hold named checkpoints, most specific first: `$ALIGNSCOPE_CHECKPOINTS`,
/// `./checkpoints`, and the `checkpoints/` folder of the project.
pub fn checkpoint_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(dir) = std::env::var_os("ALIGNSCOPE_CHECKPOINTS") {
        roots.push(PathBuf::from(dir));
    }
    roots.push(PathBuf::from("checkpoints"));
    roots.push(project_dir().join("checkpoints"));
    let mut seen = BTreeSet::new();
    roots.retain(|r| seen.insert(std::fs::canonicalize(r).unwrap_or_else(|_| r.clone())));
    roots
}

/// Names of the checkpoint folders under [`checkpoint_roots`] (those with a config.json).
pub fn local_checkpoints() -> Vec<String> {
    let mut names = BTreeSet::new();
    for root in checkpoint_roots() {
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                if e.path().join("config.json").is_file() && !e.file_name().to_string_lossy().starts_with('.') {
                    names.insert(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
    }
    names.into_iter().collect()
}

/// Whether a checkpoint spec is a bare name (not a path): it is then looked up under, and
/// written to, the checkpoint roots.
pub fn is_bare_name(spec: &str) -> bool {
    let p = Path::new(spec);
    p.components().count() == 1 && !p.is_absolute() && !spec.starts_with('.')
}

/// Where the project writes a named checkpoint: a path stays a path; a bare name goes to
/// `$ALIGNSCOPE_CHECKPOINTS/NAME`, else `./checkpoints/NAME` when `./checkpoints` exists
/// (or the project has none), else the project's `checkpoints/NAME`.
pub fn output_dir(name: &str) -> PathBuf {
    if !is_bare_name(name) {
        return PathBuf::from(name);
    }
    match std::env::var_os("ALIGNSCOPE_CHECKPOINTS") {
        Some(root) => PathBuf::from(root).join(name),
        None => {
            let project = project_dir().join("checkpoints");
            if Path::new("checkpoints").is_dir() || !project.is_dir() {
                PathBuf::from("checkpoints").join(name)
            } else {
                project.join(name)
            }
        }
    }
}

/// Where the explorer saves what a view shows (`w`): `$ALIGNSCOPE_EXPORTS`, else
/// `alignscope-exports` in the working folder.
pub fn export_dir() -> PathBuf {
    std::env::var_os("ALIGNSCOPE_EXPORTS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("alignscope-exports"))
}

/// A path as a user would type it: shipped files relative to the project folder.
pub fn display_path(p: &Path) -> String {
    p.strip_prefix(project_dir()).unwrap_or(p).display().to_string()
}

/// The name for titles and derived names: the last component of a path or hub id
/// (`checkpoints/x/` → `x`, `openai-community/gpt2` → `gpt2`).
pub fn short_name(spec: &str) -> String {
    Path::new(spec.trim_end_matches('/')).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| spec.to_string())
}

/// The PyTorch engine's trainer (`scripts/torch/train.py` of the project): a relative
/// path when run from the project folder, so that a command shown there is the one a user
/// would type.
pub fn torch_trainer_script() -> PathBuf {
    let relative = Path::new("scripts/torch/train.py");
    let script = project_dir().join(relative);
    match (std::fs::canonicalize(relative), std::fs::canonicalize(&script)) {
        (Ok(a), Ok(b)) if a == b => relative.to_path_buf(),
        _ => script,
    }
}

/// The Python that runs the PyTorch engine: `$ALIGNSCOPE_PYTHON`; else the virtual
/// environment `.ci/run` sets up (`$ALIGNSCOPE_VENV`, default
/// `~/.cache/alignscope/venv`) when it exists; else `python3` from the PATH.
pub fn torch_python() -> PathBuf {
    if let Some(p) = std::env::var_os("ALIGNSCOPE_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = match std::env::var_os("ALIGNSCOPE_VENV").filter(|p| !p.is_empty()) {
        Some(v) => Some(PathBuf::from(v)),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/alignscope/venv")),
    };
    match venv.map(|v| v.join("bin/python")) {
        Some(p) if p.is_file() => p,
        _ => PathBuf::from("python3"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_and_paths() {
        assert!(is_bare_name("gpt2-aligned"));
        assert!(!is_bare_name("checkpoints/x"));
        assert!(!is_bare_name("./x"));
        assert!(!is_bare_name("/abs/x"));
        assert_eq!(output_dir("some/where"), PathBuf::from("some/where"));
    }

    #[test]
    fn assets_resolve_from_anywhere() {
        let p = resolve_asset(Path::new(DEFAULT_EVAL_TEXT));
        assert!(p.is_file(), "{}", p.display());
        assert_eq!(display_path(&p), DEFAULT_EVAL_TEXT);
        assert_eq!(default_training_files().len(), 5);
        assert_eq!(short_name("tests/fixtures/tiny-gpt2/"), "tiny-gpt2");
        assert_eq!(short_name("openai-community/gpt2"), "gpt2");
        assert_eq!(short_name("gpt2"), "gpt2");
    }
}
