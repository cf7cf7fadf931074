//! Documents to token ids, on all cores, and only as many as a run needs.
//!
//! WikiText-103 is about 540 MB of text; the GPT-2 tokenizer reads a few hundred KB to a
//! few MB per second per core, so tokenizing all of it would cost many minutes before the
//! first step of a run that trains on a small part of it (1000 steps of 8 × 256 tokens see
//! 2M of its ~120M tokens). A run therefore tokenizes documents in an order shuffled by its
//! seed until it holds a multiple of the tokens it will train on ([`Budget`]), and draws
//! its windows from those: a uniform sample of the documents, the same for the same seed
//! and length (so a resumed run sees the same data). Corpora that fit in one batch of work
//! (a few MB, like the Austen novels) are tokenized whole and kept in their order.

use anyhow::{Result, anyhow};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use tokenizers::Tokenizer;

/// Text handed to the tokenizer threads at once; what fits is never sampled.
pub const CHUNK_BYTES: usize = 8 << 20;

/// How much of a corpus to tokenize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Stop once this many tokens (end-of-text included) are held.
    pub tokens: usize,
    /// Take the documents in an order shuffled with this seed; `None`: in their order.
    pub shuffle_seed: Option<u64>,
}

/// Token ids of documents, each followed by end-of-text.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    /// Documents tokenized, of `documents`.
    pub used: usize,
    pub documents: usize,
}

/// Tokenizes `docs` (each followed by `eos`) up to `budget`, reporting (documents done,
/// documents) after each batch of work.
pub fn tokenize_documents(
    tok: &Tokenizer,
    docs: &[String],
    eos: u32,
    budget: Option<Budget>,
    progress: impl FnMut(usize, usize),
) -> Result<Tokenized> {
    tokenize_in_chunks(tok, docs, eos, budget, CHUNK_BYTES, progress)
}

fn tokenize_in_chunks(
    tok: &Tokenizer,
    docs: &[String],
    eos: u32,
    budget: Option<Budget>,
    chunk_bytes: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Tokenized> {
    let n = docs.len();
    let mut order: Vec<usize> = (0..n).collect();
    if let Some(seed) = budget.and_then(|b| b.shuffle_seed) {
        // A stream of its own: the run's batch RNG starts from the same seed.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_d0c5);
        order.shuffle(&mut rng);
    }
    let limit = budget.map_or(usize::MAX, |b| b.tokens);
    let mut per_doc: Vec<Option<Vec<u32>>> = vec![None; n];
    let (mut held, mut done) = (0usize, 0usize);
    while done < n && held < limit {
        let mut end = done;
        let mut bytes = 0;
        while end < n && (end == done || bytes + docs[order[end]].len() <= chunk_bytes) {
            bytes += docs[order[end]].len();
            end += 1;
        }
        let encoded: Vec<Result<Vec<u32>>> = order[done..end]
            .par_iter()
            .map(|&i| {
                tok.encode_fast(docs[i].as_str(), false).map(|e| e.get_ids().to_vec()).map_err(|e| anyhow!("cannot tokenize the data: {e}"))
            })
            .collect();
        for (k, ids) in encoded.into_iter().enumerate() {
            let ids = ids?;
            held += ids.len() + 1;
            per_doc[order[done + k]] = Some(ids);
        }
        done = end;
        progress(done, n);
    }
    // Everything tokenized: keep the documents' own order (as a whole-corpus run always did).
    let taken: Vec<usize> = if done == n { (0..n).collect() } else { order[..done].to_vec() };
    let mut ids = Vec::with_capacity(held);
    for i in taken {
        ids.extend_from_slice(per_doc[i].as_deref().expect("tokenized"));
        ids.push(eos);
    }
    Ok(Tokenized { ids, used: done, documents: n })
}

/// Token ids of documents joined by `eos` (none after the last: a single text file gives
/// exactly its own tokens), stopping once `max_tokens` are held.
pub fn tokenize_joined(tok: &Tokenizer, docs: &[String], eos: u32, max_tokens: Option<usize>) -> Result<Vec<u32>> {
    let budget = max_tokens.map(|t| Budget { tokens: t, shuffle_seed: None });
    let mut t = tokenize_documents(tok, docs, eos, budget, |_, _| {})?;
    if t.ids.last() == Some(&eos) {
        t.ids.pop();
    }
    Ok(t.ids)
}

/// Token ids of held-out documents as every pass over a text reads them (eval, exits,
/// report): joined by the model's end-of-text token (`eos`), as in training. A model
/// without one can read a single document only; `data` names the documents in that error.
pub fn held_out_ids(tok: &Tokenizer, eos: Option<u32>, docs: &[String], data: &str, max_tokens: Option<usize>) -> Result<Vec<u32>> {
    let eos = match eos {
        Some(e) => e,
        None if docs.len() <= 1 => 0,
        None => anyhow::bail!("the model has no end-of-text token to separate the documents of {data}"),
    };
    tokenize_joined(tok, docs, eos, max_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        Tokenizer::from_file(crate::paths::resolve_asset(std::path::Path::new("assets/gpt2-tokenizer/tokenizer.json"))).unwrap()
    }

    #[test]
    fn whole_corpus_keeps_its_order_and_matches_encode() {
        let tok = tokenizer();
        let docs: Vec<String> = vec!["Hello world".into(), "It is a truth universally acknowledged".into()];
        let t = tokenize_documents(&tok, &docs, 50256, Some(Budget { tokens: 1, shuffle_seed: Some(3) }), |_, _| {}).unwrap();
        let mut want = tok.encode("Hello world", false).unwrap().get_ids().to_vec();
        assert_eq!(&want, &[15496, 995]);
        want.push(50256);
        want.extend_from_slice(tok.encode(docs[1].as_str(), false).unwrap().get_ids());
        want.push(50256);
        // Both documents fit in one batch of work: all of it, in order, despite the budget.
        assert_eq!(t.ids, want);
        assert_eq!((t.used, t.documents), (2, 2));
    }

    #[test]
    fn large_corpora_are_sampled_by_seed() {
        let tok = tokenizer();
        let docs: Vec<String> = (0..24).map(|i| format!("document {i} of many")).collect();
        let budget = Some(Budget { tokens: 10, shuffle_seed: Some(7) });
        // Batches of work of 3 documents (about 20 bytes each).
        let run = |b| tokenize_in_chunks(&tok, &docs, 0, b, 60, |_, _| {}).unwrap();
        let a = run(budget);
        assert_eq!((a.used, a.documents), (3, 24), "a small budget tokenizes one batch of work, not all");
        assert_eq!(a, run(budget), "same seed, same sample");
        let c = run(Some(Budget { tokens: 10, shuffle_seed: Some(8) }));
        assert_ne!(a.ids, c.ids, "another seed, another sample");
        assert_eq!(tokenize_joined(&tok, &docs[..1], 0, None).unwrap(), tok.encode(docs[0].as_str(), false).unwrap().get_ids());
    }
}
