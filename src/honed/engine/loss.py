"""Linear cross-entropy that never holds the full logits.

The lm_head and the loss run chunk by chunk over the trained positions only: each chunk's logits
are made, turned into its loss and its gradient, and dropped before the next chunk. The gradient
of the hidden states (and of the head, when it trains) is computed in the forward pass, so the
backward pass is one multiply. Peak extra memory is one chunk of logits instead of
tokens × vocabulary × 4 bytes (8192 tokens × 128k vocabulary = 4 GiB in fp32).

>>> import torch
>>> h, w = torch.randn(6, 4), torch.randn(10, 4)
>>> t = torch.tensor([1, 2, -100, 3, 4, 5])
>>> a, n = linear_cross_entropy_sum(h, w, t, chunk_rows=2)
>>> b, _ = reference_linear_cross_entropy_sum(h, w, t)
>>> n, bool(torch.allclose(a, b, atol=1e-5))
(5, True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from honed.engine.compile import on_cuda_compiled

IGNORE = -100
_LOGIT_CHUNK_BYTES = 512 * 2**20  # fp32 logits of one chunk


def reference_linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Plain torch: full logits, fp32 cross-entropy summed over targets != -100."""
    logits = (hidden @ weight.t()).float()
    mask = targets != IGNORE
    losses = F.cross_entropy(logits, targets.clamp_min(0), reduction="none") * mask
    return losses.sum(), int(mask.sum())


def default_chunk_rows(vocab_size: int) -> int:
    return max(256, _LOGIT_CHUNK_BYTES // (4 * vocab_size))


@on_cuda_compiled
def _loss_and_logit_grad(logits, targets):
    """Summed CE of one chunk and d loss / d logits = softmax - one_hot, in the logits' dtype.

    The logits are upcast as a bf16 lm_head followed by .float() would be (the HF stack's rounding)."""
    z = logits.float()
    lse = torch.logsumexp(z, dim=-1)
    loss = (lse - z.gather(1, targets[:, None]).squeeze(1)).sum()
    grad = torch.exp(z - lse[:, None])
    cols = torch.arange(z.shape[-1], device=z.device)
    grad = torch.where(cols[None, :] == targets[:, None], grad - 1.0, grad)  # fuses; no one-hot tensor
    return loss, grad.to(logits.dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, rows, targets, chunk_rows):
        # hidden: (N, D); rows: indices of trained positions; targets: their token ids.
        grad_hidden = torch.zeros_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        w = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
        for start in range(0, rows.numel(), chunk_rows):
            idx = rows[start : start + chunk_rows]
            tgt = targets[start : start + chunk_rows]
            h = hidden.index_select(0, idx)
            loss_c, probs = _loss_and_logit_grad(h @ w.t(), tgt)
            total += loss_c
            grad_hidden.index_copy_(0, idx, probs @ w)
            if grad_weight is not None:
                grad_weight.addmm_(probs.t().float(), h.float())
            del probs
        ctx.save_for_backward(grad_hidden, grad_weight if grad_weight is not None else torch.empty(0))
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = grad_hidden * grad_out.to(grad_hidden.dtype)
        gw = (grad_weight * grad_out).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int | None = None) -> tuple[torch.Tensor, int]:
    """(sum of -log p(target), number of targets) for logits = hidden @ weight.T, chunked.

    `hidden` is (N, D), `weight` (V, D), `targets` (N,) with -100 for positions that do not train.
    Positions that do not train cost nothing: no logits are made for them.
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    rows = (targets != IGNORE).nonzero().squeeze(1)
    n = int(rows.numel())
    chunk = chunk_rows or default_chunk_rows(weight.shape[0])
    tgt = targets.index_select(0, rows)
    if not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
        return _loss_only(hidden, weight, rows, tgt, chunk), n  # evaluation: no gradients to make
    return _LinearCrossEntropy.apply(hidden, weight, rows, tgt, chunk), n


def _loss_only(hidden, weight, rows, targets, chunk_rows):
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    w = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
    for start in range(0, rows.numel(), chunk_rows):
        logits = (hidden.index_select(0, rows[start : start + chunk_rows]) @ w.t()).float()
        tgt = targets[start : start + chunk_rows]
        total += (torch.logsumexp(logits, dim=-1) - logits.gather(1, tgt[:, None]).squeeze(1)).sum()
    return total


def shift_targets(labels: torch.Tensor) -> torch.Tensor:
    """Position t predicts labels[t + 1]; the last position of each row predicts nothing."""
    pad = torch.full_like(labels[:, :1], IGNORE)
    return torch.cat([labels[:, 1:], pad], dim=1)


# ---- per-token variant (preference training: sequence log-probs need each token's loss) ------------


def reference_linear_cross_entropy_per_token(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Plain torch: full logits, the cross-entropy of each row (0 where the target is -100)."""
    logits = hidden @ weight.t()
    logits = logits if logits.dtype == torch.float64 else logits.float()
    mask = targets != IGNORE
    return F.cross_entropy(logits, targets.clamp_min(0), reduction="none") * mask


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    return logits if logits.dtype == torch.float64 else logits.float()  # float64 stays (gradient checks)


@on_cuda_compiled
def _weighted_logit_grad(logits, targets, lse, grad_rows):
    """d (Σ g_i · loss_i) / d logits for one chunk: g_i · (softmax_i - one_hot_i), in the logits' dtype."""
    z = _upcast(logits)
    grad = torch.exp(z - lse[:, None])
    cols = torch.arange(z.shape[-1], device=z.device)
    grad = torch.where(cols[None, :] == targets[:, None], grad - 1.0, grad) * grad_rows[:, None].to(z.dtype)
    return grad.to(logits.dtype)


def _per_token_losses(hidden, weight, rows, targets, chunk_rows):
    """(loss of every row of `hidden`, 0 where not in `rows`; log-sum-exp of each of `rows`), chunk by chunk."""
    out_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    out = torch.zeros(hidden.shape[0], dtype=out_dtype, device=hidden.device)
    lse = torch.empty(rows.numel(), dtype=out_dtype, device=hidden.device)
    w = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
    for start in range(0, rows.numel(), chunk_rows):
        idx, tgt = rows[start : start + chunk_rows], targets[start : start + chunk_rows]
        z = _upcast(hidden.index_select(0, idx) @ w.t())
        lse_c = torch.logsumexp(z, dim=-1)
        lse[start : start + chunk_rows] = lse_c
        out.index_copy_(0, idx, lse_c - z.gather(1, tgt[:, None]).squeeze(1))
    return out, lse


class _LinearCrossEntropyPerToken(torch.autograd.Function):
    """Unlike the summed loss, the upstream gradient differs per row (a preference loss weights each
    sequence by its own sigmoid), so it is not known in forward: backward recomputes each chunk's
    logits from the saved log-sum-exp. One extra matmul per chunk, still never the full logits."""

    @staticmethod
    def forward(ctx, hidden, weight, rows, targets, chunk_rows):
        out, lse = _per_token_losses(hidden, weight, rows, targets, chunk_rows)
        ctx.save_for_backward(hidden, weight, rows, targets, lse)
        ctx.chunk_rows = chunk_rows
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, rows, targets, lse = ctx.saved_tensors
        w = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        acc_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        grad_weight = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if ctx.needs_input_grad[1] else None
        for start in range(0, rows.numel(), ctx.chunk_rows):
            idx, tgt = rows[start : start + ctx.chunk_rows], targets[start : start + ctx.chunk_rows]
            h = hidden.index_select(0, idx)
            grad = _weighted_logit_grad(h @ w.t(), tgt, lse[start : start + ctx.chunk_rows], grad_out.index_select(0, idx))
            if grad_hidden is not None:
                grad_hidden.index_copy_(0, idx, grad @ w)
            if grad_weight is not None:
                grad_weight.addmm_(grad.t().to(acc_dtype), h.to(acc_dtype))
        gw = grad_weight.to(weight.dtype) if grad_weight is not None else None
        return grad_hidden, gw, None, None, None


def linear_cross_entropy_per_token(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
    """-log p(target) of every row of logits = hidden @ weight.T, chunked; 0 where the target is -100.

    `hidden` is (N, D) (or (..., D), flattened), `weight` (V, D), `targets` (N,). The result is (N,),
    fp32 (fp64 for fp64 inputs); its negation is each token's log-prob, which preference losses sum
    per sequence. Ignored rows make no logits.

    >>> h, w = torch.randn(5, 4), torch.randn(7, 4)
    >>> t = torch.tensor([1, -100, 2, 3, 6])
    >>> torch.allclose(linear_cross_entropy_per_token(h, w, t, chunk_rows=2), reference_linear_cross_entropy_per_token(h, w, t), atol=1e-5)
    True
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    rows = (targets != IGNORE).nonzero().squeeze(1)
    chunk = chunk_rows or default_chunk_rows(weight.shape[0])
    if not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
        return _per_token_losses(hidden, weight, rows, targets.index_select(0, rows), chunk)[0]  # a reference pass: nothing kept
    return _LinearCrossEntropyPerToken.apply(hidden, weight, rows, targets.index_select(0, rows), chunk)
