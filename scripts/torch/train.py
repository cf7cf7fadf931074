#!/usr/bin/env python3
"""alignscope's aligned training on PyTorch: one process, or many under torchrun (DDP, or
FSDP for models that do not fit one GPU).

    python scripts/torch/train.py --ckpt tests/fixtures/tiny-gpt2 --out tiny-aligned --steps 20
    torchrun --nproc_per_node 8 scripts/torch/train.py --ckpt gpt2 --out gpt2-aligned \\
        --loss aligned --data corpus/ --eval-data heldout.txt --batch 64 --steps 5000

The objectives, the learning-rate schedule, AdamW and its defaults, the data order and the
checkpoint layout are alignscope's (`alignscope train --help` names the same options), so
a run started here can be continued by `alignscope train --resume OUT` and the other way
round. See scripts/torch/README.md.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from alignscope_torch import checkpoint as ck  # noqa: E402
from alignscope_torch.data import Batcher, DataError, collect_files, load_tokens  # noqa: E402

DEFAULT_TRAINING_TEXTS = [
    "assets/austen/emma.txt",
    "assets/austen/mansfield_park.txt",
    "assets/austen/northanger_abbey.txt",
    "assets/austen/pride_and_prejudice.txt",
    "assets/austen/sense_and_sensibility.txt",
]
DEFAULT_EVAL_TEXT = "assets/austen/persuasion.txt"
DEFAULT_CTX = 256


class ConfigError(Exception):
    pass


USER_ERRORS = (ConfigError, DataError, ck.CheckpointError)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="train.py",
        description="alignscope's aligned training on PyTorch (torchrun for many processes).",
    )
    a = p.add_argument
    a("--ckpt", help="base checkpoint to fine-tune: a folder, a name under checkpoints/, or a hub id (gpt2, gpt2-xl, ...)")
    a("--init", type=Path, help="start from random weights with this GPT-2 config.json (needs --tokenizer)")
    a("--tokenizer", type=Path, help="folder (or tokenizer.json) of the tokenizer for --init")
    a("--resume", help="continue the run saved in this checkpoint (name or folder), by either engine")
    a("--out", help="output checkpoint: a name under checkpoints/ or a path")
    a("--overwrite", action="store_true", help="replace an existing output checkpoint (removed when the new run starts)")
    a("--loss", default="aligned", choices=["aligned", "standard", "ce-reg"],
      help="objective: aligned (all layers through the shared head), standard (last layer), ce-reg")
    a("--no-alternate", action="store_true", help="aligned loss on every step instead of alternating with last-layer CE")
    a("--beta", type=float, default=1.0, help="ce-reg: weight of the cosine term")
    a("--data", type=Path, action="append", default=[], help="training text files or folders (repeatable; default: the five Austen novels)")
    a("--eval-data", type=Path, action="append", default=[], help="held-out text files or folders (repeatable)")
    a("--steps", type=int, help="total steps of the run (a resume trains up to this; default 1000)")
    a("--batch", type=int, default=8, help="sequences per optimizer step, over all processes (default 8)")
    a("--accum", type=int, default=1, help="gradient accumulation: micro-batches per step")
    a("--ctx", type=int, help="tokens per training window (default: 256, or the model's context if shorter)")
    a("--lr", type=float, default=2e-5, help="peak learning rate (default 2e-5)")
    a("--min-lr", type=float, help="final learning rate of the cosine schedule (default: lr / 10)")
    a("--warmup", type=int, default=0, help="linear warmup steps before the cosine decay")
    a("--weight-decay", type=float, default=0.01, help="decoupled weight decay (default 0.01)")
    a("--decay-all", action="store_true", help="decay every parameter (default: only the blocks' weight matrices)")
    a("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this (0: off)")
    a("--beta1", type=float, default=0.9)
    a("--beta2", type=float, default=0.999)
    a("--eps", type=float, default=1e-8, help="AdamW's epsilon (default 1e-8)")
    a("--eval-every", type=int, default=100, help="evaluate on the held-out text every N steps (0: never)")
    a("--eval-batches", type=int, default=8, help="held-out batches per evaluation")
    a("--save-every", type=int, default=100, help="save a checkpoint every N steps (and at the end, and on stop)")
    a("--seed", type=int, default=0, help="seed of the batch order (and of random initialisation)")
    g = p.add_argument_group("PyTorch engine")
    g.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    g.add_argument("--dtype", default="auto", choices=["auto", "bf16", "f32"],
                   help="compute precision: bf16 autocast (auto on GPU) or f32 (auto on CPU); weights, "
                        "gradients and optimizer state stay f32")
    g.add_argument("--fsdp", action="store_true", help="shard parameters, gradients and optimizer state (FSDP2) "
                                                       "instead of replicating them (DDP)")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations in backward")
    g.add_argument("--head-chunk", type=int, help="rows of logits per chunk of the shared head (default: ~32 MB on CPU, ~256 MB on GPU)")
    g.add_argument("--log-every", type=float, default=10.0, help="seconds between progress lines (default 10)")
    args = p.parse_args(argv)
    return p, args


# ---------------------------------------------------------------- distributed context

class Dist:
    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.initialized = False
        # The run folder once known, and whether this run may write its status.
        self.out: Path | None = None
        self.owns_out = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def init(self, device):
        import torch.distributed as dist
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
            self.initialized = True

    def all_reduce(self, t, op="sum"):
        if self.world > 1:
            import torch.distributed as dist
            dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t

    def barrier(self):
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier()

    def broadcast_object(self, obj):
        if self.world == 1:
            return obj
        import torch.distributed as dist
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self):
        if self.initialized:
            import torch.distributed as dist
            dist.destroy_process_group()


def say(d: Dist, msg: str) -> None:
    if d.main:
        print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- schedule and formatting

def lr_at(it: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Warmup then cosine decay (alignscope's lr_at; `it` is 0-based)."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    span = max(total - warmup, 1)
    ratio = min((it - warmup) / span, 1.0)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return min_lr + coeff * (lr - min_lr)


def fmt_secs(s: float) -> str:
    s = int(max(s, 0.0))
    return f"{s // 3600}h{s // 60 % 60:02}m" if s >= 3600 else f"{s // 60}:{s % 60:02}"


def fmt_e(x: float) -> str:
    m, e = f"{x:.2e}".split("e")
    return f"{m}e{int(e)}"


def progress_line(m: dict) -> str:
    frac = m["step"] / max(m["total_steps"], 1)
    filled = round(frac * 20)
    bar = "█" * filled + "░" * (20 - filled)
    ll = m["layer_losses"]
    n = len(ll)
    picks = list(range(1, n + 1)) if n <= 4 else [1, n // 4, n // 2, 3 * n // 4, n]
    layers = " ".join(f"L{i} {ll[i - 1]:.2f}" for i in picks)
    return (f"{bar} {m['step']}/{m['total_steps']} loss {m['loss']:.4f} ({m['objective']}) | {layers} | "
            f"lr {fmt_e(m['lr'])} | {m['tokens_per_sec']:.0f} tok/s | ETA {fmt_secs(m['eta_secs'])}")


# ---------------------------------------------------------------- run configuration

def new_config(args, out: Path) -> dict:
    """alignscope's TrainConfig (field for field) from the command line."""
    if args.ckpt and args.init:
        raise ConfigError("give --ckpt BASE or --init CONFIG.json, not both")
    if args.ckpt:
        init = {"checkpoint": args.ckpt}
    elif args.init:
        if not args.tokenizer:
            raise ConfigError("--init needs --tokenizer DIR (the folder of its tokenizer.json)")
        init = {"random": {"config": str(args.init), "tokenizer": str(args.tokenizer)}}
    else:
        raise ConfigError("give --ckpt BASE (fine-tune), --init CONFIG.json --tokenizer DIR (from scratch), or --resume NAME")
    default_data = not args.data
    data = DEFAULT_TRAINING_TEXTS if default_data else [str(p) for p in args.data]
    eval_data = [DEFAULT_EVAL_TEXT] if (default_data and not args.eval_data) else [str(p) for p in args.eval_data]
    return {
        "init": init,
        "out": str(out),
        "loss": args.loss,
        "alternate": not args.no_alternate,
        "beta": args.beta,
        "data": data,
        "eval_data": eval_data,
        "steps": args.steps if args.steps is not None else 1000,
        "batch": args.batch,
        "accum": args.accum,
        "ctx": args.ctx or 0,
        "lr": args.lr,
        "min_lr": args.min_lr if args.min_lr is not None else args.lr / 10.0,
        "warmup": args.warmup,
        "weight_decay": args.weight_decay,
        "decay_matrices_only": not args.decay_all,
        "beta1": args.beta1,
        "beta2": args.beta2,
        "eps": args.eps,
        "grad_clip": args.grad_clip,
        "eval_every": args.eval_every,
        "eval_batches": args.eval_batches,
        "save_every": args.save_every,
        "seed": args.seed,
    }


def validate(cfg: dict, n_positions: int, world: int) -> None:
    if cfg["ctx"] == 0:
        cfg["ctx"] = min(DEFAULT_CTX, n_positions)
    if cfg["steps"] < 1:
        raise ConfigError("--steps must be at least 1")
    b, k = cfg["batch"], cfg["accum"]
    if b <= 0 or k <= 0 or b % k != 0:
        raise ConfigError(f"--batch {b} must be a positive multiple of --accum {k}")
    if (b // k) % world != 0:
        raise ConfigError(f"--batch {b} / --accum {k} = {b // k} sequences per micro-batch cannot be split evenly "
                          f"over {world} processes")
    if not (2 <= cfg["ctx"] <= n_positions):
        raise ConfigError(f"--ctx {cfg['ctx']} must be between 2 and the model's context of {n_positions} tokens")
    if not (cfg["lr"] > 0 and math.isfinite(cfg["lr"])) or cfg["min_lr"] < 0 or cfg["min_lr"] > cfg["lr"]:
        raise ConfigError("--lr must be positive and --min-lr between 0 and --lr")
    if not cfg["data"]:
        raise ConfigError("no training data: give --data FILE or FOLDER")
    if cfg["loss"] not in ("aligned", "standard", "ce-reg"):
        raise ConfigError(f"unknown loss {cfg['loss']!r}: use aligned, standard or ce-reg")


def pick_device(args, d: Dist):
    import torch
    want = args.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {args.device}: no CUDA device is available to PyTorch")
        index = d.local_rank if want == "cuda" else int(want.split(":", 1)[1])
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if want != "cpu":
        raise ConfigError(f"--device {args.device!r}: use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


# ---------------------------------------------------------------- the run

class Stop:
    """Ctrl-C / SIGTERM (torchrun forwards both) or a stop file ask for a save and a stop
    at the next step boundary."""

    def __init__(self):
        self.flag = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handler)

    def _handler(self, *_):
        self.flag = True


def load_data_tokens(d: Dist, tokenizer, files, eos):
    """Rank 0 tokenizes, the others receive the tokens (an int32 tensor)."""
    import torch

    def tokenize():
        ids = load_tokens(tokenizer, files, eos)
        return torch.frombuffer(ids, dtype=torch.int32).clone() if len(ids) else torch.zeros(0, dtype=torch.int32)

    if d.world == 1:
        return tokenize()
    err, n = None, 0
    tokens = None
    if d.main:
        try:
            tokens = tokenize()
            n = tokens.numel()
        except DataError as e:
            err = str(e)
    err, n = d.broadcast_object((err, n))
    if err:
        raise DataError(err)
    import torch.distributed as dist
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    buf = tokens.to(dev) if d.main else torch.empty(n, dtype=torch.int32, device=dev)
    dist.broadcast(buf, src=0)
    return buf.cpu()


def chunk_ranges(n_tokens: int, ctx: int, max_chunks: int | None):
    out = [(i * ctx, (i + 1) * ctx) for i in range(n_tokens // ctx)]
    if not out and n_tokens >= 2:
        out = [(0, n_tokens)]
    return out[:max_chunks] if max_chunks is not None else out


def evaluate(d: Dist, model, tokens, ctx: int, max_chunks: int, per_rank_batch: int, n_layer: int, device, autocast):
    """alignscope's held-out evaluation: per-layer mean CE and top-1 accuracy of the shared
    head on consecutive chunks of ctx tokens from the start (each predicts its ctx - 1 next
    tokens), the chunks dealt out to the ranks. Every rank runs the same number of forwards
    (FSDP's gathers are collective); a rank out of chunks repeats one and drops its numbers."""
    import torch
    ranges = chunk_ranges(tokens.numel(), ctx, max_chunks)
    if not ranges:
        return None
    mine = ranges[d.rank::d.world]
    per_batch = max(per_rank_batch, 1)
    n_fwd = math.ceil(math.ceil(len(ranges) / d.world) / per_batch)
    ce = torch.zeros(n_layer, dtype=torch.float64, device=device)
    hits = torch.zeros(n_layer, dtype=torch.float64, device=device)
    n_pred = torch.zeros(1, dtype=torch.float64, device=device)
    with torch.no_grad():
        for i in range(n_fwd):
            batch = mine[i * per_batch:(i + 1) * per_batch]
            real = bool(batch)
            x = torch.stack([tokens[s:e] for s, e in (batch or ranges[:1])]).long().to(device)
            with autocast():
                c, h = model(x[:, :-1], x[:, 1:])
            if real:
                ce += c
                hits += h.double()
                n_pred += x.shape[0] * (x.shape[1] - 1)
    d.all_reduce(ce)
    d.all_reduce(hits)
    d.all_reduce(n_pred)
    n = n_pred.item()
    return {"layer_losses": (ce / n).tolist(), "layer_acc": (hits / n).tolist(), "tokens": int(n)}


def main(argv=None) -> int:
    _, args = parse_args(argv)
    d = Dist()
    try:
        return run(args, d)
    except USER_ERRORS as e:
        # One line per machine: every process hits the same error on the same inputs, but
        # a file missing on one machine is only seen there.
        if d.main:
            print(f"error: {e}", file=sys.stderr, flush=True)
        elif d.local_rank == 0:
            print(f"error (rank {d.rank}): {e}", file=sys.stderr, flush=True)
        # A follower waiting on this folder learns why. A checkpoint folder that has no
        # status yet (a finished run, someone else's) is left as it was.
        out = d.out
        if d.main and out is not None and out.is_dir() and d.owns_out \
                and ((out / ck.STATUS_FILE).exists() or not ck.has_checkpoint(out)):
            with contextlib.suppress(OSError):
                ck.write_status(out, ck.status_record("failed", message=str(e)))
        return 1
    except KeyboardInterrupt:
        say(d, "error: interrupted before training started")
        return 130
    finally:
        d.close()


def check_not_running(out: Path) -> None:
    """Refuses a run folder that a live trainer on this machine is writing."""
    try:
        import json
        st = json.loads((out / ck.STATUS_FILE).read_text())
    except (OSError, ValueError):
        return
    if st.get("status") != "running" or st.get("host") != ck.socket.gethostname() or st.get("pid") == os.getpid():
        return
    try:
        os.kill(int(st["pid"]), 0)
    except (OSError, KeyError, ValueError, TypeError):
        return  # the writer is gone: a killed run, continue it
    raise ConfigError(f"{out} is being trained right now (pid {st['pid']}): stop it first (touch {out / ck.STOP_FILE})")


def run(args, d: Dist) -> int:
    process_started = time.time()
    import torch
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    stop = Stop()
    device = pick_device(args, d)
    d.init(device)
    dtype = args.dtype
    if dtype == "auto":
        dtype = "bf16" if device.type == "cuda" else "f32"
    compute_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32

    # ---- what to run
    notes = []
    if args.resume:
        if args.ckpt or args.init:
            raise ConfigError("--resume continues a saved run: do not combine it with --ckpt or --init")
        run_dir = ck.resolve(args.resume)
        state = ck.read_state(run_dir)
        cfg = dict(state["config"])
        if args.steps is not None:
            cfg["steps"] = args.steps
        cfg["out"] = str(run_dir)
        start_step = int(state["step"])
        if start_step >= cfg["steps"]:
            raise ConfigError(f"{run_dir} is already at step {start_step} of {cfg['steps']}: give a larger --steps to continue")
        out = run_dir
        d.out = out
        check_not_running(out)
        d.owns_out = True
        lm, tok, tokenizer_json = ck.load_model(run_dir)
        engine = state.get("engine", "alignscope")
        if engine != "torch":
            notes.append(f"continuing a run saved by {engine}: its AdamW moments, step and data order carry over")
    else:
        if not args.out:
            raise ConfigError("give --out NAME for the new checkpoint")
        out = ck.output_dir(args.out)
        d.out = out
        if ck.has_checkpoint(out) and not args.overwrite:
            raise ConfigError(f"{out} already exists: continue it with --resume, pick another --out, or pass --overwrite")
        check_not_running(out)
        d.owns_out = True
        cfg = new_config(args, out)
        state = None
        start_step = 0
        init = cfg["init"]
        if "checkpoint" in init:
            src = ck.resolve(init["checkpoint"])
            lm, tok, tokenizer_json = ck.load_model(src)
        else:
            lm, tok, tokenizer_json = ck.random_model(Path(init["random"]["config"]), Path(init["random"]["tokenizer"]), cfg["seed"])
    validate(cfg, lm.config.n_positions, d.world)
    files = collect_files(cfg["data"])
    eval_files = collect_files(cfg["eval_data"])
    for f in eval_files:
        if any(os.path.realpath(t) == os.path.realpath(f) for t in files):
            raise ConfigError(f"{f} is both training and evaluation data")
    eos = ck.eos_of(tok, lm.config)
    tokens = load_data_tokens(d, tok, files, eos)
    eval_tokens = load_data_tokens(d, tok, eval_files, eos) if eval_files else None
    ctx = cfg["ctx"]
    batcher = Batcher(tokens.numel(), ctx, cfg["seed"])
    for what, ids in (("training data", tokens), ("evaluation text", eval_tokens)):
        if ids is not None and ids.numel() and int(ids.max()) >= lm.config.vocab_size:
            raise DataError(f"the {what} has token id {int(ids.max())}, outside the model's vocabulary of {lm.config.vocab_size}")

    # ---- model, parallelism, optimizer
    from alignscope_torch.objective import (LayerwiseObjective, objective_for, objective_name,
                                            step_is_aligned, MONITOR_POSITIONS)
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict, set_optimizer_state_dict)
    names = ck.canonical_names(lm)
    shapes = {n: tuple(p.shape) for n, p in lm.named_parameters()}
    tied = lm.lm_head.weight is lm.transformer.wte.weight
    n_layer = lm.config.n_layer
    if args.grad_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    objective = LayerwiseObjective(lm, chunk_rows=args.head_chunk, compute_dtype=compute_dtype).to(device)
    if args.fsdp and d.world > 1:
        from torch.distributed.fsdp import fully_shard
        for block in lm.transformer.h:
            fully_shard(block)
        fully_shard(objective)
        model = objective
    elif d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(objective, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        model = objective
    by_name = dict(lm.named_parameters())
    decay = [n for n in names if not cfg["decay_matrices_only"]
             or (by_name[n].ndim == 2 and ".wte." not in n and ".wpe." not in n and n != "lm_head.weight")]
    decay_set = set(decay)
    groups = [{"params": [by_name[n] for n in names if n in decay_set], "weight_decay": cfg["weight_decay"]},
              {"params": [by_name[n] for n in names if n not in decay_set], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"])
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    prefix = "lm."
    if state is not None:
        # The saved moments and step become torch AdamW's state (rank 0 reads, all receive).
        structure = get_optimizer_state_dict(model, opt, options=full)
        if d.main:
            moments = ck.read_optimizer(out, names, shapes)
            step_t = torch.tensor(float(start_step))
            structure["state"] = {prefix + n: {"step": step_t.clone(), "exp_avg": m, "exp_avg_sq": v}
                                  for n, (m, v) in moments.items()}
        set_optimizer_state_dict(model, opt, structure, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=d.world > 1))
        try:
            batcher.position = int(state["data_rng_position"])
        except (KeyError, ValueError):
            raise ck.CheckpointError(f"invalid data_rng_position in {out / ck.STATE_FILE}") from None
    tokens_seen = int(state["tokens_seen"]) if state else 0
    elapsed_before = float(state["elapsed_secs"]) if state else 0.0
    metrics = ck.read_metrics(out, upto_step=start_step) if state else []

    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if compute_dtype == torch.bfloat16 \
        else contextlib.nullcontext
    run_info = {"start_step": start_step, "total_steps": cfg["steps"], "n_layer": n_layer, "world_size": d.world,
                "out": str(out), "fsdp": bool(args.fsdp and d.world > 1), "dtype": dtype, "device": device.type,
                # Every save of this run, in order: a follower that looks between two quick
                # saves still reports both.
                "saves": []}
    engine_info = {"world_size": d.world, "dtype": dtype, "fsdp": run_info["fsdp"], "device": device.type,
                   "torch_version": torch.__version__, "transformers_version": transformers.__version__}

    # ---- the live log and status (rank 0)
    live = None
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        if args.overwrite and not state:
            for name in ck.OWNED - {ck.STOP_FILE}:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(out / name)
        # A stop request from before this process started was left by a run killed before
        # answering it: it is not meant for this one (alignscope's trainer does the same).
        with contextlib.suppress(FileNotFoundError):
            if os.stat(out / ck.STOP_FILE).st_mtime < process_started:
                os.remove(out / ck.STOP_FILE)
        # The metrics file grows line by line between saves so that followers see every
        # step; a resume drops lines past the saved step (a kill may have left some).
        tmp = out / f".{ck.METRICS_FILE}.tmp"
        ck.write_synced(tmp, ("\n".join(metrics) + "\n").encode() if metrics else b"")
        os.replace(tmp, out / ck.METRICS_FILE)
        live = open(out / ck.METRICS_FILE, "a", encoding="utf-8")
        ck.write_status(out, ck.status_record("running", **run_info))
    for n in notes:
        say(d, n)
    say(d, f"training {n_layer} layers → {out} (steps {start_step + 1}..{cfg['steps']}) on {d.world} "
           f"{'process' if d.world == 1 else 'processes'}, {device.type}, {dtype}"
           f"{', FSDP' if run_info['fsdp'] else (', DDP' if d.world > 1 else '')}")

    started = time.monotonic()
    last_saved = start_step if state else None
    micro = cfg["batch"] // cfg["accum"]
    per_rank = micro // d.world
    params = [p for g in opt.param_groups for p in g["params"]]

    def save(step: int):
        msd = get_model_state_dict(model, options=full)
        osd = get_optimizer_state_dict(model, opt, options=full)
        if d.main:
            weights = {k[len(prefix):]: v for k, v in msd.items() if k.startswith(prefix)}
            moments = {k[len(prefix):]: (s["exp_avg"], s["exp_avg_sq"]) for k, s in osd["state"].items()}
            missing = [n for n in names if n not in moments]
            if missing:
                raise RuntimeError(f"optimizer state lacks {missing[:3]}")
            st = {
                "alignscope_version": ck.alignscope_version(),
                "step": step,
                "data_rng_position": str(batcher.position),
                "tokens_seen": tokens_seen,
                "elapsed_secs": elapsed_before + (time.monotonic() - started),
                "config": cfg,
                "engine": "torch",
                "torch": engine_info,
            }
            ck.save_checkpoint(out, params=ck.model_tensors(weights, tied), config_json=lm.config.to_json_string(use_diff=False),
                               tokenizer_json=tokenizer_json, moments={n: moments[n] for n in names}, state=st,
                               metrics=metrics, status=ck.status_record("running", **{**run_info, "saves": run_info["saves"] + [step]}))
            run_info["saves"].append(step)
        d.barrier()

    def reopen_live():
        nonlocal live
        if d.main:
            live.close()
            live = open(out / ck.METRICS_FILE, "a", encoding="utf-8")

    def emit(line: str):
        metrics.append(line)
        if d.main:
            live.write(line + "\n")
            live.flush()

    recent = deque(maxlen=20)
    step = start_step
    stopped_early = False
    last_print = -1e9
    try:
        while step < cfg["steps"]:
            flag = torch.tensor([1.0 if (stop.flag or (d.main and (out / ck.STOP_FILE).exists())) else 0.0], device=device)
            if d.all_reduce(flag, op="max").item() > 0:
                stopped_early = True
                break
            t0 = time.monotonic()
            lr = lr_at(step, cfg["steps"], cfg["warmup"], cfg["lr"], cfg["min_lr"])
            aligned = step_is_aligned(cfg["loss"], cfg["alternate"], step + 1)
            weights, cos_beta = objective_for(cfg["loss"], aligned, n_layer, cfg["beta"])
            sums = torch.zeros(1 + n_layer, dtype=torch.float64, device=device)
            for k in range(cfg["accum"]):
                starts = batcher.next_starts(micro)[d.rank * per_rank:(d.rank + 1) * per_rank]
                idx = torch.tensor(starts, dtype=torch.int64)[:, None] + torch.arange(ctx + 1)
                window = tokens[idx].long().to(device, non_blocking=True)
                last_micro = k == cfg["accum"] - 1
                if d.world > 1 and not last_micro:
                    sync = model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()
                    if hasattr(model, "set_requires_gradient_sync"):
                        model.set_requires_gradient_sync(False)
                else:
                    sync = contextlib.nullcontext()
                    if hasattr(model, "set_requires_gradient_sync"):
                        model.set_requires_gradient_sync(True)
                with sync:
                    with autocast():
                        loss, layer_ce = model(window[:, :-1], window[:, 1:], weights, cos_beta, MONITOR_POSITIONS)
                    (loss / cfg["accum"]).backward()
                sums[0] += loss.detach().double() / cfg["accum"]
                sums[1:] += layer_ce.double() / cfg["accum"]
            d.all_reduce(sums)
            sums /= d.world
            grads = [p.grad for p in params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads, 2.0)
            if hasattr(norm, "full_tensor"):
                norm = norm.full_tensor()
            values = sums.tolist()
            loss_v, grad_norm = values[0], float(norm)
            if not math.isfinite(loss_v) or not math.isfinite(grad_norm):
                kept = (f"the last good checkpoint (step {last_saved}) is kept in {out}" if last_saved is not None
                        else "no checkpoint had been saved yet")
                what = "NaN" if math.isnan(loss_v) else ("infinite" if not math.isfinite(loss_v) else "finite with a non-finite gradient")
                raise TrainingDiverged(f"the loss became {what} at step {step + 1}: stopping; {kept}")
            if cfg["grad_clip"] > 0:
                torch.nn.utils.clip_grads_with_norm_(params, cfg["grad_clip"], norm)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            n_tok = cfg["batch"] * ctx
            tokens_seen += n_tok
            dt = time.monotonic() - t0
            recent.append((dt, n_tok))
            sum_t = sum(r[0] for r in recent)
            sum_n = sum(r[1] for r in recent)
            m = {
                "step": step,
                "total_steps": cfg["steps"],
                "loss": loss_v,
                "objective": objective_name(cfg["loss"], aligned),
                "layer_losses": values[1:],
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_sec": sum_n / max(sum_t, 1e-9),
                "eta_secs": sum_t / len(recent) * (cfg["steps"] - step),
            }
            emit(ck.json_line(m))
            now = time.monotonic()
            if d.main and (now - last_print >= args.log_every or step == cfg["steps"] or step == start_step + 1):
                last_print = now
                say(d, progress_line(m))
            if eval_tokens is not None and cfg["eval_every"] > 0 and (step % cfg["eval_every"] == 0 or step == cfg["steps"]):
                r = evaluate(d, model, eval_tokens, ctx, max(cfg["eval_batches"], 1) * cfg["batch"],
                             per_rank, n_layer, device, autocast)
                if r is not None:
                    e = {"step": step, "layer_losses": r["layer_losses"], "layer_acc": r["layer_acc"]}
                    emit(ck.json_line({"step": step, "eval": e, "eval_tokens": r["tokens"]}))
                    cells = " ".join(f"{c:.2f}/{100 * a:.1f}%" for c, a in zip(e["layer_losses"], e["layer_acc"]))
                    say(d, f"eval @ {step}: held-out CE/acc per layer 1..{n_layer}: {cells}")
            if (cfg["save_every"] > 0 and step % cfg["save_every"] == 0) or step == cfg["steps"]:
                save(step)
                reopen_live()
                last_saved = step
                say(d, f"saved step {step} → {out}")
        if stopped_early and last_saved != step and step > 0:
            save(step)
            reopen_live()
            say(d, f"saved step {step} → {out}")
    except TrainingDiverged as e:
        if d.main:
            ck.write_status(out, ck.status_record("failed", step=step, message=str(e), **run_info))
        say(d, f"error: {e}")
        return 1
    except BaseException as e:
        if d.main and out is not None and out.is_dir():
            msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            ck.write_status(out, ck.status_record("failed", step=step, message=msg, **run_info))
        raise
    finally:
        if live is not None:
            live.close()
        if d.main:
            # A stop request is answered (or moot) once the run ends.
            with contextlib.suppress(OSError):
                os.remove(out / ck.STOP_FILE)
    if d.main:
        ck.write_status(out, ck.status_record("stopped" if stopped_early else "finished", step=step, **run_info))
    say(d, f"{'stopped' if stopped_early else 'finished'} at step {step}: {out}")
    return 0


class TrainingDiverged(Exception):
    pass


if __name__ == "__main__":
    sys.exit(main())
