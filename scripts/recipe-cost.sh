#!/usr/bin/env bash
# What one step of the gpt2-aligned recipe costs on this machine: GPT-2 124M (random
# weights from scripts/gpt2-124m-config.json, the real GPT-2 tokenizer; only the shapes
# matter), batch 8 x context 256, AdamW with gradient clipping, the aligned loss
# alternating with last-layer CE exactly as `alignscope --ckpt gpt2-aligned` trains it
# (odd steps aligned, even steps standard), on the Austen texts.
#
#   scripts/recipe-cost.sh                 # 7 steps on the CPU
#   STEPS=9 DEVICE=cuda BIN=target-cuda/release/alignscope scripts/recipe-cost.sh
#   CONFIG=scripts/austen-config.json TOKENIZER=checkpoints/austen-base scripts/recipe-cost.sh
#                                          # a quick check of the script on a small model
#
# Prints the machine, each step's seconds (recovered from the run's metrics.jsonl, whose
# tokens_per_sec is the mean over the steps so far), the median aligned and standard step
# without the first one (warm-up), what 1000 steps of the recipe come to, and how fast the
# training data was tokenized. Publish numbers only from a quiet machine (the load
# average is printed before and after).
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=${STEPS:-7}
DEVICE=${DEVICE:-cpu}
BIN=${BIN:-target/release/alignscope}
CONFIG=${CONFIG:-scripts/gpt2-124m-config.json}
TOKENIZER=${TOKENIZER:-assets/gpt2-tokenizer}
if [ "$STEPS" -lt 3 ] || [ "$STEPS" -gt 20 ]; then
    echo "error: STEPS must be 3..20 (a step's time is recovered from a 20-step mean)" >&2
    exit 1
fi
if [ ! -x "$BIN" ]; then
    echo "error: $BIN is not built (cargo build --release; see the README's GPU section for CUDA)" >&2
    exit 1
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores; device $DEVICE; model $CONFIG"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$BIN" train --init "$CONFIG" --tokenizer "$TOKENIZER" \
    --loss aligned --batch 8 --ctx 256 --steps "$STEPS" --eval-every 0 --save-every 0 \
    --device "$DEVICE" --out "$OUT/run" --log-lines 2> "$OUT/log" || { cat "$OUT/log" >&2; exit 1; }
echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)"
grep '^training data:' "$OUT/log"
python3 - "$OUT/run/metrics.jsonl" <<'EOF'
import json, statistics, sys
tokens_per_step = 8 * 256
rows = [r for r in map(json.loads, open(sys.argv[1])) if "eval" not in r]
elapsed, secs = 0.0, {}
for r in rows:
    # tokens_per_sec is the mean over the last 20 steps: with at most 20, over all so far.
    total = r["step"] * tokens_per_step / r["tokens_per_sec"]
    dt, elapsed = total - elapsed, total
    print(f"step {r['step']:2d} {r['objective']:8s} {dt:7.2f} s")
    if r["step"] > 1:
        secs.setdefault(r["objective"], []).append(dt)
aligned, standard = statistics.median(secs["aligned"]), statistics.median(secs["standard"])
print(f"median without step 1: aligned {aligned:.2f} s, standard {standard:.2f} s per step "
      f"({tokens_per_step / aligned:.0f} and {tokens_per_step / standard:.0f} tokens/s)")
hours = 500 * (aligned + standard) / 3600
print(f"the recipe's 1000 steps (500 of each): {hours:.1f} h")
EOF
