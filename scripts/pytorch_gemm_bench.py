#!/usr/bin/env python3
"""PyTorch counterpart of `alignscope bench --what gemm`: GFLOP/s of torch.matmul on the
same products (m, n, k, a transposed, b transposed), best of ~0.3 s of runs each.

    python3 scripts/pytorch_gemm_bench.py --threads 2 --shapes '[[1024, 1024, 1024, false, false]]'

With --json it prints one JSON object instead (what `alignscope bench --compare-torch` reads).
Needs torch.
"""
import argparse
import json
import time

import torch


def gflops(m, n, k, ta, tb):
    a = torch.randn(k, m) if ta else torch.randn(m, k)
    b = torch.randn(n, k) if tb else torch.randn(k, n)
    a, b = (a.t() if ta else a), (b.t() if tb else b)
    c = torch.empty(m, n)
    torch.matmul(a, b, out=c)
    best, start, runs = float("inf"), time.perf_counter(), 0
    while runs < 3 or time.perf_counter() - start < 0.3:
        t = time.perf_counter()
        torch.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t)
        runs += 1
    return 2.0 * m * n * k / best / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", required=True, help="JSON list of [m, n, k, trans_a, trans_b]")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    shapes = json.loads(a.shapes)
    results = [gflops(*s) for s in shapes]
    if a.json:
        print(json.dumps({"torch": torch.__version__, "threads": a.threads, "gflops": results}))
        return
    for s, g in zip(shapes, results):
        print(f"{s[0]} x {s[1]} x {s[2]} (a{'ᵀ' if s[3] else ''} b{'ᵀ' if s[4] else ''}): {g:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
