//! Checkpoints: HF-format folders (`config.json`, `model.safetensors` or a sharded index,
//! `tokenizer.json`), found by name and loaded into a [`Gpt2`], or written back so that
//! transformers can load what we train.

use super::config::Gpt2Config;
use super::gpt2::Gpt2;
use crate::paths::{checkpoint_roots, local_checkpoints};
use anyhow::{Context, Result, anyhow, bail};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// Names that stand for a hub repository, as transformers' docs spell them.
pub fn hub_alias(name: &str) -> Option<&'static str> {
    Some(match name {
        "gpt2" => "openai-community/gpt2",
        "gpt2-medium" => "openai-community/gpt2-medium",
        "gpt2-large" => "openai-community/gpt2-large",
        "gpt2-xl" => "openai-community/gpt2-xl",
        "distilgpt2" => "distilbert/distilgpt2",
        _ => return None,
    })
}

/// Fetches (or finds in the hub cache) the files of a GPT-2 repository and returns the
/// snapshot folder that holds them.
fn from_hub(repo_id: &str) -> Result<PathBuf> {
    crate::hub::model_snapshot(&crate::hub::HubSettings::from_env(), repo_id)
}

/// A hidden sibling of a checkpoint folder used while saving (`.NAME.saving`, `.NAME.old`).
pub fn save_sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.with_file_name(format!(".{name}.{suffix}"))
}

/// Puts back a checkpoint folder that a save left aside when it was killed between its
/// two renames (only where the atomic exchange is unavailable), and drops a stale copy.
pub fn recover_interrupted_save(dir: &Path) {
    let old = save_sibling(dir, "old");
    if old.is_dir() {
        if !dir.exists() {
            let _ = std::fs::rename(&old, dir);
        } else {
            let _ = std::fs::remove_dir_all(&old);
        }
    }
}

/// Resolves `--ckpt`: an existing folder; a named checkpoint under [`checkpoint_roots`];
/// or a Hugging Face repository id (with the gpt2 family's short aliases).
pub fn resolve(spec: &str) -> Result<PathBuf> {
    if spec.trim().is_empty() {
        bail!("no checkpoint given")
    }
    let p = Path::new(spec);
    recover_interrupted_save(p);
    for root in checkpoint_roots() {
        recover_interrupted_save(&root.join(spec));
    }
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    if p.exists() {
        bail!("checkpoint {spec} is a file, not a checkpoint folder (config.json, model.safetensors, tokenizer.json)")
    }
    for root in checkpoint_roots() {
        let dir = root.join(spec);
        if dir.is_dir() {
            return Ok(dir);
        }
    }
    let looks_like_repo = hub_alias(spec).is_some() || (spec.split('/').count() == 2 && !spec.starts_with('.') && !spec.contains("//"));
    let local = local_checkpoints();
    let listing = if local.is_empty() { "none".to_string() } else { local.join(", ") };
    if !looks_like_repo {
        bail!("checkpoint {spec:?} not found: no such folder, and not among the local checkpoints ({listing})")
    }
    let (repo, whence) = match hub_alias(spec) {
        Some(repo) => (repo, format!("{repo} on the hub")),
        None => (spec, "not a local folder, so from the hub".to_string()),
    };
    from_hub(repo).map_err(|e| {
        // When the hub cannot be asked, what is here may be what the user wants.
        let no_network = e.chain().any(|c| {
            c.downcast_ref::<crate::hub::HubError>().is_some_and(|h| {
                matches!(
                    h.kind,
                    crate::hub::HubErrorKind::NotCached | crate::hub::HubErrorKind::Unreachable | crate::hub::HubErrorKind::Timeout
                )
            })
        });
        let local = if no_network { format!("; the local checkpoints are: {listing}") } else { String::new() };
        e.context(format!("cannot open {spec} ({whence}{local})"))
    })
}

fn shard_files(index: &Path) -> Result<Vec<String>> {
    crate::hub::shard_names(index)
}

/// The safetensors files of a checkpoint folder.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        return shard_files(&index).map(|fs| fs.into_iter().map(|f| dir.join(f)).collect());
    }
    bail!("checkpoint {} has no model.safetensors", dir.display())
}

/// Reads every tensor of the checkpoint under its canonical name (`transformer.` prefix),
/// whichever of the two GPT-2 key layouts the file uses. Buffers are dropped.
pub fn read_weights(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for file in weight_files(dir)? {
        if !file.is_file() {
            bail!("checkpoint shard {} is missing", file.display());
        }
        // SAFETY: the file is only read; a checkpoint rewritten underneath us is replaced
        // by rename, so the mapped inode stays intact.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(&file) }.map_err(|e| {
            anyhow!("{} is not a valid safetensors file (corrupt or truncated): {}", file.display(), first_line(&e.to_string()))
        })?;
        let names: Vec<(String, String)> = st.tensors().into_iter().filter_map(|(n, _)| Some((canonical_name(&n)?, n))).collect();
        let load = |(canonical, name): &(String, String)| -> Result<(String, Tensor)> {
            let t = st
                .load(name, device)
                .map_err(|e| anyhow!("cannot read tensor {name} from {}: {}", file.display(), first_line(&e.to_string())))?;
            let t = if t.dtype() == DType::F32 { t } else { t.to_dtype(DType::F32)? };
            Ok((canonical.clone(), t))
        };
        // On the CPU every tensor is a copy into fresh memory, most of whose time is the
        // kernel zeroing the pages it touches (GPT-2-124M: 500 MB); the threads share that.
        let loaded: Vec<Result<(String, Tensor)>> = match device {
            Device::Cpu => {
                use rayon::prelude::*;
                names.par_iter().map(load).collect()
            }
            _ => names.iter().map(load).collect(),
        };
        for r in loaded {
            let (canonical, t) = r?;
            out.insert(canonical, t);
        }
    }
    Ok(out)
}

/// Maps a checkpoint key to our canonical name; `None` for buffers we recompute.
fn canonical_name(name: &str) -> Option<String> {
    if name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") {
        return None;
    }
    if name == "lm_head.weight" || name.starts_with("transformer.") {
        return Some(name.to_string());
    }
    Some(format!("transformer.{name}"))
}

pub fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        bail!("checkpoint {} has no tokenizer.json", dir.display())
    }
    Tokenizer::from_file(&path).map_err(|e| anyhow!("{} is not a valid tokenizer: {e}", path.display()))
}

/// A loaded checkpoint: the model, its tokenizer, and where it came from. Cloning shares
/// the weights' storage.
#[derive(Clone)]
pub struct Checkpoint {
    pub name: String,
    pub dir: PathBuf,
    pub model: Gpt2,
    pub tokenizer: Tokenizer,
}

impl Checkpoint {
    /// Resolves `spec` (see [`resolve`]) and loads it.
    pub fn open(spec: &str, device: &Device) -> Result<Self> {
        let dir = resolve(spec)?;
        let mut ck = Self::load_dir(&dir, device)?;
        ck.name = spec.to_string();
        Ok(ck)
    }

    pub fn load_dir(dir: &Path, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            bail!("checkpoint {} has no config.json", dir.display())
        }
        let config = Gpt2Config::from_file(&config_path)?;
        let tokenizer = load_tokenizer(dir)?;
        let weights = read_weights(dir, device)?;
        let model = Gpt2::from_tensors(config, weights)
            .map_err(|e| anyhow!("checkpoint {}: config.json does not match the weights: {e:#}", dir.display()))?;
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > model.config.vocab_size {
            bail!(
                "checkpoint {}: tokenizer.json has {vocab} tokens but the model's vocab_size is {}",
                dir.display(),
                model.config.vocab_size
            )
        }
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Self { name, dir: dir.to_path_buf(), model, tokenizer })
    }

    /// The end-of-text token: the config's eos id, else the tokenizer's `<|endoftext|>`.
    pub fn eos_id(&self) -> Option<u32> {
        self.model.config.eos_token_id.or_else(|| self.tokenizer.token_to_id("<|endoftext|>"))
    }
}

/// Writes an HF-format model folder's files into `dir` (which must exist): config.json and
/// model.safetensors with transformers 5's key layout (tied head omitted), plus the
/// tokenizer. Files are fsynced so a rename of the folder publishes complete data.
pub fn write_model_files(dir: &Path, model: &Gpt2, tokenizer_json: &str) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in model.params() {
        tensors.insert(name, t.to_device(&Device::Cpu)?.detach());
    }
    let mut config = model.config.clone();
    config.tie_word_embeddings = model.lm_head.is_none();
    write_synced(&dir.join("config.json"), serde_json::to_string_pretty(&config.to_hf_json())?.as_bytes())?;
    let st_path = dir.join("model.safetensors");
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let views: Vec<(String, Tensor)> = {
        let mut v: Vec<_> = tensors.into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let bytes = safetensors_bytes(&views, meta)?;
    write_synced(&st_path, &bytes)?;
    write_synced(&dir.join("tokenizer.json"), tokenizer_json.as_bytes())?;
    Ok(())
}

fn safetensors_bytes(tensors: &[(String, Tensor)], meta: HashMap<String, String>) -> Result<Vec<u8>> {
    let data: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| {
            let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            Ok((n.clone(), bytes, t.dims().to_vec()))
        })
        .collect::<Result<_>>()?;
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, b, s)| Ok((n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?)))
        .collect::<Result<_>>()?;
    Ok(safetensors::serialize(views, Some(meta))?)
}

/// Writes safetensors of arbitrary named f32 tensors (optimizer state and the like).
pub fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let bytes = safetensors_bytes(tensors, HashMap::new())?;
    write_synced(path, &bytes)
}

/// Writes a file and fsyncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
    Ok(())
}
