#!/usr/bin/env bash
# Installs what `cargo build --release --features cuda` needs, from PyPI alone, into a
# prefix outside the source tree, and prints the environment to export for the build.
#
#   scripts/setup-cuda.sh            # install (idempotent) and print the exports
#   eval "$(scripts/setup-cuda.sh)"  # the same, applied to this shell
#   cargo build --release --features cuda
#
# Nothing else is needed: no system CUDA toolkit, no driver, no GPU.
#
# Why these exact versions: the GPU we check on (H100/H200, compute capability 9.0) has
# driver 580, i.e. CUDA 13.0. PTX written by a newer compiler than the driver knows is
# refused when the module is loaded, so the compiler is pinned to CUDA 13.0.x, and so is
# nvvm (pip would otherwise pull the newest nvidia-nvvm, whose cicc emits PTX that
# ptxas 13.0 refuses: "Unsupported .version"). The libraries are only linked against
# here; at run time the binary loads whichever CUDA 13 libraries the GPU machine has
# (the sonames, libcublas.so.13 and friends, are stable across 13.x).
#
# The driver's own library, libcuda, is not on PyPI. The link gets a stub of it with
# soname libcuda.so.1 (what the CUDA toolkit's lib64/stubs holds): one function per
# driver symbol in cudarc's bindings, each returning CUDA_ERROR_NO_DEVICE (100), so a
# run that finds the stub instead of a driver fails cleanly ("CUDA device 0 is not
# available") and `--device auto` falls back to the CPU. On a GPU machine the driver's
# real libcuda.so.1 is loaded instead (keep the stub off LD_LIBRARY_PATH there).
#
# Environment:
#   ALIGNSCOPE_CUDA_PREFIX  where to install (default ~/.cache/alignscope/cuda13)
#   PYTHON                  the Python 3 used to make the venv (default python3)
# Progress goes to stderr; stdout carries only the `export` lines.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${ALIGNSCOPE_CUDA_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/alignscope/cuda13}"
python="${PYTHON:-python3}"

# CUDA 13.0 Update 2, as one set. --no-deps below: this list is the whole install.
packages=(
    nvidia-cuda-nvcc==13.0.88    # nvcc, ptxas, fatbinary (candle-kernels' PTX)
    nvidia-nvvm==13.0.88         # cicc, libnvvm (nvcc's front end); the pin that matters
    nvidia-cuda-crt==13.0.88     # crt/ headers nvcc includes
    nvidia-cuda-cccl==13.0.85    # cub/thrust/libcu++ headers
    nvidia-cuda-runtime==13.0.96 # cuda_runtime.h, libcudart (candle-kernels links it)
    nvidia-cublas==13.1.0.3      # libcublas, libcublasLt (cuBLAS of CUDA 13.0 U2)
    nvidia-curand==10.4.0.35     # libcurand (cuRAND of CUDA 13.0)
    nvidia-cuda-nvrtc==13.0.88   # libnvrtc
)

say() { echo "setup-cuda: $*" >&2; }
die() {
    echo "error: $*" >&2
    exit 1
}

[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || die "setup-cuda.sh supports Linux x86-64 only (PyPI's CUDA wheels)"
command -v "$python" >/dev/null || die "$python not found (set PYTHON to a Python 3)"
command -v cc >/dev/null || die "no C compiler (cc) found: it builds the libcuda stub and is nvcc's host compiler"
command -v cargo >/dev/null || die "cargo not found"

venv="$prefix/venv"
stamp="$venv/alignscope-packages.txt"
wanted="$(printf '%s\n' "${packages[@]}")"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    say "packages already installed in $venv"
else
    say "installing ${#packages[@]} CUDA 13.0 packages into $venv (about 700 MB of wheels)"
    rm -rf "$venv"
    mkdir -p "$prefix"
    "$python" -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "${packages[@]}" >&2
    printf '%s\n' "$wanted" >"$stamp"
fi

site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
root="$site/nvidia/cu13"
[ -x "$root/bin/nvcc" ] || die "no nvcc at $root/bin/nvcc after the install"
"$root/bin/nvcc" --version | grep -q 'release 13\.0' || die "$root/bin/nvcc is not CUDA 13.0"

# The linker looks for libNAME.so; the wheels carry only the versioned files.
for name in cudart cublas cublasLt curand nvrtc; do
    versioned="$(cd "$root/lib" && ls "lib$name.so."* 2>/dev/null | sort | head -n 1 || true)"
    [ -n "$versioned" ] || die "lib$name.so.* missing from $root/lib"
    ln -sfn "$versioned" "$root/lib/lib$name.so"
done

# The libcuda stub, in lib/stubs where cudarc's build looks under CUDA_ROOT. Its symbols
# are every driver function cudarc's bindings can reference (the extern "C" block of
# each wrapper in src/driver/sys), read from the cudarc this Cargo.lock resolves.
cudarc_dir="$(cd "$repo" && cargo metadata --format-version 1 --features cuda 2>/dev/null |
    "$python" -c 'import json, sys, os
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "cudarc":
        print(os.path.dirname(p["manifest_path"]))')"
[ -n "$cudarc_dir" ] || die "cudarc not found through \`cargo metadata --features cuda\` in $repo"
bindings="$cudarc_dir/src/driver/sys/mod.rs"
[ -f "$bindings" ] || die "cudarc's driver bindings not found at $bindings"
stubs="$root/lib/stubs"
mkdir -p "$stubs"
symbols="$(grep -oE '^[[:space:]]+fn cu[A-Za-z0-9_]+\(' "$bindings" | sed -E 's/^[[:space:]]+fn ([A-Za-z0-9_]+)\(/\1/' | sort -u)"
count="$(printf '%s\n' "$symbols" | wc -l)"
[ "$count" -gt 100 ] || die "only $count driver symbols read from $bindings: its layout changed"
src="$stubs/libcuda-stub.c"
{
    echo "/* Generated by alignscope's scripts/setup-cuda.sh from $(basename "$cudarc_dir")'s driver"
    echo "   bindings: a stand-in for the driver's libcuda.so.1 to link against. Every entry point"
    echo "   returns CUDA_ERROR_NO_DEVICE (100) whatever its arguments, so a program that loads"
    echo "   this instead of a driver sees no GPU. (On x86-64 the callee may ignore its"
    echo "   arguments; every driver entry point returns a CUresult.) */"
    printf 'int %s(void) { return 100; }\n' $symbols
} >"$src.tmp"
if ! cmp -s "$src.tmp" "$src" || [ ! -f "$stubs/libcuda.so.1" ]; then
    mv "$src.tmp" "$src"
    cc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so.1" "$src"
    say "built the libcuda stub: $count symbols from $(basename "$cudarc_dir")"
else
    rm -f "$src.tmp"
fi
ln -sfn libcuda.so.1 "$stubs/libcuda.so"

say "ready; CUDA 13.0 root: $root"
say "build with: cargo build --release --features cuda   (the binary lands in target-cuda/release/)"
cat <<EOF
export CUDA_ROOT='$root'
export CUDA_PATH='$root'
export PATH='$root/bin':"\$PATH"
export CUDA_COMPUTE_CAP=90
export LIBRARY_PATH='$root/lib:$stubs'"\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export LD_LIBRARY_PATH='$root/lib:$stubs'"\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export CARGO_TARGET_DIR=target-cuda
EOF
