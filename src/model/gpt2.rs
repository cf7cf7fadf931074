//! GPT-2, as HF transformers computes it, in candle.
//!
//! One forward pass yields the whole residual stream `h^0..h^L` (`h^0` = token + position
//! embedding, `h^l` = output of block `l`, before `ln_f`); the shared classifier
//! `lm_head(ln_f(·))` can then be applied to any layer. Weight names mirror the checkpoint
//! (`transformer.h.{i}.attn.c_attn.weight`, ...), and linear weights keep HF's Conv1D
//! layout `[in, out]`.
//!
//! The same code serves inference and training. On the CPU, the hot ops are this project's
//! fused kernels ([`crate::ops`]), which carry their own backward passes. Elsewhere, or
//! where no fused op applies (attention over a KV cache), the model uses candle's ops —
//! and candle's fused layer norm and softmax have no backward pass, so an op whose input
//! is tracked for gradients takes the differentiable path built from basic ops instead.

use super::config::{Activation, Gpt2Config};
use anyhow::{Context, Result, bail};
use candle_core::{D, DType, Device, Tensor};
use std::collections::HashMap;

use crate::ops::tracked;

#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if tracked(&[x, &self.weight, &self.bias]) {
            crate::ops::layer_norm_train(x, &self.weight, &self.bias, self.eps)
        } else {
            let x = x.contiguous()?;
            candle_nn::ops::layer_norm(&x, &self.weight, &self.bias, self.eps as f32)
        }
    }
}

/// HF's Conv1D: `y = x @ W + b` with `W` stored `[in, out]`.
#[derive(Debug, Clone)]
pub struct Conv1D {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Conv1D {
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        let n_in = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let n_out = self.weight.dim(1)?;
        let x2 = x.reshape((rows, n_in))?;
        let y = crate::ops::matmul_bias(&x2, &self.weight, &self.bias)?;
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap() = n_out;
        y.reshape(out_dims)
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub c_attn: Conv1D,
    pub c_proj: Conv1D,
    pub n_head: usize,
    pub scale: f64,
}

/// Keys and values of the positions seen so far, for each block that has run.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(n_layer: usize) -> Self {
        Self { layers: vec![None; n_layer] }
    }
    /// Number of cached positions (of the first block).
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map(|(k, _)| k.dim(2).unwrap_or(0)).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Attention {
    /// `x`: `[b, t, c]`. With a cache, `x` holds the positions after the cached ones.
    fn forward(&self, x: &Tensor, cache: Option<&mut Option<(Tensor, Tensor)>>) -> candle_core::Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let h = self.n_head;
        let qkv = self.c_attn.forward(x)?;
        // The fused kernel covers attention over the positions given (no cache).
        if cache.is_none()
            && let Some(y) = crate::ops::causal_attention(&qkv, h, self.scale)?
        {
            return self.c_proj.forward(&y);
        }
        let q = split_head(&qkv, 0, h)?;
        let mut k = split_head(&qkv, 1, h)?;
        let mut v = split_head(&qkv, 2, h)?;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let t_k = k.dim(2)?;
        let past = t_k - t;
        let att = (q.matmul(&k.t()?)? * self.scale)?;
        let att = if t > 1 {
            let mask = causal_mask(t, t_k, past, x.device())?;
            att.broadcast_add(&mask)?
        } else {
            att
        };
        let att = if tracked(&[&att]) { candle_nn::ops::softmax(&att, D::Minus1)? } else { candle_nn::ops::softmax_last_dim(&att)? };
        let y = att.matmul(&v)?; // [b, h, t, hd]
        let y = y.transpose(1, 2)?.reshape((b, t, c))?;
        self.c_proj.forward(&y)
    }
}

/// Part `i` (0 = q, 1 = k, 2 = v) of the packed projection `[b, t, 3c]`, as heads
/// `[b, n_head, t, c / n_head]`.
fn split_head(qkv: &Tensor, i: usize, n_head: usize) -> candle_core::Result<Tensor> {
    let (b, t, c3) = qkv.dims3()?;
    let c = c3 / 3;
    qkv.narrow(2, i * c, c)?.reshape((b, t, n_head, c / n_head))?.transpose(1, 2)?.contiguous()
}

/// Additive mask `[t, t_k]`: query `i` (absolute position `past + i`) sees keys `0..=past+i`.
fn causal_mask(t: usize, t_k: usize, past: usize, device: &Device) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> = (0..t).flat_map(|i| (0..t_k).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(mask, (t, t_k), device)
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub c_fc: Conv1D,
    pub c_proj: Conv1D,
    pub activation: Activation,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let hdn = self.c_fc.forward(x)?;
        let hdn = match self.activation {
            Activation::GeluTanh => crate::ops::gelu_tanh(&hdn)?,
            Activation::GeluErf => hdn.gelu_erf()?,
            Activation::Relu => hdn.relu()?,
            Activation::Silu => hdn.silu()?,
        };
        self.c_proj.forward(&hdn)
    }
}

#[derive(Debug, Clone)]
pub struct Block {
    pub ln_1: LayerNorm,
    pub attn: Attention,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
}

impl Block {
    fn forward(&self, x: &Tensor, cache: Option<&mut Option<(Tensor, Tensor)>>) -> candle_core::Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln_1.forward(x)?, cache)?)?;
        let y = self.mlp.forward(&self.ln_2.forward(&x)?)?;
        x + y
    }
}

#[derive(Debug, Clone)]
pub struct Gpt2 {
    pub config: Gpt2Config,
    pub wte: Tensor,
    pub wpe: Tensor,
    pub blocks: Vec<Block>,
    pub ln_f: LayerNorm,
    /// `None` when the classifier is tied to `wte` (GPT-2's default).
    pub lm_head: Option<Tensor>,
}

/// The parameters of a block, in checkpoint order: the one list of their names (under
/// `transformer.h.{i}.`) and of the fields that hold them. It defines [`BLOCK_PARAMS`],
/// [`Block::tensors`] and [`Block::tensors_mut`], so names and tensors cannot drift apart.
macro_rules! block_params {
    ($($name:literal => $($field:ident).+),* $(,)?) => {
        /// The names of a block's parameters under `transformer.h.{i}.`, in checkpoint order.
        pub const BLOCK_PARAMS: &[&str] = &[$($name),*];

        impl Block {
            /// The block's parameters in [`BLOCK_PARAMS`] order.
            pub fn tensors(&self) -> Vec<&Tensor> {
                vec![$(&self.$($field).+),*]
            }

            /// The block's parameters in [`BLOCK_PARAMS`] order, to replace them.
            pub fn tensors_mut(&mut self) -> Vec<&mut Tensor> {
                vec![$(&mut self.$($field).+),*]
            }
        }
    };
}

block_params! {
    "ln_1.weight" => ln_1.weight,
    "ln_1.bias" => ln_1.bias,
    "attn.c_attn.weight" => attn.c_attn.weight,
    "attn.c_attn.bias" => attn.c_attn.bias,
    "attn.c_proj.weight" => attn.c_proj.weight,
    "attn.c_proj.bias" => attn.c_proj.bias,
    "ln_2.weight" => ln_2.weight,
    "ln_2.bias" => ln_2.bias,
    "mlp.c_fc.weight" => mlp.c_fc.weight,
    "mlp.c_fc.bias" => mlp.c_fc.bias,
    "mlp.c_proj.weight" => mlp.c_proj.weight,
    "mlp.c_proj.bias" => mlp.c_proj.bias,
}

/// Where a parameter lives in the checkpoint, with the `transformer.` prefix that
/// transformers 5 writes (the hub's original files omit it), in [`Gpt2::params`] order.
pub fn param_names(cfg: &Gpt2Config, untied_head: bool) -> Vec<String> {
    let mut names = vec!["transformer.wte.weight".to_string(), "transformer.wpe.weight".to_string()];
    for i in 0..cfg.n_layer {
        names.extend(BLOCK_PARAMS.iter().map(|p| format!("transformer.h.{i}.{p}")));
    }
    names.push("transformer.ln_f.weight".to_string());
    names.push("transformer.ln_f.bias".to_string());
    if untied_head {
        names.push("lm_head.weight".to_string());
    }
    names
}

/// The shape each parameter must have under `cfg`.
pub fn param_shape(cfg: &Gpt2Config, name: &str) -> Vec<usize> {
    let (d, v, p, inner) = (cfg.n_embd, cfg.vocab_size, cfg.n_positions, cfg.inner_dim());
    let leaf = name.rsplit_once(".h.").map(|(_, r)| r.split_once('.').map(|x| x.1).unwrap_or(r)).unwrap_or(name);
    match leaf {
        "transformer.wte.weight" | "lm_head.weight" => vec![v, d],
        "transformer.wpe.weight" => vec![p, d],
        "attn.c_attn.weight" => vec![d, 3 * d],
        "attn.c_attn.bias" => vec![3 * d],
        "attn.c_proj.weight" => vec![d, d],
        "mlp.c_fc.weight" => vec![d, inner],
        "mlp.c_fc.bias" => vec![inner],
        "mlp.c_proj.weight" => vec![inner, d],
        _ => vec![d], // layer norm weights/biases and c_proj biases
    }
}

impl Gpt2 {
    /// Builds the model from named tensors (canonical names, see [`param_names`]).
    /// Shapes are checked against the config so a mismatch is reported by name.
    pub fn from_tensors(config: Gpt2Config, mut tensors: HashMap<String, Tensor>) -> Result<Self> {
        config.validate()?;
        let untied = tensors.contains_key("lm_head.weight") && !config.tie_word_embeddings;
        if !untied {
            tensors.remove("lm_head.weight");
        }
        for name in param_names(&config, untied) {
            let want = param_shape(&config, &name);
            match tensors.get(&name) {
                None => bail!("weight {name} is missing"),
                Some(t) if t.dims() != want.as_slice() => bail!(
                    "weight {name} has shape {:?} but the config (n_layer {}, n_embd {}, n_head {}, n_inner {}, vocab {}, n_positions {}) needs {:?}",
                    t.dims(),
                    config.n_layer,
                    config.n_embd,
                    config.n_head,
                    config.inner_dim(),
                    config.vocab_size,
                    config.n_positions,
                    want
                ),
                Some(t) if t.dtype() != DType::F32 => bail!("weight {name} is {:?}, expected f32", t.dtype()),
                _ => {}
            }
        }
        // Report extra transformer blocks too: a config with fewer layers than the
        // weights is as much a mismatch as one with more.
        let extra_block = tensors
            .keys()
            .filter_map(|k| k.strip_prefix("transformer.h.")?.split('.').next()?.parse::<usize>().ok())
            .filter(|&i| i >= config.n_layer)
            .min();
        if let Some(i) = extra_block {
            bail!("the weights hold block {i} but the config says n_layer = {}", config.n_layer)
        }
        let mut take = |n: &str| tensors.remove(n).expect("checked above");
        let act = config.activation()?;
        let eps = config.layer_norm_epsilon;
        let wte = take("transformer.wte.weight");
        let wpe = take("transformer.wpe.weight");
        let empty = Tensor::zeros(0, DType::F32, wte.device())?;
        let mut blocks = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let mut scale = if config.scale_attn_weights { 1.0 / (config.head_dim() as f64).sqrt() } else { 1.0 };
            if config.scale_attn_by_inverse_layer_idx {
                scale /= (i + 1) as f64;
            }
            // Every field starts as the empty placeholder and is then filled by name.
            let ln = || LayerNorm { weight: empty.clone(), bias: empty.clone(), eps };
            let linear = || Conv1D { weight: empty.clone(), bias: empty.clone() };
            let mut block = Block {
                ln_1: ln(),
                attn: Attention { c_attn: linear(), c_proj: linear(), n_head: config.n_head, scale },
                ln_2: ln(),
                mlp: Mlp { c_fc: linear(), c_proj: linear(), activation: act },
            };
            for (slot, p) in block.tensors_mut().into_iter().zip(BLOCK_PARAMS) {
                *slot = take(&format!("transformer.h.{i}.{p}"));
            }
            blocks.push(block);
        }
        let ln_f = LayerNorm { weight: take("transformer.ln_f.weight"), bias: take("transformer.ln_f.bias"), eps };
        let lm_head = if untied { Some(take("lm_head.weight")) } else { None };
        super::device::settle(wte.device())?;
        Ok(Self { config, wte, wpe, blocks, ln_f, lm_head })
    }

    /// Every parameter under its canonical checkpoint name, in [`param_names`] order.
    pub fn params(&self) -> Vec<(String, Tensor)> {
        let mut tensors = vec![&self.wte, &self.wpe];
        for b in &self.blocks {
            tensors.extend(b.tensors());
        }
        tensors.extend([&self.ln_f.weight, &self.ln_f.bias]);
        tensors.extend(self.lm_head.as_ref());
        param_names(&self.config, self.lm_head.is_some()).into_iter().zip(tensors.into_iter().cloned()).collect()
    }

    /// Replaces every parameter (in [`Gpt2::params`] order) with `f(old)`.
    pub fn map_params(&mut self, mut f: impl FnMut(&Tensor) -> Result<Tensor>) -> Result<()> {
        let mut slots = vec![&mut self.wte, &mut self.wpe];
        for b in &mut self.blocks {
            slots.extend(b.tensors_mut());
        }
        slots.extend([&mut self.ln_f.weight, &mut self.ln_f.bias]);
        slots.extend(self.lm_head.as_mut());
        for t in slots {
            *t = f(t)?;
        }
        Ok(())
    }

    pub fn n_layer(&self) -> usize {
        self.config.n_layer
    }

    pub fn device(&self) -> &Device {
        self.wte.device()
    }

    /// The classifier matrix `[vocab, d]` (tied: `wte`).
    pub fn head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.wte)
    }

    /// Token + position embedding of `ids` (`[b, t]`) placed at positions `offset..offset+t`.
    pub fn embed(&self, ids: &Tensor, offset: usize) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if offset + t > self.config.n_positions {
            bail!("sequence of {} tokens is longer than the model's context of {} positions", offset + t, self.config.n_positions)
        }
        let tok = self.wte.embedding(&ids.flatten_all()?)?.reshape((b, t, self.config.n_embd))?;
        let pos = self.wpe.narrow(0, offset, t)?;
        Ok(tok.broadcast_add(&pos)?)
    }

    /// Runs blocks `1..=upto` over `ids` and returns every residual `h^0..h^upto`.
    pub fn residuals_upto(&self, ids: &Tensor, upto: usize) -> Result<Vec<Tensor>> {
        if upto > self.n_layer() {
            bail!("layer {upto} is out of range: the model has layers 0..={}", self.n_layer())
        }
        let mut h = self.embed(ids, 0)?;
        let mut out = Vec::with_capacity(upto + 1);
        out.push(h.clone());
        for block in &self.blocks[..upto] {
            h = block.forward(&h, None)?;
            out.push(h.clone());
        }
        Ok(out)
    }

    /// The whole residual stream: `L + 1` tensors `[b, t, d]`, index = layer.
    pub fn residuals(&self, ids: &Tensor) -> Result<Vec<Tensor>> {
        self.residuals_upto(ids, self.n_layer())
    }

    /// `ln_f(h)`: the normalised features the shared classifier reads.
    pub fn final_norm(&self, h: &Tensor) -> Result<Tensor> {
        Ok(self.ln_f.forward(h)?)
    }

    /// The shared classifier applied to already-normalised features: `[.., d] -> [.., vocab]`.
    pub fn classify_normed(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let d = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let logits = crate::ops::matmul_t(&x.reshape((rows, d))?, self.head_weight())?;
        let mut out = dims.to_vec();
        *out.last_mut().unwrap() = self.config.vocab_size;
        Ok(logits.reshape(out)?)
    }

    /// The logit lens / shared classifier: `lm_head(ln_f(h))` for a residual of any layer.
    pub fn head(&self, h: &Tensor) -> Result<Tensor> {
        self.classify_normed(&self.final_norm(h)?)
    }

    /// The model's logits (the lens at the last layer).
    pub fn logits(&self, ids: &Tensor) -> Result<Tensor> {
        let hs = self.residuals(ids)?;
        self.head(hs.last().expect("L+1 residuals"))
    }

    /// Incremental forward for generation: feeds `ids` (`[b, t]`, the positions after the
    /// cached ones) through blocks `1..=exit_layer` and returns the residual `h^exit_layer`
    /// of the new positions. Blocks past the exit layer never run.
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache, exit_layer: usize) -> Result<Tensor> {
        if exit_layer == 0 || exit_layer > self.n_layer() {
            bail!("exit layer {exit_layer} is out of range: choose 1..={}", self.n_layer())
        }
        if cache.layers.len() != self.n_layer() {
            *cache = KvCache::new(self.n_layer());
        }
        let mut h = self.embed(ids, cache.len())?;
        for (block, slot) in self.blocks[..exit_layer].iter().zip(cache.layers.iter_mut()) {
            h = block.forward(&h, Some(slot))?;
        }
        Ok(h)
    }

    /// Runs block `i` (0-based) on `x` (the positions after the cached ones), appending
    /// their keys and values to the cache.
    pub fn block_step(&self, i: usize, x: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        if cache.layers.len() != self.n_layer() {
            *cache = KvCache::new(self.n_layer());
        }
        Ok(self.blocks[i].forward(x, Some(&mut cache.layers[i]))?)
    }

    /// Appends to block `i`'s cache the keys and values it would compute from input `x`,
    /// without running the block (early exit copies a token's state upwards this way).
    pub fn fill_kv(&self, i: usize, x: &Tensor, cache: &mut KvCache) -> Result<()> {
        let block = &self.blocks[i];
        let qkv = block.attn.c_attn.forward(&block.ln_1.forward(x)?)?;
        let (mut k, mut v) = (split_head(&qkv, 1, block.attn.n_head)?, split_head(&qkv, 2, block.attn.n_head)?);
        let slot = &mut cache.layers[i];
        if let Some((pk, pv)) = slot.as_ref() {
            k = Tensor::cat(&[pk, &k], 2)?;
            v = Tensor::cat(&[pv, &v], 2)?;
        }
        *slot = Some((k, v));
        Ok(())
    }

    /// Parameters of a freshly initialised GPT-2, as HF and nanoGPT initialise it:
    /// N(0, 0.02) weights, zero biases, unit layer-norm gains, and residual projections
    /// scaled by 1/sqrt(2 n_layer).
    pub fn random(config: Gpt2Config, seed: u64, device: &Device) -> Result<Self> {
        use rand::SeedableRng;
        use rand_distr_normal::Normal;
        config.validate()?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let std = 0.02f32;
        let proj_std = std / (2.0 * config.n_layer as f32).sqrt();
        let mut tensors = HashMap::new();
        for name in param_names(&config, false) {
            let shape = param_shape(&config, &name);
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if name.ends_with("ln_1.weight") || name.ends_with("ln_2.weight") || name.ends_with("ln_f.weight") {
                vec![1.0; n]
            } else if name.ends_with(".bias") {
                vec![0.0; n]
            } else {
                let s = if name.ends_with("c_proj.weight") { proj_std } else { std };
                let normal = Normal::new(s);
                (0..n).map(|_| normal.sample(&mut rng)).collect()
            };
            tensors.insert(name, Tensor::from_vec(data, shape, device)?);
        }
        Self::from_tensors(config, tensors).context("initialising a random GPT-2")
    }
}

/// A tiny Box–Muller normal sampler, so initialisation depends only on our seeded RNG.
mod rand_distr_normal {
    use rand::{Rng, RngExt};
    pub struct Normal {
        std: f32,
    }
    impl Normal {
        pub fn new(std: f32) -> Self {
            Self { std }
        }
        pub fn sample<R: Rng>(&self, rng: &mut R) -> f32 {
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random::<f64>();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32 * self.std
        }
    }
}
