"""Checks alignscope's sentence embeddings against sentence-transformers' own.

Embeds a set of sentences (Austen lines from the held-out text, edge cases: very short,
punctuation, accents, a text longer than the encoder's 256-token limit) with
`alignscope embed` and with sentence-transformers, and reports the largest difference.
Exits non-zero when it exceeds 1e-4.

    scripts/fetch-minilm.sh            # once: puts all-MiniLM-L6-v2 in the hub cache
    cargo build --release
    HF_HUB_OFFLINE=1 python3 scripts/check_embedder.py [--embedder NAME] [--binary PATH]

Needs sentence-transformers (it pulls torch).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

ROOT = Path(__file__).resolve().parent.parent


def sentences():
    text = (ROOT / "assets" / "austen" / "persuasion.txt").read_text()
    lines = [l.strip() for l in text.splitlines() if len(l.strip()) > 20]
    picked = lines[100:3000:100]
    long = " ".join(lines[500:560])  # well past 256 word pieces: truncation must match
    return picked + [
        long,
        "a",
        "Anne Elliot had been",
        "ÉLAN — naïve café, 42 ways & counting…",
        "\"I am sure,\" said she, \"it is a very good thing.\"",
        "   spaced   out   ",
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--embedder", default="sentence-transformers/all-MiniLM-L6-v2")
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "alignscope"))
    ap.add_argument("--tolerance", type=float, default=1e-4)
    args = ap.parse_args()
    texts = sentences()
    cmd = [args.binary, "embed", "--embedder", args.embedder, "--device", "cpu"]
    for t in texts:
        cmd += ["--text", t]
    ours = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    got = np.array(ours["embeddings"], dtype=np.float64)
    model = SentenceTransformer(args.embedder, device="cpu")
    want = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True).astype(np.float64)
    err = np.abs(got - want).max(axis=1)
    cos = (got * want).sum(axis=1)
    worst = int(err.argmax())
    print(f"embedder: {args.embedder} ({ours['dir']}), max_seq_length {ours['max_seq_length']}, "
          f"pooling {ours['pooling']}, dim {ours['dim']}")
    print(f"sentence-transformers {__import__('sentence_transformers').__version__}, "
          f"max_seq_length {model.max_seq_length}")
    print(f"{len(texts)} texts: max |alignscope - sentence-transformers| = {err.max():.2e} "
          f"(text {worst}: {texts[worst][:60]!r}); min cosine {cos.min():.8f}")
    if err.max() > args.tolerance:
        print(f"FAIL: exceeds {args.tolerance:g}")
        sys.exit(1)
    print(f"OK: within {args.tolerance:g}")


if __name__ == "__main__":
    main()
