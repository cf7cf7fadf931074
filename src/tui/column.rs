//! One checkpoint shown in a column (A, B): what its worker has answered, and how each
//! reply is folded into it.

use super::worker::{DecodeMethod, ModelInfo, Piece, WorkerReply};
use crate::analysis::eval::EvalReport;
use crate::analysis::generate::StopReason;
use crate::analysis::inspect::PromptAnalysis;
use crate::analysis::speculative::DraftCounts;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What the rest of the explorer has to do after a column folded a reply in.
#[derive(Debug, Clone, PartialEq)]
pub enum Folded {
    /// Nothing beyond the column's own state.
    Quiet,
    /// The checkpoint loaded: analyze the prompt with it.
    Loaded,
    /// A fresh analysis of the prompt arrived.
    Analyzed,
    /// Something failed; the message belongs on the status line.
    Failed(String),
}

/// The continuation generated from one exit layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerOutput {
    pub text: String,
    pub tokens: usize,
    /// `None` while it is still streaming.
    pub stop: Option<StopReason>,
}

/// The continuation of the generation view's decoding mode (early exit or speculative),
/// token by token with where each came from.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeOutput {
    pub method: DecodeMethod,
    pub pieces: Vec<Piece>,
    pub tokens: usize,
    /// Seconds since the decoding started (at the last token; the total once done).
    pub seconds: f64,
    pub drafts: DraftCounts,
    /// `None` while it is still streaming.
    pub stop: Option<StopReason>,
    /// Early exit: the layer speedup of the finished continuation.
    pub layer_speedup: Option<f64>,
    /// Speculative: passes through the full depth.
    pub forward_passes: Option<usize>,
    /// Seconds of full-depth decoding of as many tokens, timed after the continuation.
    pub baseline: Option<f64>,
    /// Decoded on two threads (known once done): speculative decoding pipelined, or early
    /// exit with its checks on a second thread.
    pub pipelined: bool,
}

impl DecodeOutput {
    pub fn new(method: DecodeMethod) -> Self {
        Self {
            method,
            pieces: vec![],
            tokens: 0,
            seconds: 0.0,
            drafts: DraftCounts::default(),
            stop: None,
            layer_speedup: None,
            forward_passes: None,
            baseline: None,
            pipelined: false,
        }
    }

    /// Tokens per second so far (`None` before the first token is timed).
    pub fn tokens_per_second(&self) -> Option<f64> {
        (self.seconds > 0.0 && self.tokens > 0).then(|| self.tokens as f64 / self.seconds)
    }

    /// The wall-clock speedup over full-depth decoding, once the baseline is timed.
    pub fn speedup(&self) -> Option<f64> {
        self.baseline.filter(|_| self.seconds > 0.0).map(|b| b / self.seconds)
    }

    /// `accepted / drafted`; `None` when nothing was drafted.
    pub fn acceptance(&self) -> Option<f64> {
        (self.drafts.drafted > 0).then(|| self.drafts.accepted as f64 / self.drafts.drafted as f64)
    }

    /// Early exit: the layer speedup of the pieces so far (`sum L / sum exit layer`).
    pub fn running_layer_speedup(&self, n_layer: usize) -> Option<f64> {
        let exits: Vec<usize> =
            self.pieces.iter().filter_map(|p| if let super::worker::PieceKind::Exit(l) = p.kind { Some(l) } else { None }).collect();
        (!exits.is_empty()).then(|| crate::analysis::early_exit::exit_speedup(&exits, n_layer))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum EvalState {
    NotStarted,
    Running { done: usize, total: usize },
    Done { report: EvalReport, data: PathBuf },
    Failed(String),
}

/// One checkpoint shown in a column (A, B), and what its worker has answered.
#[derive(Debug, Clone)]
pub struct Column {
    pub worker: u64,
    /// `None` while the checkpoint loads.
    pub info: Option<ModelInfo>,
    /// What was asked for when loading (a name or a path).
    pub spec: String,
    pub analysis: Option<PromptAnalysis>,
    pub analysis_req: u64,
    pub analyzing: bool,
    pub gen_req: u64,
    pub generating: bool,
    /// The last exit layer of the running generation request.
    pub gen_last_layer: usize,
    /// Continuations of the current prompt and sampling, by exit layer.
    pub outputs: BTreeMap<usize, LayerOutput>,
    /// The decoding mode's continuation (early exit or speculative), for its settings.
    pub decoded: Option<DecodeOutput>,
    pub eval_req: u64,
    pub eval: EvalState,
    /// The last engine error of this column, shown in its panels.
    pub error: Option<String>,
}

impl Column {
    pub fn new(worker: u64, spec: &str, info: Option<ModelInfo>) -> Self {
        Self {
            worker,
            info,
            spec: spec.to_string(),
            analysis: None,
            analysis_req: 0,
            analyzing: false,
            gen_req: 0,
            generating: false,
            gen_last_layer: 0,
            outputs: BTreeMap::new(),
            decoded: None,
            eval_req: 0,
            eval: EvalState::NotStarted,
            error: None,
        }
    }

    /// The checkpoint as it was asked for (a name, a path or a hub id).
    pub fn name(&self) -> &str {
        self.info.as_ref().map_or(self.spec.as_str(), |i| i.name.as_str())
    }

    /// The name for titles (see [`crate::paths::short_name`]).
    pub fn short_name(&self) -> String {
        crate::paths::short_name(self.name())
    }

    pub fn n_layer(&self) -> usize {
        self.info.as_ref().map_or(0, |i| i.n_layer)
    }

    pub fn loading(&self) -> bool {
        self.info.is_none()
    }

    /// The layer this column shows when the explorer is at `layer` (a shallower model
    /// stops at its last layer).
    pub fn layer_at(&self, layer: usize) -> usize {
        layer.min(self.n_layer())
    }

    pub fn position_at(&self, position: usize) -> usize {
        match &self.analysis {
            Some(a) => position.min(a.input_ids.len().saturating_sub(1)),
            None => position,
        }
    }

    /// Folds a reply of this column's worker in; replies to superseded requests are
    /// dropped. Returns what the rest of the explorer has to do about it.
    pub fn fold(&mut self, reply: WorkerReply) -> Folded {
        match reply {
            WorkerReply::Loaded(info) => {
                self.spec = info.name.clone();
                self.info = Some(info);
                self.error = None;
                Folded::Loaded
            }
            WorkerReply::LoadFailed(e) => {
                // Keep the column so the user sees what failed; it answers nothing.
                self.error = Some(e.clone());
                self.info = None;
                self.spec = format!("{} (failed)", self.spec);
                self.analyzing = false;
                Folded::Failed(e)
            }
            WorkerReply::Analysis { req, result } => {
                if req != self.analysis_req {
                    return Folded::Quiet;
                }
                self.analyzing = false;
                match result {
                    Ok(a) => {
                        self.analysis = Some(a);
                        self.outputs.clear();
                        self.decoded = None;
                        self.error = None;
                        Folded::Analyzed
                    }
                    Err(e) => {
                        // The last prompt's analysis goes with it: kept, its tokens were
                        // continued under the new prompt's text in the generation view.
                        self.analysis = None;
                        self.error = Some(e.clone());
                        Folded::Failed(e)
                    }
                }
            }
            WorkerReply::Token { req, layer, text, tokens } => {
                if req == self.gen_req {
                    self.outputs.insert(layer, LayerOutput { text, tokens, stop: None });
                }
                Folded::Quiet
            }
            WorkerReply::LayerDone { req, layer, text, tokens, stop } => {
                if req == self.gen_req {
                    self.outputs.insert(layer, LayerOutput { text, tokens, stop: Some(stop) });
                    if layer == self.gen_last_layer {
                        self.generating = false;
                    }
                }
                Folded::Quiet
            }
            WorkerReply::DecodePiece { req, piece, tokens, seconds, drafts } => {
                if req == self.gen_req
                    && let Some(d) = &mut self.decoded
                {
                    d.pieces.push(piece);
                    d.tokens = tokens;
                    d.seconds = seconds;
                    d.drafts = drafts;
                }
                Folded::Quiet
            }
            WorkerReply::DecodeDone { req, stop, tokens, seconds, layer_speedup, forward_passes, pipelined } => {
                if req == self.gen_req
                    && let Some(d) = &mut self.decoded
                {
                    d.stop = Some(stop);
                    d.tokens = tokens;
                    d.seconds = seconds;
                    d.layer_speedup = layer_speedup;
                    d.forward_passes = forward_passes;
                    d.pipelined = pipelined;
                    self.generating = false;
                }
                Folded::Quiet
            }
            WorkerReply::DecodeBaseline { req, seconds } => {
                if req == self.gen_req
                    && let Some(d) = &mut self.decoded
                {
                    d.baseline = Some(seconds);
                }
                Folded::Quiet
            }
            WorkerReply::GenerateFailed { req, message } => {
                if req != self.gen_req {
                    return Folded::Quiet;
                }
                self.generating = false;
                Folded::Failed(message)
            }
            WorkerReply::Crashed { req, message } => {
                if req == self.analysis_req {
                    self.analyzing = false;
                    self.error = Some(message.clone());
                }
                if req == self.gen_req {
                    self.generating = false;
                }
                if req == self.eval_req && matches!(self.eval, EvalState::Running { .. }) {
                    self.eval = EvalState::Failed(message.clone());
                }
                Folded::Failed(message)
            }
            WorkerReply::EvalProgress { req, done, total } => {
                if req == self.eval_req {
                    self.eval = EvalState::Running { done, total };
                }
                Folded::Quiet
            }
            WorkerReply::EvalDone { req, data, result } => {
                if req != self.eval_req {
                    return Folded::Quiet;
                }
                match result {
                    Ok(report) => {
                        self.eval = EvalState::Done { report, data };
                        Folded::Quiet
                    }
                    Err(e) => {
                        self.eval = EvalState::Failed(e.clone());
                        Folded::Failed(e)
                    }
                }
            }
        }
    }
}
