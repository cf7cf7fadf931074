//! A model worker: one thread per checkpoint column that owns the loaded [`Checkpoint`]
//! and answers typed commands (analyze a prompt, generate from exit layers, evaluate a
//! text, load another checkpoint) with typed replies on the UI's event channel. The UI
//! never touches the model.
//!
//! Generation is cancellable: every command that makes a running generation stale bumps
//! an epoch that the generation checks after each token. Evaluation runs on a thread of
//! its own (the model's tensors are shared, not copied) so that a long evaluation never
//! holds up analysis or generation, and is cancelled the same way.

use super::event::Event;
use crate::analysis::early_exit::{EarlyExitOptions, ExitMeasure, generate_early_exit};
use crate::analysis::encode_prompt;
use crate::analysis::eval::{EvalOptions, EvalReport, evaluate};
use crate::analysis::generate::{GenerateOptions, Sampling, StopReason, generate};
use crate::analysis::inspect::{LensAt, PromptAnalysis, analyze};
use crate::analysis::speculative::{
    DraftCounts, SpeculativeOptions, TokenOrigin, generate_pipelined, generate_speculative, pipelining_pays,
};
use crate::model::Checkpoint;
use candle_core::Device;
use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

/// What the UI needs to know about a loaded checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// The checkpoint as it was asked for (a name, a path or a hub id).
    pub name: String,
    /// The name for titles: a path's last component, else the name itself.
    pub short_name: String,
    pub dir: PathBuf,
    pub n_layer: usize,
    pub n_positions: usize,
    pub vocab_size: usize,
    pub n_embd: usize,
}

impl ModelInfo {
    pub fn of(ck: &Checkpoint) -> Self {
        Self {
            short_name: crate::paths::short_name(&ck.name),
            name: ck.name.clone(),
            dir: ck.dir.clone(),
            n_layer: ck.model.n_layer(),
            n_positions: ck.model.config.n_positions,
            vocab_size: ck.model.config.vocab_size,
            n_embd: ck.model.config.n_embd,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum WorkerCommand {
    /// Replace the model with another checkpoint.
    Load { spec: String },
    /// Tokenize and analyze a prompt, with the lens at every position.
    Analyze { req: u64, prompt: String, top_k: usize },
    /// Generate from each of `layers` in turn, streaming tokens.
    Generate { req: u64, prompt_ids: Vec<u32>, layers: Vec<usize>, max_new_tokens: usize, sampling: Sampling },
    /// Evaluate per layer on a text file.
    Eval { req: u64, data: PathBuf, ctx: usize, max_chunks: usize },
    /// Generate with early exit or speculative decoding, streaming each token with where it
    /// came from; then time full-depth decoding of as many tokens for the speedup.
    Decode { req: u64, prompt_ids: Vec<u32>, method: DecodeMethod, max_new_tokens: usize, sampling: Sampling },
}

/// How the decoding mode of the generation view decodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DecodeMethod {
    /// Per-token early exit at `threshold` of `measure`.
    EarlyExit { threshold: f64, measure: ExitMeasure },
    /// Self-speculative decoding: drafts from blocks `1..=draft_layer`, `draft_len` at a time.
    /// With `int8`, the model's own 8-bit copy drafts ([`SpeculativeOptions::int8`]).
    Speculative { draft_layer: usize, draft_len: usize, lookup: bool, int8: bool },
}

/// Where a streamed token came from.
#[derive(Debug, Clone, PartialEq)]
pub enum PieceKind {
    /// Early exit: the layer the token left at.
    Exit(usize),
    /// Speculative: a draft the full model accepted.
    Accepted,
    /// Speculative: the full model's token in place of the rejected draft (its text).
    Corrected { rejected: String },
    /// The full model's own token (speculative: after the prompt, or after a round whose
    /// drafts were all accepted).
    Full,
}

/// A piece of streamed text: one token's text (or a few, when a character spans tokens).
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub text: String,
    pub kind: PieceKind,
}

impl WorkerCommand {
    /// The request id the replies carry (0 for `Load`, whose replies need none).
    pub fn req(&self) -> u64 {
        match self {
            WorkerCommand::Load { .. } => 0,
            WorkerCommand::Analyze { req, .. }
            | WorkerCommand::Generate { req, .. }
            | WorkerCommand::Eval { req, .. }
            | WorkerCommand::Decode { req, .. } => *req,
        }
    }
}

#[derive(Debug, Clone)]
pub enum WorkerReply {
    Loaded(ModelInfo),
    LoadFailed(String),
    Analysis {
        req: u64,
        result: Result<PromptAnalysis, String>,
    },
    /// The continuation from `layer` so far (decoded text of `tokens` new tokens).
    Token {
        req: u64,
        layer: usize,
        text: String,
        tokens: usize,
    },
    LayerDone {
        req: u64,
        layer: usize,
        text: String,
        tokens: usize,
        stop: StopReason,
    },
    GenerateFailed {
        req: u64,
        message: String,
    },
    EvalProgress {
        req: u64,
        done: usize,
        total: usize,
    },
    EvalDone {
        req: u64,
        data: PathBuf,
        result: Result<EvalReport, String>,
    },
    /// Decoding mode: the next piece of the continuation, the tokens so far, seconds since
    /// the decoding started, and (speculative) the draft counts so far.
    DecodePiece {
        req: u64,
        piece: Piece,
        tokens: usize,
        seconds: f64,
        drafts: DraftCounts,
    },
    /// Decoding mode: the continuation is complete.
    DecodeDone {
        req: u64,
        stop: StopReason,
        tokens: usize,
        seconds: f64,
        /// Early exit: the layer speedup; speculative: tokens per full-depth pass.
        layer_speedup: Option<f64>,
        forward_passes: Option<usize>,
        /// Decoded on two threads: speculative decoding pipelined, or early exit with its
        /// checks on a second thread (greedy decoding of a model whose rows keep to one core).
        pipelined: bool,
    },
    /// Decoding mode: seconds of full-depth decoding of as many tokens (the baseline).
    DecodeBaseline {
        req: u64,
        seconds: f64,
    },
    /// The engine panicked on command `req`; the worker goes on with the next.
    Crashed {
        req: u64,
        message: String,
    },
}

/// The UI's end of a worker. Dropping it ends the worker (and cancels its work).
pub struct WorkerHandle {
    pub id: u64,
    tx: Sender<(u64, WorkerCommand)>,
    epoch: Arc<AtomicU64>,
    eval_epoch: Arc<AtomicU64>,
}

impl WorkerHandle {
    /// Starts a worker with an already loaded checkpoint, or empty (then send `Load`).
    pub fn spawn(id: u64, ck: Option<Checkpoint>, device: Device, events: Sender<Event>) -> Self {
        let (tx, rx) = mpsc::channel();
        let epoch = Arc::new(AtomicU64::new(0));
        let eval_epoch = Arc::new(AtomicU64::new(0));
        let worker = Worker { id, ck, device, events, epoch: epoch.clone(), eval_epoch: eval_epoch.clone() };
        thread::Builder::new().name(format!("model-{id}")).spawn(move || worker.run(rx)).expect("spawn a model worker");
        Self { id, tx, epoch, eval_epoch }
    }

    /// Sends a command. A new analysis, generation or model makes any running generation
    /// stale, so it is cancelled at its next token; a new evaluation cancels the last one.
    pub fn send(&self, cmd: WorkerCommand) {
        let e = match cmd {
            WorkerCommand::Eval { .. } => self.eval_epoch.fetch_add(1, Ordering::SeqCst) + 1,
            WorkerCommand::Load { .. } => {
                self.eval_epoch.fetch_add(1, Ordering::SeqCst);
                self.epoch.fetch_add(1, Ordering::SeqCst) + 1
            }
            _ => self.epoch.fetch_add(1, Ordering::SeqCst) + 1,
        };
        // A closed channel means the worker is gone; its replies stop and the UI keeps
        // running.
        let _ = self.tx.send((e, cmd));
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.eval_epoch.fetch_add(1, Ordering::SeqCst);
    }
}

struct Worker {
    id: u64,
    ck: Option<Checkpoint>,
    device: Device,
    events: Sender<Event>,
    epoch: Arc<AtomicU64>,
    eval_epoch: Arc<AtomicU64>,
}

fn same_kind(a: &WorkerCommand, b: &WorkerCommand) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

impl Worker {
    fn reply(&self, reply: WorkerReply) -> bool {
        self.events.send(Event::Worker { worker: self.id, reply: Box::new(reply) }).is_ok()
    }

    fn run(mut self, rx: Receiver<(u64, WorkerCommand)>) {
        while let Ok(first) = rx.recv() {
            // Take everything queued; of several commands of one kind only the last counts
            // (scrubbing quickly queues generations nobody will see).
            let mut queue = vec![first];
            queue.extend(rx.try_iter());
            let n = queue.len();
            for i in 0..n {
                if queue[i + 1..].iter().any(|(_, later)| same_kind(&queue[i].1, later)) {
                    continue;
                }
                let (epoch, cmd) = queue[i].clone();
                if !self.handle(epoch, cmd) {
                    return;
                }
            }
        }
    }

    /// Runs one command; false when the UI is gone.
    fn handle(&mut self, epoch: u64, cmd: WorkerCommand) -> bool {
        if let WorkerCommand::Load { spec } = &cmd {
            return match crate::train::recipe::open(spec, &self.device) {
                Ok(ck) => {
                    let info = ModelInfo::of(&ck);
                    self.ck = Some(ck);
                    self.reply(WorkerReply::Loaded(info))
                }
                Err(e) => self.reply(WorkerReply::LoadFailed(crate::util::one_line(&e))),
            };
        }
        let Some(ck) = &self.ck else {
            return true; // nothing loaded yet (a failed load); the UI already said so
        };
        match cmd {
            WorkerCommand::Eval { .. } => {
                // The copy shares the weights' storage; it only lets the evaluation run
                // beside analysis and generation.
                let copy = ck.clone();
                let events = self.events.clone();
                let current = self.eval_epoch.clone();
                let id = self.id;
                thread::Builder::new()
                    .name(format!("eval-{id}"))
                    .spawn(move || {
                        let mut emit = |reply| events.send(Event::Worker { worker: id, reply: Box::new(reply) }).is_ok();
                        let stale = || current.load(Ordering::SeqCst) != epoch;
                        guarded(&copy, &cmd, &mut emit, &stale);
                    })
                    .expect("spawn an evaluation thread");
                true
            }
            cmd => {
                let events = &self.events;
                let id = self.id;
                let mut emit = |reply| events.send(Event::Worker { worker: id, reply: Box::new(reply) }).is_ok();
                let stale = || self.epoch.load(Ordering::SeqCst) != epoch;
                guarded(ck, &cmd, &mut emit, &stale)
            }
        }
    }
}

/// [`execute`], with a panic in the engine turned into an error reply instead of a dead
/// worker and a silent column.
fn guarded(ck: &Checkpoint, cmd: &WorkerCommand, emit: &mut dyn FnMut(WorkerReply) -> bool, stale: &dyn Fn() -> bool) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| execute(ck, cmd, emit, stale))) {
        Ok(alive) => alive,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            emit(WorkerReply::Crashed { req: cmd.req(), message: format!("the engine panicked: {what}") })
        }
    }
}

/// Carries out one command on a loaded checkpoint, synchronously: the worker threads run
/// this, and so can tests. Replies go to `emit` (false: nobody listens, stop); `stale()`
/// turns true when a newer command supersedes this one, and cancels it. Returns false when
/// nobody listens any more.
pub fn execute(ck: &Checkpoint, cmd: &WorkerCommand, emit: &mut dyn FnMut(WorkerReply) -> bool, stale: &dyn Fn() -> bool) -> bool {
    match cmd {
        // Loading replaces the worker's checkpoint: the worker does it.
        WorkerCommand::Load { .. } => true,
        WorkerCommand::Analyze { req, prompt, top_k } => {
            let result = analyze_prompt(ck, prompt, *top_k).map_err(|e| crate::util::one_line(&e));
            emit(WorkerReply::Analysis { req: *req, result })
        }
        WorkerCommand::Generate { req, prompt_ids, layers, max_new_tokens, sampling } => {
            let req = *req;
            let eos = ck.eos_id();
            for &layer in layers {
                if stale() {
                    return true;
                }
                let opts = GenerateOptions { exit_layer: layer, max_new_tokens: *max_new_tokens, sampling: *sampling, eos };
                let mut stream = crate::analysis::TextStream::new(&ck.tokenizer);
                let mut gone = false;
                let result = generate(&ck.model, prompt_ids, &opts, |t| {
                    if stale() {
                        return ControlFlow::Break(());
                    }
                    if let Some(text) = stream.push(t)
                        && !emit(WorkerReply::Token { req, layer, text, tokens: stream.len() })
                    {
                        gone = true;
                        return ControlFlow::Break(());
                    }
                    ControlFlow::Continue(())
                });
                if gone {
                    return false;
                }
                match result {
                    Ok(g) if g.stop == StopReason::Cancelled => return true,
                    Ok(g) => {
                        let text = crate::analysis::decode(&ck.tokenizer, &g.ids);
                        if !emit(WorkerReply::LayerDone { req, layer, text, tokens: g.ids.len(), stop: g.stop }) {
                            return false;
                        }
                    }
                    Err(e) => return emit(WorkerReply::GenerateFailed { req, message: crate::util::one_line(&e) }),
                }
            }
            true
        }
        WorkerCommand::Decode { req, prompt_ids, method, max_new_tokens, sampling } => {
            decode(ck, *req, prompt_ids, *method, *max_new_tokens, *sampling, emit, stale)
        }
        WorkerCommand::Eval { req, data, ctx, max_chunks } => {
            let req = *req;
            let mut alive = true;
            let result = evaluate_file(ck, data, *ctx, *max_chunks, |done, total| {
                if stale() || !emit(WorkerReply::EvalProgress { req, done, total }) {
                    alive = false;
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            });
            if !alive || stale() {
                return alive;
            }
            emit(WorkerReply::EvalDone { req, data: data.clone(), result: result.map_err(|e| crate::util::one_line(&e)) })
        }
    }
}

/// Tokenizes and analyzes a prompt with the lens at every position: everything the views
/// show about a prompt, computed once, so scrubbing layers and positions only indexes.
pub fn analyze_prompt(ck: &Checkpoint, prompt: &str, top_k: usize) -> anyhow::Result<PromptAnalysis> {
    let ids = encode_prompt(&ck.tokenizer, &ck.model, prompt)?;
    analyze(&ck.model, &ck.tokenizer, &ids, top_k, LensAt::All)
}

/// Evaluates a checkpoint per layer on the start of a text file.
pub fn evaluate_file(
    ck: &Checkpoint,
    data: &std::path::Path,
    ctx: usize,
    max_chunks: usize,
    progress: impl FnMut(usize, usize) -> ControlFlow<()>,
) -> anyhow::Result<EvalReport> {
    let ids = crate::analysis::tokenize_file(&ck.tokenizer, data)?;
    evaluate(&ck.model, &ids, &EvalOptions { ctx, max_chunks: Some(max_chunks) }, progress)
}

/// Splits a stream of tokens into pieces of text, holding back a token that ends inside a
/// multi-byte character until the character is complete.
struct PieceSplitter<'a> {
    tokenizer: &'a tokenizers::Tokenizer,
    ids: Vec<u32>,
    shown: usize,
}

impl PieceSplitter<'_> {
    /// The new text after `id`, or `None` while a character is incomplete.
    fn push(&mut self, id: u32) -> Option<String> {
        self.ids.push(id);
        let text = crate::analysis::decode(self.tokenizer, &self.ids);
        if text.ends_with('\u{FFFD}') || text.len() < self.shown {
            return None;
        }
        let piece = text[self.shown..].to_string();
        self.shown = text.len();
        Some(piece)
    }
}

/// A turn at the decoding mode, process-wide and first come, first served. The columns'
/// workers decode one after the other instead of at once, so that each continuation and
/// each baseline is timed with the cores to itself (two decoders at once slow each other
/// down through the cache they share, and the two-thread paths would take turns with the
/// other column's threads). On the Austen models a continuation takes a few dozen
/// milliseconds, so the second column hardly waits.
struct DecodeTurn(u64);

static TURN_QUEUE: Mutex<VecDeque<u64>> = Mutex::new(VecDeque::new());
static TURN_CHANGED: Condvar = Condvar::new();
static NEXT_TURN: AtomicU64 = AtomicU64::new(0);

fn turn_queue() -> MutexGuard<'static, VecDeque<u64>> {
    TURN_QUEUE.lock().unwrap_or_else(|e| e.into_inner())
}

impl DecodeTurn {
    /// Waits for a turn; `None` when `stale()` turns true first (the request was superseded).
    fn wait(stale: &dyn Fn() -> bool) -> Option<Self> {
        let id = NEXT_TURN.fetch_add(1, Ordering::SeqCst);
        let mut queue = turn_queue();
        queue.push_back(id);
        loop {
            if queue.front() == Some(&id) {
                return Some(Self(id));
            }
            if stale() {
                queue.retain(|&t| t != id);
                TURN_CHANGED.notify_all();
                return None;
            }
            queue = TURN_CHANGED.wait_timeout(queue, Duration::from_millis(20)).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

impl Drop for DecodeTurn {
    fn drop(&mut self) {
        turn_queue().retain(|&t| t != self.0);
        TURN_CHANGED.notify_all();
    }
}

/// The decoding mode's command: stream pieces, then the summary, then the baseline.
#[allow(clippy::too_many_arguments)]
fn decode(
    ck: &Checkpoint,
    req: u64,
    prompt_ids: &[u32],
    method: DecodeMethod,
    max_new_tokens: usize,
    sampling: Sampling,
    emit: &mut dyn FnMut(WorkerReply) -> bool,
    stale: &dyn Fn() -> bool,
) -> bool {
    let eos = ck.eos_id();
    // Greedy decoding of a model whose rows keep to one core takes the two-thread paths, as
    // `generate --pipelined` does: there the one-thread rounds and checks are slower than
    // plain decoding, and the explorer would show a slowdown the command line does not have.
    let pipelined = matches!(sampling, Sampling::Greedy)
        && !matches!(method, DecodeMethod::EarlyExit { measure: ExitMeasure::Saturation, .. })
        && pipelining_pays(&ck.model);
    let Some(turn) = DecodeTurn::wait(stale) else { return true };
    // The classifier's reduced copies, made once per process, are made before the clock
    // starts: the first continuation would otherwise pay for them (9 ms of a 25 ms one on
    // the Austen models) and the baseline after it would not.
    if matches!(sampling, Sampling::Greedy) && crate::model::decoder::supported(&ck.model) {
        let checks = matches!(method, DecodeMethod::EarlyExit { measure: ExitMeasure::MaxProb, .. });
        let _ = crate::model::decoder::with_cpu_model(&ck.model, |m| {
            m.prepare_reduced_head(checks);
            // So is the 8-bit drafter's copy (3-5 ms for an Austen model, once per process).
            if let DecodeMethod::Speculative { int8: true, draft_layer, .. } = method {
                crate::model::decoder::QuantBlocks::of(m, draft_layer);
            }
            Ok(())
        });
    }
    let start = std::time::Instant::now();
    let mut split = PieceSplitter { tokenizer: &ck.tokenizer, ids: vec![], shown: 0 };
    let mut gone = false;
    let mut tokens = 0;
    let mut send = |id: u32, kind: PieceKind, drafts: DraftCounts| -> ControlFlow<()> {
        if stale() {
            return ControlFlow::Break(());
        }
        tokens += 1;
        if let Some(text) = split.push(id) {
            let reply =
                WorkerReply::DecodePiece { req, piece: Piece { text, kind }, tokens, seconds: start.elapsed().as_secs_f64(), drafts };
            if !emit(reply) {
                gone = true;
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    };
    let result = match method {
        DecodeMethod::EarlyExit { threshold, measure } => {
            let opts = EarlyExitOptions { threshold, measure, max_new_tokens, sampling, eos, pipelined };
            generate_early_exit(&ck.model, prompt_ids, &opts, |t, layer| send(t, PieceKind::Exit(layer), DraftCounts::default()))
                .map(|g| (g.ids.len(), g.stop, g.seconds, Some(g.speedup), None))
        }
        DecodeMethod::Speculative { draft_layer, draft_len, lookup, int8 } => {
            // Pipelined, `draft_len` bounds how far the drafts run ahead of the verified tokens.
            let opts = SpeculativeOptions { draft_layer, draft_len, draft_confidence: 0.0, max_new_tokens, sampling, eos, lookup, int8 };
            let on_token = |t, origin, counts| {
                let kind = match origin {
                    TokenOrigin::Accepted => PieceKind::Accepted,
                    TokenOrigin::Corrected { rejected } => {
                        PieceKind::Corrected { rejected: crate::analysis::lens::token_text(&ck.tokenizer, rejected) }
                    }
                    TokenOrigin::Bonus | TokenOrigin::Full => PieceKind::Full,
                };
                send(t, kind, counts)
            };
            match pipelined {
                true => generate_pipelined(&ck.model, prompt_ids, &opts, on_token),
                false => generate_speculative(&ck.model, prompt_ids, &opts, on_token),
            }
            .map(|g| (g.ids.len(), g.stop, g.seconds, None, Some(g.forward_passes)))
        }
    };
    if gone {
        return false;
    }
    let (n, stop, seconds, layer_speedup, forward_passes) = match result {
        Ok(r) => r,
        Err(e) => return emit(WorkerReply::GenerateFailed { req, message: crate::util::one_line(&e) }),
    };
    if stop == StopReason::Cancelled {
        return true;
    }
    if !emit(WorkerReply::DecodeDone { req, stop, tokens: n, seconds, layer_speedup, forward_passes, pipelined }) {
        return false;
    }
    drop(turn);
    // The baseline: full-depth decoding of as many tokens, same prompt and sampling, in a
    // turn of its own (after the other column's continuation, which waits for this one).
    let Some(_turn) = DecodeTurn::wait(stale) else { return true };
    let opts = GenerateOptions { exit_layer: ck.model.n_layer(), max_new_tokens: n, sampling, eos: None };
    let t = std::time::Instant::now();
    let mut cancelled = false;
    let r = generate(&ck.model, prompt_ids, &opts, |_| {
        if stale() {
            cancelled = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    match r {
        _ if cancelled || n == 0 => true,
        Ok(_) => emit(WorkerReply::DecodeBaseline { req, seconds: t.elapsed().as_secs_f64() }),
        Err(e) => emit(WorkerReply::GenerateFailed { req, message: format!("timing full-depth decoding: {}", crate::util::one_line(&e)) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_turns_are_first_come_first_served_and_a_superseded_request_leaves_the_queue() {
        let first = DecodeTurn::wait(&|| false).expect("a turn");
        // Superseded while waiting: it gives up its place instead of waiting on.
        assert!(DecodeTurn::wait(&|| true).is_none());
        let (tx, rx) = mpsc::channel();
        let waiter = thread::spawn(move || {
            let _turn = DecodeTurn::wait(&|| false).expect("a turn");
            tx.send(()).unwrap();
        });
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "the second turn came before the first ended");
        drop(first);
        rx.recv_timeout(Duration::from_secs(10)).expect("the second turn once the first ended");
        waiter.join().unwrap();
    }
}
