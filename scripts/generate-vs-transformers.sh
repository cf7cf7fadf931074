#!/usr/bin/env bash
# GPT-2-124M greedy decoding the way a user runs it: whole `alignscope generate` processes
# against whole transformers `generate` processes, on one checkpoint folder (random weights
# with the real GPT-2 tokenizer), in one run, alternating. Each side generates SHORT and
# LONG new tokens; the difference of the two times over LONG - SHORT tokens is the cost per
# token with start-up taken out (median of REPS runs each); the SHORT time is the wait for a
# first short answer. alignscope runs on a terminal (a pty, through `script`), where it
# streams the text as a user sees it.
#
#   scripts/generate-vs-transformers.sh            # SHORT=8 LONG=136 REPS=3 THREADS=2
#   DEVICE=cuda BIN=target-cuda/release/alignscope scripts/generate-vs-transformers.sh
#                                                  # both on the GPU
#
# Needs a release build (cargo build --release) and the PyTorch engine's Python
# ($ALIGNSCOPE_PYTHON, else ~/.cache/alignscope/venv/bin/python) with torch and transformers.
set -euo pipefail
cd "$(dirname "$0")/.."
SHORT="${SHORT:-8}" LONG="${LONG:-136}" REPS="${REPS:-3}" THREADS="${THREADS:-2}" DEVICE="${DEVICE:-cpu}"
BIN="${BIN:-target/release/alignscope}"
PY="${ALIGNSCOPE_PYTHON:-$HOME/.cache/alignscope/venv/bin/python}"
CKPT="${CKPT:-target/gpt2-124m-random}"
PROMPT="The history of the city"
[ -x "$BIN" ] || { echo "error: $BIN not found: run cargo build --release first" >&2; exit 1; }
[ -x "$PY" ] || { echo "error: no Python with torch at $PY: set ALIGNSCOPE_PYTHON" >&2; exit 1; }
command -v script >/dev/null || { echo "error: script (util-linux) is needed to run alignscope on a pty" >&2; exit 1; }
if [ ! -f "$CKPT/model.safetensors" ]; then
    echo "making $CKPT (random GPT-2-124M weights, the real tokenizer)" >&2
    "$BIN" train --init scripts/gpt2-124m-config.json --tokenizer assets/gpt2-tokenizer --steps 1 --batch 1 --device "$DEVICE" \
        --out "$CKPT" >/dev/null
fi
export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" HF_HUB_OFFLINE=1

calc() { awk "BEGIN { print $* }"; }
seconds() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); calc "$t1 - $t0"; }
ours() { script -qec "$BIN generate --ckpt $CKPT --device $DEVICE --prompt '$PROMPT' --max-new-tokens $1 --ignore-eos" /dev/null; }
theirs() {
    "$PY" - "$CKPT" "$PROMPT" "$1" "$THREADS" "$DEVICE" <<'PY'
import sys, torch
from transformers import AutoTokenizer, GPT2LMHeadModel
ckpt, prompt, n, threads, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(threads)
tok = AutoTokenizer.from_pretrained(ckpt)
model = GPT2LMHeadModel.from_pretrained(ckpt).eval().to(device)
ids = tok(prompt, return_tensors="pt").input_ids.to(device)
with torch.no_grad():
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
print(tok.decode(out[0, ids.shape[1]:]))
PY
}
median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }

declare -A T
for side in ours theirs; do for n in "$SHORT" "$LONG"; do T[$side,$n]=""; done; done
"$BIN" --version >/dev/null; seconds ours 2 >/dev/null; seconds theirs 2 >/dev/null # warm the file cache
for r in $(seq "$REPS"); do
    for n in "$SHORT" "$LONG"; do
        for side in ours theirs; do
            T[$side,$n]+="$(seconds "$side" "$n") "
        done
    done
done
report() {
    local short long per
    short=$(echo ${T[$1,$SHORT]} | tr ' ' '\n' | median)
    long=$(echo ${T[$1,$LONG]} | tr ' ' '\n' | median)
    per=$(calc "($long - $short) / ($LONG - $SHORT)")
    printf '%-34s %6.1f tokens/s (%5.1f ms/token)   %5.2f s for %d tokens\n' "$2" "$(calc "1 / $per")" "$(calc "1000 * $per")" "$short" "$SHORT"
    echo "$per $short"
}
echo "GPT-2-124M ($CKPT), greedy, prompt \"$PROMPT\", device $DEVICE, $THREADS threads, $SHORT vs $LONG new tokens, median of $REPS"
a=$(report ours "alignscope generate (on a pty)"); b=$(report theirs "transformers generate")
echo "$a" | head -1; echo "$b" | head -1
read -r pa sa <<<"$(echo "$a" | tail -1)"; read -r pb sb <<<"$(echo "$b" | tail -1)"
printf 'ratio alignscope/transformers: %.2fx per token, %.1fx to the first %d tokens\n' "$(calc "$pb / $pa")" "$(calc "$sb / $sa")" "$SHORT"
