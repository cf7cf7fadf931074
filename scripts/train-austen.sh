#!/usr/bin/env bash
# Rebuilds the shipped Austen checkpoints from the texts, with alignscope itself:
#   1. a byte-level BPE tokenizer (4096 tokens) on the five training novels;
#   2. checkpoints/austen-base: a 12-layer GPT-2 (d 128) pretrained with the standard loss;
#   3. checkpoints/austen-standard and checkpoints/austen-aligned: both fine-tuned from
#      austen-base with the same data, steps, batch order (seed) and learning rate, one
#      with the standard loss, one with the aligned loss (the paper's GPT-2 experiment);
#   4. the held-out evaluation on persuasion.txt (never trained on).
# About 2 hours on a 2-core CPU. Scale it up with the variables below.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-checkpoints}
BASE_STEPS=${BASE_STEPS:-1800}
FT_STEPS=${FT_STEPS:-600}
BATCH=${BATCH:-16}
CTX=${CTX:-256}
cargo build --release --quiet
WORK=target/austen-build
mkdir -p "$WORK" "$OUT"
# Run a copy, so rebuilding the project during the hours this takes changes nothing here.
BIN="$WORK/alignscope"
cp target/release/alignscope "$BIN"

TRAIN=(--data assets/austen/emma.txt --data assets/austen/mansfield_park.txt \
       --data assets/austen/northanger_abbey.txt --data assets/austen/pride_and_prejudice.txt \
       --data assets/austen/sense_and_sensibility.txt)
EVAL=(--eval-data assets/austen/persuasion.txt)

echo "== tokenizer"
"$BIN" tokenizer train --vocab 4096 "${TRAIN[@]}" --out "$WORK/tokenizer"

echo "== austen-base: pretraining, standard loss"
"$BIN" train --init scripts/austen-config.json --tokenizer "$WORK/tokenizer" --out "$OUT/austen-base" --overwrite \
  --loss standard "${TRAIN[@]}" "${EVAL[@]}" --steps "$BASE_STEPS" --batch "$BATCH" --ctx "$CTX" \
  --lr 1e-3 --min-lr 1e-4 --warmup 100 --weight-decay 0.1 --eval-every 200 --save-every 100 --seed 1 --log-lines

for LOSS in standard aligned; do
  echo "== austen-$LOSS: fine-tuning austen-base with the $LOSS loss"
  "$BIN" train --ckpt "$OUT/austen-base" --out "$OUT/austen-$LOSS" --overwrite \
    --loss "$LOSS" "${TRAIN[@]}" "${EVAL[@]}" --steps "$FT_STEPS" --batch "$BATCH" --ctx "$CTX" \
    --lr 3e-4 --min-lr 3e-5 --warmup 20 --weight-decay 0.01 --eval-every 100 --save-every 100 --seed 2 --log-lines
done

# The shipped folders stay under 20 MB: drop the optimizer moments (the run config,
# training state and metrics stay; fine-tune further with `alignscope train --ckpt NAME`).
for NAME in austen-base austen-standard austen-aligned; do
  rm -f "$OUT/$NAME/optimizer.safetensors"
done

echo "== held-out evaluation on persuasion.txt"
for NAME in austen-base austen-standard austen-aligned; do
  "$BIN" eval --ckpt "$OUT/$NAME" --data assets/austen/persuasion.txt --ctx "$CTX" --save "$OUT/$NAME/eval_persuasion.json"
done
