//! Lossless self-speculative decoding (LayerSkip, Elhoushi et al. 2024; Draft & Verify,
//! Zhang et al. 2023): the first `E` blocks and the shared classifier draft `K` tokens one
//! at a time; the full model then verifies all of them in one batched pass that starts at
//! block `E + 1` — the draft's keys and values of blocks `1..E` and its residuals `h^E` are
//! the verification's own — and the longest agreeing prefix is kept, plus the full model's
//! own next token. Rejected positions are rolled back from every block's cache.
//!
//! Greedy output is token for token the full model's greedy output: the CPU engine computes
//! every row on its own (see [`crate::model::decoder`]), so a verified row is bit for bit
//! the row plain decoding computes. With sampling, drafts are accepted by the speculative
//! sampling rule (Leviathan et al. 2023): accept a draft `x ~ q` with probability
//! `min(1, p(x) / q(x))`, otherwise draw from `max(0, p − q)` normalised — the output is
//! distributed as the full model's nucleus distribution `p` (same seed, different stream
//! than plain sampling).

use super::generate::{Sampling, StopReason, check_prompt};
use super::lookup;
use crate::model::Gpt2;
use crate::model::decoder::{self, CpuModel, Decoder};
use anyhow::{Result, bail};
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use std::ops::ControlFlow;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct SpeculativeOptions {
    /// Blocks `1..=draft_layer` draft (1..L-1; 0..L-1 with `int8`, 0 handing over the
    /// embeddings).
    pub draft_layer: usize,
    /// Most tokens drafted per verification (at least 1).
    pub draft_len: usize,
    /// Drafting stops early when the draft's confidence (its largest probability) falls
    /// below this (Draft & Verify's adaptive draft exit); 0 always drafts `draft_len`.
    pub draft_confidence: f64,
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Stop when this token is produced (it is kept in the output).
    pub eos: Option<u32>,
    /// Greedy only: where the context's last [`lookup::MIN_MATCH`] or more tokens occurred
    /// before, draft the token that followed them ([`lookup::lookup_draft`]) instead of the
    /// draft layer's, and skip that draft's classifier. With `int8` pipelined, the repeats
    /// propose and the 8-bit copy checks each of their tokens before it is handed over.
    pub lookup: bool,
    /// Greedy only: drafts are the greedy tokens of the model run with blocks
    /// `draft_layer + 1..L` and the classifier through their 8-bit copies
    /// ([`decoder::QuantBlocks`]) — right nearly always — instead of the classifier's after
    /// `draft_layer`.
    pub int8: bool,
}

/// Where a generated token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum TokenOrigin {
    /// A draft the full model accepted.
    Accepted,
    /// The full model's token in place of a rejected draft.
    Corrected { rejected: u32 },
    /// The full model's token after every draft of the round was accepted.
    Bonus,
    /// The full model's token with nothing drafted (after the prompt, or with no room to draft).
    Full,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpeculativeGeneration {
    pub ids: Vec<u32>,
    pub origins: Vec<TokenOrigin>,
    pub stop: StopReason,
    pub draft_layer: usize,
    pub draft_len: usize,
    pub draft_confidence: f64,
    /// Tokens drafted, and how many of them the full model accepted.
    pub drafted: usize,
    pub accepted: usize,
    /// Of those, the drafts taken from the text's repeats (`lookup`), and how many of them
    /// were accepted; the rest came from the draft layer.
    pub lookup: bool,
    pub lookup_drafted: usize,
    pub lookup_accepted: usize,
    /// Passes through the full depth: the prompt's, then one verification per round
    /// (plain decoding makes one per token).
    pub forward_passes: usize,
    /// Wall-clock seconds of the generation (prompt included).
    pub seconds: f64,
}

impl SpeculativeGeneration {
    /// Nothing generated yet, with `opts`' draft settings.
    pub(crate) fn start(opts: &SpeculativeOptions) -> Self {
        Self {
            ids: Vec::new(),
            origins: Vec::new(),
            stop: StopReason::MaxTokens,
            draft_layer: opts.draft_layer,
            draft_len: opts.draft_len,
            draft_confidence: opts.draft_confidence,
            drafted: 0,
            accepted: 0,
            lookup: opts.lookup,
            lookup_drafted: 0,
            lookup_accepted: 0,
            forward_passes: 0,
            seconds: 0.0,
        }
    }

    /// Emits token `t`: records it and shows it to `on_token` with the draft counts so far;
    /// false when generation ends here (cancelled, end-of-text, or the last token).
    pub(crate) fn emit(
        &mut self,
        t: u32,
        origin: TokenOrigin,
        opts: &SpeculativeOptions,
        on_token: &mut impl FnMut(u32, TokenOrigin, DraftCounts) -> ControlFlow<()>,
    ) -> bool {
        self.ids.push(t);
        self.origins.push(origin);
        if on_token(t, origin, DraftCounts { drafted: self.drafted, accepted: self.accepted }).is_break() {
            self.stop = StopReason::Cancelled;
            return false;
        }
        if Some(t) == opts.eos {
            self.stop = StopReason::EndOfText;
            return false;
        }
        self.ids.len() < opts.max_new_tokens
    }

    /// `accepted / drafted`; `None` when nothing was drafted.
    pub fn acceptance(&self) -> Option<f64> {
        (self.drafted > 0).then(|| self.accepted as f64 / self.drafted as f64)
    }

    /// Acceptance of the draft layer's drafts alone (all of them without `lookup`).
    pub fn layer_acceptance(&self) -> Option<f64> {
        let drafted = self.drafted - self.lookup_drafted;
        (drafted > 0).then(|| (self.accepted - self.lookup_accepted) as f64 / drafted as f64)
    }

    /// Acceptance of the drafts from the text's repeats; `None` when none was tried.
    pub fn lookup_acceptance(&self) -> Option<f64> {
        (self.lookup_drafted > 0).then(|| self.lookup_accepted as f64 / self.lookup_drafted as f64)
    }

    /// Counts one judged draft, from the repeats or not.
    pub(crate) fn judge(&mut self, from_lookup: bool, accepted: bool) {
        self.drafted += 1;
        self.accepted += accepted as usize;
        if from_lookup {
            self.lookup_drafted += 1;
            self.lookup_accepted += accepted as usize;
        }
    }

    pub fn tokens_per_second(&self) -> Option<f64> {
        (self.seconds > 0.0).then(|| self.ids.len() as f64 / self.seconds)
    }
}

pub fn validate(model: &Gpt2, opts: &SpeculativeOptions) -> Result<()> {
    let n = model.n_layer();
    if n < 2 {
        bail!("speculative decoding needs at least 2 layers; the model has {n}")
    }
    if (opts.draft_layer == 0 && !opts.int8) || opts.draft_layer >= n {
        bail!("draft layer {} is out of range: choose 1..={} (the full model has {n})", opts.draft_layer, n - 1)
    }
    if opts.int8 && !matches!(opts.sampling, Sampling::Greedy) {
        bail!("the 8-bit drafter is for greedy decoding: drop --top-p/--sample")
    }
    if opts.int8 && opts.draft_confidence > 0.0 {
        bail!("the 8-bit drafter drafts every token: it takes no draft confidence")
    }
    if opts.draft_len == 0 {
        bail!("the draft length must be at least 1")
    }
    if !(0.0..=1.0).contains(&opts.draft_confidence) {
        bail!("the draft confidence is a probability in [0, 1], got {}", opts.draft_confidence)
    }
    if opts.lookup && !matches!(opts.sampling, Sampling::Greedy) {
        bail!("drafts from the text's repeats (--lookup) are for greedy decoding: drop --top-p/--sample or --lookup")
    }
    if !decoder::supported(model) {
        bail!("speculative decoding runs on the CPU engine; this model is on {:?} (use --device cpu)", model.device().location())
    }
    Ok(())
}

/// Whether drafts are found as [`Decoder::greedy_token`] finds plain decoding's tokens
/// ([`Sampling::greedy_tokens`]: through the classifier's 8-bit copy, reading a quarter of
/// the bytes of the f32 logits) rather than from every logit: when plain
/// decoding would, and the drafts need no confidence. The same tokens either way.
pub fn greedy_token_drafts(opts: &SpeculativeOptions) -> bool {
    opts.sampling.greedy_tokens(opts.max_new_tokens) && opts.draft_confidence <= 0.0
}

/// Drafts so far, and how many of them the full model accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct DraftCounts {
    pub drafted: usize,
    pub accepted: usize,
}

/// Generates with self-speculative decoding. `on_token` sees each token as it is emitted,
/// with its origin and the draft counts so far (its round's included), and may cancel.
pub fn generate_speculative(
    model: &Gpt2,
    prompt: &[u32],
    opts: &SpeculativeOptions,
    on_token: impl FnMut(u32, TokenOrigin, DraftCounts) -> ControlFlow<()>,
) -> Result<SpeculativeGeneration> {
    on_cpu_model(model, prompt, opts, |m| run(m, prompt, opts, on_token))
}

/// `f` on the CPU engine's weights, once the prompt, the sampling and the draft settings
/// are checked.
fn on_cpu_model<R>(model: &Gpt2, prompt: &[u32], opts: &SpeculativeOptions, f: impl FnOnce(&CpuModel) -> Result<R>) -> Result<R> {
    check_prompt(model, prompt)?;
    opts.sampling.validate()?;
    validate(model, opts)?;
    decoder::with_cpu_model(model, f)
}

/// Default most drafts in flight ahead of the verified tokens in [`generate_pipelined`]:
/// drafts that far ahead are rarely all right, and a wrong one voids those after it anyway.
pub const DEFAULT_LOOKAHEAD: usize = 8;

/// The same for the 8-bit drafter, whose drafts are nearly always right, so the verifier
/// can take many rows per pass. How far matters little on the Austen models: `bench --what
/// decode --int8 --lookup` on austen-aligned gave 1.94x, 1.93x and 2.07x with 8, 16 and 32
/// ahead in consecutive runs (2026-11-30), within the machine's run-to-run spread.
pub const DEFAULT_INT8_LOOKAHEAD: usize = 16;

/// Default drafts per verification of the 8-bit drafter in one-thread rounds (models whose
/// rows use every core): a pass over many rows costs little more than over one there.
pub const DEFAULT_INT8_DRAFT: usize = 8;

/// The 8-bit drafter's default draft length: how far ahead when `pipelined`, else per round.
pub fn default_int8_draft(pipelined: bool) -> usize {
    if pipelined { DEFAULT_INT8_LOOKAHEAD } else { DEFAULT_INT8_DRAFT }
}

/// [`generate_speculative`] with drafting and verification on two threads that overlap
/// (see `analysis/pipelined.rs`): greedy only; `draft_len` bounds how far the drafts run ahead
/// of the verified tokens. The same tokens as plain greedy decoding.
pub fn generate_pipelined(
    model: &Gpt2,
    prompt: &[u32],
    opts: &SpeculativeOptions,
    on_token: impl FnMut(u32, TokenOrigin, DraftCounts) -> ControlFlow<()>,
) -> Result<SpeculativeGeneration> {
    on_cpu_model(model, prompt, opts, |m| super::pipelined::run(m, prompt, opts, on_token))
}

/// Whether the two-thread paths ([`generate_pipelined`], and early exit with its checks on
/// a second thread) can be expected to beat their one-thread counterparts on this model:
/// it runs on the CPU engine and decodes a row on one core
/// ([`CpuModel::rows_use_one_thread`]: the Austen models), so a second thread finds a core
/// idle. Where a row already uses every core (GPT-2-124M) the threads would take turns.
pub fn pipelining_pays(model: &Gpt2) -> bool {
    decoder::supported(model) && decoder::with_cpu_model(model, |m| Ok(m.rows_use_one_thread())).unwrap_or(false)
}

/// The sampling side of a round: greedy compares argmaxes, sampling applies the rule.
enum Picker {
    Greedy,
    Sample { p: f64, temperature: f64, rng: Box<rand_chacha::ChaCha8Rng> },
}

impl Picker {
    fn new(s: &Sampling) -> Self {
        match *s {
            Sampling::Greedy => Picker::Greedy,
            Sampling::TopP { p, temperature, seed } => {
                Picker::Sample { p, temperature, rng: Box::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed)) }
            }
        }
    }

    /// A token from the distribution of `logits`, with that distribution (sampling only).
    fn draw(&mut self, logits: &[f32]) -> (u32, Option<Vec<f64>>) {
        match self {
            Picker::Greedy => (decoder::argmax(logits), None),
            Picker::Sample { p, temperature, rng } => {
                let dist = nucleus(logits, *temperature, *p);
                let t = sample_index(&dist, rng.random::<f64>());
                (t as u32, Some(dist))
            }
        }
    }

    /// A draft and its confidence: the largest probability of the distribution drawn from.
    fn draft(&mut self, logits: &[f32]) -> (u32, Option<Vec<f64>>, f64) {
        let (t, dist) = self.draw(logits);
        let conf = match &dist {
            None => crate::kernels::max_prob(logits) as f64,
            Some(q) => q.iter().copied().fold(0.0, f64::max),
        };
        (t, dist, conf)
    }
}

fn run(
    m: &CpuModel,
    prompt: &[u32],
    opts: &SpeculativeOptions,
    mut on_token: impl FnMut(u32, TokenOrigin, DraftCounts) -> ControlFlow<()>,
) -> Result<SpeculativeGeneration> {
    let start = Instant::now();
    let (n_layer, e, d) = (m.n_layer, opts.draft_layer, m.d);
    let mut dec = Decoder::new(m);
    // With `int8`, the drafts come from the model's 8-bit copy of blocks E+1..L and its
    // classifier, run on the rows at layer E (see `analysis/pipelined.rs`).
    let quant = opts.int8.then(|| decoder::QuantBlocks::of(m, e));
    let mut approx = quant.as_deref().map(|q| Decoder::approximate(m, q));
    let mut picker = Picker::new(&opts.sampling);
    let mut g = SpeculativeGeneration::start(opts);
    if opts.max_new_tokens == 0 {
        return Ok(g);
    }
    // The prompt through the full model, exactly as plain decoding runs it.
    let mut logits = Vec::new();
    let mut x = dec.embed(prompt, 0)?;
    dec.blocks(0, e, &mut x, 0)?;
    if let Some(a) = approx.as_mut() {
        a.blocks(e, n_layer, &mut x.clone(), 0)?;
    }
    dec.blocks(e, n_layer, &mut x, 0)?;
    g.forward_passes += 1;
    dec.logits(&x[x.len() - d..], &mut logits);
    let (mut pending, _) = picker.draw(&logits);
    let mut n = prompt.len();
    let mut going = g.emit(pending, TokenOrigin::Full, opts, &mut on_token);
    let mut rows: Vec<f32> = Vec::new();
    // Each draft, its distribution (sampling) and whether it came from the text's repeats.
    let mut drafts: Vec<(u32, Option<Vec<f64>>, bool)> = Vec::new();
    let mut context: Vec<u32> = Vec::new();
    let greedy_drafts = greedy_token_drafts(opts);
    let greedy_rows = matches!(opts.sampling, Sampling::Greedy) && opts.sampling.greedy_tokens(opts.max_new_tokens);
    let (mut scratch, mut rows_e) = (Vec::new(), Vec::new());
    while going {
        // `pending` is fed at position n; the round's rows are positions n..=n+k.
        if n >= m.n_positions {
            g.stop = StopReason::ContextFull;
            break;
        }
        let remaining = opts.max_new_tokens - g.ids.len();
        let k = opts.draft_len.min(remaining - 1).min(m.n_positions - 1 - n);
        // Draft: up to k tokens through blocks 1..E and the shared head, one at a time,
        // while the draft is confident; each drafted token goes through blocks 1..E too, so
        // the verification can score what follows it. A draft from the text's repeats needs
        // no row to be picked, so a run of them goes through blocks 1..E in one pass (rows
        // cost far less together than apart) when a draft needs the last row, or at the end.
        rows.clear();
        drafts.clear();
        // The 8-bit copy has run the first `copied` of the round's rows.
        let mut copied = 0;
        if opts.lookup {
            context.clear();
            context.extend_from_slice(prompt);
            context.extend_from_slice(&g.ids);
        }
        // Tokens fed whose rows are still to be computed (at positions n + rows.len() / d..).
        let mut unrowed: Vec<u32> = vec![pending];
        for _ in 0..k {
            let repeat = if opts.lookup { lookup::lookup_draft(&context, lookup::MIN_MATCH) } else { None };
            let (t, q) = if let Some(t) = repeat {
                (t, None)
            } else {
                rows_through(&mut dec, e, n, &mut unrowed, &mut rows)?;
                let x = &rows[rows.len() - d..];
                if let (Some(a), Some(q)) = (approx.as_mut(), quant.as_deref()) {
                    // The copy catches up with the rows of the round, and drafts after the last.
                    let mut xa = rows[copied * d..].to_vec();
                    a.blocks(e, n_layer, &mut xa, n + copied)?;
                    copied = rows.len() / d;
                    (q.greedy_tokens(m, &xa[xa.len() - d..], &mut scratch, &mut logits)[0], None)
                } else if greedy_drafts {
                    (dec.greedy_token(x), None)
                } else {
                    dec.logits(x, &mut logits);
                    let (t, q, conf) = picker.draft(&logits);
                    if conf < opts.draft_confidence {
                        break;
                    }
                    (t, q)
                }
            };
            drafts.push((t, q, repeat.is_some()));
            unrowed.push(t);
            if opts.lookup {
                context.push(t);
            }
        }
        rows_through(&mut dec, e, n, &mut unrowed, &mut rows)?;
        let k = drafts.len();
        if approx.is_some() {
            // The rows the copy has not run yet, for the accepted ones among them.
            rows_e.clear();
            rows_e.extend_from_slice(&rows[copied * d..]);
        }
        // Verify: blocks E+1..L on all k+1 rows at once, then the head on each row.
        dec.blocks(e, n_layer, &mut rows, n)?;
        g.forward_passes += 1;
        // Greedy, where plain decoding finds its tokens through the classifier's reduced
        // copy: every row's token in one pass over it (the same tokens as the logits').
        let tokens = match greedy_rows {
            true => dec.greedy_tokens(&rows),
            false => {
                dec.logits(&rows, &mut logits);
                Vec::new()
            }
        };
        let full = |i: usize| &logits[i * m.vocab..(i + 1) * m.vocab];
        let mut accepted = 0;
        let mut next = None;
        for (i, (t, q, _)) in drafts.iter().enumerate() {
            match (&mut picker, q) {
                (Picker::Greedy, _) => {
                    let want = if greedy_rows { tokens[i] } else { decoder::argmax(full(i)) };
                    if want != *t {
                        next = Some((want, TokenOrigin::Corrected { rejected: *t }));
                        break;
                    }
                }
                (Picker::Sample { p, temperature, rng }, Some(q)) => {
                    let pd = nucleus(full(i), *temperature, *p);
                    if !accept_draft(&pd, q, *t as usize, rng.random::<f64>()) {
                        let r = residual(&pd, q);
                        let c = sample_index(&r, rng.random::<f64>()) as u32;
                        next = Some((c, TokenOrigin::Corrected { rejected: *t }));
                        break;
                    }
                }
                (Picker::Sample { .. }, None) => unreachable!("sampled drafts carry their distribution"),
            }
            accepted += 1;
        }
        let (next, origin) = match next {
            Some(n) => n,
            None => {
                let t = if greedy_rows { tokens[k] } else { picker.draw(full(k)).0 };
                (t, if k == 0 { TokenOrigin::Full } else { TokenOrigin::Bonus })
            }
        };
        // Every draft of the round counts as drafted, those past a rejected one too.
        for (i, &(_, _, from_lookup)) in drafts.iter().enumerate() {
            g.judge(from_lookup, i < accepted);
        }
        for &(t, _, _) in &drafts[..accepted] {
            going = g.emit(t, TokenOrigin::Accepted, opts, &mut on_token);
            if !going {
                break;
            }
        }
        if going {
            going = g.emit(next, origin, opts, &mut on_token);
        }
        // Keep positions n..=n+accepted (the fed token and the accepted drafts); the copy
        // runs those of them it has not.
        dec.truncate(n + accepted + 1);
        if let Some(a) = approx.as_mut() {
            a.truncate(n + accepted + 1);
            if copied <= accepted {
                let mut xa = rows_e[..(accepted + 1 - copied) * d].to_vec();
                a.blocks(e, n_layer, &mut xa, n + copied)?;
            }
        }
        n += accepted + 1;
        pending = next;
    }
    g.seconds = start.elapsed().as_secs_f64();
    Ok(g)
}

/// Runs the tokens `unrowed` through blocks `1..e` in one pass at the positions after the
/// rows already in `rows` (the round's first at `n`), appends their rows and empties it.
fn rows_through(dec: &mut Decoder, e: usize, n: usize, unrowed: &mut Vec<u32>, rows: &mut Vec<f32>) -> Result<()> {
    if !unrowed.is_empty() {
        let pos = n + rows.len() / dec.model.d;
        let mut x = dec.embed(unrowed, pos)?;
        dec.blocks(0, e, &mut x, pos)?;
        rows.extend_from_slice(&x);
        unrowed.clear();
    }
    Ok(())
}

/// The nucleus distribution the sampler draws from, normalised, in f64: softmax of
/// `logits / temperature`, then the most probable tokens until their mass reaches `top_p`
/// (the one that crosses it included), as plain top-p sampling keeps them ([`super::sampling::LogitsSampler`]).
pub fn nucleus(logits: &[f32], temperature: f64, top_p: f64) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut p: Vec<f64> = logits.iter().map(|&z| ((z as f64 - max) / temperature).exp()).collect();
    let sum: f64 = p.iter().sum();
    p.iter_mut().for_each(|v| *v /= sum);
    if top_p < 1.0 {
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        let mut cum = 0.0;
        for &i in &order {
            if cum >= top_p {
                p[i] = 0.0;
            } else {
                cum += p[i];
            }
        }
        p.iter_mut().for_each(|v| *v /= cum);
    }
    p
}

/// The index whose cumulative probability first exceeds `u` (`u` uniform in [0, 1)).
pub fn sample_index(dist: &[f64], u: f64) -> usize {
    let total: f64 = dist.iter().sum();
    let target = u * total;
    let mut cum = 0.0;
    let mut last = 0;
    for (i, &p) in dist.iter().enumerate() {
        if p > 0.0 {
            cum += p;
            last = i;
            if target < cum {
                return i;
            }
        }
    }
    last
}

/// The speculative sampling test for a draft `x` drawn from `q`: accept with probability
/// `min(1, p(x) / q(x))`, given `u` uniform in [0, 1).
pub fn accept_draft(p: &[f64], q: &[f64], x: usize, u: f64) -> bool {
    u * q[x] < p[x]
}

/// The distribution a rejection draws from: `max(0, p − q)`, normalised. (Rounding can
/// leave nothing when `p` and `q` agree — then no rejection is possible, and `p` is
/// returned.)
pub fn residual(p: &[f64], q: &[f64]) -> Vec<f64> {
    let r: Vec<f64> = p.iter().zip(q).map(|(a, b)| (a - b).max(0.0)).collect();
    let sum: f64 = r.iter().sum();
    if sum > 0.0 { r.into_iter().map(|v| v / sum).collect() } else { p.to_vec() }
}

/// The exact distribution of the token one step of the rule emits: a draft from `q`,
/// accepted by [`accept_draft`], else a draw from [`residual`]. Equals `p` — what makes the
/// output the full model's.
pub fn emitted_distribution(p: &[f64], q: &[f64]) -> Vec<f64> {
    let accept: Vec<f64> = p.iter().zip(q).map(|(a, b)| a.min(*b)).collect();
    let rejected = 1.0 - accept.iter().sum::<f64>();
    let r = residual(p, q);
    accept.iter().zip(&r).map(|(a, r)| a + rejected * r).collect()
}

/// Longest draft `--speculative auto` considers.
pub const MAX_AUTO_DRAFT: usize = 8;
/// Draft confidences `--speculative auto` considers.
pub const AUTO_CONFIDENCES: [f64; 10] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// What `--speculative auto` measured and picked.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    /// Positions of the full model's greedy continuation the drafts were scored on.
    pub positions: usize,
    /// Per draft layer `E` (index = layer; 0 and L are `None`): how often the greedy token of
    /// blocks `1..E` + the shared head equals the full model's.
    pub agreement: Vec<Option<f64>>,
    /// With `lookup`: how often the draft is right when the text's repeats draft where they
    /// can and layer `E` elsewhere (per layer, as `agreement`), and the share of positions
    /// the repeats draft.
    pub lookup_agreement: Option<Vec<Option<f64>>>,
    pub lookup_share: Option<f64>,
    /// Measured milliseconds of one block and of the head on 1..=MAX_AUTO_DRAFT+1 rows.
    pub block_ms: Vec<f64>,
    pub head_ms: Vec<f64>,
    /// A greedy token of one row ([`Decoder::greedy_token`]): what a draft costs at draft
    /// confidence 0 when [`greedy_token_drafts`] holds (then measured; `None` otherwise).
    pub greedy_ms: Option<f64>,
    pub draft_layer: usize,
    pub draft_len: usize,
    pub draft_confidence: f64,
    /// The replay's prediction for the pick: acceptance, and speedup over plain greedy
    /// decoding (below 1: speculation is not expected to pay on this model).
    pub predicted_acceptance: Option<f64>,
    pub predicted_speedup: f64,
    /// The draft layer for pipelined decoding (`--pipelined`, [`generate_pipelined`]) and
    /// its predicted speedup (see [`pipelined_speedup`]).
    pub pipelined_layer: usize,
    pub pipelined_speedup: f64,
}

/// The speedup pipelined decoding ([`generate_pipelined`]) is expected to reach drafting
/// from layer `e` whose drafts agree with the full model's tokens a fraction `p` of the
/// time, with a block costing `block` and a token's head `head` (on one row; a draft's
/// costs `draft_head` on average, less where drafts skip it: `lookup`). A drafted
/// row follows the previous one after `e` blocks and the head when the previous draft was
/// right; after a wrong one, only once the verifier has found the right token — the rest
/// of the depth and its head later — so that token costs what plain decoding costs. The
/// verifier, `L - e` blocks and a head per row, bounds the pace from below — optimistically:
/// a verifier slower than the drafter (`2e < L`) falls behind, and its passes then carry the
/// rows drafted past a wrong draft (austen-aligned measured 0.74x from layer 1 and 1.06x
/// from layer 3, where this gives 1.17x and 1.27x with the measured acceptances and block
/// and head times), so `--speculative auto` keeps to `2e >= L`, where it held (layer 7:
/// 1.28x, measured 1.29x). Where a row already runs on every core (`!overlap`: see
/// [`CpuModel::rows_use_one_thread`]) the two threads take turns, and a right draft costs
/// its drafting and its verification.
pub fn pipelined_speedup(n_layer: usize, e: usize, p: f64, block: f64, head: f64, draft_head: f64, overlap: bool) -> f64 {
    let plain = n_layer as f64 * block + head;
    let drafted = e as f64 * block + draft_head;
    let verified = (n_layer - e) as f64 * block + head;
    match overlap {
        true => plain / (p * drafted + (1.0 - p) * plain).max(verified),
        false => plain / (p * (drafted + verified) + (1.0 - p) * plain),
    }
}

/// What blocks `1..E` + the head predict at each position of a greedy continuation.
struct DraftTrace {
    /// `tokens[l][p]`, `conf[l][p]`: the argmax and largest probability of layer `l + 1`
    /// at position `p`; `full[p]` is the full model's token; `repeat[p]` the draft of the
    /// text's repeats there, if any ([`lookup::lookup_draft`]).
    tokens: Vec<Vec<u32>>,
    conf: Vec<Vec<f32>>,
    full: Vec<u32>,
    repeat: Vec<Option<u32>>,
}

impl DraftTrace {
    /// The draft at position `p` from layer `e`, the repeats first with `lookup`, and
    /// whether it came from them.
    fn draft(&self, e: usize, p: usize, lookup: bool) -> (u32, bool) {
        match self.repeat[p].filter(|_| lookup) {
            Some(t) => (t, true),
            None => (self.tokens[e - 1][p], false),
        }
    }

    /// How often the drafts from layer `e` (see [`Self::draft`]) are the full model's tokens.
    fn agreement(&self, e: usize, lookup: bool) -> f64 {
        (0..self.full.len()).filter(|&p| self.draft(e, p, lookup).0 == self.full[p]).count() as f64 / self.full.len() as f64
    }
}

/// Costs of the replay, in milliseconds: a block and the head on `r` rows are
/// `block[r - 1]` and `head[r - 1]`; a draft at confidence 0 costs `greedy` where set.
struct Costs<'a> {
    block: &'a [f64],
    head: &'a [f64],
    greedy: Option<f64>,
}

/// Replays speculative decoding along the trace (greedy output is the trace's own tokens)
/// and returns (tokens emitted, drafted, accepted, milliseconds). Drafts made after a wrong
/// one are scored as if the context were right: they are rejected either way, only their
/// number (cost) is approximate.
/// With `lookup`, the repeats' drafts cost no head and pass whatever the confidence, and a
/// run of them goes through blocks 1..E in one pass.
fn replay(t: &DraftTrace, c: &Costs, n_layer: usize, e: usize, k: usize, gamma: f64, lookup: bool) -> (usize, usize, usize, f64) {
    let conf = &t.conf[e - 1];
    let positions = t.full.len();
    let (mut p, mut emitted, mut drafted, mut accepted, mut ms) = (0, 0, 0, 0, 0.0);
    while p + k < positions {
        let mut rows = 1;
        let mut good = true;
        let mut acc = 0;
        // Rows not yet through blocks 1..E: a run of the repeats' drafts goes in one pass.
        let mut unrowed = 1;
        let draft_head = if gamma <= 0.0 { c.greedy.unwrap_or(c.head[0]) } else { c.head[0] };
        for i in 0..k {
            let (draft, repeat) = t.draft(e, p + i, lookup);
            if !repeat {
                ms += e as f64 * c.block[unrowed - 1] + draft_head;
                unrowed = 0;
                if (conf[p + i] as f64) < gamma {
                    break;
                }
            }
            drafted += 1;
            good &= draft == t.full[p + i];
            acc += good as usize;
            rows += 1;
            unrowed += 1;
        }
        if unrowed > 0 {
            ms += e as f64 * c.block[unrowed - 1];
        }
        ms += (n_layer - e) as f64 * c.block[rows - 1] + c.head[rows - 1];
        accepted += acc;
        emitted += acc + 1;
        p += acc + 1;
    }
    (emitted, drafted, accepted, ms)
}

/// Picks the draft layer, draft length and draft confidence for this model: runs the full
/// model's greedy continuation of `prompt` for `positions` tokens, reading every layer's
/// prediction and confidence on the way; times a block and the head on 1..=MAX_AUTO_DRAFT+1
/// rows; then replays speculative decoding along the continuation for every choice and
/// keeps the fastest. `greedy_tokens` ([`Sampling::greedy_tokens`] of the generation):
/// whether greedy tokens — plain decoding's, the baseline, and drafts at confidence 0 (see
/// [`greedy_token_drafts`]) — come from [`Decoder::greedy_token`], which the replay then
/// costs as such.
///
/// With `lookup`, drafts come from the text's repeats where they can (see
/// [`SpeculativeOptions::lookup`]), and the replay and the pipelined prediction count them so.
pub fn calibrate(model: &Gpt2, prompt: &[u32], positions: usize, greedy_tokens: bool, lookup: bool) -> Result<Calibration> {
    check_prompt(model, prompt)?;
    if !decoder::supported(model) {
        bail!("speculative decoding runs on the CPU engine; this model is on {:?} (use --device cpu)", model.device().location())
    }
    if model.n_layer() < 2 {
        bail!("speculative decoding needs at least 2 layers; the model has {}", model.n_layer())
    }
    decoder::with_cpu_model(model, |m| {
        let n_layer = m.n_layer;
        let trace = trace_drafts(m, prompt, positions)?;
        let seen = trace.full.len();
        if seen <= MAX_AUTO_DRAFT {
            bail!(
                "the prompt leaves {seen} positions of the model's context to calibrate on: too few to calibrate speculative decoding (it needs more than {MAX_AUTO_DRAFT})"
            )
        }
        let per_layer = |lookup| (0..=n_layer).map(|l| (l >= 1 && l < n_layer).then(|| trace.agreement(l, lookup))).collect::<Vec<_>>();
        let agreement = per_layer(false);
        let lookup_agreement = lookup.then(|| per_layer(true));
        let lookup_share = lookup.then(|| trace.repeat.iter().filter(|r| r.is_some()).count() as f64 / seen as f64);
        let (block_ms, head_ms, greedy_ms) = measure_costs(m, greedy_tokens)?;
        let costs = Costs { block: &block_ms, head: &head_ms, greedy: greedy_ms };
        // Plain greedy decoding finds its tokens as greedy drafts do.
        let plain = n_layer as f64 * block_ms[0] + greedy_ms.unwrap_or(head_ms[0]);
        let mut best: Option<(f64, usize, usize, f64, Option<f64>)> = None;
        for e in 1..n_layer {
            for k in 1..=MAX_AUTO_DRAFT {
                for gamma in AUTO_CONFIDENCES {
                    let (emitted, drafted, accepted, ms) = replay(&trace, &costs, n_layer, e, k, gamma, lookup);
                    let speedup = emitted as f64 * plain / ms;
                    if best.as_ref().is_none_or(|b| speedup > b.0) {
                        let acceptance = (drafted > 0).then(|| accepted as f64 / drafted as f64);
                        best = Some((speedup, e, k, gamma, acceptance));
                    }
                }
            }
        }
        let (predicted_speedup, draft_layer, draft_len, draft_confidence, predicted_acceptance) = best.expect("at least one choice");
        let head = greedy_ms.unwrap_or(head_ms[0]);
        // The repeats' drafts skip the head.
        let draft_head = head * (1.0 - lookup_share.unwrap_or(0.0));
        let drafts_agree = lookup_agreement.as_ref().unwrap_or(&agreement);
        // Layers whose verifier keeps pace with the drafter (see [`pipelined_speedup`]).
        let overlap = m.rows_use_one_thread();
        let (pipelined_speedup, pipelined_layer) = (n_layer.div_ceil(2)..n_layer)
            .map(|e| (pipelined_speedup(n_layer, e, drafts_agree[e].unwrap_or(0.0), block_ms[0], head, draft_head, overlap), e))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .expect("at least one layer");
        Ok(Calibration {
            positions: seen,
            agreement,
            lookup_agreement,
            lookup_share,
            block_ms,
            head_ms,
            greedy_ms,
            draft_layer,
            draft_len,
            draft_confidence,
            predicted_acceptance,
            predicted_speedup,
            pipelined_layer,
            pipelined_speedup,
        })
    })
}

/// The full model's greedy continuation of `prompt` (`positions` tokens at most), with every
/// layer's greedy token and confidence at each position.
fn trace_drafts(m: &CpuModel, prompt: &[u32], positions: usize) -> Result<DraftTrace> {
    let (n_layer, d) = (m.n_layer, m.d);
    let mut dec = Decoder::new(m);
    let mut t =
        DraftTrace { tokens: vec![Vec::new(); n_layer - 1], conf: vec![Vec::new(); n_layer - 1], full: Vec::new(), repeat: Vec::new() };
    let mut context = prompt.to_vec();
    let mut x = dec.embed(prompt, 0)?;
    let mut logits = Vec::new();
    dec.blocks(0, n_layer, &mut x, 0)?;
    dec.logits(&x[x.len() - d..], &mut logits);
    let mut next = decoder::argmax(&logits);
    let mut pos = prompt.len();
    while t.full.len() < positions && pos < m.n_positions {
        context.push(next);
        t.repeat.push(lookup::lookup_draft(&context, lookup::MIN_MATCH));
        let mut x = dec.embed(&[next], pos)?;
        for l in 0..n_layer {
            dec.block(l, &mut x, pos)?;
            dec.logits(&x, &mut logits);
            if l + 1 < n_layer {
                t.tokens[l].push(decoder::argmax(&logits));
                t.conf[l].push(crate::kernels::max_prob(&logits));
            }
        }
        next = decoder::argmax(&logits);
        t.full.push(next);
        pos += 1;
    }
    Ok(t)
}

/// Median milliseconds of one block (averaged over the blocks) and of the head, for
/// 1..=MAX_AUTO_DRAFT+1 rows after 32 cached positions; with `greedy`, also of a greedy
/// token of one row.
fn measure_costs(m: &CpuModel, greedy: bool) -> Result<(Vec<f64>, Vec<f64>, Option<f64>)> {
    const REPS: usize = 15;
    let ctx = 32.min(m.n_positions.saturating_sub(MAX_AUTO_DRAFT + 1));
    let ids: Vec<u32> = (0..ctx + MAX_AUTO_DRAFT + 1).map(|i| (i * 7919 % m.vocab) as u32).collect();
    let mut dec = Decoder::new(m);
    let mut x = dec.embed(&ids[..ctx], 0)?;
    dec.blocks(0, m.n_layer, &mut x, 0)?;
    let (mut block_ms, mut head_ms) = (Vec::new(), Vec::new());
    let mut logits = Vec::new();
    for rows in 1..=MAX_AUTO_DRAFT + 1 {
        let x0 = dec.embed(&ids[ctx..ctx + rows], ctx)?;
        let (mut tb, mut th) = (Vec::with_capacity(REPS), Vec::with_capacity(REPS));
        for _ in 0..REPS {
            let mut x = x0.clone();
            let t = Instant::now();
            dec.blocks(0, m.n_layer, &mut x, ctx)?;
            tb.push(t.elapsed().as_secs_f64() * 1e3 / m.n_layer as f64);
            let t = Instant::now();
            dec.logits(&x, &mut logits);
            th.push(t.elapsed().as_secs_f64() * 1e3);
            dec.truncate(ctx);
        }
        block_ms.push(median(tb));
        head_ms.push(median(th));
    }
    let greedy_ms = greedy.then(|| {
        let row = &x[x.len() - m.d..];
        // The first call may build the classifier's 8-bit copy: not a draft's cost.
        std::hint::black_box(dec.greedy_token(row));
        median(
            (0..REPS)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(dec.greedy_token(row));
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect(),
        )
    });
    Ok((block_ms, head_ms, greedy_ms))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol, "entry {i}: {x} vs {y}\n{a:?}\n{b:?}");
        }
    }

    /// The pipelined prediction by hand: 12 blocks of 1 and a head of 2 (plain: 14 a token).
    #[test]
    fn pipelined_prediction_by_hand() {
        // Drafts always right from layer 6: a token every 6 + 2 (the verifier's 6 + 2 keeps up).
        assert!((pipelined_speedup(12, 6, 1.0, 1.0, 2.0, 2.0, true) - 14.0 / 8.0).abs() < 1e-12);
        // Never right: every token costs plain decoding's time.
        assert!((pipelined_speedup(12, 6, 0.0, 1.0, 2.0, 2.0, true) - 1.0).abs() < 1e-12);
        // From layer 2, always right: the verifier (10 + 2) sets the pace.
        assert!((pipelined_speedup(12, 2, 1.0, 1.0, 2.0, 2.0, true) - 14.0 / 12.0).abs() < 1e-12);
        // Half right from layer 4: 0.5 * 6 + 0.5 * 14 = 10.
        assert!((pipelined_speedup(12, 4, 0.5, 1.0, 2.0, 2.0, true) - 1.4).abs() < 1e-12);
        // Threads that take turns: a right draft pays both halves (6 + 10), so it cannot pay.
        assert!((pipelined_speedup(12, 4, 1.0, 1.0, 2.0, 2.0, false) - 14.0 / 16.0).abs() < 1e-12);
        // Drafts that skip the head half the time (lookup): 6 blocks and 1 head per draft.
        assert!((pipelined_speedup(12, 6, 1.0, 1.0, 2.0, 1.0, true) - 14.0 / 8.0).abs() < 1e-12);
        assert!((pipelined_speedup(12, 7, 1.0, 1.0, 2.0, 1.0, true) - 14.0 / 8.0).abs() < 1e-12);
    }

    /// The replay's costs by hand: a run of drafts from the repeats goes through blocks 1..E
    /// in one pass; drafts from the layer each need the row before them.
    #[test]
    fn replay_costs_a_run_of_repeats_in_one_pass() {
        // Two layers, drafts from layer 1, five positions whose drafts are all right.
        let full = vec![7, 8, 9, 10, 11];
        let t = DraftTrace {
            tokens: vec![full.clone()],
            conf: vec![vec![1.0; 5]],
            full: full.clone(),
            repeat: vec![Some(7), Some(8), Some(9), None, None],
        };
        let (block, head) = ([1.0, 1.5, 2.0, 2.5], [0.5, 0.6, 0.7, 0.8]);
        let c = Costs { block: &block, head: &head, greedy: None };
        // One round of 3 drafts: the fed token and three repeats through block 1 together
        // (2.5), then block 2 and the head on the 4 rows (2.5 + 0.8).
        let (emitted, drafted, accepted, ms) = replay(&t, &c, 2, 1, 3, 0.0, true);
        assert_eq!((emitted, drafted, accepted), (4, 3, 3));
        assert!((ms - (2.5 + 2.5 + 0.8)).abs() < 1e-12, "{ms}");
        // Without the repeats: each draft waits for its row (1) and picks with the head (0.5).
        let (_, _, _, ms) = replay(&t, &c, 2, 1, 3, 0.0, false);
        assert!((ms - (3.0 * (1.0 + 0.5) + 1.0 + 2.5 + 0.8)).abs() < 1e-12, "{ms}");
    }

    #[test]
    fn the_rule_by_hand() {
        let p = [0.5, 0.3, 0.2];
        let q = [0.2, 0.3, 0.5];
        // Drafts the full model likes at least as much are always kept; token 2 is kept
        // with probability 0.2 / 0.5 = 0.4.
        assert!(accept_draft(&p, &q, 0, 0.999));
        assert!(accept_draft(&p, &q, 1, 0.999));
        assert!(accept_draft(&p, &q, 2, 0.39));
        assert!(!accept_draft(&p, &q, 2, 0.41));
        // Only token 0 has p > q: every rejection emits it.
        close(&residual(&p, &q), &[1.0, 0.0, 0.0], 1e-15);
        // P(0) = q(0) + P(reject) = 0.2 + 0.5 * 0.6 = 0.5, and so on: p itself.
        close(&emitted_distribution(&p, &q), &p, 1e-15);
        // Equal distributions: never rejected; disjoint ones: always rejected.
        close(&emitted_distribution(&q, &q), &q, 1e-15);
        close(&emitted_distribution(&[0.0, 0.0, 1.0], &[0.7, 0.3, 0.0]), &[0.0, 0.0, 1.0], 1e-15);
        assert!(!accept_draft(&[0.0, 0.0, 1.0], &[0.7, 0.3, 0.0], 0, 0.0));
        close(&residual(&[0.1, 0.6, 0.3], &[0.4, 0.4, 0.2]), &[0.0, 2.0 / 3.0, 1.0 / 3.0], 1e-15);
        for (p, q) in [([0.25, 0.25, 0.5, 0.0], [0.1, 0.6, 0.1, 0.2]), ([0.9, 0.05, 0.05, 0.0], [0.01, 0.01, 0.01, 0.97])] {
            close(&emitted_distribution(&p, &q), &p, 1e-12);
        }
    }

    /// Drawing drafts from q and applying the rule with real random numbers gives p.
    #[test]
    fn the_rule_samples_the_target_distribution() {
        let p = [0.05, 0.4, 0.25, 0.3, 0.0];
        let q = [0.3, 0.1, 0.1, 0.2, 0.3];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let n = 200_000;
        let mut counts = [0usize; 5];
        for _ in 0..n {
            let x = sample_index(&q, rng.random::<f64>());
            let t = if accept_draft(&p, &q, x, rng.random::<f64>()) { x } else { sample_index(&residual(&p, &q), rng.random::<f64>()) };
            counts[t] += 1;
        }
        // Pearson's chi-square over the 4 tokens with p > 0 (3 degrees of freedom): the
        // 99.9% quantile is 16.3.
        assert_eq!(counts[4], 0, "a token the target never emits");
        let chi2: f64 = (0..4).map(|i| (counts[i] as f64 - n as f64 * p[i]).powi(2) / (n as f64 * p[i])).sum();
        assert!(chi2 < 16.3, "chi-square {chi2}, counts {counts:?}");
    }

    #[test]
    fn nucleus_keeps_the_crossing_token() {
        let logits = [(0.5f32).ln(), (0.3f32).ln(), (0.15f32).ln(), (0.05f32).ln()];
        close(&nucleus(&logits, 1.0, 1.0), &[0.5, 0.3, 0.15, 0.05], 1e-6);
        // 0.5 < 0.7, 0.8 >= 0.7: tokens 0 and 1.
        close(&nucleus(&logits, 1.0, 0.7), &[0.625, 0.375, 0.0, 0.0], 1e-6);
        close(&nucleus(&logits, 1.0, 0.5), &[1.0, 0.0, 0.0, 0.0], 1e-6);
        assert_eq!(sample_index(&[0.0, 0.5, 0.0, 0.5], 0.0), 1);
        assert_eq!(sample_index(&[0.0, 0.5, 0.0, 0.5], 0.75), 3);
        assert_eq!(sample_index(&[0.0, 0.5, 0.0, 0.5], 0.999_999_999), 3);
    }
}
