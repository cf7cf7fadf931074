#!/usr/bin/env python3
"""PyTorch reference for `alignscope bench --what inference`: batch-1 greedy decode of a
randomly initialised GPT-2-124M with HF transformers (KV cache), on the CPU (or a GPU with
--device cuda).

    python3 scripts/pytorch_decode_bench.py --threads 2 --tokens 32

With --json it prints one JSON object instead (what `alignscope bench --compare-torch` reads).
Needs torch and transformers.
"""
import argparse
import json
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = torch.device(a.device)
    model = GPT2LMHeadModel(GPT2Config()).eval().to(device)
    ids = torch.randint(0, 50257, (1, 8)).to(device)
    timings = []

    class Clock:  # times each generated token after the first, like alignscope bench
        def __call__(self, input_ids, scores):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timings.append(time.perf_counter())
            return False

    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
        model.generate(ids, max_new_tokens=a.tokens, min_new_tokens=a.tokens, do_sample=False, pad_token_id=0,
                       stopping_criteria=[Clock()])
    rate = (len(timings) - 1) / (timings[-1] - timings[0])
    if a.json:
        import transformers
        print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__, "threads": a.threads,
                          "device": a.device, "tokens_per_sec": rate, "tokens": len(timings) - 1}))
        return
    print(f"transformers {torch.__version__}, {a.device}, {a.threads} threads: GPT-2-124M greedy decode {rate:.1f} tokens/s ({1e3 / rate:.1f} ms/token)")


if __name__ == "__main__":
    main()
