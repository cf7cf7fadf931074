#!/usr/bin/env python3
"""Checks that HF transformers loads an alignscope checkpoint and computes what alignscope
computes: the logit lens (top-5 tokens and probabilities) at every layer, for one prompt.

    python3 scripts/check_with_transformers.py checkpoints/austen-aligned "It is a truth"

Needs torch and transformers. Exits non-zero on a mismatch.
"""
import json
import subprocess
import sys

import torch
from transformers import GPT2LMHeadModel


def main():
    ckpt, prompt = sys.argv[1], sys.argv[2]
    ours = json.loads(subprocess.check_output(
        ["target/release/alignscope", "inspect", "--ckpt", ckpt, "--prompt", prompt, "--json", "--top-k", "5"]))
    model = GPT2LMHeadModel.from_pretrained(ckpt).eval()
    with torch.no_grad():
        out = model(torch.tensor([ours["input_ids"]]), output_hidden_states=True)
    hs = out.hidden_states  # embeddings, blocks 1..L-1, ln_f(block L)
    n_layer = model.config.n_layer
    worst = 0.0
    for lens in ours["lens"]:
        l = lens["layer"]
        logits = out.logits[0, -1] if l == n_layer else model.lm_head(model.transformer.ln_f(hs[l][0, -1]))
        probs = torch.softmax(logits, -1)
        top = torch.topk(probs, 5)
        ids = top.indices.tolist()
        if ids != [t["id"] for t in lens["top"]]:
            sys.exit(f"layer {l}: transformers top-5 {ids} vs alignscope {[t['id'] for t in lens['top']]}")
        worst = max(worst, max(abs(p - t["prob"]) for p, t in zip(top.values.tolist(), lens["top"])))
    print(f"transformers agrees on {ckpt}: top-5 at all {n_layer + 1} layers identical, max prob difference {worst:.2e}")
    if worst > 1e-4:
        sys.exit(1)


if __name__ == "__main__":
    main()
