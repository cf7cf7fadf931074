"""Builds tests/fixtures/tiny-bert: a random tiny BERT in the sentence-transformers layout
(config.json, model.safetensors, tokenizer.json, modules.json, sentence_bert_config.json,
1_Pooling/config.json) and expected.json with the sentence embeddings that transformers
computes for a few sentences (mean pooling over the attention mask, L2-normalised),
cross-checked against sentence-transformers itself.

Needs torch, transformers, tokenizers and sentence-transformers:
    python3 scripts/make_tiny_bert.py
"""

import json
import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel, BertTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "tiny-bert"
MAX_SEQ = 24

SENTENCES = [
    "Anne Elliot had been",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife; however little known the feelings or views of such a man may be.",
    "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who, for his own amusement, never took up any book but the Baronetage.",
    "Captain Wentworth!",
    "ÉLAN — 42 ways & counting…",
    "a",
]


def build_tokenizer(text: str) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=special)
    tok.train_from_iterator([text], trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tok


def main():
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    text = (ROOT / "assets" / "austen" / "persuasion.txt").read_text()[:60000]
    raw = build_tokenizer(text)
    fast = BertTokenizerFast(tokenizer_object=raw, model_max_length=MAX_SEQ)
    fast.save_pretrained(OUT)
    for f in ["vocab.txt", "special_tokens_map.json"]:
        (OUT / f).unlink(missing_ok=True)
    config = BertConfig(
        vocab_size=raw.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.2,
        pad_token_id=0,
    )
    model = BertModel(config, add_pooling_layer=False).eval()
    model.save_pretrained(OUT, safe_serialization=True)
    (OUT / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ], indent=2))
    (OUT / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": MAX_SEQ, "do_lower_case": False}, indent=2))
    (OUT / "1_Pooling").mkdir(exist_ok=True)
    (OUT / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }, indent=2))

    # The reference: transformers, batched with padding, truncated to MAX_SEQ tokens.
    tok = BertTokenizerFast.from_pretrained(OUT)
    batch = tok(SENTENCES, padding=True, truncation=True, max_length=MAX_SEQ, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    emb = torch.nn.functional.normalize(pooled, p=2, dim=1)

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(OUT), device="cpu")
    st_emb = st.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True)
    err = (st_emb - emb).abs().max().item()
    assert err < 1e-5, f"sentence-transformers disagrees with transformers by {err}"

    expected = {
        "source": "transformers BertModel (eval, float32); mean pooling over the attention mask, L2-normalised; "
        f"batched with padding, truncated to max_seq_length {MAX_SEQ} tokens; sentence-transformers agrees within {err:.1e}",
        "max_seq_length": MAX_SEQ,
        "sentences": SENTENCES,
        "input_ids": [[int(i) for i, m in zip(ids, am) if m] for ids, am in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist())],
        "embeddings": emb.tolist(),
    }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1))
    print(f"wrote {OUT}: {sum(f.stat().st_size for f in OUT.rglob('*') if f.is_file())} bytes; max |ST - transformers| = {err:.2e}")


if __name__ == "__main__":
    main()
