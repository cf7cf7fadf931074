//! Max-prob early exit with the checks on a second thread (`generate --early-exit τ
//! --pipelined`). On one core each layer a token passes costs a block and a check (about
//! 0.6 of a block on the Austen models, through the classifier's 8-bit copy), so a token
//! that leaves at layer 8 of 12 costs more than one that runs all 12 without checks. Here
//! the calling thread runs the blocks without waiting, handing each layer's residual to a
//! checking thread; the checker applies the same check, layer after layer, and reports the
//! first layer whose confidence reaches the threshold. The runner leaves the block it is in
//! at its next part (`Decoder::block_until`), drops what it ran past that layer (those
//! blocks' keys and values at this position) and takes the checker's token; the checker
//! then computes the keys and values of the blocks above from the exit state, as the
//! one-thread path does (state copying), while the runner starts the next token, which
//! stores each block's before running it.
//! A token that reaches the last layer waits only for the checks still running.
//!
//! Greedy only, and the same tokens at the same exit layers as the one-thread path: every
//! decision is the same check on the same residual (computed by the same row kernels), the
//! first layer that passes wins, and the caches end up as the one-thread path leaves them.
//! It pays where plain decoding leaves the second core idle (models whose layers each run
//! on one core, `CpuModel::rows_use_one_thread`); where a row already uses both cores the
//! checker competes with the blocks for them.

use super::{EarlyExitGeneration, EarlyExitOptions, Emitter, MaxProbExit, empty, max_prob_exit};
use crate::analysis::generate::{Sampling, StopReason, TokenPicker};
use crate::analysis::pipelined::StopOnDrop;
use crate::model::decoder::{self, CpuModel, Decoder};
use anyhow::{Result, anyhow, bail};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};

/// A residual to check: `h^layer` of the `token`-th generated token, fed at `pos`.
struct Row {
    token: usize,
    layer: usize,
    pos: usize,
    h: Vec<f32>,
}

/// Keys and values of block `block` at `pos` computed from an exit state
/// (`CpuModel::kv_columns`), for the runner to store.
struct Fill {
    block: usize,
    pos: usize,
    kv: Vec<f32>,
}

/// The checker's verdict on a [`Row`]: `exit` holds the token when the row's confidence
/// reaches the threshold.
struct Verdict {
    token: usize,
    layer: usize,
    exit: Option<u32>,
}

/// Spins before a waiting thread yields its core: a thread woken through the kernel takes
/// 30-45 µs on the machines measured, most of a block on the Austen models.
const SPINS_BEFORE_YIELD: u32 = 1 << 14;

/// The checking thread: checks rows in the order they come, skipping the rest of a token's
/// rows once one of them exits; after an exit it computes the keys and values of the blocks
/// above from the exit state, block by block, while the runner goes on to the next token.
fn check_rows(
    m: &CpuModel,
    threshold: f64,
    reduced: bool,
    stop: &AtomicBool,
    rows: Receiver<Row>,
    verdicts: Sender<Verdict>,
    fills: Sender<Fill>,
) {
    let (mut logits, mut normed, mut kv) = (Vec::new(), Vec::new(), Vec::new());
    let mut exited = None;
    let mut idle = 0u32;
    loop {
        match rows.try_recv() {
            Ok(row) => {
                idle = 0;
                if exited == Some(row.token) {
                    continue;
                }
                let exit = match max_prob_exit(m, &row.h, threshold, reduced, &mut logits) {
                    MaxProbExit::Stays => None,
                    MaxProbExit::LeavesWith(t) => Some(t),
                    MaxProbExit::LeavesOnLogits => Some(decoder::argmax(&logits)),
                };
                if exit.is_some() {
                    exited = Some(row.token);
                }
                if verdicts.send(Verdict { token: row.token, layer: row.layer, exit }).is_err() {
                    return;
                }
                if exit.is_some() {
                    for block in row.layer..m.n_layer {
                        m.kv_columns(block, &row.h, &mut normed, &mut kv);
                        if fills.send(Fill { block, pos: row.pos, kv: kv.clone() }).is_err() {
                            return;
                        }
                    }
                }
            }
            Err(TryRecvError::Empty) => {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                wait(&mut idle);
            }
            Err(TryRecvError::Disconnected) => return,
        }
    }
}

/// One round of waiting: a spin, or after [`SPINS_BEFORE_YIELD`] of them a yield.
fn wait(idle: &mut u32) {
    *idle += 1;
    if *idle < SPINS_BEFORE_YIELD {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// What the runner knows of the current token's checks: layers `1..=below` stay below the
/// threshold; `exit` is the first that reaches it, with its token.
#[derive(Default)]
struct Decided {
    below: usize,
    exit: Option<(usize, u32)>,
}

impl Decided {
    /// Takes in the verdicts that have arrived for `token` (in layer order); with `block`,
    /// waits for one first. Fails when the checker has gone.
    fn update(&mut self, verdicts: &Receiver<Verdict>, token: usize, mut block: bool) -> Result<()> {
        let mut idle = 0u32;
        loop {
            match verdicts.try_recv() {
                Ok(v) if v.token == token => {
                    match v.exit {
                        Some(t) => self.exit = Some((v.layer, t)),
                        None => self.below = v.layer,
                    }
                    block = false;
                }
                Ok(_) => {}
                Err(TryRecvError::Empty) if block => wait(&mut idle),
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => bail!("the checking thread stopped"),
            }
        }
    }
}

/// Stores the keys and values the checker computed from exit states, in the order they
/// come, until block `block` holds the positions before `pos`.
fn store_fills(dec: &mut Decoder, fills: &Receiver<Fill>, block: usize, pos: usize) -> Result<()> {
    let mut idle = 0u32;
    while dec.filled(block) < pos {
        match fills.try_recv() {
            Ok(f) => dec.store_kv_columns(f.block, &f.kv, f.pos)?,
            Err(TryRecvError::Empty) => wait(&mut idle),
            Err(TryRecvError::Disconnected) => bail!("the checking thread stopped"),
        }
    }
    Ok(())
}

/// [`super::generate_early_exit`] with `pipelined`, on the CPU engine's weights.
pub(super) fn run(
    m: &CpuModel,
    prompt: &[u32],
    opts: &EarlyExitOptions,
    on_token: impl FnMut(u32, usize) -> ControlFlow<()>,
) -> Result<EarlyExitGeneration> {
    if !matches!(opts.sampling, Sampling::Greedy) {
        bail!("pipelined early exit is greedy only")
    }
    if opts.measure != super::ExitMeasure::MaxProb {
        bail!("pipelined early exit checks the max-prob measure on a second thread; saturation costs nothing to check")
    }
    let (n_layer, d) = (m.n_layer, m.d);
    let mut out = Emitter { g: empty(), opts, on_token };
    if opts.max_new_tokens == 0 {
        return Ok(out.g);
    }
    let mut dec = Decoder::new(m);
    let mut logits = Vec::new();
    let mut x = dec.embed(prompt, 0)?;
    dec.blocks(0, n_layer, &mut x, 0)?;
    dec.logits(&x[x.len() - d..], &mut logits);
    let first = TokenPicker::new(&opts.sampling).pick(&logits)?;
    let greedy_tokens = opts.sampling.greedy_tokens(opts.max_new_tokens);
    let reduced_checks = opts.max_new_tokens >= decoder::REDUCED_HEAD_MIN_TOKENS;
    let stop = AtomicBool::new(false);
    let (row_tx, row_rx) = mpsc::channel::<Row>();
    let (verdict_tx, verdict_rx) = mpsc::channel::<Verdict>();
    let (fill_tx, fill_rx) = mpsc::channel::<Fill>();
    std::thread::scope(|s| -> Result<()> {
        let stop = &stop;
        let checking = s.spawn(move || check_rows(m, opts.threshold, reduced_checks, stop, row_rx, verdict_tx, fill_tx));
        let guard = StopOnDrop(stop);
        let ran = (|| -> Result<()> {
            let (mut next, mut layer, mut pos) = (first, n_layer, prompt.len());
            let mut token = 0;
            while out.emit(next, layer) {
                if pos >= m.n_positions {
                    out.g.stop = StopReason::ContextFull;
                    break;
                }
                token += 1;
                let mut x = dec.embed(&[next], pos)?;
                let mut decided = Decided::default();
                let mut ran = 0;
                for l in 0..n_layer {
                    store_fills(&mut dec, &fill_rx, l, pos)?;
                    ran = l + 1;
                    // A block is left part-way as soon as a lower layer's check lets the token leave.
                    let whole =
                        dec.block_until(l, &mut x, pos, || decided.update(&verdict_rx, token, false).is_err() || decided.exit.is_some())?;
                    decided.update(&verdict_rx, token, false)?;
                    if !whole || decided.exit.is_some() {
                        break;
                    }
                    if ran < n_layer {
                        row_tx.send(Row { token, layer: ran, pos, h: x.clone() }).map_err(|_| anyhow!("the checking thread stopped"))?;
                    }
                }
                while decided.exit.is_none() && decided.below + 1 < n_layer {
                    decided.update(&verdict_rx, token, true)?;
                }
                match decided.exit {
                    Some((j, t)) => {
                        // Blocks j+1..ran ran on this position past the exit: drop their keys
                        // and values there. The checker fills every block above j from h^j,
                        // and the next token stores each before it runs that block.
                        for b in j..ran {
                            dec.truncate_block(b, pos);
                        }
                        (next, layer) = (t, j);
                    }
                    None => {
                        next = if greedy_tokens {
                            dec.greedy_token(&x)
                        } else {
                            dec.logits(&x, &mut logits);
                            decoder::argmax(&logits)
                        };
                        layer = n_layer;
                    }
                }
                pos += 1;
            }
            Ok(())
        })();
        drop(row_tx);
        drop(guard);
        checking.join().map_err(|_| anyhow!("the checking thread panicked"))?;
        ran
    })?;
    Ok(out.g)
}
