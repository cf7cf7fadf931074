//! The logit lens: the shared classifier `lm_head(ln_f(h^l))` read at every layer.

use crate::model::Gpt2;
use anyhow::Result;
use candle_core::Tensor;
use serde::Serialize;
use tokenizers::Tokenizer;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TopToken {
    pub id: u32,
    pub token: String,
    pub prob: f64,
}

/// Softmax of one row of logits, in f64.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&x| (x as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Indices of the `k` largest values, largest first (ties: lower index first, like torch).
pub fn top_k_indices(values: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let k = k.min(values.len());
    if k == 0 {
        return vec![];
    }
    let cmp = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    idx.select_nth_unstable_by(k - 1, cmp);
    idx.truncate(k);
    idx.sort_by(cmp);
    idx
}

/// The text of one token as the tokenizer decodes it alone.
pub fn token_text(tok: &Tokenizer, id: u32) -> String {
    tok.decode(&[id], false).unwrap_or_else(|_| format!("<{id}>"))
}

/// The text each token of a sequence adds to it, for showing the sequence token by token.
/// A character that byte-level BPE splits over several tokens (é, 你, “) decodes to U+FFFD
/// in every part alone; here it shows whole on the token that completes it, and the tokens
/// before it show nothing. A character takes at most four bytes, so a few tokens before,
/// from one that starts a character, are context enough.
pub fn token_pieces(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    (0..ids.len())
        .map(|i| {
            // From a token that starts a character: one that starts inside a character
            // decodes as U+FFFD at the front, which the context must not begin with.
            let mut j = i.saturating_sub(3);
            while j > 0 && i - j < 8 && token_text(tok, ids[j]).starts_with('\u{FFFD}') {
                j -= 1;
            }
            let (Ok(before), Ok(with)) = (tok.decode(&ids[j..i], false), tok.decode(&ids[j..=i], false)) else {
                return token_text(tok, ids[i]);
            };
            let complete = before.trim_end_matches('\u{FFFD}');
            match with.strip_prefix(complete) {
                Some(added) if i + 1 < ids.len() => added.trim_end_matches('\u{FFFD}').to_string(),
                // The last token: an incomplete character stays visible as U+FFFD.
                Some(added) => added.to_string(),
                None => token_text(tok, ids[i]),
            }
        })
        .collect()
}

/// The top-k tokens of a logits row.
pub fn top_tokens(tok: &Tokenizer, logits: &[f32], k: usize) -> Vec<TopToken> {
    let probs = softmax(logits);
    top_k_indices(&probs, k).into_iter().map(|i| TopToken { id: i as u32, token: token_text(tok, i as u32), prob: probs[i] }).collect()
}

/// Lens logits of every layer at the given positions: `[layer][position] -> logits row`.
/// `residuals` are the `[1, t, d]` outputs of [`Gpt2::residuals`].
pub fn lens_logits(model: &Gpt2, residuals: &[Tensor], positions: &[usize]) -> Result<Vec<Vec<Vec<f32>>>> {
    let idx = Tensor::from_vec(positions.iter().map(|&p| p as u32).collect::<Vec<_>>(), positions.len(), model.device())?;
    let mut out = Vec::with_capacity(residuals.len());
    for h in residuals {
        let rows = h.squeeze(0)?.index_select(&idx, 0)?; // [p, d]
        let logits = model.head(&rows)?.to_vec2::<f32>()?;
        out.push(logits);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_over_tokens_show_whole() {
        let path = crate::paths::resolve_asset(std::path::Path::new("assets/gpt2-tokenizer/tokenizer.json"));
        let tok = Tokenizer::from_file(path).unwrap();
        let austen =
            Tokenizer::from_file(crate::paths::resolve_asset(std::path::Path::new("checkpoints/austen-aligned/tokenizer.json"))).unwrap();
        for (tok, text) in [&tok, &austen]
            .into_iter()
            .flat_map(|t| ["Élise said: 你好 naïve café — “quotes”", "plain ascii text", "🎉 你好你好"].map(|x| (t, x)))
        {
            let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
            let pieces = token_pieces(tok, &ids);
            assert_eq!(pieces.len(), ids.len());
            assert_eq!(pieces.concat(), text, "{pieces:?}");
            assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        }
    }
}
