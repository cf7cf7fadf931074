"""alignscope's training objectives on an HF transformers GPT-2 (src/train/loss.rs,
trainer.rs).

- aligned: sum_l lambda_l CE(lm_head(ln_f(h^l)), y), lambda_l = 2l/(L(L+1)), l = 1..L;
  with alternation (the paper's recipe) odd 1-based steps are aligned, even ones standard;
- standard: last-layer CE;
- ce-reg: last-layer CE + beta * sum_{l<L} lambda_l (1 - mean_t cos(h^l_t, h^L_t)).

h^l is the output of block l before ln_f. The shared head is the expensive part for a
large vocabulary and the aligned loss applies it after every layer, so [`SharedHeadCE`]
computes the head and its cross-entropy chunk by chunk, with the gradient (softmax minus
one-hot) formed in the same pass: no more than one chunk of logits exists at a time, and
backward only scales what forward computed. Memory stays near the standard loss's.
"""
from __future__ import annotations

import torch
from torch import nn

# Positions of each micro-batch on which layers that carry no weight this step are
# measured (forward only) for the live per-layer curves (alignscope's MONITOR_POSITIONS).
MONITOR_POSITIONS = 512


def aligned_weights(n_layer: int) -> list[float]:
    denom = float(n_layer * (n_layer + 1))
    return [2.0 * l / denom for l in range(1, n_layer + 1)]


def standard_weights(n_layer: int) -> list[float]:
    return [0.0] * (n_layer - 1) + [1.0]


def objective_for(loss: str, aligned_step: bool, n_layer: int, beta: float) -> tuple[list[float], float]:
    """Layer weights and cosine-term weight of a step (alignscope's objective_for)."""
    if loss == "aligned" and aligned_step:
        return aligned_weights(n_layer), 0.0
    if loss == "ce-reg":
        return standard_weights(n_layer), beta
    return standard_weights(n_layer), 0.0


def step_is_aligned(loss: str, alternate: bool, step: int) -> bool:
    """Whether 1-based step `step` optimizes the multi-layer aligned loss."""
    return loss == "aligned" and (not alternate or step % 2 == 1)


def objective_name(loss: str, aligned_step: bool) -> str:
    if aligned_step:
        return "aligned"
    return "ce-reg" if loss == "ce-reg" else "standard"


def default_chunk_rows(vocab: int, device: torch.device) -> int:
    # CPU: alignscope's ~32 MB of f32 logits per chunk. GPU: ~256 MB, big enough to keep
    # the matmuls efficient and small next to the activations of a large model.
    budget = 8_000_000 if device.type == "cpu" else 64_000_000
    return max(budget // vocab, 16)


class SharedHeadCE(torch.autograd.Function):
    """Weighted mean cross-entropy of the shared head over several layers' features.

    forward(weight, targets, layer_weights, chunk_rows, compute_dtype, *zs) returns
    (loss, ce_means): loss = sum_i layer_weights[i] * mean CE(zs[i] @ weight.T, targets)
    (a differentiable scalar) and the per-layer mean CE (not differentiable). zs are
    [n, d] features already through ln_f; targets [n]. Matmuls run in compute_dtype,
    softmax and CE in float32; the head's gradient is accumulated in float32.
    """

    @staticmethod
    def forward(ctx, weight, targets, layer_weights, chunk_rows, compute_dtype, *zs):
        with torch.autocast(weight.device.type, enabled=False):
            return SharedHeadCE._forward(ctx, weight, targets, layer_weights, chunk_rows, compute_dtype, zs)

    @staticmethod
    def _forward(ctx, weight, targets, layer_weights, chunk_rows, compute_dtype, zs):
        n = targets.shape[0]
        w = weight.to(compute_dtype)
        d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        d_zs = []
        ce_means = []
        loss = torch.zeros((), dtype=torch.float64, device=weight.device)
        for z, lw in zip(zs, layer_weights):
            zc = z.to(compute_dtype)
            dz = torch.empty(z.shape, dtype=compute_dtype, device=z.device)
            ce_sum = torch.zeros((), dtype=torch.float64, device=z.device)
            scale = lw / n
            for s in range(0, n, chunk_rows):
                e = min(n, s + chunk_rows)
                logits = (zc[s:e] @ w.t()).float()
                t = targets[s:e]
                lse = torch.logsumexp(logits, dim=-1)
                ce_sum += (lse - logits.gather(1, t[:, None]).squeeze(1)).double().sum()
                g = torch.exp(logits - lse[:, None])
                g[torch.arange(e - s, device=g.device), t] -= 1.0
                g *= scale
                g = g.to(compute_dtype)
                dz[s:e] = g @ w
                d_weight += (g.t() @ zc[s:e]).float()
                del logits, g
            mean = ce_sum / n
            ce_means.append(mean)
            loss = loss + lw * mean
            d_zs.append(dz)
        ctx.save_for_backward(d_weight, *d_zs)
        ctx.z_dtypes = [z.dtype for z in zs]
        ctx.weight_dtype = weight.dtype
        ce = torch.stack(ce_means).float() if ce_means else torch.zeros(0, device=weight.device)
        ctx.mark_non_differentiable(ce)
        return loss.float(), ce

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce):
        d_weight, *d_zs = ctx.saved_tensors
        g = grad_loss.float()
        dw = (d_weight * g).to(ctx.weight_dtype)
        dzs = [(dz.float() * g).to(dt) for dz, dt in zip(d_zs, ctx.z_dtypes)]
        return (dw, None, None, None, None, *dzs)


@torch.no_grad()
def head_ce(z: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int, compute_dtype) -> tuple[float, int]:
    """Sum of CE and number of top-1 hits of the head over features z (forward only)."""
    w = weight.to(compute_dtype)
    zc = z.to(compute_dtype)
    ce = torch.zeros((), dtype=torch.float64, device=z.device)
    hits = torch.zeros((), dtype=torch.int64, device=z.device)
    for s in range(0, z.shape[0], chunk_rows):
        e = min(z.shape[0], s + chunk_rows)
        logits = (zc[s:e] @ w.t()).float()
        t = targets[s:e]
        ce += (torch.logsumexp(logits, -1) - logits.gather(1, t[:, None]).squeeze(1)).double().sum()
        hits += (logits.argmax(-1) == t).sum()
    return ce, hits


def mean_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean raw cosine of matching rows, as alignscope computes it (eps 1e-12 added to the
    product of the norms)."""
    dot = (a * b).sum(-1)
    na = a.square().sum(-1).sqrt()
    nb = b.square().sum(-1).sqrt()
    return (dot / (na * nb + 1e-12)).mean()


class LayerwiseObjective(nn.Module):
    """Wraps a GPT2LMHeadModel so that one forward computes a training objective: DDP and
    FSDP wrap this module, and the head's weight is used inside its forward (under FSDP it
    is then unsharded where the custom head function reads it)."""

    def __init__(self, lm: nn.Module, chunk_rows: int | None = None, compute_dtype=torch.float32):
        super().__init__()
        self.lm = lm
        self.n_layer = lm.config.n_layer
        self.chunk_rows = chunk_rows
        self.compute_dtype = compute_dtype
        self._captured: dict[int, torch.Tensor] = {}
        for i, block in enumerate(lm.transformer.h):
            block.register_forward_hook(self._capture(i))

    def _capture(self, i):
        def hook(_module, _inputs, output):
            self._captured[i] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    def residuals(self, input_ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Block outputs h^1..h^L (before ln_f) and ln_f(h^L)."""
        self._captured.clear()
        out = self.lm.transformer(input_ids=input_ids, use_cache=False)
        hs = [self._captured[i] for i in range(self.n_layer)]
        self._captured.clear()
        return hs, out.last_hidden_state

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor, layer_weights: list[float] | None = None,
                cos_beta: float = 0.0, monitor_positions: int = MONITOR_POSITIONS):
        """Returns (loss, layer_ce): the differentiable objective (float32 scalar) and the
        mean CE of each layer 1..L (float32 [L], detached). Layers without weight are
        measured on the first `monitor_positions` positions (0 = all), forward only.

        With `layer_weights` None it evaluates instead (no gradient): returns the sum of CE
        (float64 [L]) and the number of top-1 hits (int64 [L]) over all positions. Both go
        through forward so that DDP and FSDP see a forward of the wrapped module."""
        if layer_weights is None:
            return self._evaluate(input_ids, targets)
        n_layer = self.n_layer
        if len(layer_weights) != n_layer:
            raise ValueError(f"{len(layer_weights)} layer weights for {n_layer} layers")
        b, t = input_ids.shape
        n = b * t
        hs, last_normed = self.residuals(input_ids)
        head = self.lm.lm_head.weight
        ln_f = self.lm.transformer.ln_f
        rows = self.chunk_rows or default_chunk_rows(head.shape[0], head.device)
        y = targets.reshape(n)
        feats, weights, trained = [], [], []
        layer_ce = torch.zeros(n_layer, dtype=torch.float32, device=head.device)
        for l in range(1, n_layer + 1):
            w = layer_weights[l - 1]
            if w != 0.0:
                z = last_normed if l == n_layer else ln_f(hs[l - 1])
                feats.append(z.reshape(n, -1))
                weights.append(float(w))
                trained.append(l - 1)
            else:
                with torch.no_grad():
                    m = n if monitor_positions == 0 else min(monitor_positions, n)
                    z = (last_normed if l == n_layer else ln_f(hs[l - 1])).reshape(n, -1)[:m]
                    ce, _ = head_ce(z, head, y[:m], rows, self.compute_dtype)
                    layer_ce[l - 1] = (ce / m).float()
        if not feats and cos_beta <= 0.0:
            raise ValueError("the objective has no trainable term")
        loss, ce = SharedHeadCE.apply(head, y, weights, rows, self.compute_dtype, *feats)
        for i, l in enumerate(trained):
            layer_ce[l] = ce[i]
        if cos_beta > 0.0:
            lambdas = aligned_weights(n_layer)
            last = hs[n_layer - 1].reshape(n, -1).float()
            reg = torch.zeros((), dtype=torch.float32, device=last.device)
            for l in range(1, n_layer):
                reg = reg + (1.0 - mean_cos(hs[l - 1].reshape(n, -1).float(), last)) * lambdas[l - 1]
            loss = loss + cos_beta * reg
        return loss, layer_ce.detach()

    @torch.no_grad()
    def _evaluate(self, input_ids: torch.Tensor, targets: torch.Tensor):
        b, t = input_ids.shape
        n = b * t
        hs, last_normed = self.residuals(input_ids)
        head = self.lm.lm_head.weight
        rows = self.chunk_rows or default_chunk_rows(head.shape[0], head.device)
        y = targets.reshape(n)
        ce = torch.zeros(self.n_layer, dtype=torch.float64, device=head.device)
        hits = torch.zeros(self.n_layer, dtype=torch.int64, device=head.device)
        for l in range(1, self.n_layer + 1):
            z = last_normed if l == self.n_layer else self.lm.transformer.ln_f(hs[l - 1])
            ce[l - 1], hits[l - 1] = head_ce(z.reshape(n, -1), head, y, rows, self.compute_dtype)
        return ce, hits
