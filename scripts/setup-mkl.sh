#!/usr/bin/env bash
# Installs Intel MKL's static libraries from PyPI (the mkl-static wheel) into a prefix
# outside the source tree, for `cargo build --release --features mkl`, and prints the
# environment to export for the build.
#
#   scripts/setup-mkl.sh             # install (idempotent) and print the export
#   eval "$(scripts/setup-mkl.sh)"   # the same, applied to this shell
#   cargo build --release --features mkl
#
# Only three archives are kept: the LP64 interface, the sequential threading layer and
# the core (alignscope spreads products over its own threads, one sequential MKL call per
# block, so no OpenMP runtime is linked). They are linked statically: the binary needs
# nothing from MKL at run time. Without MKLROOT, the build looks in the default prefix.
#
# Environment:
#   ALIGNSCOPE_MKL_PREFIX  where to install (default ~/.cache/alignscope/mkl)
#   PYTHON                 the Python 3 whose pip downloads the wheel (default python3)
# Progress goes to stderr; stdout carries only the `export` line.
set -euo pipefail

prefix="${ALIGNSCOPE_MKL_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/alignscope/mkl}"
python="${PYTHON:-python3}"
wheel_pin="mkl-static==2026.2.0"
archives=(libmkl_intel_lp64.a libmkl_sequential.a libmkl_core.a)

say() { echo "setup-mkl: $*" >&2; }
die() {
    echo "error: $*" >&2
    exit 1
}

[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || die "setup-mkl.sh supports Linux x86-64 only (PyPI's mkl-static wheel)"
command -v "$python" >/dev/null || die "$python not found (set PYTHON to a Python 3)"

stamp="$prefix/alignscope-mkl.txt"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wheel_pin" ]; then
    say "$wheel_pin already installed in $prefix"
else
    say "downloading $wheel_pin from PyPI (about 250 MB) into $prefix"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    # A throwaway venv: its pip works even where the system Python has none.
    "$python" -m venv "$work/venv" >&2
    "$work/venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
        --dest "$work" "$wheel_pin" >&2
    wheel="$(ls "$work"/mkl_static-*.whl)"
    rm -rf "$prefix/lib" "$prefix/licensing"
    mkdir -p "$prefix/lib" "$prefix/licensing"
    # Only the archives and the licence texts come out of the wheel (it unpacks to 1 GB).
    "$work/venv/bin/python" - "$wheel" "$prefix" "${archives[@]}" <<'PY'
import os, shutil, sys, zipfile
wheel, prefix, *names = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        [member] = [m for m in z.namelist() if m.endswith("/lib/" + name)]
        dest = os.path.join(prefix, "lib", name)
        with z.open(member) as src, open(dest + ".part", "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(dest + ".part", dest)
    for m in z.namelist():
        if "/licensing/" in m or m.endswith((".dist-info/LICENSE.txt", ".dist-info/licenses/LICENSE.txt")):
            with z.open(m) as src, open(os.path.join(prefix, "licensing", os.path.basename(m)), "wb") as out:
                shutil.copyfileobj(src, out)
PY
    echo "$wheel_pin" >"$stamp"
fi
for a in "${archives[@]}"; do
    [ -s "$prefix/lib/$a" ] || die "$prefix/lib/$a is missing after the install"
done
echo "export MKLROOT=\"$prefix\""
