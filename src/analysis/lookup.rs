//! Drafts from the text's own repeats (`--lookup`): where the last tokens of the context
//! occurred before, the token that followed them then is a draft that costs no layer and no
//! classifier — prompt lookup decoding (Saxena 2023), the n-gram drafts of lookahead
//! decoding (Fu et al. 2024). Speculative decoding takes it in place of the draft layer's
//! where the repeat is long enough, so the output stays the full model's, token for token:
//! only which drafts are tried changes.
//!
//! Greedy continuations of small models repeat themselves, and there the draft layers are at
//! their weakest: along the shipped austen-aligned model's greedy continuations (8 prompts x
//! 128 tokens from persuasion.txt, the decode benchmark's), layer 6 agrees with the last
//! layer at 43-66% of the positions whose last 2 or more tokens occurred before, the
//! repeat's next token at 62-93%.

/// The shortest repeat that drafts: after a single matching token the draft layers do
/// better (on the positions above, 42% for the repeat against 63% for layer 6).
pub const MIN_MATCH: usize = 2;

/// Longest suffix compared: longer repeats draft no better, and the search stays linear.
pub const MAX_MATCH: usize = 32;

/// The token that followed the most recent earlier occurrence of the longest suffix of
/// `ctx` (up to [`MAX_MATCH`] tokens) that occurred before, when that suffix is at least
/// `min_match` tokens long. O(len · match) at worst, a scan of `ctx` in practice.
pub fn lookup_draft(ctx: &[u32], min_match: usize) -> Option<u32> {
    find_repeat(ctx, min_match).map(|r| ctx[r.next])
}

/// The repeat [`lookup_draft`] drafts from: the longest suffix of `ctx` that occurred
/// before (`len` tokens, up to [`MAX_MATCH`]), and where the token after its most recent
/// earlier occurrence is (`next`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repeat {
    pub len: usize,
    pub next: usize,
}

/// The repeat of at least `min_match` tokens [`lookup_draft`] drafts from, if any.
pub fn find_repeat(ctx: &[u32], min_match: usize) -> Option<Repeat> {
    let n = ctx.len();
    let last = *ctx.last()?;
    // (length, end) of the best earlier occurrence; `end + 1` is the token it drafts.
    let mut best: Option<(usize, usize)> = None;
    for end in (0..n.saturating_sub(1)).rev() {
        if ctx[end] != last {
            continue;
        }
        let mut k = 1;
        while k < MAX_MATCH && k <= end && ctx[end - k] == ctx[n - 1 - k] {
            k += 1;
        }
        // Scanning from the most recent, a repeat only replaces one strictly shorter.
        if best.is_none_or(|(b, _)| k > b) {
            best = Some((k, end));
            if k == MAX_MATCH {
                break;
            }
        }
    }
    best.filter(|&(k, _)| k >= min_match.max(1)).map(|(len, end)| Repeat { len, next: end + 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_most_recent_repeat_drafts() {
        // "7 8" occurred twice, followed by 1 then 2; "5 7 8" once, followed by 3.
        assert_eq!(lookup_draft(&[5, 7, 8, 3, 7, 8, 1, 7, 8, 2, 5, 7, 8], 2), Some(3));
        // Without the longer repeat, the most recent of the equal ones: "7 8" then 2.
        assert_eq!(lookup_draft(&[7, 8, 1, 7, 8, 2, 9, 7, 8], 2), Some(2));
        // A repeat that overlaps the suffix: "4 4 4" drafts 4.
        assert_eq!(lookup_draft(&[4, 4, 4], 2), Some(4));
    }

    #[test]
    fn a_repeat_shorter_than_the_minimum_does_not_draft() {
        assert_eq!(lookup_draft(&[1, 2, 3, 9, 3], 2), None);
        assert_eq!(lookup_draft(&[1, 2, 3, 9, 3], 1), Some(9));
        assert_eq!(lookup_draft(&[1, 2, 3], 1), None);
        assert_eq!(lookup_draft(&[1], 1), None);
        assert_eq!(lookup_draft(&[], 1), None);
    }

    #[test]
    fn the_match_is_capped() {
        let mut ctx: Vec<u32> = (0..100).map(|i| i % 3).collect();
        assert_eq!(lookup_draft(&ctx, MAX_MATCH), Some(100 % 3));
        ctx.push(7);
        assert_eq!(lookup_draft(&ctx, 2), None);
    }

    #[test]
    fn a_repeat_says_how_long_it_is_and_where_it_goes_on() {
        // "5 7 8" occurred first, followed by 3 7 8 1 ...
        let ctx = [5, 7, 8, 3, 7, 8, 1, 7, 8, 2, 5, 7, 8];
        assert_eq!(find_repeat(&ctx, 2), Some(Repeat { len: 3, next: 3 }));
        assert_eq!(find_repeat(&ctx, 4), None);
        // The most recent "4 4" ends one before the last token.
        assert_eq!(find_repeat(&[4, 4, 4], 2), Some(Repeat { len: 2, next: 2 }));
        assert_eq!(find_repeat(&[1, 2, 3, 9, 3], 2), None);
    }
}
