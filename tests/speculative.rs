//! Self-speculative decoding is lossless: greedy output is token for token the full model's
//! greedy output (fixture and both shipped models, many prompts, lengths, draft layers and
//! draft lengths, up to the end of the context and end-of-text), and sampled output follows
//! the full model's distribution.

mod common;
use alignscope::analysis::generate::{GenerateOptions, Generation, Sampling, StopReason, generate};
use alignscope::analysis::speculative::{
    SpeculativeGeneration, SpeculativeOptions, TokenOrigin, generate_pipelined, generate_speculative, nucleus,
};
use alignscope::model::decoder::{Decoder, with_cpu_model};
use alignscope::model::{Checkpoint, Gpt2};
use candle_core::Device;
use common::*;
use std::ops::ControlFlow;

fn plain(model: &Gpt2, prompt: &[u32], max_new: usize, eos: Option<u32>) -> Generation {
    let opts = GenerateOptions { exit_layer: model.n_layer(), max_new_tokens: max_new, sampling: Sampling::Greedy, eos };
    generate(model, prompt, &opts, |_| ControlFlow::Continue(())).unwrap()
}

fn spec(model: &Gpt2, prompt: &[u32], e: usize, k: usize, gamma: f64, max_new: usize, eos: Option<u32>) -> SpeculativeGeneration {
    spec_with(model, prompt, e, k, gamma, max_new, eos, false)
}

/// [`spec`], with drafts from the text's repeats where they can (`lookup`).
#[allow(clippy::too_many_arguments)]
fn spec_with(
    model: &Gpt2,
    prompt: &[u32],
    e: usize,
    k: usize,
    gamma: f64,
    max_new: usize,
    eos: Option<u32>,
    lookup: bool,
) -> SpeculativeGeneration {
    let opts = SpeculativeOptions {
        draft_layer: e,
        draft_len: k,
        draft_confidence: gamma,
        max_new_tokens: max_new,
        sampling: Sampling::Greedy,
        eos,
        lookup,
        int8: false,
    };
    let mut seen = Vec::new();
    let g = generate_speculative(model, prompt, &opts, |t, _, _| {
        seen.push(t);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(seen, g.ids, "the callback sees every token in order");
    g
}

/// Greedy speculative decoding from layer `e` (the 8-bit copy drafting after it where
/// `int8`), `k` drafts, always drafting.
fn greedy_opts(e: usize, k: usize, max_new: usize, eos: Option<u32>, lookup: bool, int8: bool) -> SpeculativeOptions {
    SpeculativeOptions {
        draft_layer: e,
        draft_len: k,
        draft_confidence: 0.0,
        max_new_tokens: max_new,
        sampling: Sampling::Greedy,
        eos,
        lookup,
        int8,
    }
}

/// One-thread rounds with these options.
fn rounds(model: &Gpt2, prompt: &[u32], opts: &SpeculativeOptions) -> SpeculativeGeneration {
    let g = generate_speculative(model, prompt, opts, |_, _, _| ControlFlow::Continue(())).unwrap();
    check_sources(&g, opts.lookup);
    g
}

/// Pipelined speculative decoding (two threads), with `k` drafts in flight at most.
fn piped(model: &Gpt2, prompt: &[u32], e: usize, k: usize, max_new: usize, eos: Option<u32>) -> SpeculativeGeneration {
    piped_with(model, prompt, e, k, max_new, eos, false)
}

/// [`piped`], with drafts from the text's repeats where they can (`lookup`).
fn piped_with(model: &Gpt2, prompt: &[u32], e: usize, k: usize, max_new: usize, eos: Option<u32>, lookup: bool) -> SpeculativeGeneration {
    pipelined(model, prompt, &greedy_opts(e, k, max_new, eos, lookup, false))
}

/// Pipelined decoding with these options, its callback checked.
fn pipelined(model: &Gpt2, prompt: &[u32], opts: &SpeculativeOptions) -> SpeculativeGeneration {
    let mut seen = Vec::new();
    let mut counts = (0, 0);
    let g = generate_pipelined(model, prompt, opts, |t, origin, c| {
        seen.push((t, origin));
        assert!(c.accepted <= c.drafted && c.drafted >= counts.0 && c.accepted >= counts.1, "the counts only grow");
        counts = (c.drafted, c.accepted);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), g.ids, "the callback sees every token in order");
    assert_eq!(seen.iter().map(|s| s.1).collect::<Vec<_>>(), g.origins);
    g
}

/// Checks a pipelined generation against plain greedy decoding; the thread timing differs
/// from run to run, so each case runs a few times (the second with drafts from the text's
/// repeats). Returns the drafts from the repeats that were judged.
fn check_pipelined(model: &Gpt2, prompt: &[u32], want: &Generation, e: usize, k: usize, max_new: usize, eos: Option<u32>) -> usize {
    let mut repeats = 0;
    for run in 0..3 {
        let lookup = run == 1;
        let g = piped_with(model, prompt, e, k, max_new, eos, lookup);
        assert_eq!(
            g.ids,
            want.ids,
            "pipelined: draft layer {e}, {k} drafts ahead, lookup {lookup}, prompt of {} tokens, run {run}",
            prompt.len()
        );
        assert_eq!(g.stop, want.stop, "pipelined: draft layer {e}, {k} drafts ahead, lookup {lookup}");
        let judged = g.origins.iter().filter(|o| matches!(o, TokenOrigin::Accepted | TokenOrigin::Corrected { .. })).count();
        let acc = g.origins.iter().filter(|o| **o == TokenOrigin::Accepted).count();
        assert_eq!((judged, acc), (g.drafted, g.accepted), "drafted counts the judged drafts");
        check_sources(&g, lookup);
        repeats += g.lookup_drafted;
        assert!(g.forward_passes >= 1 && g.forward_passes <= g.ids.len());
    }
    // The 8-bit drafter, from the embeddings or from layer e, with or without the repeats.
    let (from, lookup) = if (e + k).is_multiple_of(2) { (0, !k.is_multiple_of(2)) } else { (e, k.is_multiple_of(2)) };
    let g = pipelined(model, prompt, &greedy_opts(from, k, max_new, eos, lookup, true));
    assert_eq!(
        (&g.ids, g.stop),
        (&want.ids, want.stop),
        "8-bit drafter after layer {from}, {k} drafts ahead, lookup {lookup}, prompt of {} tokens",
        prompt.len()
    );
    check_sources(&g, lookup);
    assert!(g.forward_passes >= 1 && g.forward_passes <= g.ids.len());
    repeats
}

/// The drafts from the repeats are a part of the drafts, and there are none without lookup.
fn check_sources(g: &SpeculativeGeneration, lookup: bool) {
    assert_eq!(g.lookup, lookup);
    assert!(g.lookup_accepted <= g.lookup_drafted && g.lookup_drafted <= g.drafted);
    assert!(g.lookup_accepted <= g.accepted && g.accepted - g.lookup_accepted <= g.drafted - g.lookup_drafted);
    if !lookup {
        assert_eq!((g.lookup_drafted, g.lookup_accepted), (0, 0));
    }
}

/// Runs every (draft layer, draft length) pair against plain greedy decoding, with draft
/// confidence thresholds from "always draft" to "rarely draft" spread over the pairs, and
/// pipelined decoding with the same draft layers and lengths.
fn check_identical(model: &Gpt2, prompt: &[u32], layers: &[usize], lens: &[usize], max_new: usize, eos: Option<u32>) -> (usize, usize) {
    let want = plain(model, prompt, max_new, eos);
    let (mut drafted, mut accepted) = (0, 0);
    for &e in layers {
        for &k in lens {
            let gamma = [0.0, 0.3, 0.6, 0.9][(e + k) % 4];
            for lookup in [false, true] {
                let g = spec_with(model, prompt, e, k, gamma, max_new, eos, lookup);
                assert_eq!(
                    g.ids,
                    want.ids,
                    "draft layer {e}, {k} drafts, confidence {gamma}, lookup {lookup}, prompt of {} tokens",
                    prompt.len()
                );
                assert_eq!(g.stop, want.stop, "draft layer {e}, {k} drafts, lookup {lookup}");
                assert_eq!(g.origins.len(), g.ids.len());
                let acc = g.origins.iter().filter(|o| **o == TokenOrigin::Accepted).count();
                assert!(acc <= g.accepted && g.accepted <= g.drafted);
                assert!(g.forward_passes >= 1 && g.forward_passes <= g.ids.len());
                check_sources(&g, lookup);
                if !lookup {
                    drafted += g.drafted;
                    accepted += g.accepted;
                }
            }
            // The 8-bit drafter in rounds, from the embeddings or after layer e.
            let from = if (e + k).is_multiple_of(2) { e } else { 0 };
            let g = rounds(model, prompt, &greedy_opts(from, k, max_new, eos, k.is_multiple_of(3), true));
            assert_eq!((&g.ids, g.stop), (&want.ids, want.stop), "8-bit drafter in rounds after layer {from}, {k} drafts");
            assert!(g.forward_passes >= 1 && g.forward_passes <= g.ids.len());
            check_pipelined(model, prompt, &want, e, k, max_new, eos);
        }
    }
    (drafted, accepted)
}

fn prompts_from_text(ck: &Checkpoint, lens: &[usize]) -> Vec<Vec<u32>> {
    let text = std::fs::read_to_string(assets_dir().join("austen/persuasion.txt")).unwrap();
    let ids = ck.tokenizer.encode(&text[..60_000], false).unwrap().get_ids().to_vec();
    lens.iter().enumerate().map(|(i, &n)| ids[i * 997..i * 997 + n].to_vec()).collect()
}

#[test]
fn greedy_is_identical_on_the_fixture() {
    let ck = fixture();
    let m = &ck.model;
    for case in expected()["cases"].as_array().unwrap() {
        let prompt = u32s(&case["input_ids"]);
        check_identical(m, &prompt, &[1, 2, 3], &[1, 2, 3, 4, 6, 9], 40, None);
    }
    // To the end of the context (128 positions), from short and long prompts: the last
    // rounds must shrink their drafts to the room that is left.
    for prompt in prompts_from_text(&ck, &[3, 50, 117, 126, 128]) {
        let want = plain(m, &prompt, 300, None);
        assert_eq!(want.stop, StopReason::ContextFull);
        assert_eq!(want.ids.len(), 128 - prompt.len() + 1);
        check_identical(m, &prompt, &[1, 3], &[1, 4, 7], 300, None);
    }
}

#[test]
fn end_of_text_stops_where_plain_decoding_stops() {
    let ck = fixture();
    let m = &ck.model;
    for prompt in prompts_from_text(&ck, &[5, 20]) {
        let free = plain(m, &prompt, 40, None);
        // Every token that occurs in the free run, taken as end-of-text in turn: it may
        // fall on an accepted draft, a correction or a bonus token.
        for &eos in free.ids.iter().take(12) {
            let want = plain(m, &prompt, 40, Some(eos));
            assert_eq!(want.stop, StopReason::EndOfText);
            check_identical(m, &prompt, &[1, 2, 3], &[1, 3, 5], 40, Some(eos));
        }
    }
}

#[test]
fn greedy_is_identical_on_the_shipped_models() {
    let mut summary = Vec::new();
    for name in ["austen-aligned", "austen-standard"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("checkpoints").join(name);
        let ck = Checkpoint::load_dir(&dir, &Device::Cpu).unwrap();
        let m = &ck.model;
        let (mut drafted, mut accepted) = (0, 0);
        for prompt in prompts_from_text(&ck, &[1, 4, 9, 17, 33, 64]) {
            let (d, a) = check_identical(m, &prompt, &[1, 3, 6, 9, 11], &[1, 2, 4, 7, 12], 48, None);
            drafted += d;
            accepted += a;
        }
        // Through the end of the context (256 positions) and with end-of-text.
        for prompt in prompts_from_text(&ck, &[200, 251, 255]) {
            check_identical(m, &prompt, &[2, 6], &[3, 8], 100, None);
        }
        let prompt = prompts_from_text(&ck, &[12]).remove(0);
        let free = plain(m, &prompt, 30, None);
        for &eos in free.ids.iter().take(8) {
            check_identical(m, &prompt, &[3, 8], &[2, 5], 30, Some(eos));
        }
        summary.push((name, accepted as f64 / drafted as f64));
    }
    // Not a claim of this test, but a sanity check that drafts are being accepted at all.
    for (name, rate) in &summary {
        assert!(*rate > 0.05, "{name}: acceptance {rate}");
    }
}

/// Greedy drafts of a wide classifier come through its 8-bit copy and an exact bound (as
/// plain greedy decoding's tokens do) when they need no confidence: still the full model's
/// output, token for token. Random weights of GPT-2's shape at a smaller size.
#[test]
fn greedy_drafts_through_a_wide_int8_head_are_identical() {
    use alignscope::model::Gpt2Config;
    use alignscope::model::decoder::REDUCED_HEAD_MIN_TOKENS;
    let model = Gpt2::random(Gpt2Config::new(3, 512, 8, 8192, 96), 17, &Device::Cpu).unwrap();
    let mut drafted = 0;
    for p in 0..3u32 {
        let prompt: Vec<u32> = (0..5).map(|i| (i * 977 + 11 + p * 1301) % 8192).collect();
        let max_new = REDUCED_HEAD_MIN_TOKENS + 9 * p as usize;
        let want = plain(&model, &prompt, max_new, None);
        for (e, k) in [(1, 3), (2, 1), (2, 6)] {
            let g = spec(&model, &prompt, e, k, 0.0, max_new, None);
            assert_eq!(g.ids, want.ids, "draft layer {e}, {k} drafts, prompt {p}");
            drafted += g.drafted;
        }
        // To the end of the context: drafts shrink to the room left.
        let long: Vec<u32> = (0..70).map(|i| (i * 613 + p * 7) % 8192).collect();
        let want = plain(&model, &long, 64, None);
        assert_eq!(want.stop, StopReason::ContextFull);
        assert_eq!(spec(&model, &long, 2, 5, 0.0, 64, None).ids, want.ids);
        assert_eq!(piped(&model, &long, 2, 5, 64, None).ids, want.ids);
        // The 8-bit drafter copies a wide classifier from its rows.
        assert_eq!(pipelined(&model, &long, &greedy_opts(0, 5, 64, None, false, true)).ids, want.ids);
        assert_eq!(rounds(&model, &long, &greedy_opts(0, 5, 64, None, false, true)).ids, want.ids);
    }
    assert!(drafted > 0);
}

/// The shipped models decode a row on one thread (so pipelined decoding's two threads
/// overlap); a GPT-2-shaped model shares its rows among the threads.
#[test]
fn which_models_decode_a_row_on_one_thread() {
    use alignscope::model::Gpt2Config;
    for name in ["austen-aligned", "austen-standard"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("checkpoints").join(name);
        let ck = Checkpoint::load_dir(&dir, &Device::Cpu).unwrap();
        assert!(with_cpu_model(&ck.model, |m| Ok(m.rows_use_one_thread())).unwrap(), "{name}");
    }
    let wide = Gpt2::random(Gpt2Config::new(1, 768, 12, 8192, 64), 3, &Device::Cpu).unwrap();
    assert!(!with_cpu_model(&wide, |m| Ok(m.rows_use_one_thread())).unwrap());
}

/// Where the text repeats itself, drafts come from the repeats — here a passage given
/// twice, which the model goes on copying — and are accepted, and the output is still plain
/// greedy decoding's; sampling refuses them.
#[test]
fn drafts_from_the_repeats_are_used_and_lossless() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("checkpoints").join("austen-aligned");
    let ck = Checkpoint::load_dir(&dir, &Device::Cpu).unwrap();
    let m = &ck.model;
    let passage = prompts_from_text(&ck, &[0, 40]).remove(1);
    let prompt = [passage.clone(), passage].concat();
    let want = plain(m, &prompt, 60, None);
    for (e, k) in [(2, 4), (6, 1), (6, 8)] {
        let g = spec_with(m, &prompt, e, k, 0.0, 60, None, true);
        assert_eq!(g.ids, want.ids, "draft layer {e}, {k} drafts");
        check_sources(&g, true);
        assert!(
            g.lookup_accepted > 0,
            "draft layer {e}, {k} drafts: {} from the repeats, {} accepted",
            g.lookup_drafted,
            g.lookup_accepted
        );
        for run in 0..3 {
            let g = piped_with(m, &prompt, e, k, 60, None, true);
            assert_eq!(g.ids, want.ids, "pipelined: draft layer {e}, {k} drafts ahead, run {run}");
            check_sources(&g, true);
            assert!(g.lookup_accepted > 0, "pipelined: draft layer {e}, {k} drafts ahead, run {run}");
        }
    }
    // Both drafters run a long repeat's next tokens through their blocks together: runs cut
    // short by the last token, and by the end of the context.
    for max_new in [1, 2, 3, 5, 8] {
        let want = plain(m, &prompt, max_new, None);
        for k in [1, 2, 8] {
            let g = piped_with(m, &prompt, 6, k, max_new, None, true);
            assert_eq!(g.ids, want.ids, "pipelined: {max_new} tokens, {k} drafts ahead");
            for gamma in [0.0, 0.5] {
                let g = spec_with(m, &prompt, 6, k, gamma, max_new, None, true);
                assert_eq!(g.ids, want.ids, "rounds: {max_new} tokens, {k} drafts, confidence {gamma}");
            }
        }
    }
    let n_positions = m.config.n_positions;
    let filler = prompts_from_text(&ck, &[0, 0, n_positions]).remove(2);
    let long = [&filler[..n_positions - 9 - prompt.len()], &prompt].concat();
    let want = plain(m, &long, 40, None);
    assert_eq!(want.stop, StopReason::ContextFull);
    for k in [2, 8] {
        let g = piped_with(m, &long, 6, k, 40, None, true);
        assert_eq!((&g.ids, g.stop), (&want.ids, want.stop), "pipelined to the end of the context, {k} drafts ahead");
        assert!(g.lookup_drafted > 0, "{k} drafts ahead: no draft from the repeats");
        let g = spec_with(m, &long, 6, k, 0.0, 40, None, true);
        assert_eq!((&g.ids, g.stop), (&want.ids, want.stop), "rounds to the end of the context, {k} drafts");
        assert!(g.lookup_drafted > 0, "{k} drafts: no draft from the repeats");
    }
    let opts = SpeculativeOptions {
        draft_layer: 2,
        draft_len: 3,
        draft_confidence: 0.0,
        max_new_tokens: 10,
        sampling: Sampling::TopP { p: 0.9, temperature: 1.0, seed: 1 },
        eos: None,
        lookup: true,
        int8: false,
    };
    let err = generate_speculative(m, &prompt, &opts, |_, _, _| ControlFlow::Continue(())).unwrap_err();
    assert!(err.to_string().contains("--lookup"), "{err}");
}

/// The 8-bit drafter (`--speculative int8`: the model's own 8-bit copy drafts): on the
/// shipped models its drafts are right nearly always, and the output is plain greedy
/// decoding's — drafting from the embeddings or after a few exact blocks, with and without
/// the repeats, to the last token, the end of the context and end-of-text. It is refused
/// where it does not run: sampling, a draft confidence, and layer 0 without it.
#[test]
fn the_8_bit_drafter_is_lossless_and_nearly_always_right() {
    for name in ["austen-aligned", "austen-standard"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("checkpoints").join(name);
        let ck = Checkpoint::load_dir(&dir, &Device::Cpu).unwrap();
        let m = &ck.model;
        let (mut drafted, mut accepted) = (0, 0);
        for prompt in prompts_from_text(&ck, &[1, 9, 24, 60]) {
            let want = plain(m, &prompt, 96, None);
            for (from, k, lookup) in [(0, 16, false), (0, 4, true), (4, 16, true), (0, 1, false)] {
                let g = pipelined(m, &prompt, &greedy_opts(from, k, 96, None, lookup, true));
                assert_eq!((&g.ids, g.stop), (&want.ids, want.stop), "{name}: after layer {from}, {k} ahead, lookup {lookup}");
                check_sources(&g, lookup);
                drafted += g.drafted;
                accepted += g.accepted;
                // In rounds the repeats' drafts go unchecked, as with a draft layer: the
                // copy's own drafts count.
                let g = rounds(m, &prompt, &greedy_opts(from, k, 96, None, lookup, true));
                assert_eq!((&g.ids, g.stop), (&want.ids, want.stop), "{name}: rounds after layer {from}, {k} drafts, lookup {lookup}");
                drafted += g.drafted - g.lookup_drafted;
                accepted += g.accepted - g.lookup_accepted;
            }
        }
        let rate = accepted as f64 / drafted as f64;
        assert!(rate > 0.95, "{name}: the 8-bit copy's drafts accepted {rate}");
        // Runs of repeats cut short by the last token.
        let passage = prompts_from_text(&ck, &[0, 40]).remove(1);
        let twice = [passage.clone(), passage].concat();
        for max_new in [1, 2, 3, 5, 8] {
            let want = plain(m, &twice, max_new, None);
            for k in [1, 2, 16] {
                let g = pipelined(m, &twice, &greedy_opts(0, k, max_new, None, true, true));
                assert_eq!(g.ids, want.ids, "{name}: {max_new} tokens, {k} ahead");
                let g = rounds(m, &twice, &greedy_opts(0, k, max_new, None, true, true));
                assert_eq!(g.ids, want.ids, "{name}: {max_new} tokens, rounds of {k}");
            }
        }
        // To the end of the context (256 positions).
        for prompt in prompts_from_text(&ck, &[200, 251, 255]) {
            let want = plain(m, &prompt, 100, None);
            assert_eq!(want.stop, StopReason::ContextFull);
            for (k, lookup) in [(16, false), (3, true)] {
                let g = pipelined(m, &prompt, &greedy_opts(0, k, 100, None, lookup, true));
                assert_eq!((&g.ids, g.stop), (&want.ids, want.stop), "{name}: to the end of the context, {k} ahead");
                let g = rounds(m, &prompt, &greedy_opts(0, k, 100, None, lookup, true));
                assert_eq!((&g.ids, g.stop), (&want.ids, want.stop), "{name}: rounds to the end of the context, {k} drafts");
            }
        }
        // End-of-text wherever it falls.
        let prompt = prompts_from_text(&ck, &[12]).remove(0);
        let free = plain(m, &prompt, 30, None);
        for &eos in free.ids.iter().take(8) {
            let want = plain(m, &prompt, 30, Some(eos));
            let g = pipelined(m, &prompt, &greedy_opts(0, 16, 30, Some(eos), false, true));
            assert_eq!((&g.ids, g.stop), (&want.ids, want.stop), "{name}: end-of-text {eos}");
            let g = rounds(m, &prompt, &greedy_opts(0, 8, 30, Some(eos), false, true));
            assert_eq!((&g.ids, g.stop), (&want.ids, want.stop), "{name}: rounds, end-of-text {eos}");
        }
    }
    let ck = fixture();
    let prompt = prompts_from_text(&ck, &[5]).remove(0);
    let mut opts = greedy_opts(0, 3, 10, None, false, true);
    // In one-thread rounds too (models whose rows use every core take them).
    let g = generate_speculative(&ck.model, &prompt, &opts, |_, _, _| ControlFlow::Continue(())).unwrap();
    assert_eq!(g.ids, plain(&ck.model, &prompt, 10, None).ids);
    opts.sampling = Sampling::TopP { p: 0.9, temperature: 1.0, seed: 1 };
    let err = generate_pipelined(&ck.model, &prompt, &opts, |_, _, _| ControlFlow::Continue(())).unwrap_err();
    assert!(err.to_string().contains("greedy"), "{err}");
    let err = generate_speculative(&ck.model, &prompt, &opts, |_, _, _| ControlFlow::Continue(())).unwrap_err();
    assert!(err.to_string().contains("greedy"), "{err}");
    opts.sampling = Sampling::Greedy;
    opts.draft_confidence = 0.5;
    let err = generate_speculative(&ck.model, &prompt, &opts, |_, _, _| ControlFlow::Continue(())).unwrap_err();
    assert!(err.to_string().contains("confidence"), "{err}");
    opts.draft_confidence = 0.0;
    opts.int8 = false;
    let err = generate_pipelined(&ck.model, &prompt, &opts, |_, _, _| ControlFlow::Continue(())).unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
}

/// Pipelined decoding is greedy only, and says so; one token needs no drafting thread.
#[test]
fn pipelined_decoding_refuses_sampling() {
    let ck = fixture();
    let prompt = prompts_from_text(&ck, &[5]).remove(0);
    let mut opts = SpeculativeOptions {
        draft_layer: 1,
        draft_len: 3,
        draft_confidence: 0.0,
        max_new_tokens: 10,
        sampling: Sampling::TopP { p: 0.9, temperature: 1.0, seed: 1 },
        eos: None,
        lookup: false,
        int8: false,
    };
    let err = generate_pipelined(&ck.model, &prompt, &opts, |_, _, _| ControlFlow::Continue(())).unwrap_err();
    assert!(err.to_string().contains("greedy only"), "{err}");
    opts.sampling = Sampling::Greedy;
    opts.max_new_tokens = 1;
    let g = generate_pipelined(&ck.model, &prompt, &opts, |_, _, _| ControlFlow::Continue(())).unwrap();
    assert_eq!(g.ids, plain(&ck.model, &prompt, 1, None).ids);
    // Cancelling from the callback stops the generation (and its drafting thread).
    opts.max_new_tokens = 40;
    let mut n = 0;
    let g = generate_pipelined(&ck.model, &prompt, &opts, |_, _, _| {
        n += 1;
        if n == 7 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    })
    .unwrap();
    assert_eq!((g.ids.len(), g.stop), (7, StopReason::Cancelled));
    assert_eq!(g.ids[..], plain(&ck.model, &prompt, 7, None).ids[..]);
    // A callback that panics ends the generation with its panic (the drafting thread is
    // told to stop, not left spinning).
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        generate_pipelined(&ck.model, &prompt, &opts, |_, _, c| {
            assert!(c.drafted < 3, "the callback gives up");
            ControlFlow::Continue(())
        })
    }));
    assert!(r.is_err());
}

/// With sampling, the output follows the full model's nucleus distribution. On the fixture
/// with a high temperature (a wide distribution) and drafts from block 1 (a poor draft, so
/// rejections are frequent), the second generated token — the first one that goes through
/// a draft and its verification — is compared with its exact distribution
/// `sum_a p(a) p(b | a)`, computed by running the full model on every first token `a`.
#[test]
fn sampling_follows_the_full_model_distribution() {
    let ck = fixture();
    let m = &ck.model;
    let prompt = u32s(&expected()["cases"][1]["input_ids"]);
    let (temperature, top_p) = (1.6, 0.9);
    let vocab = m.config.vocab_size;
    let exact = with_cpu_model(m, |cm| {
        let mut dec = Decoder::new(cm);
        let mut x = dec.embed(&prompt, 0)?;
        dec.blocks(0, cm.n_layer, &mut x, 0)?;
        let mut logits = Vec::new();
        dec.logits(&x[x.len() - cm.d..], &mut logits);
        let first = nucleus(&logits, temperature, top_p);
        let mut second = vec![0.0; vocab];
        for (a, &pa) in first.iter().enumerate() {
            if pa == 0.0 {
                continue;
            }
            dec.truncate(prompt.len());
            let mut x = dec.embed(&[a as u32], prompt.len())?;
            dec.blocks(0, cm.n_layer, &mut x, prompt.len())?;
            dec.logits(&x, &mut logits);
            for (b, pb) in nucleus(&logits, temperature, top_p).into_iter().enumerate() {
                second[b] += pa * pb;
            }
        }
        Ok(second)
    })
    .unwrap();
    let runs = 6000;
    let mut counts = vec![0usize; vocab];
    let (mut drafted, mut accepted) = (0, 0);
    for seed in 0..runs {
        let opts = SpeculativeOptions {
            draft_layer: 1,
            draft_len: 3,
            draft_confidence: 0.0,
            max_new_tokens: 3,
            sampling: Sampling::TopP { p: top_p, temperature, seed },
            eos: None,
            lookup: false,
            int8: false,
        };
        let g = generate_speculative(m, &prompt, &opts, |_, _, _| ControlFlow::Continue(())).unwrap();
        counts[g.ids[1] as usize] += 1;
        drafted += g.drafted;
        accepted += g.accepted;
    }
    assert!(accepted > 0 && accepted < drafted, "both outcomes of the rule occur: {accepted}/{drafted}");
    // Pool the tokens with small expected counts, then Pearson's chi-square.
    let mut cells: Vec<(f64, f64)> = Vec::new();
    let (mut rest_e, mut rest_o) = (0.0, 0.0);
    for t in 0..vocab {
        let e = exact[t] * runs as f64;
        if e >= 10.0 {
            cells.push((counts[t] as f64, e));
        } else {
            rest_e += e;
            rest_o += counts[t] as f64;
        }
    }
    cells.push((rest_o, rest_e));
    let chi2: f64 = cells.iter().map(|(o, e)| (o - e).powi(2) / e).sum();
    let dof = cells.len() - 1;
    // The 99.9% quantile of chi-square, Wilson–Hilferty approximation.
    let z = 3.09;
    let k = dof as f64;
    let q999 = k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3);
    assert!(dof >= 5, "too few cells: {dof}");
    assert!(chi2 < q999, "chi-square {chi2:.1} over {dof} degrees of freedom (99.9% quantile {q999:.1})");
}
