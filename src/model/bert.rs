//! BERT, the encoder behind coherence's sentence embeddings (`analysis::embedder`):
//! inference only, weight names as transformers saves them (`embeddings.*`,
//! `encoder.layer.N.*`, optionally under `bert.`).
//!
//! Adapted from candle-transformers 0.11.1 `models/bert.rs` (MIT OR Apache-2.0, the
//! candle authors), which follows transformers' `modeling_bert.py`: the same operations in
//! the same order, so the embeddings are the ones that crate computed, without the tracing
//! spans and the prediction heads, and without the crate (about three CPU-minutes of every
//! build for two files).

use candle_core::{D, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder, embedding, layer_norm, linear};
use serde::Deserialize;

/// The feed-forward activation (`hidden_act` in config.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HiddenAct {
    /// The exact GELU (transformers' `gelu`).
    Gelu,
    /// The tanh approximation (`gelu_approximate`).
    GeluApproximate,
    Relu,
}

impl HiddenAct {
    fn apply(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            HiddenAct::Gelu => xs.gelu_erf(),
            HiddenAct::GeluApproximate => xs.gelu(),
            HiddenAct::Relu => xs.relu(),
        }
    }
}

/// The fields of a transformers `BertConfig` the encoder reads; the rest (dropouts,
/// initialisation) only matter for training.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: HiddenAct,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub pad_token_id: usize,
}

struct Embeddings {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    norm: LayerNorm,
}

impl Embeddings {
    fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Ok(Self {
            word: embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("word_embeddings"))?,
            position: embedding(cfg.max_position_embeddings, cfg.hidden_size, vb.pp("position_embeddings"))?,
            token_type: embedding(cfg.type_vocab_size, cfg.hidden_size, vb.pp("token_type_embeddings"))?,
            norm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
        })
    }

    fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor) -> Result<Tensor> {
        let (_, t) = input_ids.dims2()?;
        let positions = Tensor::arange(0u32, t as u32, input_ids.device())?;
        let xs = (self.word.forward(input_ids)? + self.token_type.forward(token_type_ids)?)?;
        let xs = xs.broadcast_add(&self.position.forward(&positions)?)?;
        self.norm.forward(&xs)
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    up: Linear,
    act: HiddenAct,
    down: Linear,
    out_norm: LayerNorm,
    heads: usize,
    head_size: usize,
}

impl Layer {
    fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let d = cfg.hidden_size;
        let (attn, inter, out) = (vb.pp("attention"), vb.pp("intermediate"), vb.pp("output"));
        Ok(Self {
            query: linear(d, d, attn.pp("self").pp("query"))?,
            key: linear(d, d, attn.pp("self").pp("key"))?,
            value: linear(d, d, attn.pp("self").pp("value"))?,
            attn_out: linear(d, d, attn.pp("output").pp("dense"))?,
            attn_norm: layer_norm(d, cfg.layer_norm_eps, attn.pp("output").pp("LayerNorm"))?,
            up: linear(d, cfg.intermediate_size, inter.pp("dense"))?,
            act: cfg.hidden_act,
            down: linear(cfg.intermediate_size, d, out.pp("dense"))?,
            out_norm: layer_norm(d, cfg.layer_norm_eps, out.pp("LayerNorm"))?,
            heads: cfg.num_attention_heads,
            head_size: d / cfg.num_attention_heads,
        })
    }

    /// `[b, t, d]` → `[b, heads, t, head_size]`.
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        xs.reshape((b, t, self.heads, self.head_size))?.transpose(1, 2)?.contiguous()
    }

    /// `mask` is additive, `[b, 1, 1, t]`.
    fn forward(&self, xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let q = self.split_heads(&self.query.forward(xs)?)?;
        let k = self.split_heads(&self.key.forward(xs)?)?;
        let v = self.split_heads(&self.value.forward(xs)?)?;
        let scores = (q.matmul(&k.t()?)? / (self.head_size as f64).sqrt())?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let context = probs.matmul(&v)?.transpose(1, 2)?.contiguous()?.flatten_from(D::Minus2)?;
        let attended = self.attn_norm.forward(&(self.attn_out.forward(&context)? + xs)?)?;
        let inner = self.act.apply(&self.up.forward(&attended)?)?;
        self.out_norm.forward(&(self.down.forward(&inner)? + &attended)?)
    }
}

/// The encoder: embeddings, then the layers; `forward` gives the last layer's token states.
pub struct BertModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
}

impl BertModel {
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            candle_core::bail!("hidden_size {} is not a multiple of num_attention_heads {}", cfg.hidden_size, cfg.num_attention_heads)
        }
        // A BertModel saves its weights bare; BertForMaskedLM and friends under `bert.`.
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") { vb } else { vb.pp("bert") };
        let embeddings = Embeddings::load(vb.pp("embeddings"), cfg)?;
        let layers =
            (0..cfg.num_hidden_layers).map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), cfg)).collect::<Result<Vec<_>>>()?;
        Ok(Self { embeddings, layers })
    }

    /// Token states `[b, t, d]` for `input_ids` `[b, t]`; `attention_mask` (1 keep, 0 pad)
    /// defaults to all ones.
    pub fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let mut xs = self.embeddings.forward(input_ids, token_type_ids)?;
        let keep = match attention_mask {
            Some(m) => m.clone(),
            None => input_ids.ones_like()?,
        };
        // transformers' extended mask: 0 where kept, the dtype's minimum where padded.
        let keep = keep.unsqueeze(1)?.unsqueeze(1)?.to_dtype(xs.dtype())?;
        let mask = (keep.ones_like()? - &keep)?.broadcast_mul(&Tensor::new(f32::MIN, keep.device())?.to_dtype(xs.dtype())?)?;
        for layer in &self.layers {
            xs = layer.forward(&xs, &mask)?;
        }
        Ok(xs)
    }
}
