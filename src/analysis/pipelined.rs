//! Self-speculative decoding on two threads (`generate --speculative E --pipelined`): the
//! drafting thread runs blocks `1..E` and the shared classifier token after token, feeding
//! each draft straight back in, while the calling thread runs blocks `E+1..L` and the head
//! on whatever rows the drafter has handed over, in one pass, and checks each row's token
//! against the draft the next row was fed. A wrong draft sends the drafter a correction (a
//! new epoch, the position and the full model's token); both threads roll their caches back
//! to it and the drafter's rows of the old epoch are dropped. The idea is PEARL's (Liu et
//! al. 2024, parallel speculative decoding): drafting and verifying overlap, so a round no
//! longer pays the drafts and the verification one after the other — on a CPU whose second
//! core plain batch-1 decoding of a small model cannot use.
//!
//! Greedy only, and lossless the same way as [`super::speculative`]: every row the
//! verifier keeps was fed the full model's own token and is computed by the same row
//! kernels at the same position as in plain decoding, so the output is plain greedy
//! decoding's, token for token. `draft_len` bounds how far the drafter may run ahead of the
//! last verified position. `drafted` counts the drafts the verifier judged (accepted or
//! corrected): the drafter's work past a wrong draft is void, not judged, so acceptance is
//! how often a draft from blocks `1..E` after the full model's own tokens is right.
//!
//! With `lookup`, where the text repeats itself the drafter runs the repeat's next few
//! tokens through its blocks together with the row it was fed (see [`run_extra`]), and the
//! verifier checks them in one pass: a bunch of rows costs little more than one.
//!
//! With `int8`, the drafter runs the blocks after E and the classifier through the model's
//! own 8-bit copies ([`decoder::QuantBlocks`], with their own keys and values) and drafts
//! that approximate full-depth model's token: right nearly always (99.3-99.4% of drafts
//! accepted on the Austen models in `bench --what decode`, against 63% from layer 6), and E may be 0 — the drafter then hands
//! over bare embeddings and the verifier runs every block, on several rows per pass. With
//! `lookup` too, a repeat's next tokens go through the copy in one pass with the drafted
//! row, and those the copy agrees with are handed over with it.
//!
//! Both threads wait by spinning (a thread woken through the kernel takes 30–45 µs on the
//! machines measured, a tenth of a draft on the Austen models).

use super::generate::StopReason;
use super::lookup;
use super::speculative::{DraftCounts, SpeculativeGeneration, SpeculativeOptions, TokenOrigin};
use crate::model::decoder::{self, Assist, CpuModel, Decoder};
use anyhow::{Result, anyhow, bail};
use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::time::Instant;

/// A row the drafter hands over: `h^E` of `token` fed at `pos`, in drafting epoch `epoch`;
/// `repeat`: the token was drafted from the text's repeats (`lookup`).
struct DraftRow {
    epoch: usize,
    pos: usize,
    token: u32,
    repeat: bool,
    h: Vec<f32>,
}

/// A correction from the verifier: from `pos` on, the drafter's rows were fed a wrong draft;
/// the full model's token there is `token`, and rows of earlier epochs are void.
#[derive(Clone, Copy)]
struct Fix {
    epoch: usize,
    pos: usize,
    token: u32,
}

/// What the two threads share besides the channels.
struct Shared {
    /// The latest epoch (bumped with each correction, after the correction is sent).
    epoch: AtomicUsize,
    /// Positions the verifier's caches hold: the drafter stays within `draft_len` of it.
    verified: AtomicUsize,
    /// Set when the verifier is done, however it ends: the drafter returns.
    stop: AtomicBool,
    /// The drafter's latest draft as soon as its head has picked it, before the row fed
    /// with it is done ([`pack`]): a verifier holding that position's token rejects a wrong
    /// draft at once, and the drafter drops the row at the next part of a block.
    draft: AtomicU64,
}

/// Bits of the epoch, the position and the token in [`Shared::draft`]; one more says
/// whether the draft came from the text's repeats.
const EPOCH_BITS: u32 = 19;
const POS_BITS: u32 = 20;
const TOKEN_BITS: u32 = 24;
const REPEAT_BIT: u64 = 1 << 63;

/// `(epoch, pos, token, repeat)` in one word; the epoch is kept modulo 2^19 (the drafter's
/// latest epoch is never more than one behind the verifier's). `None` where a position or
/// token does not fit (the largest position is left out, so no word is `u64::MAX`, "none
/// yet"): then no draft is published and wrong drafts are found when their row comes.
fn pack(epoch: usize, pos: usize, token: u32, repeat: bool) -> Option<u64> {
    (pos < (1 << POS_BITS) - 1 && (token as u64) < 1 << TOKEN_BITS).then_some(
        if repeat { REPEAT_BIT } else { 0 }
            | ((epoch as u64 & ((1 << EPOCH_BITS) - 1)) << (POS_BITS + TOKEN_BITS))
            | ((pos as u64) << TOKEN_BITS)
            | token as u64,
    )
}

/// The published draft at `pos` in `epoch` and whether it came from the repeats, if the
/// latest one is that.
fn published(word: u64, epoch: usize, pos: usize) -> Option<(u32, bool)> {
    let at = ((epoch as u64 & ((1 << EPOCH_BITS) - 1)) << POS_BITS) | pos as u64;
    (word != u64::MAX && (word & !REPEAT_BIT) >> TOKEN_BITS == at)
        .then_some(((word & ((1 << TOKEN_BITS) - 1)) as u32, word & REPEAT_BIT != 0))
}

/// The greedy token of one row, as plain greedy decoding picks it (see
/// [`crate::analysis::generate`]): through [`Decoder::greedy_token`] where plain decoding
/// uses it, else the argmax of the logits — the same token either way.
fn greedy(dec: &Decoder, row: &[f32], greedy_tokens: bool, logits: &mut Vec<f32>) -> u32 {
    if greedy_tokens {
        dec.greedy_token(row)
    } else {
        dec.logits(row, logits);
        decoder::argmax(logits)
    }
}

/// [`super::speculative::generate_pipelined`] on the CPU engine's weights.
pub(crate) fn run(
    m: &CpuModel,
    prompt: &[u32],
    opts: &SpeculativeOptions,
    mut on_token: impl FnMut(u32, TokenOrigin, DraftCounts) -> ControlFlow<()>,
) -> Result<SpeculativeGeneration> {
    if !matches!(opts.sampling, super::generate::Sampling::Greedy) {
        bail!("pipelined speculative decoding is greedy only")
    }
    if opts.draft_confidence > 0.0 {
        bail!("pipelined speculative decoding drafts every token: it takes no draft confidence")
    }
    let start = Instant::now();
    let (n_layer, e, d) = (m.n_layer, opts.draft_layer, m.d);
    let greedy_tokens = opts.sampling.greedy_tokens(opts.max_new_tokens);
    let mut g = SpeculativeGeneration::start(opts);
    if opts.max_new_tokens == 0 {
        return Ok(g);
    }
    // The prompt through the full model, as plain decoding runs it: the drafter's decoder
    // holds blocks 1..E, the verifier's the rest. The drafter's thread runs the prompt
    // through its 8-bit copy of blocks E+1..L (with `int8`) while the verifier runs it
    // through the model's; it learns the full model's first token through its channel.
    let mut drafter = Decoder::new(m);
    let mut dec = Decoder::new(m);
    let mut logits = Vec::new();
    let mut x = drafter.embed(prompt, 0)?;
    drafter.blocks(0, e, &mut x, 0)?;
    let quant = opts.int8.then(|| decoder::QuantBlocks::of(m, e));
    let n0 = prompt.len();
    let shared = Shared {
        epoch: AtomicUsize::new(0),
        verified: AtomicUsize::new(n0),
        stop: AtomicBool::new(false),
        draft: AtomicU64::new(u64::MAX),
    };
    // The last position a row is fed at: the last token is never fed, nor one past the context.
    let last_pos = (n0 + opts.max_new_tokens - 2).min(m.n_positions - 1);
    let (row_tx, row_rx) = mpsc::channel::<DraftRow>();
    let (fix_tx, fix_rx) = mpsc::channel::<Fix>();
    let plan = DraftPlan { layer: e, last_pos, lookahead: opts.draft_len, greedy_tokens, lookup: opts.lookup };
    // The verifier lends the drafter a hand whenever it waits for a row — most of all after a
    // wrong draft, while the drafter recomputes the corrected row — computing half of each of
    // the drafter's products: six Austen blocks on one row took 1.0-1.35x less time so, and
    // pipelined decoding from layer 6 with --lookup gained about 3% (alternating rounds in
    // both orders, 2026-11-30).
    let assist = &Assist::new();
    std::thread::scope(|s| -> Result<()> {
        let shared = &shared;
        let approx = quant.as_deref().map(|q| (Decoder::approximate(m, q), x.clone()));
        // A drafter that fails drops its channel: the verifier finds it disconnected.
        let drafting = s.spawn(move || draft(drafter, approx, shared, &plan, prompt, row_tx, fix_rx, assist));
        let stop = StopOnDrop(&shared.stop);
        let verified = (|| {
            dec.blocks(e, n_layer, &mut x, 0)?;
            g.forward_passes += 1;
            let first = greedy(&dec, &x[x.len() - d..], greedy_tokens, &mut logits);
            // The drafter starts from the full model's first token.
            let _ = fix_tx.send(Fix { epoch: 0, pos: n0, token: first });
            verify(&mut dec, &mut g, shared, first, n0, greedy_tokens, &row_rx, &fix_tx, opts, assist, &mut on_token)
        })();
        drop(stop);
        let drafted = drafting.join().map_err(|_| anyhow!("the drafting thread panicked"))?;
        // The drafter's error explains a verifier that lost its rows.
        drafted?;
        verified
    })?;
    g.seconds = start.elapsed().as_secs_f64();
    Ok(g)
}

/// Sets the flag when dropped, so a helper thread (the drafter here, the checker of
/// pipelined early exit) stops however the calling thread leaves — a panicking `on_token`
/// included — and the scope's join does not wait forever on a thread that spins.
pub(crate) struct StopOnDrop<'a>(pub(crate) &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// What the drafting thread runs: blocks `1..=layer`, rows up to position `last_pos`, at
/// most `lookahead` positions past the verified ones.
#[derive(Clone, Copy)]
struct DraftPlan {
    layer: usize,
    last_pos: usize,
    lookahead: usize,
    greedy_tokens: bool,
    /// Draft from the text's repeats where they are long enough ([`lookup::lookup_draft`]).
    lookup: bool,
}

/// Rows beyond the first the drafter runs through its blocks in one pass where the text
/// repeats itself, by the repeat's length: rows cost far less together than apart (the
/// weights are read once: nine rows through an Austen block take 3x one row), so a draft
/// from the repeat that is right half the time or more is worth its row. Along the decode
/// benchmark's greedy continuations of austen-aligned, the token after a right one from the
/// same repeat was right 61-67% of the time for repeats of 2-3 tokens, 76% for 4-15, and
/// 91% from 16 on.
fn run_extra(repeat_len: usize) -> usize {
    match repeat_len {
        0..=3 => 1,
        4..=15 => 2,
        _ => 6,
    }
}

/// The drafting thread: blocks 1..E and the head, token after token, from the first
/// [`Fix`] it receives on (after `prompt`), offering half of each product to the verifier
/// through `assist`. With `approx` (a decoder over the 8-bit copies of blocks E+1..L, and the
/// prompt's rows at layer E), drafts come from those copies.
#[allow(clippy::too_many_arguments)]
fn draft(
    mut dec: Decoder,
    approx: Option<(Decoder, Vec<f32>)>,
    shared: &Shared,
    plan: &DraftPlan,
    prompt: &[u32],
    rows: mpsc::Sender<DraftRow>,
    fixes: mpsc::Receiver<Fix>,
    assist: &Assist,
) -> Result<()> {
    let DraftPlan { layer: e, last_pos, lookahead, greedy_tokens, lookup } = *plan;
    let (d, n_layer) = (dec.model.d, dec.model.n_layer);
    let mut approx = match approx {
        Some((mut a, mut x)) => {
            a.blocks(e, n_layer, &mut x, 0)?;
            Some(a)
        }
        None => None,
    };
    let quant = approx.as_ref().and_then(|a| a.quant());
    let (mut logits, mut scratch) = (Vec::new(), Vec::new());
    // The full model's first token; none when the verifier stopped before it.
    let mut fix = loop {
        match fixes.try_recv() {
            Ok(f) => break f,
            Err(TryRecvError::Empty) if !shared.stop.load(Ordering::Acquire) => std::hint::spin_loop(),
            Err(_) => return Ok(()),
        }
    };
    let (mut pos, mut token, mut repeat) = (fix.pos, fix.token, false);
    // The tokens fed so far, position by position (for the repeats).
    let mut context = prompt.to_vec();
    'rows: while !shared.stop.load(Ordering::Acquire) {
        if shared.epoch.load(Ordering::Acquire) != fix.epoch {
            // The correction of the latest epoch was sent before the epoch was bumped.
            while let Ok(f) = fixes.try_recv() {
                fix = f;
            }
            dec.truncate(fix.pos);
            if let Some(a) = approx.as_mut() {
                a.truncate(fix.pos);
            }
            (pos, token, repeat) = (fix.pos, fix.token, false);
            continue;
        }
        if pos > last_pos || pos > shared.verified.load(Ordering::Acquire) + lookahead {
            std::hint::spin_loop();
            continue;
        }
        // The row for `token` and, with `lookup`, the tokens that followed the repeat it
        // continues, as far as the bounds allow: one pass through the blocks for the run
        // (rows cost far less together than apart, the weights read once), and the verifier
        // checks them in one pass too. A wrong draft among them voids the rest.
        if lookup {
            context.truncate(pos);
            context.push(token);
        }
        let room = last_pos.min(shared.verified.load(Ordering::Acquire) + lookahead) - pos;
        let repeat_run = match lookup.then(|| lookup::find_repeat(&context, lookup::MIN_MATCH)).flatten() {
            Some(r) => &context[r.next..r.next + run_extra(r.len).min(room).min(context.len() - r.next)],
            None => &[][..],
        };
        let mut run_tokens: Vec<u32> = std::iter::once(token).chain(repeat_run.iter().copied()).collect();
        let mut x = dec.embed(&run_tokens, pos)?;
        for l in 0..e {
            // A correction voids these rows: drop them at the next part of a block rather than
            // finish them (their keys and values go with the truncation to the corrected position).
            let voided = || shared.epoch.load(Ordering::Relaxed) != fix.epoch;
            if voided() || !dec.block_assisted(l, &mut x, pos, voided, Some(assist))? {
                continue 'rows;
            }
        }
        let send = |i: usize, t: u32| {
            let row = DraftRow { epoch: fix.epoch, pos: pos + i, token: t, repeat: i > 0 || repeat, h: x[i * d..(i + 1) * d].to_vec() };
            rows.send(row).is_ok()
        };
        // The rows go out before the next draft is picked: the verifier starts on them
        // meanwhile. With the 8-bit copy, the first at once, and those of the repeat once
        // the copy has checked them.
        let sent = if approx.is_some() { 1 } else { run_tokens.len() };
        for (i, &t) in run_tokens[..sent].iter().enumerate() {
            if !send(i, t) {
                return Ok(()); // the verifier is done
            }
        }
        // With the 8-bit copy, the next draft is its token after the last row handed over; a
        // repeat's token it does not agree with is dropped, and those after it.
        let mut pick = None;
        if let (Some(a), Some(q)) = (approx.as_mut(), quant) {
            let mut xa = x.clone();
            a.blocks(e, n_layer, &mut xa, pos)?;
            let picks = q.greedy_tokens(dec.model, &xa, &mut scratch, &mut logits);
            let agreed = picks.iter().zip(&run_tokens[1..]).take_while(|(p, t)| p == t).count();
            if agreed + 1 < run_tokens.len() {
                run_tokens.truncate(agreed + 1);
                dec.truncate(pos + agreed + 1);
                a.truncate(pos + agreed + 1);
            }
            for (i, &t) in run_tokens.iter().enumerate().skip(1) {
                if !send(i, t) {
                    return Ok(());
                }
            }
            pick = Some(picks[agreed]);
        }
        if lookup {
            context.extend_from_slice(&run_tokens[1..]);
        }
        let pos_last = pos + run_tokens.len() - 1;
        let next = (pos_last < last_pos).then(|| match pick {
            Some(t) => (t, false),
            None => match lookup.then(|| lookup::lookup_draft(&context, lookup::MIN_MATCH)).flatten() {
                Some(t) => (t, true),
                None => (greedy(&dec, &x[(run_tokens.len() - 1) * d..], greedy_tokens, &mut logits), false),
            },
        });
        if let Some(word) = next.and_then(|(t, r)| pack(fix.epoch, pos_last + 1, t, r)) {
            shared.draft.store(word, Ordering::Release);
        }
        match next {
            Some((t, r)) => (pos, token, repeat) = (pos_last + 1, t, r),
            None => pos = pos_last + 1, // the last row: wait for the end
        }
    }
    Ok(())
}

/// The verifying side, on the calling thread: blocks E+1..L and the head on the rows the
/// drafter has handed over, the tokens emitted as each is known to be drafted right or not.
#[allow(clippy::too_many_arguments)]
fn verify(
    dec: &mut Decoder,
    g: &mut SpeculativeGeneration,
    shared: &Shared,
    first: u32,
    n0: usize,
    greedy_tokens: bool,
    rows: &mpsc::Receiver<DraftRow>,
    fixes: &mpsc::Sender<Fix>,
    opts: &SpeculativeOptions,
    assist: &Assist,
    on_token: &mut impl FnMut(u32, TokenOrigin, DraftCounts) -> ControlFlow<()>,
) -> Result<()> {
    let (m, e) = (dec.model, g.draft_layer);
    let (n_layer, d) = (m.n_layer, m.d);
    // Emits a token, counting the draft it judges (`repeat`: one from the text's repeats);
    // false when generation ends here.
    let mut emit = |g: &mut SpeculativeGeneration, t: u32, origin: TokenOrigin, repeat: bool| -> bool {
        match origin {
            TokenOrigin::Accepted => g.judge(repeat, true),
            TokenOrigin::Corrected { .. } => g.judge(repeat, false),
            TokenOrigin::Bonus | TokenOrigin::Full => {}
        }
        g.emit(t, origin, opts, on_token)
    };
    if !emit(g, first, TokenOrigin::Full, false) {
        return Ok(());
    }
    let mut epoch = 0;
    // The verifier's caches hold positions ..n; `expect` is the full model's token for n.
    // A token the verifier found at the end of a pass is `held` until the drafter's row at
    // its position tells whether the drafter drafted it.
    let (mut n, mut expect, mut held) = (n0, first, None::<u32>);
    let mut queue: VecDeque<DraftRow> = VecDeque::new();
    let mut logits = Vec::new();
    let mut xs: Vec<f32> = Vec::new();
    let correct = |epoch: &mut usize, pos: usize, token: u32, queue: &mut VecDeque<DraftRow>| {
        *epoch += 1;
        // Sent before the epoch is bumped: a drafter that sees the new epoch finds its fix.
        let _ = fixes.send(Fix { epoch: *epoch, pos, token });
        shared.epoch.store(*epoch, Ordering::Release);
        queue.clear();
    };
    loop {
        // A held token with no row to come (the last token, or the context is full) is the
        // full model's alone.
        if let Some(t) = held
            && (g.ids.len() + 1 >= opts.max_new_tokens || n >= m.n_positions)
        {
            held = None;
            if !emit(g, t, TokenOrigin::Full, false) {
                return Ok(());
            }
        }
        if n >= m.n_positions {
            g.stop = StopReason::ContextFull;
            return Ok(());
        }
        // Every row of this epoch the drafter has handed over; at least the one at n, unless
        // the draft it is being fed is published and wrong.
        let mut wrong = None;
        loop {
            match rows.try_recv() {
                Ok(r) if r.epoch == epoch => queue.push_back(r),
                Ok(_) => {} // fed a draft already corrected
                Err(TryRecvError::Empty) if queue.is_empty() => {
                    if held.is_some()
                        && let Some((t, repeat)) = published(shared.draft.load(Ordering::Acquire), epoch, n)
                        && t != expect
                    {
                        wrong = Some((t, repeat));
                        break;
                    }
                    // Waiting for the drafter: take half of its product in hand, if offered.
                    if !assist.serve() {
                        std::hint::spin_loop()
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => bail!("the drafting thread stopped"),
            }
        }
        if let Some((rejected, repeat)) = wrong.or_else(|| (queue[0].token != expect).then_some((queue[0].token, queue[0].repeat))) {
            // The held token's draft was wrong.
            correct(&mut epoch, n, expect, &mut queue);
            if let Some(t) = held.take()
                && !emit(g, t, TokenOrigin::Corrected { rejected }, repeat)
            {
                return Ok(());
            }
            continue;
        }
        debug_assert_eq!(queue[0].pos, n);
        if let Some(t) = held.take()
            && !emit(g, t, TokenOrigin::Accepted, queue[0].repeat)
        {
            return Ok(());
        }
        // Blocks E+1..L on every queued row in one pass; rows after a wrong draft are wasted.
        xs.clear();
        queue.iter().for_each(|r| xs.extend_from_slice(&r.h));
        dec.blocks(e, n_layer, &mut xs, n)?;
        g.forward_passes += 1;
        let count = queue.len();
        for i in 0..count {
            let t = greedy(dec, &xs[i * d..(i + 1) * d], greedy_tokens, &mut logits);
            n += 1;
            shared.verified.store(n, Ordering::Release);
            expect = t;
            if i + 1 == count {
                held = Some(t);
                queue.clear();
                break;
            }
            let (drafted, repeat) = (queue[i + 1].token, queue[i + 1].repeat);
            if drafted != t {
                dec.truncate(n);
                correct(&mut epoch, n, t, &mut queue);
                if !emit(g, t, TokenOrigin::Corrected { rejected: drafted }, repeat) {
                    return Ok(());
                }
                break;
            }
            if !emit(g, t, TokenOrigin::Accepted, repeat) {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_draft_is_read_back_only_at_its_epoch_and_position() {
        let w = pack(3, 200, 50_256, false).unwrap();
        assert_eq!(published(w, 3, 200), Some((50_256, false)));
        assert_eq!(published(w, 4, 200), None);
        assert_eq!(published(w, 3, 201), None);
        assert_eq!(published(u64::MAX, 3, 200), None);
        let w = pack((1 << EPOCH_BITS) - 1, (1 << POS_BITS) - 2, (1 << TOKEN_BITS) - 1, true).unwrap();
        assert_eq!(published(w, (1 << EPOCH_BITS) - 1, (1 << POS_BITS) - 2), Some(((1 << TOKEN_BITS) - 1, true)));
        assert_eq!(pack((1 << EPOCH_BITS) - 1, (1 << POS_BITS) - 1, (1 << TOKEN_BITS) - 1, true), None);
        // Epochs wrap; positions and tokens that do not fit are not published.
        assert_eq!(published(pack(1 << EPOCH_BITS, 7, 1, true).unwrap(), 0, 7), Some((1, true)));
        assert_eq!(pack(0, (1 << POS_BITS) - 1, 1, false), None);
        assert_eq!(pack(0, 1, 1 << TOKEN_BITS, false), None);
    }
}
