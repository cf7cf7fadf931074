#!/usr/bin/env python3
"""PyTorch reference for `alignscope bench --what train`: tokens/s of the standard and the
aligned loss for the same GPT-2 configuration, batch and context, on the CPU (or a GPU with
--device cuda; --tf32 lets its f32 matrix products use TF32 tensor cores, as alignscope's).

    python3 scripts/pytorch_train_bench.py --threads 2 --layers 12 --d 128 --vocab 4096 --ctx 256 --batch 16

With --json it prints one JSON object instead (what `alignscope bench --compare-torch` reads).
Needs torch and transformers (pip install torch transformers).
"""
import argparse
import json
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tf32", action="store_true", help="CUDA f32 matrix products on TF32 tensor cores")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    a = ap.parse_args()
    say = (lambda _line: None) if a.json else print
    results = []
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    torch.set_float32_matmul_precision("high" if a.tf32 else "highest")  # "high": TF32 products

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=a.layers, n_embd=a.d, n_head=a.heads, vocab_size=a.vocab, n_positions=a.ctx,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    L = a.layers
    lambdas = [2 * l / (L * (L + 1)) for l in range(1, L + 1)]
    say(f"PyTorch {torch.__version__}, {a.device}, {a.threads} threads: {L} layers, d {a.d}, vocab {a.vocab}, batch {a.batch} x ctx {a.ctx}")
    for kind in ["standard", "aligned"]:
        model = GPT2LMHeadModel(cfg).to(device)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

        def step():
            ids = torch.randint(0, a.vocab, (a.batch, a.ctx + 1)).to(device)
            x, y = ids[:, :-1], ids[:, 1:]
            if kind == "standard":
                out = model(x)
                loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, a.vocab), y.reshape(-1))
            else:
                out = model(x, output_hidden_states=True)
                hs = out.hidden_states  # [emb, block 1 .. block L-1, ln_f(block L)]
                loss = 0.0
                for l in range(1, L + 1):
                    logits = out.logits if l == L else model.lm_head(model.transformer.ln_f(hs[l]))
                    loss = loss + lambdas[l - 1] * torch.nn.functional.cross_entropy(logits.reshape(-1, a.vocab), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        w = time.perf_counter()
        step()  # warm-up
        sync()
        # At least --steps, and at least ~3 s of steps so small models time well (as alignscope bench).
        steps = max(a.steps, int(3.0 / max(time.perf_counter() - w, 1e-3)))
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        sync()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        toks = steps * a.batch * a.ctx
        say(f"  {kind:>8} loss: {toks / wall:.0f} tokens/s ({wall / steps:.2f} s/step wall, {cpu / steps:.2f} s/step CPU over {steps} steps)")
        results.append({"loss": kind, "tokens_per_sec": toks / wall, "wall_secs_per_step": wall / steps,
                        "cpu_secs_per_step": cpu / steps, "steps": steps})
    if a.json:
        print(json.dumps({"torch": torch.__version__, "threads": a.threads, "device": a.device, "tf32": a.tf32, "batch": a.batch,
                          "ctx": a.ctx, "losses": results}))


if __name__ == "__main__":
    main()
