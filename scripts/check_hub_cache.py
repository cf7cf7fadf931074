#!/usr/bin/env python3
"""Checks that Python's huggingface_hub (what transformers loads models through) reads the
hub cache alignscope filled, offline: every file of a cached snapshot is found by
`hf_hub_download(..., local_files_only=True)` at the same path, and `scan_cache_dir`
reports the repositories without warnings. With transformers installed, the config and
tokenizer of a cached model also load through it, and with torch its weights, every one
in place. tests/hub.rs runs it on the cache of its first download.

    HF_HOME=/path/to/hf-home python3 scripts/check_hub_cache.py   # needs huggingface_hub
"""
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

from huggingface_hub import hf_hub_download, scan_cache_dir


def main():
    info = scan_cache_dir()
    if info.warnings:
        sys.exit(f"scan_cache_dir warnings: {info.warnings}")
    if not info.repos:
        sys.exit("the cache holds no repositories")
    for repo in info.repos:
        for rev in repo.revisions:
            for f in rev.files:
                rel = str(f.file_path.relative_to(rev.snapshot_path))
                got = hf_hub_download(repo.repo_id, rel, repo_type=repo.repo_type, local_files_only=True)
                if os.path.realpath(got) != os.path.realpath(f.file_path):
                    sys.exit(f"{repo.repo_id}/{rel}: huggingface_hub found {got}, not {f.file_path}")
                print(f"{repo.repo_type} {repo.repo_id} {rev.commit_hash[:8]} {rel} ({f.size_on_disk} bytes): found offline")
            if repo.repo_type == "model":
                try:
                    import transformers
                except ImportError:
                    continue
                config = transformers.AutoConfig.from_pretrained(repo.repo_id)
                tok = transformers.AutoTokenizer.from_pretrained(repo.repo_id)
                print(f"transformers {transformers.__version__}: {config.model_type} config and a {len(tok)}-token tokenizer from the cache")
                try:
                    import torch  # noqa: F401  (the weights need it)
                except ImportError:
                    continue
                model, loading = transformers.AutoModelForCausalLM.from_pretrained(repo.repo_id, output_loading_info=True)
                # A tied head is not stored; anything else missing or left over is a bad file.
                missing = [k for k in loading["missing_keys"] if k != "lm_head.weight"]
                if missing or loading["unexpected_keys"] or loading["mismatched_keys"]:
                    sys.exit(f"{repo.repo_id}: transformers could not place every weight: {loading}")
                params = sum(p.numel() for p in model.parameters())
                print(f"transformers: {type(model).__name__} with {params} parameters from the cache, every weight in place")
    print("huggingface_hub reads the cache")


if __name__ == "__main__":
    main()
