#!/usr/bin/env bash
# The GPU check: one script that, on a machine with an NVIDIA GPU and no Rust toolchain,
#   1. prints nvidia-smi and what alignscope makes of the device,
#   2. runs the same binary with --device cpu and --device cuda on the fixture and on the
#      shipped Austen pair and compares them: lens probabilities (within 1e-4), greedy
#      generations per exit layer and early exit (identical), per-layer eval CE (within
#      1e-4), and training steps (aligned, standard after one AdamW update, aligned again
#      after a save and resume, ce-reg; losses within 1e-4),
#   3. benchmarks GPT-2-124M (random weights, GPT-2's config and tokenizer: nothing to
#      download) on the GPU: all-layer analysis of a 64-token prompt, batch-1 greedy decode
#      (all 12 layers, and exit layer 6), training tokens/s of the standard and the aligned
#      loss at batch 8 x 256 (and 32 x 256, each also with --tf32) with a profile of the
#      step's phases, and the gpt2-aligned recipe's step as `train` runs it; with COMPARE=1
#      also the same measurements with PyTorch/transformers on the same GPU (when its
#      python3 has them) and whole `generate` processes against transformers' `generate`,
#   4. writes everything to OUT/device-check.json, with OUT/device-check.log beside it
#      (and OUT/results.tar, each command's raw output, kept up to date as it goes).
# It exits 0 when every comparison passes (the benchmarks are measurements, not checks).
#
# Usage
#   scripts/device-check.sh --pack      here, after the CUDA build: strips and compresses
#                                       target-cuda/release/alignscope into target-cuda/dist/
#   scripts/device-check.sh [OUT]       there (OUT defaults to $OUT, else ./device-check-out)
#   DEVICE=cpu scripts/device-check.sh /tmp/x
#                                       a dry run on any machine: "GPU" runs on the CPU too,
#                                       with shorter benchmarks (see the BENCH_* settings)
#
# Through the device tool (the lead's checkout travels; only carried paths add to it, and
# tracked files plus carried ones must stay under 64 MiB):
#   here:  eval "$(scripts/setup-cuda.sh)" && cargo build --release --features cuda \
#            && scripts/device-check.sh --pack
#   run:   command   scripts/device-check.sh
#          carry     ["target-cuda/dist"]
#          timeout_s 300 (about 3 minutes on an H200; 540 with COMPARE=1, about 7.5)
# The GPU machine must hold the CUDA 13 runtime libraries the binary links (libcublas,
# libcublasLt, libcurand, libcudart: a PyTorch cu13 install has them under
# site-packages/nvidia/cu13/lib) and the driver's libcuda.so.1; the script finds both, or
# takes ALIGNSCOPE_CUDA_LIBS (a folder), and says which library is missing otherwise.
#
# Settings (environment): DEVICE (cuda), COMPARE (1: the PyTorch/transformers runs too),
# ALIGNSCOPE_BIN (the binary to run),
# BENCH_REPS, BENCH_DECODE_TOKENS, BENCH_TRAIN_STEPS, BENCH_BATCH, CHECK_TIMEOUT (seconds
# per command; default 150, and 900 for a CPU dry run).
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 1

if [ "${1:-}" = "--pack" ]; then
    set -e
    src="${CARGO_TARGET_DIR:-target-cuda}/release/alignscope"
    [ -x "$src" ] || {
        echo "error: no CUDA build at $src: run \`eval \"\$(scripts/setup-cuda.sh)\" && cargo build --release --features cuda\` first" >&2
        exit 1
    }
    mkdir -p target-cuda/dist
    strip -o target-cuda/dist/alignscope "$src"
    rm -f target-cuda/dist/alignscope.xz
    xz -9 -T0 target-cuda/dist/alignscope
    size=$(stat -c %s target-cuda/dist/alignscope.xz)
    tracked=$(git ls-files -z | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
    echo "target-cuda/dist/alignscope.xz: $((size / 1024 / 1024)) MiB (tracked files: $((tracked / 1024 / 1024)) MiB; the device tool takes 64 MiB in all)"
    [ $((size + tracked)) -lt $((64 * 1024 * 1024)) ] || echo "warning: the tree and the binary together exceed 64 MiB" >&2
    exit 0
fi

device="${DEVICE:-cuda}"
out="${1:-${OUT:-$repo/device-check-out}}"
mkdir -p "$out" || exit 1
out="$(cd "$out" && pwd)"
log="$out/device-check.log"
: >"$log"
work="$(mktemp -d "${TMPDIR:-/tmp}/alignscope-check.XXXXXX")"
trap 'rm -rf "$work"' EXIT
results="$work/results"
mkdir -p "$results"
started=$(date +%s)
per_cmd="${CHECK_TIMEOUT:-$([ "$device" = cpu ] && echo 900 || echo 150)}"

say() { echo "$*" | tee -a "$log"; }

if [ "$device" = "cpu" ]; then
    reps="${BENCH_REPS:-2}" decode="${BENCH_DECODE_TOKENS:-8}" steps="${BENCH_TRAIN_STEPS:-1}" batch="${BENCH_BATCH:-1}"
else
    reps="${BENCH_REPS:-10}" decode="${BENCH_DECODE_TOKENS:-64}" steps="${BENCH_TRAIN_STEPS:-10}" batch="${BENCH_BATCH:-8}"
fi

# ---------------------------------------------------------------- the binary
bin="${ALIGNSCOPE_BIN:-}"
# A dry run takes the CPU build when there is one (the CUDA build needs CUDA's libraries).
if [ -z "$bin" ] && [ "$device" = cpu ] && [ -x target/release/alignscope ]; then
    bin="$repo/target/release/alignscope"
fi
if [ -z "$bin" ]; then
    if [ -f target-cuda/dist/alignscope.xz ]; then
        bin="$work/alignscope"
        if command -v xz >/dev/null; then
            xz -dc target-cuda/dist/alignscope.xz >"$bin"
        else
            python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
                target-cuda/dist/alignscope.xz "$bin"
        fi
        chmod +x "$bin"
    else
        for c in target-cuda/dist/alignscope target-cuda/release/alignscope target/release/alignscope; do
            if [ -x "$c" ]; then
                bin="$repo/$c"
                break
            fi
        done
    fi
fi
[ -n "$bin" ] && [ -x "$bin" ] || {
    say "error: no alignscope binary (set ALIGNSCOPE_BIN, or carry target-cuda/dist made by --pack)"
    exit 1
}

# ---------------------------------------------------------------- CUDA libraries
# A CUDA build links the CUDA 13 libraries: find a folder that has them all, and the
# driver's libcuda. (Nothing is needed for a CPU build.)
if ldd "$bin" 2>/dev/null | grep -q 'libcublas'; then
    need=$(ldd "$bin" | awk '/libcu(blas|blasLt|rand|dart)|libnvrtc/ {print $1}' | tr '\n' ' ')
    candidates=("${ALIGNSCOPE_CUDA_LIBS:-}")
    for py in python3 /opt/torch/.venv/bin/python3; do
        if command -v "$py" >/dev/null; then
            site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null) && candidates+=("$site/nvidia/cu13/lib")
        fi
    done
    candidates+=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
    libs=""
    for c in "${candidates[@]}"; do
        [ -n "$c" ] && [ -d "$c" ] || continue
        ok=1
        for l in $need; do [ -e "$c/$l" ] || ok=0; done
        if [ $ok = 1 ]; then
            libs="$c"
            break
        fi
    done
    [ -n "$libs" ] && export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
        [ -e "$d/libcuda.so.1" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
    done
    missing=$(ldd "$bin" | awk '/not found/ {print $1}' | tr '\n' ' ')
    if [ -n "$missing" ]; then
        say "error: the binary's libraries are not all found: $missing(looked in: ${candidates[*]}; set ALIGNSCOPE_CUDA_LIBS)"
        python3 -c 'import json, sys; json.dump({"ok": False, "error": "missing libraries: " + sys.argv[1]}, open(sys.argv[2], "w"), indent=1)' \
            "$missing" "$out/device-check.json"
        exit 1
    fi
fi

run() { # run NAME ARGS... : the binary's stdout → results/NAME.json, stderr → the log
    local name="$1"
    shift
    run_program "$name" "$bin" "$@"
}

run_program() { # run_program NAME PROGRAM ARGS...
    local name="$1"
    shift
    local t0 t1 rc
    t0=$(date +%s.%N)
    timeout "$per_cmd" "$@" >"$results/$name.json" 2>"$work/stderr"
    rc=$?
    t1=$(date +%s.%N)
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(awk "BEGIN { printf \"%.1f s\", $t1 - $t0 }")" "$*" >>"$results/commands.tsv"
    # Each command's output reaches OUT at once: a run cut short by its time limit still
    # brings back what it measured.
    tar -cf "$out/results.tar" -C "$work" results 2>/dev/null
    if [ $rc -ne 0 ]; then
        say "FAILED ($rc): alignscope $*"
        tail -n 5 "$work/stderr" | tee -a "$log"
    else
        cat "$work/stderr" >>"$log"
    fi
    return $rc
}

# ---------------------------------------------------------------- 1. the device
say "== alignscope device check ($(date -u +%Y-%m-%dT%H:%M:%SZ)), device $device, binary $bin ($(stat -c %s "$bin") bytes)"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi 2>&1 | tee "$results/nvidia-smi.txt" >>"$log"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader >"$results/gpu.txt" 2>&1
else
    say "(no nvidia-smi)"
fi
run device-cpu device --device cpu --json
if ! run device-gpu device --device "$device" --json; then
    say "error: --device $device is not usable; nothing on the GPU can be checked"
fi
say "$(cat "$results/device-gpu.json" 2>/dev/null)"

# ---------------------------------------------------------------- 2. CPU vs GPU
prompt="It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a"
models=(tests/fixtures/tiny-gpt2 checkpoints/austen-aligned checkpoints/austen-standard)
for m in "${models[@]}"; do
    tag=$(basename "$m")
    for side in cpu gpu; do
        dev=$([ "$side" = cpu ] && echo cpu || echo "$device")
        run "$tag.inspect.$side" inspect --ckpt "$m" --device "$dev" --json --prompt "$prompt" --top-k 10
        run "$tag.generate.$side" generate --ckpt "$m" --device "$dev" --json --prompt "$prompt" --exit-layer all \
            --max-new-tokens 16 --ignore-eos
        run "$tag.early.$side" generate --ckpt "$m" --device "$dev" --json --prompt "$prompt" --early-exit 0.3 \
            --max-new-tokens 16 --ignore-eos
        run "$tag.eval.$side" eval --ckpt "$m" --device "$dev" --json --ctx 128 --max-chunks 8
        tr="$work/train-$tag-$side"
        common=(--device "$dev" --json --log-lines --batch 4 --ctx 64 --lr 1e-4 --eval-every 0 --save-every 1
            --data assets/austen/emma.txt)
        run "$tag.train.$side" train --ckpt "$m" --out "$tr" --steps 2 "${common[@]}" &&
            run "$tag.resume.$side" train --resume "$tr" --steps 3 --device "$dev" --json --log-lines
        run "$tag.cereg.$side" train --ckpt "$m" --out "$tr-cereg" --loss ce-reg --steps 1 "${common[@]}"
    done
done

# ---------------------------------------------------------------- 3. benchmarks
say "== benchmarks on $device: GPT-2-124M, random weights"
run bench-inference bench --device "$device" --model gpt2 --what inference --reps "$reps" --decode-tokens "$decode" --json
run bench-train bench --device "$device" --model gpt2 --what train --batch "$batch" --train-steps "$steps" --profile --json
if [ "$device" != cpu ]; then
    # What a GPU is bought for: a larger batch, and the f32 products on TF32 tensor cores.
    run bench-train-tf32 bench --device "$device" --model gpt2 --what train --batch "$batch" --train-steps "$steps" --tf32 --json
    run bench-train-b32 bench --device "$device" --model gpt2 --what train --batch 32 --train-steps "$steps" --json
    run bench-train-b32-tf32 bench --device "$device" --model gpt2 --what train --batch 32 --train-steps "$steps" --tf32 --profile --json
    # The gpt2-aligned recipe's step as `alignscope train` runs it (alternating, on the Austen texts).
    run_program recipe-cost env STEPS=9 DEVICE="$device" BIN="$bin" bash scripts/recipe-cost.sh
    # With COMPARE=1, the same measurements with PyTorch/transformers on the same GPU, in the
    # same run (about 4.5 more minutes on an H200, most of it transformers' start-up).
    if [ "${COMPARE:-0}" != 1 ]; then
        say "(COMPARE=1 adds PyTorch/transformers on the same GPU)"
    elif python3 -c 'import torch, transformers; assert torch.cuda.is_available()' 2>/dev/null; then
        say "== the same on $device with PyTorch $(python3 -c 'import torch; print(torch.__version__)')"
        gpt2=(--layers 12 --d 768 --heads 12 --vocab 50257 --ctx 256 --steps "$steps" --device cuda --json)
        run_program torch-decode python3 scripts/pytorch_decode_bench.py --device cuda --tokens "$decode" --json
        run_program torch-train python3 scripts/pytorch_train_bench.py "${gpt2[@]}" --batch "$batch"
        run_program torch-train-tf32 python3 scripts/pytorch_train_bench.py "${gpt2[@]}" --batch "$batch" --tf32
        run_program torch-train-b32 python3 scripts/pytorch_train_bench.py "${gpt2[@]}" --batch 32
        run_program torch-train-b32-tf32 python3 scripts/pytorch_train_bench.py "${gpt2[@]}" --batch 32 --tf32
        # What a user runs: whole `alignscope generate` processes against whole transformers
        # `generate` processes, both on the GPU (the checkpoint: random GPT-2-124M weights).
        if command -v script >/dev/null; then
            run_program generate-vs-transformers env DEVICE="$device" BIN="$bin" CKPT="$work/gpt2-124m-random" REPS=2 THREADS=8 \
                ALIGNSCOPE_PYTHON="$(command -v python3)" bash scripts/generate-vs-transformers.sh
        fi
    else
        say "(no PyTorch with CUDA here: no PyTorch comparison)"
    fi
fi

# ---------------------------------------------------------------- 4. compare and report
python3 - "$results" "$out/device-check.json" "$device" "$started" <<'EOF' 2>&1 | tee -a "$log"
import json, os, sys, time

results, target, device, started = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
TOL = 1e-4


def load(name):
    """The JSON a command printed (the last line for `train --json`: one object a line)."""
    p = os.path.join(results, name + ".json")
    try:
        lines = [l for l in open(p).read().splitlines() if l.strip()]
        objs = [json.loads(l) for l in lines]
    except (OSError, ValueError):
        return None
    if not objs:
        return None
    kind = name.split(".")[1] if name.count(".") == 2 else None
    return objs if kind in ("train", "resume", "cereg") else objs[-1]


def maxdiff(a, b):
    if isinstance(a, list):
        return max([maxdiff(x, y) for x, y in zip(a, b)] or [0.0]) if len(a) == len(b) else float("inf")
    if a is None or b is None:
        return 0.0 if a is b else float("inf")
    return abs(a - b)


checks = []


def check(model, what, ok, **detail):
    checks.append(dict(model=model, check=what, ok=bool(ok), **detail))


for model in ["tiny-gpt2", "austen-aligned", "austen-standard"]:
    def pair(kind):
        return load(f"{model}.{kind}.cpu"), load(f"{model}.{kind}.gpu")

    c, g = pair("inspect")
    if c and g:
        worst, outside = 0.0, []
        for lc, lg in zip(c["lens"], g["lens"]):
            pc = {t["id"]: t["prob"] for t in lc["top"]}
            pg = {t["id"]: t["prob"] for t in lg["top"]}
            for i in set(pc) | set(pg):
                if i in pc and i in pg:
                    worst = max(worst, abs(pc[i] - pg[i]))
                else:
                    # Only a tie at the edge of the top-k may swap a token in or out.
                    have = pc if i in pc else pg
                    other = pg if i in pc else pc
                    if have[i] - min(other.values()) > TOL:
                        outside.append((lc["layer"], i))
        check(model, "lens top-10 probabilities, every layer", worst <= TOL and not outside, max_abs_diff=worst, swapped=outside)
        sim = max(maxdiff(c[k], g[k]) for k in ("cos", "cos_raw", "cka"))
        check(model, "COS / raw COS / CKA matrices", sim <= TOL, max_abs_diff=sim)
    else:
        check(model, "lens top-10 probabilities, every layer", False, error="a run failed")

    c, g = pair("generate")
    if c and g:
        bad = [x["exit_layer"] for x, y in zip(c["generations"], g["generations"]) if x["ids"] != y["ids"]]
        check(model, "greedy generation (16 tokens) at every exit layer", not bad and len(c["generations"]) == len(g["generations"]),
              layers=len(c["generations"]), differing_exit_layers=bad,
              coherence_max_abs_diff=maxdiff([x["coherence"] for x in c["generations"]], [y["coherence"] for y in g["generations"]]))
    else:
        check(model, "greedy generation (16 tokens) at every exit layer", False, error="a run failed")

    c, g = pair("early")
    if c and g:
        check(model, "early exit (threshold 0.3): tokens and exit layers", c["ids"] == g["ids"] and c["exit_layers"] == g["exit_layers"],
              exit_layers_cpu=c["exit_layers"], exit_layers_gpu=g["exit_layers"])
    else:
        check(model, "early exit (threshold 0.3): tokens and exit layers", False, error="a run failed")

    c, g = pair("eval")
    if c and g:
        ce = maxdiff(c["ce"], g["ce"])
        acc = maxdiff(c["acc"], g["acc"]) * c["tokens"]
        check(model, "eval (8 chunks x 128 tokens): CE per layer", ce <= TOL, max_abs_diff=ce, tokens=c["tokens"])
        check(model, "eval: accuracy per layer (at most 2 argmax ties flipped)", acc <= 2.0 + 1e-9, max_predictions_differing=acc)
        sim = max(maxdiff(c["cos_last"], g["cos_last"]), maxdiff(c["cka_last"], g["cka_last"]))
        check(model, "eval: COS and CKA with the last layer", sim <= TOL, max_abs_diff=sim)
    else:
        check(model, "eval (8 chunks x 128 tokens): CE per layer", False, error="a run failed")

    for kind, label in [("train", "training steps 1 (aligned) and 2 (standard, after an AdamW update)"),
                        ("resume", "step 3 (aligned) after saving and resuming"),
                        ("cereg", "ce-reg step 1")]:
        c, g = pair(kind)
        if c and g and len(c) == len(g):
            loss = maxdiff([x["loss"] for x in c], [y["loss"] for y in g])
            layers = maxdiff([x["layer_losses"] for x in c], [y["layer_losses"] for y in g])
            gn = max(abs(x["grad_norm"] - y["grad_norm"]) / max(abs(x["grad_norm"]), 1e-12) for x, y in zip(c, g))
            check(model, label + ": loss", loss <= TOL, max_abs_diff=loss, objectives=[x["objective"] for x in c],
                  losses_cpu=[x["loss"] for x in c], losses_gpu=[y["loss"] for y in g])
            check(model, label + ": per-layer losses", layers <= TOL, max_abs_diff=layers)
            check(model, label + ": gradient norm (relative 1e-3)", gn <= 1e-3, max_rel_diff=gn)
        else:
            check(model, label + ": loss", False, error="a run failed")

bench = {"inference": load("bench-inference"), "training": load("bench-train")}
for extra in ("bench-train-tf32", "bench-train-b32", "bench-train-b32-tf32"):
    if load(extra) is not None:
        bench[extra.removeprefix("bench-").replace("-", "_")] = load(extra)
summary = {}
try:
    inf = bench["inference"]["inference"][0]
    summary["analysis_64_tokens_ms"] = inf["analysis_ms_median"]
    for d in inf["decode"]:
        summary[f"decode_exit{d['exit_layer']}_tokens_per_sec"] = d["tokens_per_sec"]
except (TypeError, KeyError, IndexError):
    pass
try:
    tr = bench["training"]["training"][0]
    rate = {x["loss"]: x["tokens_per_sec"] for x in tr["losses"]}
    summary["train_batch"] = f"{tr['batch']} x {tr['ctx']}"
    summary["train_standard_tokens_per_sec"] = rate["standard"]
    summary["train_aligned_tokens_per_sec"] = rate["aligned"]
    summary["aligned_slowdown_per_token"] = rate["standard"] / rate["aligned"]
    # llm.c's published GPT-2-124M H100 figure (bf16, fused kernels): ~460k tokens/s.
    summary["standard_vs_llm_c_h100"] = rate["standard"] / 460_000
except (TypeError, KeyError, IndexError):
    pass
torch_runs = {name: load(name) for name in ("torch-decode", "torch-train", "torch-train-tf32", "torch-train-b32", "torch-train-b32-tf32")}
torch_runs = {k: v for k, v in torch_runs.items() if v is not None}
if torch_runs:
    bench["torch"] = torch_runs
    try:
        ours = {d["exit_layer"]: d["tokens_per_sec"] for d in bench["inference"]["inference"][0]["decode"]}
        summary["torch_decode_tokens_per_sec"] = torch_runs["torch-decode"]["tokens_per_sec"]
        summary["decode_all_layers_vs_transformers"] = ours[max(ours)] / torch_runs["torch-decode"]["tokens_per_sec"]
    except (TypeError, KeyError, ValueError):
        pass
# Each training measurement: alignscope's rates, and PyTorch's from the same run.
for key, theirs_name in [("training", "torch-train"), ("train_tf32", "torch-train-tf32"), ("train_b32", "torch-train-b32"),
                         ("train_b32_tf32", "torch-train-b32-tf32")]:
    try:
        value = bench[key]
        tr = value["training"][0]
        rate = {x["loss"]: x["tokens_per_sec"] for x in tr["losses"]}
        row = {"batch": f"{tr['batch']} x {tr['ctx']}", "tf32": value.get("tf32", False), "standard_tokens_per_sec": rate["standard"],
               "aligned_tokens_per_sec": rate["aligned"], "aligned_slowdown_per_token": rate["standard"] / rate["aligned"],
               "standard_vs_llm_c_h100": rate["standard"] / 460_000}
        for x in tr["losses"]:
            if x.get("device_profile"):
                row.setdefault("step_profile_ms", {})[x["loss"]] = {
                    ph["phase"]: [round(ph["queued_ms"], 2), round(ph["done_ms"], 2)] for ph in x["device_profile"]["phases"]}
        theirs = torch_runs.get(theirs_name)
        if theirs:
            t = {x["loss"]: x["tokens_per_sec"] for x in theirs["losses"]}
            row["torch_standard_tokens_per_sec"] = t["standard"]
            row["torch_aligned_tokens_per_sec"] = t["aligned"]
            row["vs_torch"] = {k: rate[k] / t[k] for k in ("standard", "aligned")}
        summary["train" if key == "training" else key] = row
    except (TypeError, KeyError, IndexError):
        pass

commands = []
try:
    for line in open(os.path.join(results, "commands.tsv")):
        name, rc, secs, args = line.rstrip("\n").split("\t")
        commands.append({"name": name, "rc": int(rc), "time": secs, "args": args})
except OSError:
    pass


def text(name):
    try:
        return open(os.path.join(results, name)).read().strip()
    except OSError:
        return None


report = {
    "ok": all(c["ok"] for c in checks) and all(c["rc"] == 0 for c in commands),
    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "device": device,
    "gpu": text("gpu.txt"),
    "alignscope_device": load("device-gpu"),
    "tolerance": TOL,
    "checks_passed": sum(c["ok"] for c in checks),
    "checks_total": len(checks),
    "checks": checks,
    "bench_summary": summary,
    "recipe_cost": text("recipe-cost.json"),
    "generate_vs_transformers": text("generate-vs-transformers.json"),
    "bench": bench,
    "commands_failed": [c for c in commands if c["rc"] != 0],
    "commands": commands,
    "seconds": round(time.time() - started, 1),
}
json.dump(report, open(target, "w"), indent=1)
for c in checks:
    if not c["ok"]:
        print("MISMATCH", c["model"], "|", c["check"], "|", {k: v for k, v in c.items() if k not in ("model", "check", "ok")})
print(json.dumps({k: report[k] for k in ("ok", "device", "gpu", "checks_passed", "checks_total", "bench_summary", "recipe_cost", "generate_vs_transformers", "seconds")}, indent=1))
sys.exit(0 if report["ok"] else 1)
EOF
rc=${PIPESTATUS[0]}
say "wrote $out/device-check.json and $out/device-check.log ($(($(date +%s) - started)) s)"
exit "$rc"
