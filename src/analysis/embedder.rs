//! Sentence embeddings for coherence: a real sentence encoder (a BERT in the
//! sentence-transformers layout, by default `sentence-transformers/all-MiniLM-L6-v2`, mean
//! pooling over the attention mask, L2-normalised; [`crate::model::bert`]), or — when
//! none is available — the checkpoint's own `ln_f(h^L)` averaged over positions.
//!
//! The paper measures coherence with SimCSE; any sentence-transformers BERT folder works
//! here (`--embedder NAME`), resolved like a checkpoint: a folder, a name under the
//! checkpoint roots, or a hub id (downloaded into, or found in, the hub cache).

use crate::model::Gpt2;
use crate::model::bert::{BertModel, Config as BertConfig};
use crate::model::checkpoint::{first_line, load_tokenizer, resolve};
use anyhow::{Context, Result, anyhow, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::path::{Path, PathBuf};
use tokenizers::{Tokenizer, TruncationParams};

/// The encoder used when none is named and it is available locally.
pub const DEFAULT_EMBEDDER: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// How token features become one sentence vector (sentence-transformers' `1_Pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the tokens the attention mask keeps.
    Mean,
    /// The first token (`[CLS]`).
    Cls,
}

/// A BERT sentence encoder.
pub struct BertEncoder {
    /// What the user named (hub id or folder).
    pub name: String,
    pub dir: PathBuf,
    model: BertModel,
    tokenizer: Tokenizer,
    pad_id: u32,
    pub max_len: usize,
    pub pooling: Pooling,
    device: Device,
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(serde_json::from_str(&t).with_context(|| format!("{} is not valid JSON", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!("cannot read {}: {e}", path.display())),
    }
}

impl BertEncoder {
    /// Loads a sentence-transformers BERT folder (`config.json`, `model.safetensors`,
    /// `tokenizer.json`; `sentence_bert_config.json` and `1_Pooling/config.json` when
    /// present set the length limit and the pooling).
    pub fn load_dir(dir: &Path, name: &str, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config: serde_json::Value =
            read_json(&config_path)?.ok_or_else(|| anyhow!("embedder {name}: {} has no config.json", dir.display()))?;
        let model_type = config.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        if model_type != "bert" {
            bail!("embedder {name}: config.json says model_type {model_type:?}; a sentence encoder must be a BERT (model_type \"bert\")")
        }
        let cfg: BertConfig = serde_json::from_value(config.clone())
            .map_err(|e| anyhow!("embedder {name}: {} is not a BERT config: {e}", config_path.display()))?;
        let weights = crate::model::checkpoint::weight_files(dir).map_err(|e| anyhow!("embedder {name}: {e}"))?;
        // SAFETY: the weight files are memory-mapped read-only; like every safetensors
        // loader we rely on nobody truncating them while the encoder is alive.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&weights, DType::F32, device) }
            .map_err(|e| anyhow!("embedder {name}: cannot read its weights: {}", first_line(&e.to_string())))?;
        let model = BertModel::load(vb, &cfg)
            .map_err(|e| anyhow!("embedder {name}: the weights do not match config.json: {}", first_line(&e.to_string())))?;
        let mut tokenizer = load_tokenizer(dir).map_err(|e| anyhow!("embedder {name}: {e}"))?;
        let st = read_json(&dir.join("sentence_bert_config.json"))?;
        let max_len = st
            .as_ref()
            .and_then(|v| v.get("max_seq_length"))
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .unwrap_or(cfg.max_position_embeddings)
            .min(cfg.max_position_embeddings);
        let pooling = match read_json(&dir.join("1_Pooling/config.json"))? {
            None => Pooling::Mean,
            Some(p) => {
                let on = |k: &str| p.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
                if on("pooling_mode_mean_tokens") {
                    Pooling::Mean
                } else if on("pooling_mode_cls_token") {
                    Pooling::Cls
                } else {
                    bail!("embedder {name}: 1_Pooling/config.json asks for a pooling other than mean or CLS, which is not supported")
                }
            }
        };
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_len, ..Default::default() }))
            .map_err(|e| anyhow!("embedder {name}: cannot set truncation: {e}"))?;
        tokenizer.with_padding(None);
        let pad_id = tokenizer.token_to_id("[PAD]").unwrap_or(cfg.pad_token_id as u32);
        Ok(Self { name: name.to_string(), dir: dir.to_path_buf(), model, tokenizer, pad_id, max_len, pooling, device: device.clone() })
    }

    /// Embeds texts in one padded batch: one L2-normalised vector per text.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f64>>> {
        if texts.is_empty() {
            return Ok(vec![]);
        }
        let encs =
            self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| anyhow!("embedder {}: cannot tokenize: {e}", self.name))?;
        let t = encs.iter().map(|e| e.get_ids().len()).max().unwrap_or(0).max(1);
        let b = encs.len();
        let mut ids = vec![self.pad_id; b * t];
        let mut mask = vec![0u32; b * t];
        for (i, e) in encs.iter().enumerate() {
            for (j, &id) in e.get_ids().iter().enumerate() {
                ids[i * t + j] = id;
                mask[i * t + j] = 1;
            }
        }
        let ids = Tensor::from_vec(ids, (b, t), &self.device)?;
        let mask = Tensor::from_vec(mask, (b, t), &self.device)?;
        let types = ids.zeros_like()?;
        let h = self.model.forward(&ids, &types, Some(&mask))?; // [b, t, d]
        let pooled = match self.pooling {
            Pooling::Mean => {
                let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let sum = h.broadcast_mul(&m)?.sum(1)?;
                let count = m.sum(1)?.maximum(1e-9)?;
                sum.broadcast_div(&count)?
            }
            Pooling::Cls => h.narrow(1, 0, 1)?.squeeze(1)?,
        };
        let rows: Vec<Vec<f32>> = pooled.to_vec2()?;
        Ok(rows.into_iter().map(|r| normalize(r.into_iter().map(|x| x as f64).collect())).collect())
    }
}

fn normalize(mut v: Vec<f64>) -> Vec<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    // sentence-transformers' Normalize divides by max(norm, 1e-12).
    let n = n.max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// The sentence encoder coherence is measured with.
pub enum SentenceEncoder {
    Bert(Box<BertEncoder>),
    /// The mean over positions of a GPT-2's `ln_f(h^L)` (the stand-in when no sentence
    /// encoder is available).
    SelfEmbedding {
        checkpoint: String,
        model: Box<Gpt2>,
        tokenizer: Box<Tokenizer>,
    },
}

/// Which encoder the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbedderChoice {
    /// all-MiniLM-L6-v2 when it is available without a download, else the self-embedding.
    Default,
    /// `--embedder self`: the checkpoint's own embedding.
    SelfEmbedding,
    /// `--embedder NAME`: this encoder or an error.
    Named(String),
}

impl EmbedderChoice {
    pub fn from_arg(arg: Option<&str>) -> Self {
        match arg {
            None => Self::Default,
            Some("self") => Self::SelfEmbedding,
            Some(name) => Self::Named(name.to_string()),
        }
    }
}

/// What was used, for output: the encoder's name, its kind, and why (for a fallback).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EmbedderInfo {
    /// The encoder's name (hub id or folder), or `self:CHECKPOINT`.
    pub name: String,
    /// `"sentence-encoder"` or `"self-embedding"`.
    pub kind: String,
    /// Why the self-embedding was used, when it was a fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The hub cache's snapshot of a repository when it holds a complete model (config,
/// tokenizer, single-file weights), without any network access.
fn cached_snapshot(repo_id: &str) -> Option<PathBuf> {
    let cache = match std::env::var_os("HF_HUB_CACHE") {
        Some(p) => hf_hub::Cache::new(PathBuf::from(p)),
        None => hf_hub::Cache::from_env(),
    };
    let repo = cache.model(repo_id.to_string());
    let config = repo.get("config.json")?;
    repo.get("tokenizer.json")?;
    repo.get("model.safetensors")?;
    config.parent().map(Path::to_path_buf)
}

/// Where the default encoder is, if it is here: a folder under the checkpoint roots named
/// like its repository (`all-MiniLM-L6-v2`), or the hub cache.
pub fn find_default_embedder() -> Option<PathBuf> {
    let short = crate::paths::short_name(DEFAULT_EMBEDDER);
    for root in crate::paths::checkpoint_roots() {
        let dir = root.join(&short);
        if dir.join("config.json").is_file() {
            return Some(dir);
        }
    }
    cached_snapshot(DEFAULT_EMBEDDER)
}

impl SentenceEncoder {
    /// Opens the encoder for `choice`; `fallback` is the checkpoint whose own embedding
    /// stands in when no encoder is asked for and none is available.
    pub fn open(choice: &EmbedderChoice, fallback_name: &str, fallback: &Gpt2, fallback_tok: &Tokenizer, device: &Device) -> Result<Self> {
        let self_embedding = || SentenceEncoder::SelfEmbedding {
            checkpoint: fallback_name.to_string(),
            model: Box::new(fallback.clone()),
            tokenizer: Box::new(fallback_tok.clone()),
        };
        match choice {
            EmbedderChoice::SelfEmbedding => Ok(self_embedding()),
            EmbedderChoice::Named(name) => {
                let dir = resolve(name).map_err(|e| anyhow!("embedder {name:?}: {}", crate::util::one_line(&e)))?;
                Ok(SentenceEncoder::Bert(Box::new(BertEncoder::load_dir(&dir, name, device)?)))
            }
            EmbedderChoice::Default => match find_default_embedder() {
                Some(dir) => Ok(SentenceEncoder::Bert(Box::new(BertEncoder::load_dir(&dir, DEFAULT_EMBEDDER, device)?))),
                None => Ok(self_embedding()),
            },
        }
    }

    pub fn info(&self, choice: &EmbedderChoice) -> EmbedderInfo {
        match self {
            SentenceEncoder::Bert(b) => EmbedderInfo { name: b.name.clone(), kind: "sentence-encoder".into(), note: None },
            SentenceEncoder::SelfEmbedding { checkpoint, .. } => EmbedderInfo {
                name: format!("self:{checkpoint}"),
                kind: "self-embedding".into(),
                note: (*choice == EmbedderChoice::Default).then(|| {
                    format!(
                        "{DEFAULT_EMBEDDER} is not available here (scripts/fetch-minilm.sh puts it in the hub cache); \
                         coherence uses {checkpoint}'s own ln_f(h^L) mean instead"
                    )
                }),
            },
        }
    }

    /// Embeds texts; `None` for a text with no tokens (its embedding is undefined).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Option<Vec<f64>>>> {
        match self {
            SentenceEncoder::Bert(b) => {
                let nonempty: Vec<usize> = (0..texts.len()).filter(|&i| !texts[i].trim().is_empty()).collect();
                let vecs = b.embed(&nonempty.iter().map(|&i| texts[i]).collect::<Vec<_>>())?;
                let mut out = vec![None; texts.len()];
                for (i, v) in nonempty.into_iter().zip(vecs) {
                    out[i] = Some(v);
                }
                Ok(out)
            }
            SentenceEncoder::SelfEmbedding { model, tokenizer, .. } => texts
                .iter()
                .map(|t| {
                    let ids = tokenizer.encode(*t, false).map_err(|e| anyhow!("cannot tokenize for the self-embedding: {e}"))?;
                    let ids = ids.get_ids();
                    super::quality::sentence_embedding(model, ids)
                })
                .collect(),
        }
    }
}
