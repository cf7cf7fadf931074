"""Checkpoints in alignscope's layout (src/train/save.rs, src/model/checkpoint.rs), so that
either engine continues what the other saved.

A training checkpoint is an HF model folder (config.json, model.safetensors with the
`transformer.` key prefix and no tied lm_head, tokenizer.json) plus

- training_state.json: step, data_rng_position (ChaCha8 word position, as text),
  tokens_seen, elapsed_secs, the run's TrainConfig, and `engine` (who wrote it);
- optimizer.safetensors: AdamW moments `m.NAME` / `v.NAME` (f32) under alignscope's
  canonical parameter names; the optimizer's step count is the training step;
- metrics.jsonl: one line per step (and per evaluation).

Saves are atomic: everything is written to the hidden sibling `.NAME.saving`, fsynced, and
swapped with the old folder by renameat2(RENAME_EXCHANGE) (elsewhere: two renames, the old
folder parked as `.NAME.old` and put back by the next load if a kill fell in between).
Files in the folder that the trainer does not own (e.g. the launcher's train.log) are
hard-linked into every save, so a process still writing them keeps writing into the run.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import socket
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .data import PROJECT_DIR

STATE_FILE = "training_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
METRICS_FILE = "metrics.jsonl"
# The trainer's live status for followers (the explorer): running, finished, stopped or
# failed, with the process that writes the run.
STATUS_FILE = "run_status.json"
# Created by a follower (or a user: `touch OUT/stop`) to ask the run to save and stop.
STOP_FILE = "stop"
# What a save writes; every other regular file in the folder is carried over.
OWNED = {"config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json",
         STATE_FILE, OPTIMIZER_FILE, METRICS_FILE, STATUS_FILE, STOP_FILE}

HUB_ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}


class CheckpointError(Exception):
    pass


def alignscope_version() -> str:
    try:
        for line in (PROJECT_DIR / "Cargo.toml").read_text().splitlines():
            if line.startswith("version"):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "unknown"


# ---------------------------------------------------------------- where checkpoints are

def checkpoint_roots() -> list[Path]:
    """$ALIGNSCOPE_CHECKPOINTS, ./checkpoints, the project's checkpoints/ (alignscope's
    checkpoint_roots)."""
    roots = []
    env = os.environ.get("ALIGNSCOPE_CHECKPOINTS")
    if env:
        roots.append(Path(env))
    roots += [Path("checkpoints"), PROJECT_DIR / "checkpoints"]
    seen, out = set(), []
    for r in roots:
        key = os.path.realpath(r)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def is_bare_name(spec: str) -> bool:
    p = Path(spec)
    return len(p.parts) == 1 and not p.is_absolute() and not spec.startswith(".")


def output_dir(name: str) -> Path:
    """Where a named output goes (alignscope's output_dir): a path stays a path; a bare name
    goes to $ALIGNSCOPE_CHECKPOINTS/NAME, else ./checkpoints/NAME when ./checkpoints exists
    (or the project has none), else the project's checkpoints/NAME."""
    if not is_bare_name(name):
        return Path(name)
    env = os.environ.get("ALIGNSCOPE_CHECKPOINTS")
    if env:
        return Path(env) / name
    project = PROJECT_DIR / "checkpoints"
    if Path("checkpoints").is_dir() or not project.is_dir():
        return Path("checkpoints") / name
    return project / name


def save_sibling(d: Path, suffix: str) -> Path:
    return d.with_name(f".{d.name}.{suffix}")


def recover_interrupted_save(d: Path) -> None:
    old = save_sibling(d, "old")
    if old.is_dir():
        if not d.exists():
            try:
                os.rename(old, d)
            except OSError:
                pass
        else:
            shutil.rmtree(old, ignore_errors=True)


def resolve(spec: str) -> Path:
    """--ckpt / --resume: an existing folder, a name under the checkpoint roots, or a hub
    repository id (the gpt2 family's short names too), fetched into the HF cache."""
    if not spec.strip():
        raise CheckpointError("no checkpoint given")
    p = Path(spec)
    recover_interrupted_save(p)
    for root in checkpoint_roots():
        recover_interrupted_save(root / spec)
    if p.is_dir():
        return p
    if p.exists():
        raise CheckpointError(f"checkpoint {spec} is a file, not a checkpoint folder (config.json, model.safetensors, tokenizer.json)")
    for root in checkpoint_roots():
        if (root / spec).is_dir():
            return root / spec
    repo = HUB_ALIASES.get(spec, spec)
    if not (spec in HUB_ALIASES or (len(spec.split("/")) == 2 and not spec.startswith(".") and "//" not in spec)):
        raise CheckpointError(f"checkpoint {spec!r} not found: no such folder, and not among the local checkpoints")
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo, allow_patterns=["config.json", "tokenizer.json", "model.safetensors",
                                                            "model.safetensors.index.json", "model-*.safetensors"]))
    except Exception as e:  # the hub client raises many kinds; all mean "not available"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {spec!r} is not a local folder and not available from the hub: {first}") from None


def has_checkpoint(d: Path) -> bool:
    return (d / "config.json").is_file() or (d / STATE_FILE).is_file()


# ---------------------------------------------------------------- model

def load_model(d: Path):
    """GPT2LMHeadModel in float32 from an HF folder (ours or transformers'), in eval mode:
    alignscope trains without dropout."""
    from transformers import GPT2LMHeadModel
    from tokenizers import Tokenizer
    if not (d / "config.json").is_file():
        raise CheckpointError(f"checkpoint {d} has no config.json")
    tok_path = d / "tokenizer.json"
    if not tok_path.is_file():
        raise CheckpointError(f"checkpoint {d} has no tokenizer.json")
    try:
        lm = GPT2LMHeadModel.from_pretrained(str(d), dtype=torch.float32)
    except Exception as e:
        raise CheckpointError(f"cannot load checkpoint {d}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    tokenizer_json = tok_path.read_text(encoding="utf-8")
    tok = Tokenizer.from_str(tokenizer_json)
    if tok.get_vocab_size(with_added_tokens=True) > lm.config.vocab_size:
        raise CheckpointError(f"checkpoint {d}: tokenizer.json has {tok.get_vocab_size(True)} tokens but the model's vocab_size is {lm.config.vocab_size}")
    return lm.eval(), tok, tokenizer_json


def random_model(config_path: Path, tokenizer_path: Path, seed: int):
    """Random GPT-2 weights of a config.json (transformers' initialisation, seeded), with
    the tokenizer of a folder (or a tokenizer.json)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from tokenizers import Tokenizer
    tok_dir = tokenizer_path if tokenizer_path.is_dir() else tokenizer_path.parent
    tok_file = tok_dir / "tokenizer.json"
    if not tok_file.is_file():
        raise CheckpointError(f"{tok_dir} has no tokenizer.json")
    if not config_path.is_file():
        raise CheckpointError(f"config {config_path} does not exist")
    try:
        cfg = GPT2Config.from_json_file(str(config_path))
    except Exception as e:
        raise CheckpointError(f"{config_path} is not a valid GPT-2 config: {e}") from None
    tokenizer_json = tok_file.read_text(encoding="utf-8")
    tok = Tokenizer.from_str(tokenizer_json)
    n_vocab = tok.get_vocab_size(with_added_tokens=True)
    if n_vocab > cfg.vocab_size:
        raise CheckpointError(f"{config_path} has vocab_size {cfg.vocab_size} but the tokenizer has {n_vocab} tokens")
    eos = tok.token_to_id("<|endoftext|>")
    if cfg.eos_token_id is None:
        cfg.eos_token_id = eos
    if cfg.bos_token_id is None:
        cfg.bos_token_id = eos
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg).eval(), tok, tokenizer_json


def eos_of(tok, config) -> int:
    eos = config.eos_token_id
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    if eos is None:
        eos = tok.token_to_id("<|endoftext|>")
    if eos is None:
        raise CheckpointError("the tokenizer has no <|endoftext|> token and the config no eos_token_id")
    return int(eos)


def canonical_names(lm) -> list[str]:
    """alignscope's parameter names, in its order: transformer.* then lm_head.weight when
    the head is not tied (named_parameters lists a tied head once, as wte)."""
    return [n for n, _ in lm.named_parameters()]


# ---------------------------------------------------------------- reading state

def read_state(d: Path) -> dict:
    p = d / STATE_FILE
    try:
        text = p.read_text()
    except OSError:
        raise CheckpointError(f"{d} holds no training state ({STATE_FILE})") from None
    try:
        state = json.loads(text)
        int(state["step"]), state["config"]["steps"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{p} is not a valid training state") from None
    return state


def read_metrics(d: Path, upto_step: int | None = None) -> list[str]:
    """The metrics lines of a run folder; with `upto_step`, only complete lines of steps up
    to it (a live log may hold steps past the last save, or a line cut by a kill)."""
    p = d / METRICS_FILE
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if upto_step is not None:
            try:
                step = json.loads(line)["step"]
            except (ValueError, KeyError, TypeError):
                continue
            if step > upto_step:
                continue
        out.append(line)
    return out


def read_optimizer(d: Path, names: list[str], shapes: dict[str, tuple]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """AdamW moments by canonical name from optimizer.safetensors."""
    p = d / OPTIMIZER_FILE
    if not p.is_file():
        raise CheckpointError(f"{d} has no {OPTIMIZER_FILE} (AdamW moments): it cannot be continued; "
                              f"start a new run from it with --ckpt")
    try:
        f = safe_open(str(p), framework="pt")
    except Exception as e:
        raise CheckpointError(f"{p} is not a valid optimizer state: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    out = {}
    with f:
        keys = set(f.keys())
        for name in names:
            pair = []
            for k in (f"m.{name}", f"v.{name}"):
                if k not in keys:
                    raise CheckpointError(f"{p} lacks {k}")
                t = f.get_tensor(k)
                if tuple(t.shape) != tuple(shapes[name]):
                    raise CheckpointError(f"{p} holds {k} of shape {list(t.shape)}, expected {list(shapes[name])}")
                pair.append(t.float())
            out[name] = (pair[0], pair[1])
    return out


# ---------------------------------------------------------------- writing

def _fsync_file(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(p: Path, data: bytes) -> None:
    with open(p, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def sync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc = None


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is
    unavailable."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        fn = _libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    r = fn(AT_FDCWD, os.fsencode(str(a)), AT_FDCWD, os.fsencode(str(b)), RENAME_EXCHANGE)
    return r == 0


def model_tensors(state: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """Canonical f32 tensors for model.safetensors: `transformer.` prefix, the tied head
    omitted, buffers dropped."""
    out = {}
    for k, v in state.items():
        if k.endswith(".attn.bias") or k.endswith(".attn.masked_bias"):
            continue
        if k == "lm_head.weight" and tied:
            continue
        if k != "lm_head.weight" and not k.startswith("transformer."):
            k = "transformer." + k
        out[k] = v.detach().to("cpu", torch.float32).contiguous()
    return out


def json_line(obj) -> str:
    # Strict JSON (no NaN): alignscope's serde reads these lines.
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def save_checkpoint(out: Path, *, params: dict[str, torch.Tensor], config_json: str, tokenizer_json: str,
                    moments: dict[str, tuple[torch.Tensor, torch.Tensor]], state: dict, metrics: list[str],
                    status: dict) -> None:
    """Writes a complete checkpoint to `out`, atomically replacing what was there."""
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_save(out)
    tmp = save_sibling(out, "saving")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write_synced(tmp / "config.json", config_json.encode())
    save_file(params, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    _fsync_file(tmp / "model.safetensors")
    write_synced(tmp / "tokenizer.json", tokenizer_json.encode("utf-8"))
    opt = {}
    for name, (m, v) in moments.items():
        opt[f"m.{name}"] = m.detach().to("cpu", torch.float32).contiguous()
        opt[f"v.{name}"] = v.detach().to("cpu", torch.float32).contiguous()
    save_file(opt, str(tmp / OPTIMIZER_FILE))
    _fsync_file(tmp / OPTIMIZER_FILE)
    write_synced(tmp / METRICS_FILE, ("\n".join(metrics) + "\n").encode("utf-8") if metrics else b"")
    write_synced(tmp / STATE_FILE, json.dumps(state, indent=2, allow_nan=False).encode())
    write_synced(tmp / STATUS_FILE, json.dumps(status, indent=2).encode())
    if out.is_dir():
        for entry in os.scandir(out):
            if entry.name in OWNED or entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            if entry.name.startswith("model-") and entry.name.endswith(".safetensors"):
                continue  # shards of a model this save replaces
            try:
                os.link(entry.path, tmp / entry.name)
            except OSError:
                shutil.copy2(entry.path, tmp / entry.name)
    sync_dir(tmp)
    if not out.exists():
        os.rename(tmp, out)
    elif not _exchange(tmp, out):
        old = save_sibling(out, "old")
        os.rename(out, old)
        os.rename(tmp, out)
        sync_dir(parent)
        _keep_stop_request(old, out)
        shutil.rmtree(old, ignore_errors=True)
        return
    sync_dir(parent)
    # After the exchange `tmp` holds the previous checkpoint.
    if tmp.exists():
        _keep_stop_request(tmp, out)
        shutil.rmtree(tmp, ignore_errors=True)


def _keep_stop_request(old: Path, out: Path) -> None:
    """A stop request written into the folder while it was being replaced landed in the old
    one: it still asks the run to stop."""
    with contextlib.suppress(OSError):
        if (old / STOP_FILE).exists():
            os.rename(old / STOP_FILE, out / STOP_FILE)


def write_status(out: Path, status: dict) -> None:
    """Replaces run_status.json atomically (write aside, rename)."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{STATUS_FILE}.tmp"
    write_synced(tmp, json.dumps(status, indent=2).encode())
    os.replace(tmp, out / STATUS_FILE)


def status_record(status: str, **fields) -> dict:
    return {"engine": "torch", "status": status, "pid": os.getpid(), "host": socket.gethostname(),
            "updated_at": time.time(), **fields}
