//! Recipe names. `BASE-aligned`, `BASE-standard` and `BASE-ce-reg`, where BASE is
//! anything `--ckpt` accepts (`gpt2`, `distilgpt2`, a hub id, a local checkpoint), name
//! the fine-tune of BASE with that loss by the paper's GPT-2 recipe: AdamW at lr 2e-5,
//! batch 8, context 256, on WikiText-103 from the hub, the aligned loss alternating with
//! last-layer CE. Once trained, the name opens the checkpoint; before, it says how to
//! build it.
//!
//! Where a recipe's checkpoint lives: a bare name (`gpt2-aligned`) is a checkpoint name,
//! written under the checkpoints root ([`crate::paths::output_dir`]); a hub id's recipe
//! is named after the repository — `openai-community/gpt2-aligned` is `gpt2-aligned` (the
//! short name transformers' docs use for it), `ORG/NAME-aligned` is `ORG--NAME-aligned`
//! (as the hub cache names repositories); a path's recipe is the sibling folder
//! (`some/dir/ck-aligned`).

use super::config::{InitFrom, LossKind, TrainConfig};
use crate::hub::{self, HubRepo, HubSettings};
use crate::model::Checkpoint;
use crate::model::checkpoint::{hub_alias, resolve};
use crate::paths::{is_bare_name, local_checkpoints, output_dir};
use anyhow::{Result, bail};
use candle_core::Device;
use std::path::{Path, PathBuf};

/// WikiText-103 (raw) on the hub: the paper's fine-tuning data. A folder named by split:
/// training reads its train split, evaluation its validation split.
pub const WIKITEXT_103: &str = "hf://datasets/Salesforce/wikitext/wikitext-103-raw-v1";
pub const RECIPE_LR: f64 = 2e-5;
pub const RECIPE_BATCH: usize = 8;
pub const RECIPE_CTX: usize = 256;
/// How long the recipe trains (our choice, not the paper's: see the README for the cost).
pub const RECIPE_STEPS: usize = 1000;

const SUFFIXES: [(&str, LossKind); 3] = [("-aligned", LossKind::Aligned), ("-standard", LossKind::Standard), ("-ce-reg", LossKind::CeReg)];

/// A recipe name, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// The name as given (`gpt2-aligned`).
    pub spec: String,
    /// The checkpoint it fine-tunes (`gpt2`).
    pub base: String,
    pub loss: LossKind,
    /// `--out` of the run that builds it: a checkpoint name or a path.
    pub out: String,
}

/// A hub repository id (`ORG/NAME`) rather than a local path.
fn is_hub_id(spec: &str) -> bool {
    spec.split('/').count() == 2 && !spec.starts_with(['.', '/']) && !spec.contains("//") && !Path::new(spec).exists()
}

/// The name (or path) of the checkpoint that the `suffix` recipe of `base` writes.
fn out_for(base: &str, suffix: &str) -> String {
    if is_hub_id(base) {
        let (org, name) = base.split_once('/').expect("a hub id has one slash");
        if hub_alias(name) == Some(base) {
            return format!("{name}{suffix}");
        }
        return format!("{org}--{name}{suffix}");
    }
    format!("{}{suffix}", base.trim_end_matches('/'))
}

impl Recipe {
    /// A name of the form `BASE-aligned` / `-standard` / `-ce-reg` (whether or not BASE
    /// exists).
    pub fn parse(spec: &str) -> Option<Recipe> {
        let spec_t = spec.trim_end_matches('/');
        SUFFIXES.iter().find_map(|&(suffix, loss)| {
            let base = spec_t.strip_suffix(suffix)?;
            if base.is_empty() || base.ends_with('/') {
                return None;
            }
            Some(Recipe { spec: spec.to_string(), base: base.to_string(), loss, out: out_for(base, suffix) })
        })
    }

    /// Where the recipe's checkpoint is (or will be) written.
    pub fn out_dir(&self) -> PathBuf {
        output_dir(&self.out)
    }

    /// Whether BASE is something `--ckpt` can open (without asking the network): a folder,
    /// a local checkpoint, a hub alias or hub id, or a recipe itself.
    pub fn base_is_plausible(&self) -> bool {
        let b = &self.base;
        Path::new(b).is_dir()
            || local_checkpoints().iter().any(|n| n == b)
            || hub_alias(b).is_some()
            || is_hub_id(b)
            || Recipe::parse(b).is_some_and(|r| r.base_is_plausible())
    }

    /// The context of the recipe: 256, or the base's own if shorter (when its config can
    /// be read without the network).
    pub fn ctx(&self) -> usize {
        let config = local_config(&self.base);
        let n_positions = config.and_then(|c| crate::model::Gpt2Config::from_file(&c).ok()).map(|c| c.n_positions);
        n_positions.map_or(RECIPE_CTX, |n| n.min(RECIPE_CTX))
    }

    /// The arguments of `alignscope train` that build it.
    pub fn train_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["train".into(), "--ckpt".into(), self.base.clone(), "--loss".into(), self.loss.to_string()];
        for (k, v) in [
            ("--data", WIKITEXT_103.to_string()),
            ("--lr", "2e-5".to_string()),
            ("--batch", RECIPE_BATCH.to_string()),
            ("--ctx", self.ctx().to_string()),
            ("--steps", RECIPE_STEPS.to_string()),
            ("--out", self.out.clone()),
        ] {
            a.push(k.into());
            a.push(v);
        }
        a
    }

    /// The command line that builds it, ready to paste.
    pub fn command(&self) -> String {
        std::iter::once("alignscope".to_string()).chain(self.train_args().iter().map(|a| shell_quote(a))).collect::<Vec<_>>().join(" ")
    }

    /// The run that builds it, as the explorer's menu starts it.
    pub fn config(&self) -> TrainConfig {
        let mut c =
            TrainConfig::finetune(InitFrom::Checkpoint(self.base.clone()), self.out_dir(), self.loss, vec![PathBuf::from(WIKITEXT_103)]);
        c.eval_data = vec![PathBuf::from(WIKITEXT_103)];
        c.lr = RECIPE_LR;
        c.min_lr = RECIPE_LR / 10.0;
        c.batch = RECIPE_BATCH;
        c.ctx = self.ctx();
        c.steps = RECIPE_STEPS;
        c
    }

    /// The one-line answer to opening it before it is built.
    pub fn not_built(&self) -> String {
        format!(
            "{} is not built yet (the {} fine-tune of {} by the paper's recipe); build it with: {}",
            self.spec,
            self.loss,
            self.base,
            self.command()
        )
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The config.json of a checkpoint spec if it is on this machine (a folder, a local
/// checkpoint, or a hub repository in the hub cache).
fn local_config(spec: &str) -> Option<PathBuf> {
    let local = Path::new(spec).join("config.json");
    if local.is_file() {
        return Some(local);
    }
    if is_bare_name(spec) && local_checkpoints().iter().any(|n| n == spec) {
        return resolve(spec).ok().map(|d| d.join("config.json"));
    }
    let repo = hub_alias(spec).unwrap_or(spec);
    is_hub_id(repo).then(|| hub::cached(&HubSettings::from_env(), &HubRepo::model(repo), "config.json")).flatten()
}

/// What a checkpoint spec comes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    Dir(PathBuf),
    /// A recipe whose checkpoint does not exist yet.
    NotBuilt(Recipe),
}

/// Resolves `--ckpt` like [`resolve`], knowing recipe names.
pub fn find(spec: &str) -> Result<Found> {
    let Some(recipe) = Recipe::parse(spec).filter(Recipe::base_is_plausible) else {
        return Ok(Found::Dir(resolve(spec)?));
    };
    let built = recipe.out_dir();
    if built.join("config.json").is_file() {
        return Ok(Found::Dir(built));
    }
    if Path::new(spec).exists() || (is_bare_name(spec) && local_checkpoints().iter().any(|n| n == spec)) {
        return Ok(Found::Dir(resolve(spec)?));
    }
    if is_hub_id(spec) {
        // `ORG/NAME-aligned` may be a repository of its own; if the hub has none, it is the
        // recipe.
        return match resolve(spec) {
            Ok(dir) => Ok(Found::Dir(dir)),
            Err(e) if hub::is_repo_not_found(&e) => Ok(Found::NotBuilt(recipe)),
            Err(e) => Err(e),
        };
    }
    Ok(Found::NotBuilt(recipe))
}

/// Opens a checkpoint spec; a recipe not built yet is an error that says how to build it.
pub fn open(spec: &str, device: &Device) -> Result<Checkpoint> {
    match find(spec)? {
        Found::Dir(dir) => {
            let mut ck = Checkpoint::load_dir(&dir, device)?;
            ck.name = spec.to_string();
            Ok(ck)
        }
        Found::NotBuilt(r) => bail!("{}", r.not_built()),
    }
}

/// What to show beside a checkpoint in the explorer: its `-standard` twin when it is an
/// `-aligned` one and the twin exists (and the other way round), else the base it was
/// fine-tuned from (its `training_state.json`).
pub fn companion(spec: &str, dir: &Path) -> Option<String> {
    if let Some(r) = Recipe::parse(spec) {
        let twin_suffix = match r.loss {
            LossKind::Aligned => Some("-standard"),
            LossKind::Standard => Some("-aligned"),
            LossKind::CeReg => None,
        };
        if let Some(s) = twin_suffix {
            let twin = format!("{}{s}", r.base);
            if matches!(find(&twin), Ok(Found::Dir(_))) {
                return Some(twin);
            }
        }
    }
    match super::save::read_run_config(dir).ok()?.init {
        InitFrom::Checkpoint(base) => Some(base),
        InitFrom::Random { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_outputs() {
        let r = Recipe::parse("gpt2-aligned").unwrap();
        assert_eq!((r.base.as_str(), r.loss, r.out.as_str()), ("gpt2", LossKind::Aligned, "gpt2-aligned"));
        let r = Recipe::parse("openai-community/gpt2-standard").unwrap();
        assert_eq!((r.base.as_str(), r.loss, r.out.as_str()), ("openai-community/gpt2", LossKind::Standard, "gpt2-standard"));
        let r = Recipe::parse("someone/model-ce-reg").unwrap();
        assert_eq!((r.base.as_str(), r.loss, r.out.as_str()), ("someone/model", LossKind::CeReg, "someone--model-ce-reg"));
        let r = Recipe::parse("tests/fixtures/tiny-gpt2-aligned").unwrap();
        assert_eq!((r.base.as_str(), r.out.as_str()), ("tests/fixtures/tiny-gpt2", "tests/fixtures/tiny-gpt2-aligned"));
        assert!(Recipe::parse("-aligned").is_none());
        assert!(Recipe::parse("gpt2").is_none());
        assert!(Recipe::parse("gpt2-aligned").unwrap().base_is_plausible());
        assert!(!Recipe::parse("no-such-base-aligned").unwrap().base_is_plausible());
    }

    #[test]
    fn the_command_is_the_papers_recipe() {
        let r = Recipe::parse("gpt2-aligned").unwrap();
        let cmd = r.command();
        assert!(cmd.starts_with("alignscope train --ckpt gpt2 --loss aligned --data hf://datasets/Salesforce/wikitext/wikitext-103-raw-v1 --lr 2e-5 --batch 8 --ctx "), "{cmd}");
        assert!(cmd.ends_with("--out gpt2-aligned"), "{cmd}");
        assert_eq!(shell_quote("a b"), "'a b'");
        let c = r.config();
        assert_eq!((c.lr, c.batch, c.loss, c.alternate), (2e-5, 8, LossKind::Aligned, true));
    }
}
