"""Attention over packed rows without padding (varlen), for the fused path.

A packed row holds several samples end to end, with position_ids restarting at 0 for each. On
transformers' SDPA path those positions become a dense block-diagonal mask per row (B·L² memory,
and work spent on blocks that are all masked). Here the batch stays one flat run of tokens plus the
boundaries of its sequences (`cu_seqlens`, cumulative lengths), and torch's flash varlen kernel
(`torch.nn.attention.varlen.varlen_attn`, torch ≥ 2.10) attends inside each sequence only:

- `sequence_boundaries` finds the boundaries once per batch, on the CPU: a sequence starts at each
  row's first token, where positions do not continue (a sample restarting at 0) and where an
  attention mask switches between tokens and padding (so padding is a sequence of its own);
- `varlen_attention_forward` is registered with transformers' AttentionInterface as
  `honed_varlen`. The model's forward passes its extra keyword arguments down to every attention
  call, so the boundaries travel under the names transformers' own flash integration uses
  (`cu_seq_lens_q/k`, `max_length_q/k`); its mask function builds no mask;
- `TorchVarlen` calls `varlen_attn` the way the installed torch takes it (2.10: `is_causal=`;
  later: `window_size=(-1, 0)` and `scale=`; 2.12+: `enable_gqa=`);
- `reference_varlen_attention` is the plain-torch reference (per-sequence causal softmax); it is
  also what runs for tensors that are not on a GPU, so the wiring is tested on CPU.

>>> import torch
>>> cu, longest = sequence_boundaries((2, 5), position_ids=torch.tensor([[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]))
>>> cu.tolist(), longest
([0, 3, 5, 7, 10], 3)
"""

from __future__ import annotations

import functools
import inspect
import logging
import math

import torch

from honed.errors import HonedError, ModelError
from honed.utils.precision import compute_dtype_of

log = logging.getLogger(__name__)

VARLEN_ATTENTION = "honed_varlen"  # the name in transformers' attention and mask interfaces
CAUSAL = (-1, 0)  # flash's (left, right) window: everything before, nothing after
_HALF = (torch.bfloat16, torch.float16)
_MAX_FLASH_HEAD_DIM = 256


# ---- boundaries -------------------------------------------------------------------------------


def sequence_boundaries(shape, position_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """(cu_seqlens, longest): int32 cumulative lengths of the sequences in a (rows, length) batch
    read row after row, and the longest sequence's length. Computed on the CPU: a batch on the GPU
    costs one small copy here, instead of a sync in every layer.

    >>> sequence_boundaries((2, 3))[0].tolist()  # no positions, no mask: one sequence per row
    [0, 3, 6]
    >>> sequence_boundaries((1, 5), attention_mask=torch.tensor([[1, 1, 1, 0, 0]]))[0].tolist()
    [0, 3, 5]
    """
    rows, length = shape
    starts = torch.zeros((rows, length), dtype=torch.bool)
    starts[:, 0] = True
    if position_ids is not None:
        pos = position_ids.detach().cpu().expand(rows, length)  # transformers may hand (1, L) for every row
        starts[:, 1:] |= pos[:, 1:] != pos[:, :-1] + 1
    if attention_mask is not None:
        if attention_mask.ndim != 2:
            raise HonedError(f"honed.engine.attention.sequence_boundaries: expected a 2-D (rows, length) attention mask, got shape {tuple(attention_mask.shape)}")
        keep = attention_mask.detach().cpu().bool()
        starts[:, 1:] |= keep[:, 1:] != keep[:, :-1]
    begins = starts.flatten().nonzero().flatten()
    cu = torch.cat([begins, torch.tensor([rows * length])]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def varlen_batch_inputs(batch: dict[str, torch.Tensor]) -> dict:
    """The model inputs of a batch for varlen attention: ids, positions, and the sequence boundaries
    under the keyword names transformers forwards to each attention call. No attention mask: the
    boundaries already keep padding apart, so transformers builds none."""
    ids = batch["input_ids"]
    cu, longest = sequence_boundaries(ids.shape, batch.get("position_ids"), batch.get("attention_mask"))
    cu = cu.to(ids.device)
    inputs = {k: batch[k] for k in ("input_ids", "position_ids") if k in batch}
    return {**inputs, "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


# ---- kernels ----------------------------------------------------------------------------------


def reference_varlen_attention(q, k, v, cu_seqlens, max_length: int | None = None, *, scale: float | None = None, window=CAUSAL):
    """Plain torch: softmax attention inside each sequence, fp32 math. q: (tokens, heads, dim);
    k, v: (tokens, kv_heads, dim), each kv head shared by heads // kv_heads query heads (GQA);
    window: flash's (left, right) reach, -1 for unlimited. Returns (tokens, heads, dim) in q's dtype."""
    heads, dim = q.shape[1], q.shape[2]
    scale = dim**-0.5 if scale is None else scale
    groups = heads // k.shape[1]
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs = q[start:end].float().transpose(0, 1)  # (heads, n, dim)
        ks = k[start:end].float().repeat_interleave(groups, 1).transpose(0, 1)
        vs = v[start:end].float().repeat_interleave(groups, 1).transpose(0, 1)
        i = torch.arange(end - start, device=q.device)
        offset = i[None, :] - i[:, None]  # key index - query index
        allowed = torch.ones_like(offset, dtype=torch.bool)
        if window[0] >= 0:
            allowed &= offset >= -window[0]
        if window[1] >= 0:
            allowed &= offset <= window[1]
        scores = (qs @ ks.transpose(1, 2)) * scale
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        out[start:end] = (probs @ vs).transpose(0, 1).to(q.dtype)
    return out


class TorchVarlen:
    """torch's `varlen_attn`, called the way the installed version takes it.

    torch 2.10 has `is_causal=` and no `scale`; later versions take `window_size=(-1, 0)` for causal
    (and windows for sliding attention) and `scale=`; 2.12+ checks head counts and takes
    `enable_gqa=True` for fewer key/value heads. Where there is no flag, the flash op under it may
    still take fewer key/value heads: `probe_native_gqa` checks once, otherwise heads are repeated.
    """

    def __init__(self, fn):
        params = inspect.signature(fn).parameters
        self.fn = fn
        self.takes_window = "window_size" in params
        self.takes_scale = "scale" in params
        self.takes_enable_gqa = "enable_gqa" in params
        self.native_gqa = self.takes_enable_gqa  # without the flag: unknown until probed

    def describe(self, grouped: bool) -> str:
        """For the log: which API this torch has, and how grouped key/value heads run."""
        api = "window_size API" if self.takes_window else "is_causal API"
        if not grouped:
            return api
        return f"{api}, {'GQA native' if self.native_gqa else 'GQA by repeating key/value heads'}"

    def __call__(self, q, k, v, cu_seqlens, max_length: int, *, scale: float | None = None, window=CAUSAL):
        dim = q.shape[-1]
        kwargs = {}
        if self.takes_window:
            kwargs["window_size"] = tuple(window)  # a tuple: torch tests `window_size == (-1, 0)` for causal
        elif window[0] != -1:
            raise HonedError(f"honed varlen attention: sliding window {window} needs torch's varlen_attn(window_size=...), not in torch {torch.__version__}")
        else:
            kwargs["is_causal"] = window[1] == 0
        if scale is not None and self.takes_scale:
            kwargs["scale"] = scale
        elif scale is not None and not math.isclose(scale, dim**-0.5):
            q = q * (scale * dim**0.5)  # no scale argument: fold it into q (the kernel applies dim**-0.5)
        groups = q.shape[1] // k.shape[1]
        if groups > 1 and self.takes_enable_gqa:
            kwargs["enable_gqa"] = True
        elif groups > 1 and not self.native_gqa:
            k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        return self.fn(q, k, v, cu_seqlens, cu_seqlens, max_length, max_length, **kwargs)


@functools.cache
def torch_varlen() -> TorchVarlen | None:
    """The installed torch's varlen kernel, or None (torch < 2.10)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return TorchVarlen(varlen_attn)


def probe_native_gqa(kernel: TorchVarlen, device: torch.device) -> bool:
    """Whether `kernel` takes fewer key/value heads than query heads on `device` (forward and
    backward agree with repeated heads). Sets `kernel.native_gqa`; a kernel with `enable_gqa` needs no probe."""
    if kernel.takes_enable_gqa:
        return True
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(24, h, 64, generator=g).to(device, torch.bfloat16) for h in (4, 2, 2))
    up = torch.randn(24, 4, 64, generator=g).to(device)
    cu = torch.tensor([0, 9, 24], dtype=torch.int32, device=device)

    def run(native: bool):
        xs = [x.clone().requires_grad_(True) for x in (q, k, v)]
        kernel.native_gqa = native
        out = kernel(*xs, cu, 15)
        grads = torch.autograd.grad((out.float() * up).sum(), xs)
        return [out.detach(), *grads]

    try:
        with torch.enable_grad():
            repeated, native = run(False), run(True)
        # bf16 on both sides, summed in different orders (the kernel's fp32 group sum vs autograd's bf16 one).
        agree = all(a.shape == b.shape and float((a.float() - b.float()).norm() / b.float().norm()) <= 2e-2 for a, b in zip(native, repeated))
    except (RuntimeError, ValueError) as err:
        log.debug("varlen_attn with fewer key/value heads failed (%s); repeating them", str(err).splitlines()[0][:200])
        agree = False
    kernel.native_gqa = agree
    return agree


# ---- transformers integration -----------------------------------------------------------------


def _compute_dtype(q, k, v):
    """q, k, v in one dtype: the autocast dtype when autocast is on (RoPE can leave q and k in fp32
    next to a bf16 v), else q's own."""
    target = compute_dtype_of(q)
    return q.to(target), k.to(target), v.to(target)


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                             sliding_window: int | None = None, softcap: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' attention contract: query (B, H, L, D), key/value (B, H_kv, L, D) → ((B, L, H, D), None).

    The boundaries come from the kwargs (`cu_seq_lens_q`, `max_length_q`; see `varlen_batch_inputs`).
    A call without them (a plain `model(...)` forward, e.g. scoring samples) finds them here from
    its padding mask and position_ids, at the cost of a GPU sync per layer. Tensors off the GPU, or
    fp32 ones outside autocast, run the plain-torch reference instead of the flash kernel.
    """
    where = f"honed varlen attention (layer {getattr(module, 'layer_idx', '?')})"
    if softcap is not None:
        raise HonedError(f"{where}: attention logit soft-capping is not supported; train this model with training.engine: plain")
    if dropout and module.training:
        raise HonedError(f"{where}: attention dropout {dropout} is not supported; set the model's attention_dropout to 0 or use training.engine: plain")
    batch, heads, length, dim = query.shape
    if key.shape[2] != length:
        raise HonedError(f"{where}: {length} queries against {key.shape[2]} keys (a KV cache) — this attention is for training "
                         "forwards; generate with a model loaded with attn_implementation='sdpa'")
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None:
        longest = kwargs["max_length_q"]
    else:
        cu, longest = sequence_boundaries((batch, length), kwargs.get("position_ids"), attention_mask)
        cu = cu.to(query.device)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if causal and longest == length and cu.numel() == batch + 1 and (sliding_window is None or sliding_window >= length):
        # Every row is one whole sequence (no packing, no padding): plain causal SDPA needs no boundaries,
        # and on Hopper its kernels (cuDNN/flash) outrun the varlen one at long sequences.
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling, is_causal=True)
    q = query.transpose(1, 2).reshape(batch * length, heads, dim)
    k = key.transpose(1, 2).reshape(batch * length, key.shape[1], dim)
    v = value.transpose(1, 2).reshape(batch * length, value.shape[1], dim)
    q, k, v = _compute_dtype(q, k, v)
    window = CAUSAL if causal else (-1, -1)
    if sliding_window is not None and sliding_window < longest:
        # transformers' sliding window W: a query sees itself and the W - 1 tokens before it.
        window = (sliding_window - 1, 0 if causal else sliding_window - 1)
    if q.is_cuda and q.dtype in _HALF:
        kernel = torch_varlen()
        if kernel is None:
            raise HonedError(f"{where}: torch {torch.__version__} has no torch.nn.attention.varlen (needs 2.10+)")
        out = kernel(q, k, v, cu, longest, scale=scaling, window=window)
    else:
        if q.is_cuda:
            _warn_fp32_once(q.dtype)
        out = reference_varlen_attention(q, k, v, cu, longest, scale=scaling, window=window)
    return out.reshape(batch, length, heads, dim), None


@functools.cache
def _warn_fp32_once(dtype) -> None:
    # Training autocasts to bf16/fp16, so this is a forward outside autocast on an fp32 model (a check, a test).
    log.warning("honed varlen attention: a %s forward with no autocast runs the plain-torch reference (flash kernels take bf16/fp16); "
                "it is exact but slow", str(dtype).removeprefix("torch."))


def varlen_attention_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                          mask_function=None, attention_mask: torch.Tensor | None = None, **kwargs):
    """transformers' mask contract, building no mask: None, or the 2-D padding mask when some token is
    padding (the attention call turns it into boundaries), as transformers does for flash attention."""
    if attention_mask is None:
        return None
    attention_mask = attention_mask[:, -kv_length:]
    return None if bool(attention_mask.all()) else attention_mask


def register_varlen_attention() -> None:
    """Make `honed_varlen` a valid `attn_implementation` (attention function and mask function)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN_ATTENTION, varlen_attention_mask)


def enable_varlen_attention(lm) -> None:
    """Switch a transformers causal LM (not its peft wrapper) to `honed_varlen` attention."""
    register_varlen_attention()
    lm.set_attn_implementation(VARLEN_ATTENTION)
    got = getattr(lm.config, "_attn_implementation", None)
    if got != VARLEN_ATTENTION:
        raise ModelError(f"honed.engine.attention.enable_varlen_attention: {type(lm).__name__} kept attn_implementation={got!r}")


def uses_varlen(lm) -> bool:
    return getattr(getattr(lm, "config", None), "_attn_implementation", None) == VARLEN_ATTENTION


def _sliding_window(config) -> int | None:
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if window is None or (layer_types and "sliding_attention" not in layer_types):
        return None
    return window


def varlen_unavailable_reason(config, *, device: torch.device, compute_dtype: torch.dtype | None, max_seq_length: int) -> str | None:
    """None when varlen attention can run this model here, else why not (for the log)."""
    if compute_dtype not in _HALF:
        return "training computes in fp32 and flash kernels take bf16/fp16"
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim % 8 or head_dim > _MAX_FLASH_HEAD_DIM:
        return f"head_dim {head_dim} (flash kernels take multiples of 8 up to {_MAX_FLASH_HEAD_DIM})"
    if getattr(config, "attention_dropout", 0.0):
        return f"attention_dropout {config.attention_dropout}"
    if device.type != "cuda":
        return f"not on a CUDA device ({device})"
    kernel = torch_varlen()
    if kernel is None:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen (2.10+)"
    window = _sliding_window(config)
    if window is not None and window < max_seq_length and not kernel.takes_window:
        return f"sliding window {window} < max_seq_length {max_seq_length} and torch {torch.__version__}'s varlen_attn takes no window"
    if not getattr(torch.backends.cuda, "is_flash_attention_available", lambda: True)():
        return "this torch build has no flash attention kernels"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "flash kernels need compute capability 8.0+ (Ampere or newer)"
    return None
