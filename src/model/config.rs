//! GPT-2 hyper-parameters, read from and written to an HF `config.json`.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The fields of an HF `GPT2Config` that change the computation. Unknown fields of the
/// file are kept in `extra` so that a config we rewrite still says everything it said.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Tokens per window for training and evaluation unless told otherwise: the paper's
/// GPT-2 fine-tuning context (or the model's own context when that is shorter).
pub const DEFAULT_CTX: usize = 256;

fn default_eps() -> f64 {
    1e-5
}
fn default_activation() -> String {
    "gelu_new".to_string()
}
fn default_true() -> bool {
    true
}

/// The activations HF GPT-2 accepts in `activation_function` that we implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// tanh approximation (`gelu_new`, `gelu_pytorch_tanh`): GPT-2's own.
    GeluTanh,
    /// exact erf GELU (`gelu`).
    GeluErf,
    Relu,
    Silu,
}

impl Gpt2Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let cfg: Self = serde_json::from_str(&text).with_context(|| format!("{} is not a valid GPT-2 config", path.display()))?;
        cfg.validate().with_context(|| format!("{} is not a valid GPT-2 config", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(model_type) = self.extra.get("model_type").and_then(|v| v.as_str())
            && model_type != "gpt2"
        {
            bail!("model_type is {model_type:?}, only \"gpt2\" is supported")
        }
        if self.n_layer == 0 || self.n_embd == 0 || self.n_head == 0 || self.vocab_size == 0 {
            bail!("n_layer, n_embd, n_head and vocab_size must be positive")
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            bail!("n_embd {} is not divisible by n_head {}", self.n_embd, self.n_head)
        }
        if self.n_positions == 0 {
            bail!("n_positions must be positive")
        }
        // Zero is allowed (a layer norm of a constant row is then NaN, as in transformers).
        if !(self.layer_norm_epsilon >= 0.0 && self.layer_norm_epsilon.is_finite()) {
            bail!("layer_norm_epsilon {} must be 0 or more", self.layer_norm_epsilon)
        }
        // reorder_and_upcast_attn only changes half-precision numerics; we compute in f32.
        self.activation()?;
        Ok(())
    }

    pub fn inner_dim(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// [`DEFAULT_CTX`], or the model's context when that is shorter.
    pub fn default_ctx(&self) -> usize {
        DEFAULT_CTX.min(self.n_positions)
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    pub fn activation(&self) -> Result<Activation> {
        Ok(match self.activation_function.as_str() {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => bail!("activation_function {other:?} is not supported"),
        })
    }

    /// A GPT-2 of the given shape with HF's defaults for everything else.
    pub fn new(n_layer: usize, n_embd: usize, n_head: usize, vocab_size: usize, n_positions: usize) -> Self {
        Self {
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner: None,
            layer_norm_epsilon: 1e-5,
            activation_function: default_activation(),
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            tie_word_embeddings: true,
            bos_token_id: None,
            eos_token_id: None,
            extra: serde_json::Map::new(),
        }
    }

    /// Named presets of OpenAI's GPT-2 family (shapes only: no weights are fetched).
    pub fn preset(name: &str) -> Option<Self> {
        let (l, d, h) = match name {
            "gpt2" | "gpt2-124m" => (12, 768, 12),
            "gpt2-medium" => (24, 1024, 16),
            "gpt2-large" => (36, 1280, 20),
            "gpt2-xl" => (48, 1600, 25),
            _ => return None,
        };
        let mut cfg = Self::new(l, d, h, 50257, 1024);
        cfg.bos_token_id = Some(50256);
        cfg.eos_token_id = Some(50256);
        Some(cfg)
    }

    /// The JSON an HF `GPT2LMHeadModel` expects, with our shape fields filled in.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serializes");
        let obj = v.as_object_mut().expect("config is an object");
        let defaults = [
            ("model_type", serde_json::json!("gpt2")),
            ("architectures", serde_json::json!(["GPT2LMHeadModel"])),
            ("attn_pdrop", serde_json::json!(0.1)),
            ("embd_pdrop", serde_json::json!(0.1)),
            ("resid_pdrop", serde_json::json!(0.1)),
            ("initializer_range", serde_json::json!(0.02)),
            ("dtype", serde_json::json!("float32")),
            ("use_cache", serde_json::json!(true)),
        ];
        for (k, val) in defaults {
            obj.entry(k.to_string()).or_insert(val);
        }
        v
    }
}
