#!/usr/bin/env python3
"""Numbers of a checkpoint computed by PyTorch, for checking the PyTorch engine against
alignscope's reference fixture and alignscope against transformers (tests/torch_engine.rs
runs both).

    # loss, per-layer CE and gradients of one batch under the trainer's objectives
    python scripts/torch/probe.py grads --ckpt tests/fixtures/tiny-gpt2 \\
        --batch-json tests/fixtures/tiny-gpt2/expected.json --out /tmp/probe
    # transformers' own logit lens (its hidden states, ln_f and lm_head) at every layer
    python scripts/torch/probe.py lens --ckpt checkpoints/x --ids 41,84,365 --out /tmp/lens.safetensors

`grads` reads the batch from the `train.batch` field of a JSON file (rows of token ids;
inputs are row[:-1], targets row[1:]) and writes grads_aligned.safetensors,
grads_standard.safetensors (under the checkpoint's parameter names; a tied head's gradient
is on wte) and losses.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    p = argparse.ArgumentParser(prog="probe.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grads")
    g.add_argument("--ckpt", required=True)
    g.add_argument("--batch-json", required=True)
    g.add_argument("--out", required=True)
    l = sub.add_parser("lens")
    l.add_argument("--ckpt", required=True)
    l.add_argument("--ids", required=True, help="comma-separated token ids")
    l.add_argument("--out", required=True)
    args = p.parse_args()

    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import GPT2LMHeadModel
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    lm = GPT2LMHeadModel.from_pretrained(args.ckpt, dtype=torch.float32).eval()

    if args.cmd == "grads":
        from alignscope_torch.objective import LayerwiseObjective, aligned_weights, standard_weights
        rows = torch.tensor(json.loads(Path(args.batch_json).read_text())["train"]["batch"])
        x, y = rows[:, :-1], rows[:, 1:]
        obj = LayerwiseObjective(lm)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        summary = {}
        n = lm.config.n_layer
        for kind, weights in (("aligned", aligned_weights(n)), ("standard", standard_weights(n))):
            lm.zero_grad(set_to_none=True)
            loss, layer_ce = obj(x, y, weights, 0.0, 0)
            loss.backward()
            save_file({name: prm.grad.contiguous() for name, prm in lm.named_parameters()},
                      str(out / f"grads_{kind}.safetensors"))
            summary[kind] = {"loss": loss.item(), "layer_losses": layer_ce.tolist()}
        (out / "losses.json").write_text(json.dumps(summary))
    else:
        ids = torch.tensor([[int(t) for t in args.ids.split(",")]])
        with torch.no_grad():
            o = lm(ids, output_hidden_states=True)
        # hidden_states: embeddings, blocks 1..L-1, and ln_f(block L) last.
        hs = o.hidden_states
        n = lm.config.n_layer
        lens = {}
        for layer in range(n + 1):
            logits = o.logits[0] if layer == n else lm.lm_head(lm.transformer.ln_f(hs[layer][0]))
            lens[f"lens.{layer}"] = logits.contiguous()
        save_file(lens, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
