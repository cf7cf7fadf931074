//! Text corpora for training and evaluation: files and folders, local or inside a hub
//! dataset repository (`hf://datasets/OWNER/NAME/PATH`, fetched into the hub cache), in
//! plain text, JSON lines or parquet ([`formats`]), and their tokens ([`tokens`]).
//!
//! A folder whose files are named by split (`train-00000-of-00002.parquet`,
//! `validation.jsonl`, `wiki.test.txt`, ...) gives its train split as training data and its
//! validation split as held-out data; [`Selection::notes`] says so.

pub mod formats;
pub mod tokens;

use crate::hub::{self, HfUrl, HubSettings};
use anyhow::{Result, anyhow, bail};
use std::path::{Path, PathBuf};

/// Reads a UTF-8 text file; a clear error otherwise.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| anyhow!("cannot read data file {}: {e}", path.display()))?;
    String::from_utf8(bytes)
        .map_err(|e| anyhow!("data file {} is not UTF-8 text (invalid byte at offset {})", path.display(), e.utf8_error().valid_up_to()))
}

/// Which side of a run a data spec feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Train,
    Eval,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    fn name(&self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }
}

/// The split a file name says it belongs to, by the words Hugging Face `datasets` uses
/// (`train`/`training`, `validation`/`valid`/`val`/`dev`, `test`/`testing`), taken as
/// whole words between `-`, `_`, `.` and spaces.
pub fn split_of(file_name: &str) -> Option<Split> {
    file_name.split(['-', '_', '.', ' ']).find_map(|w| match w.to_ascii_lowercase().as_str() {
        "train" | "training" => Some(Split::Train),
        "validation" | "valid" | "val" | "dev" => Some(Split::Validation),
        "test" | "testing" => Some(Split::Test),
        _ => None,
    })
}

fn is_data_file(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| formats::DATA_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// What data specs come to: local files (hub files in the cache), what was chosen where,
/// and the specs whose validation split is the natural held-out data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    pub files: Vec<PathBuf>,
    /// One line per folder whose split was chosen: `DATA: its train split (2 of 4 files)`.
    pub notes: Vec<String>,
    /// Specs (folders) that have a validation split.
    pub held_out: Vec<PathBuf>,
}

/// Picks a folder's files by split for `role`. `names` are file names inside the folder.
fn choose_split(shown: &str, names: &[String], role: Role, sel: &mut Selection, spec: &Path) -> Result<Vec<String>> {
    let split_name = |n: &String| split_of(Path::new(n).file_name().and_then(|f| f.to_str()).unwrap_or(n));
    if names.iter().all(|n| split_name(n).is_none()) {
        return Ok(names.to_vec());
    }
    let mut present: Vec<Split> = Vec::new();
    for s in names.iter().filter_map(split_name) {
        if !present.contains(&s) {
            present.push(s);
        }
    }
    if present.contains(&Split::Validation) {
        sel.held_out.push(spec.to_path_buf());
    }
    let want = if role == Role::Train { Split::Train } else { Split::Validation };
    let chosen: Vec<String> = names.iter().filter(|n| split_name(n) == Some(want)).cloned().collect();
    if chosen.is_empty() {
        let have: Vec<&str> = present.iter().map(Split::name).collect();
        bail!("{shown} has files named by split ({}) but no {} split: name its files directly", have.join(", "), want.name())
    }
    sel.notes.push(format!(
        "{shown}: its {} split ({} of {} files){}",
        want.name(),
        chosen.len(),
        names.len(),
        if role == Role::Train { " for training" } else { " as held-out data" }
    ));
    Ok(chosen)
}

/// Expands `--data` / `--eval-data` specs: text, JSON-lines or parquet files; folders of
/// them (by split, see the module docs); `hf://datasets/OWNER/NAME/PATH` (a file, folder or
/// glob in a dataset repository, fetched into the hub cache).
pub fn select(specs: &[PathBuf], role: Role) -> Result<Selection> {
    let mut sel = Selection::default();
    let settings = HubSettings::from_env();
    for spec in specs {
        let text = spec.to_string_lossy();
        if let Some(url) = HfUrl::parse(&text) {
            let url = url?;
            let files = select_hub(&settings, &url, role, &mut sel, spec)?;
            sel.files.extend(files);
            continue;
        }
        let p = crate::paths::resolve_asset(spec);
        if p.is_dir() {
            let mut names: Vec<String> = std::fs::read_dir(&p)
                .map_err(|e| anyhow!("cannot read data folder {}: {e}", p.display()))?
                .flatten()
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| is_data_file(n))
                .collect();
            names.sort();
            if names.is_empty() {
                bail!("data folder {} holds no .txt, .jsonl or .parquet files", p.display())
            }
            let chosen = choose_split(&p.display().to_string(), &names, role, &mut sel, spec)?;
            sel.files.extend(chosen.into_iter().map(|n| p.join(n)));
        } else if p.is_file() {
            sel.files.push(p);
        } else if p.exists() {
            bail!("data file {} is not a regular file or a folder", p.display())
        } else {
            bail!("data file {} does not exist", p.display())
        }
    }
    Ok(sel)
}

fn select_hub(settings: &HubSettings, url: &HfUrl, role: Role, sel: &mut Selection, spec: &Path) -> Result<Vec<PathBuf>> {
    if url.repo.kind != hub::RepoKind::Dataset {
        bail!("{} is not a dataset: data comes from hf://datasets/OWNER/NAME/PATH", url.display())
    }
    let all = hub::list_files(settings, &url.repo)?;
    let shown = url.display();
    let wanted: Vec<String> = if hub::is_glob(&url.path) {
        let m: Vec<String> = all.iter().filter(|f| hub::glob_match(&url.path, f)).cloned().collect();
        if m.is_empty() {
            bail!("no file of {} matches {}", url.repo.display(), url.path)
        }
        m
    } else if !url.path.is_empty() && all.contains(&url.path) {
        vec![url.path.clone()]
    } else {
        let prefix = if url.path.is_empty() { String::new() } else { format!("{}/", url.path) };
        let inside: Vec<&String> = all.iter().filter(|f| f.starts_with(&prefix)).collect();
        if inside.is_empty() {
            bail!("{} has no file or folder {}", url.repo.display(), url.path)
        }
        let direct: Vec<String> =
            inside.iter().filter(|f| !f[prefix.len()..].contains('/') && is_data_file(f)).map(|f| f.to_string()).collect();
        if direct.is_empty() {
            let mut folders: Vec<&str> = inside.iter().filter_map(|f| f[prefix.len()..].split_once('/').map(|(d, _)| d)).collect();
            folders.dedup();
            if folders.is_empty() {
                bail!("{shown} holds no .txt, .jsonl or .parquet files")
            }
            bail!("{shown} holds no data files itself; choose one of its folders: {}", folders.join(", "))
        }
        choose_split(&shown, &direct, role, sel, spec)?
    };
    wanted.iter().map(|f| hub::fetch(settings, &url.repo, f).map_err(anyhow::Error::from)).collect()
}

/// Reads the documents of every file, in order (see [`formats`] for the boundaries).
pub fn read_documents(files: &[PathBuf]) -> Result<Vec<String>> {
    let mut docs = Vec::new();
    for f in files {
        docs.extend(formats::read_documents(f)?);
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names() {
        assert_eq!(split_of("train-00000-of-00002.parquet"), Some(Split::Train));
        assert_eq!(split_of("validation-00000-of-00001.parquet"), Some(Split::Validation));
        assert_eq!(split_of("wiki.valid.txt"), Some(Split::Validation));
        assert_eq!(split_of("test.jsonl"), Some(Split::Test));
        assert_eq!(split_of("emma.txt"), None);
        assert_eq!(split_of("trainers.txt"), None);
    }

    #[test]
    fn folders_give_the_split_of_their_role() {
        let names: Vec<String> =
            ["test-0.parquet", "train-0.parquet", "train-1.parquet", "validation-0.parquet"].map(String::from).to_vec();
        let mut sel = Selection::default();
        let t = choose_split("d", &names, Role::Train, &mut sel, Path::new("d")).unwrap();
        assert_eq!(t, ["train-0.parquet", "train-1.parquet"]);
        assert_eq!(sel.notes, ["d: its train split (2 of 4 files) for training"]);
        assert_eq!(sel.held_out, [PathBuf::from("d")]);
        let v = choose_split("d", &names, Role::Eval, &mut Selection::default(), Path::new("d")).unwrap();
        assert_eq!(v, ["validation-0.parquet"]);
        let no_val: Vec<String> = ["train.txt", "test.txt"].map(String::from).to_vec();
        let e = choose_split("d", &no_val, Role::Eval, &mut Selection::default(), Path::new("d")).unwrap_err();
        assert!(e.to_string().contains("no validation split"), "{e}");
        let plain: Vec<String> = ["a.txt", "b.txt"].map(String::from).to_vec();
        assert_eq!(choose_split("d", &plain, Role::Train, &mut Selection::default(), Path::new("d")).unwrap(), plain);
    }
}
