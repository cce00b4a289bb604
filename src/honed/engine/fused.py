"""The fused CUDA path for Llama-style decoders (Llama, Qwen2/2.5, Qwen3, Mistral).

What it changes against plain transformers, each with a plain-torch reference beside it:
- LoRA projections run as one autograd node each (`engine.lora`), NF4 bases dequantised on the fly,
  and projections that read the same input (q/k/v, gate/up) as one node per group (`engine.grouped`);
- RMSNorm and SwiGLU keep less for backward (`engine.layers`), and their outputs, which the LoRA
  projections read, are derived again in backward instead of kept (`engine.derived`);
- the loss never makes full logits: hidden states → chunked lm_head + cross-entropy (`engine.loss`);
- activation memory follows a plan (`engine.memory`): no recompute when it fits, recompute as few
  layers as needed otherwise, and offload the kept layer inputs to CPU when even that does not fit;
- QLoRA: the frozen embeddings and lm_head go back to the dtype the model was loaded in (bf16), which
  peft's `prepare_model_for_kbit_training` had upcast to fp32 (`restore_frozen_embeddings`).
- attention over packed rows runs without padding or a dense mask (`engine.attention`): torch's flash
  varlen kernel with the sample boundaries found once per batch, where the GPU and torch have it;
  otherwise transformers' own (SDPA, a block-diagonal mask from position_ids), as on the plain path.

>>> sorted(COVERED_MODEL_TYPES)
['llama', 'mistral', 'qwen2', 'qwen3']
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from honed.data.packing import uses_varlen_attention
from honed.engine import derived, fp8_choice, host_embedding, host_mlp_choice, nf4
from honed.engine.attention import (
    VARLEN_ATTENTION,
    enable_varlen_attention,
    probe_native_gqa,
    torch_varlen,
    uses_varlen,
    varlen_batch_inputs,
    varlen_unavailable_reason,
)
from honed.engine.fp8 import check_fp8_device, prepare_fp8
from honed.engine.graphs import StackGraphs
from honed.engine.grouped import group_siblings
from honed.engine.layers import patch_layers, patch_rope
from honed.engine.layout import COVERED_MODEL_TYPES, causal_lm_of, covers  # noqa: F401 (doctest; the engine's users import them here)
from honed.engine.lora import count_unfusable_lora_layers, patch_lora_layers
from honed.engine.loss import IGNORE, linear_cross_entropy_sum, shift_targets
from honed.engine.memory import (
    MemoryPlan,
    apply_memory_plan,
    available_host_bytes,
    backward_transient_bytes,
    escalate,
    host_mlp_bytes,
    join_offload_copies,
    layer_activation_bytes,
    offload_keeps_o,
    plan_memory,
    rebuilt_layer_bytes,
    reset_offload_copies,
    usable_gpu_bytes,
)
from honed.errors import HonedError
from honed.engine.settings import EngineSettings
from honed.utils.precision import compute_dtype_of

log = logging.getLogger(__name__)

_RESERVE_BYTES = 2 * 2**30  # allocator slack, cuBLAS/SDPA workspaces, one chunk of logits


def _as_dtype(value) -> torch.dtype | None:
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        found = getattr(torch, value.removeprefix("torch."), None)
        return found if isinstance(found, torch.dtype) else None
    return None


def restore_frozen_embeddings(model, compute_dtype: torch.dtype | None) -> list[str]:
    """Cast the frozen input embeddings and lm_head back from fp32 to the dtype the model was loaded in.

    peft's `prepare_model_for_kbit_training` (QLoRA) upcasts every bf16/fp16 weight that is not 4-bit to
    fp32, the embeddings and lm_head included: for llama-8b that is 2 GiB more weights, an fp32 residual
    stream (the embedding output is fp32, so every residual add stays fp32 and every norm keeps an fp32
    input), and a bf16 copy of the head made by the loss every step. On the fused path these weights are
    frozen and used only in the compute dtype, so when that is the dtype the model was loaded in, the cast
    back is exact (the values were upcast from it). Norm weights stay as peft left them (tiny).
    Returns the names of the weights cast.
    """
    lm = causal_lm_of(model)
    loaded = _as_dtype(getattr(getattr(lm, "config", None), "dtype", None))
    if compute_dtype not in (torch.bfloat16, torch.float16) or loaded != compute_dtype:
        return []
    named = [("embed_tokens", lm.get_input_embeddings() if hasattr(lm, "get_input_embeddings") else None), ("lm_head", getattr(lm, "lm_head", None))]
    cast, seen = [], set()
    for name, module in named:
        if not isinstance(module, (torch.nn.Embedding, torch.nn.Linear)):
            continue  # e.g. peft's ModulesToSaveWrapper: that weight trains
        w = module.weight
        if id(w) in seen or w.requires_grad or w.dtype != torch.float32:
            continue
        seen.add(id(w))
        w.data = w.data.to(compute_dtype)  # a tied head shares this Parameter and follows
        cast.append(name)
    return cast


def switch_off_hub_kernels(lm) -> bool:
    """Turn off transformers' Hub kernels on a model that has them on (its default in recent releases
    where the `kernels` package is installed): each train()/eval() switch would otherwise kernelize the
    model again and drop the forwards `patch_layers` gives its norms. True when they were on."""
    if not getattr(lm, "use_kernels", False):
        return False
    lm.use_kernels = False  # transformers resets the kernelized layers to their own forwards
    return True


class FusedPath:
    name = "fused"
    # False keeps peft's fp32 embeddings/lm_head on QLoRA (`honed bench --fp32-embeddings`, to compare).
    restore_embeddings = True
    # False keeps transformers' SDPA attention for packed rows instead of varlen (to compare).
    use_varlen_attention = True
    # What captures the decoder stack when training.cuda_graphs is on (None: CUDA graphs, on a CUDA
    # device only); tests set engine.graphs.RerunBackend to check the wiring on a CPU.
    graph_backend = None
    # True lets training.embeddings_on_host act off CUDA (where the table is in host memory anyway), so
    # that tests check its wiring on a CPU.
    host_embeddings_off_cuda = False

    def __init__(self, settings: EngineSettings):
        self.settings, self.device = settings, settings.device
        self.plan: MemoryPlan | None = None
        self.decoder_layers = None  # the layers `prepare` planned (what an out-of-memory re-plan applies to)
        self.model_config = None
        self.restored: list[str] = []
        self.attention = "sdpa"  # what `prepare` chose: "varlen", or the model's own attn_implementation
        # True when every micro-batch may be one row without padding (`collate(..., padding_free=True)`).
        self.padding_free = False
        self.graphs: StackGraphs | None = None  # training.cuda_graphs: the decoder stack's graphs
        self.embeddings_on_host = False  # training.embeddings_on_host: where `prepare` put the input embeddings
        self.fp8_decision: fp8_choice.Fp8Choice | None = None  # precision fp8 under memory auto: what was measured and chosen
        self.fp8_bases: str | None = None  # precision fp8: the bases `prepare` stored, "fp8" or "bf16" (a checkpoint records it)
        # training.host_mlp_layers as the memory plan asks it (`auto` is measured in `prepare`), and what was measured
        self.host_mlp_layers = settings.host_mlp_layers if isinstance(settings.host_mlp_layers, int) else 0
        self.host_mlp_decision: host_mlp_choice.HostMlpChoice | None = None

    def compute_dtype(self) -> torch.dtype | None:
        """The autocast dtype the run computes in (None: no autocast), as `utils.precision.autocast_context` sets it."""
        return self.settings.compute_dtype

    def tokens_per_micro_batch(self) -> int:
        return self.settings.tokens_per_micro_batch

    def hidden_state_bytes(self) -> int:
        """Bytes of one token's hidden state at 2 bytes a value (bf16/fp16); a recomputed layer keeps two."""
        return 2 * self.model_config.hidden_size

    def prepare(self, model):
        lm = causal_lm_of(model)
        self.decoder_layers, self.model_config = lm.model.layers, lm.config
        if getattr(lm, "is_gradient_checkpointing", False):
            model.gradient_checkpointing_disable()  # the memory plan below decides what recomputes
        if switch_off_hub_kernels(lm):
            log.info("fused path: transformers' Hub kernels switched off; honed's own nodes replace those layers")
        n_lora = patch_lora_layers(model)
        unfused = count_unfusable_lora_layers(model)
        if unfused:
            log.warning("fused path: %d LoRA projections stay on peft's slower path (lora.dropout > 0, DoRA or a trainable base); lora.dropout: 0 fuses them", unfused)
        if self.fp8_bases_pay(model):
            prepare_fp8(model, self.settings)  # before the memory plan: it frees the bf16 copies
            self.fp8_bases = "fp8"
        elif self.settings.fp8:
            self.fp8_bases = "bf16"
        n_groups = group_siblings(model)  # after fp8: it stores each group's fp8 bases as one matrix
        n_norm, n_mlp = patch_layers(model)
        rope_fused = patch_rope(model)
        if self.restore_embeddings:
            self.restored = restore_frozen_embeddings(model, self.compute_dtype())
            if self.restored:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()  # so the memory plan below sees the fp32 copies' memory as free
                log.info("fused path: frozen %s back in %s (peft had upcast them to fp32)", " and ".join(self.restored), str(self.compute_dtype()).removeprefix("torch."))
        self.log_nf4_dequantisation(model)
        self.choose_attention(lm)
        if self.settings.host_mlp_layers == "auto":
            self.host_mlp_layers = self.choose_host_mlp_layers(model)
        self.plan = self.memory_plan(model)
        self.embeddings_on_host = self.place_embeddings(lm)  # may plan again, with the table's memory free
        self.warn_if_host_short()  # for the final plan only
        apply_memory_plan(self.decoder_layers, self.plan)
        self.graphs = self.stack_graphs(lm)
        log.info(
            "fused path: %d LoRA projections (%d sibling groups run as one node each), %d RMSNorms, %d SwiGLU MLPs%s fused; memory %s (%d of %d layers recompute%s, ~%.1f GiB activations planned)",
            n_lora, n_groups, n_norm, n_mlp, ", RoPE" if rope_fused else "", self.plan.mode, self.plan.checkpointed, len(lm.model.layers),
            ("" if not self.plan.checkpointed else ", keeping o_proj's output" if self.plan.keep_o else ", o_proj recomputed: host memory is short")
            + (", MLP rebuilt over all tokens at once" if self.plan.whole_mlp else "")
            + (f", gate/up activations of the first {self.plan.host_mlp} layers in host memory" if self.plan.host_mlp else ""),
            self.plan.estimate_gib,
        )
        return model

    def fp8_bases_pay(self, model) -> bool:
        """Whether to store the LoRA bases in fp8: when training.precision is fp8, unless `auto` is free to
        spend the card and bf16 bases are measured to train faster here (`engine.fp8_choice`)."""
        s = self.settings
        if not s.fp8:
            return False
        if s.fp8_bases is not None:
            return s.fp8_bases == "fp8"  # chosen before this run was interrupted: a resume trains the same numbers
        if not fp8_choice.ENABLED or s.forced_memory is not None or s.memory_budget_gib is not None:
            return True  # fp8 as asked: its use is then memory
        check_fp8_device(self.device)  # a clear error before any fp8 matmul is measured
        measured = self.measure_fp8_choice(model)
        agreed = fp8_choice.agreed_across_ranks(measured, self.device)  # every rank reaches this, measured or not
        if agreed != measured:
            log.info("fp8: bases in %s, as rank 0 measured (this rank measured %s faster)", agreed, measured)
            if self.fp8_decision is not None:
                self.fp8_decision = dataclasses.replace(self.fp8_decision, precision=agreed)
        return agreed == "fp8"

    def measure_fp8_choice(self, model) -> str:
        """This GPU's choice between fp8 and bf16 bases (`engine.fp8_choice`), logged and kept for describe()."""
        lm = causal_lm_of(model)
        tokens = self.tokens_per_micro_batch()
        try:
            times = fp8_choice.measure_base_times(lm.model.layers[0], tokens, self.device)
            attention_ms = fp8_choice.measure_attention_ms(lm.config, tokens, self.settings.max_seq_length, self.device)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            log.info("fp8: no GPU memory to measure bf16 against fp8 bases; the bases go to fp8, which halves them")
            return "fp8"
        except Exception as err:  # noqa: BLE001 - any failure to measure keeps fp8 as asked, and every rank still reaches the broadcast
            log.warning("fp8: measuring bf16 against fp8 bases failed (%s); the bases go to fp8 as asked", str(err).splitlines()[0][:200])
            return "fp8"
        torch.cuda.empty_cache()  # the probe's inputs: the memory plans below count that memory as free
        plans = {"bf16": self.memory_plan(model), "fp8": self.memory_plan(model, extra_budget=fp8_choice.fp8_freed_bytes(model))}
        self.fp8_decision = choice = fp8_choice.choose(len(lm.model.layers), plans, times, attention_ms)
        step, recomputed = choice.step_ms, choice.recomputed_layers
        log.info("fp8: bases in %s, measured faster here under memory auto (base matmuls and rebuilds, est. %.1f ms a step in fp8, %.1f in bf16; "
                 "%d and %d of %d layers recompute)%s", choice.precision, step["fp8"], step["bf16"], recomputed["fp8"], recomputed["bf16"], len(lm.model.layers),
                 "" if choice.precision == "fp8" else ". Set training.memory_budget_gib or a training.memory mode to keep fp8 bases regardless")
        return choice.precision

    def choose_host_mlp_layers(self, model) -> int:
        """training.host_mlp_layers: auto — the count of layers whose gate/up wait in host memory with the
        shortest estimated step, measured here (`engine.host_mlp_choice`); 0 where nothing recomputes,
        under CUDA graphs, off CUDA, or when measuring fails. Logged and kept for describe()."""
        lm = causal_lm_of(model)
        if self.device.type != "cuda" or self.settings.cuda_graphs:
            log.info("fused path: host_mlp_layers auto → 0 (%s)", "not a CUDA device" if self.device.type != "cuda" else "CUDA graphs are on")
            return 0
        without = self.memory_plan(model, host_mlp=0)
        chosen = 0
        if without.checkpointed:
            try:
                tokens = self.tokens_per_micro_batch()
                copy_ms = host_mlp_choice.measure_copy_ms(tokens * host_mlp_bytes(lm.config), self.device)
                forward_ms = host_mlp_choice.measure_layer_forward_ms(lm, tokens, self.settings.max_seq_length, self.device, self.compute_dtype())
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                log.info("fused path: host_mlp_layers auto → 0 (no GPU memory to measure the host link)")
                forward_ms = None
            except Exception as err:  # noqa: BLE001 - a failed measurement keeps every activation on the GPU, and every rank still reaches the broadcast
                log.warning("fused path: host_mlp_layers auto → 0 (measuring failed: %s)", str(err).splitlines()[0][:200])
                forward_ms = None
            if forward_ms is not None:
                torch.cuda.empty_cache()  # the probes' memory: the plans below count it as free
                plans = {asked: self.memory_plan(model, host_mlp=asked) for asked in range(len(lm.model.layers) + 1)}
                rebuild_ms = forward_ms * host_mlp_choice.rebuild_share(lm.config)
                self.host_mlp_decision = host_mlp_choice.choose(plans, copy_ms, forward_ms, rebuild_ms)
                chosen = self.host_mlp_decision.layers
                log.info("fused path: host_mlp_layers auto → %d (a layer's gate/up copy %.1f ms against %.1f ms of its forward; est. %.1f ms of "
                         "rebuilds and waits a step, %.1f without)", chosen, copy_ms, forward_ms, self.host_mlp_decision.estimated_ms[chosen],
                         self.host_mlp_decision.estimated_ms[0])
        else:
            log.info("fused path: host_mlp_layers auto → 0 (every layer keeps its activations)")
        return host_mlp_choice.agreed_across_ranks(chosen, self.device)  # every rank reaches this, measured or not

    def place_embeddings(self, lm) -> bool:
        """training.embeddings_on_host: move the frozen input embedding table to pinned host memory
        (`engine.host_embedding`) when memory is short (the plan recomputes layers) or when asked, then
        plan again with the memory that freed. True when it moved; a log line says why when it could not."""
        wanted = self.settings.embeddings_on_host
        if wanted is False or (wanted is None and not self.plan.checkpointed):
            return False
        reason = host_embedding.blocker(lm)
        if reason is None and not self.host_embeddings_off_cuda:
            reason = host_embedding.unavailable_reason(self.device)
        if reason is not None:
            (log.warning if wanted else log.info)("fused path: the input embeddings stay on the GPU (%s)", reason)
            return False
        moved = host_embedding.move_to_host(lm.get_input_embeddings())
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            self.plan = self.memory_plan(lm)
        log.info("fused path: the frozen input embeddings (%.2f GiB) live in pinned host memory; the GPU reads each batch's rows from there", moved / 2**30)
        return True

    def stack_graphs(self, lm) -> StackGraphs | None:
        """training.cuda_graphs: the decoder stack's graphs, installed on its layers (one log line
        either way); None when off or where they cannot run."""
        if not self.settings.cuda_graphs:
            return None
        layers = list(lm.model.layers)[: lm.config.num_hidden_layers]
        kinds = {getattr(layer, "attention_type", "full_attention") for layer in layers}
        if self.device.type != "cuda" and self.graph_backend is None:
            reason = "not a CUDA device"
        elif len(kinds) > 1 and self.attention != "varlen":
            # The first layer's keyword arguments stand for every layer's: with layers of several
            # attention kinds (sliding windows) transformers gives each kind its own mask.
            reason = f"layers of several attention kinds ({', '.join(sorted(kinds))}) and {self.attention} attention"
        else:
            reason = None
        if reason is not None:
            log.info("fused path: CUDA graphs not used (%s)", reason)
            return None
        backend = self.graph_backend() if self.graph_backend is not None else None
        graphs = StackGraphs(layers, join=lambda: join_offload_copies(layers), reset=lambda: reset_offload_copies(layers), backend=backend)
        graphs.install()
        log.info("fused path: CUDA graphs on: the decoder stack's forward and backward replay as two graphs once a batch shape repeats")
        return graphs

    def log_nf4_dequantisation(self, model) -> None:
        """One log line for a QLoRA model (NF4 weights): which code dequantises them."""
        if not any(getattr(getattr(p, "quant_state", None), "quant_type", None) == "nf4" for p in model.parameters()):
            return
        reason = nf4.kernel_unavailable_reason() if self.device.type == "cuda" else "not a CUDA device"
        if reason is None:
            log.info("fused path: NF4 weights dequantised by honed's Triton kernel (engine.nf4)")
        else:
            log.info("fused path: NF4 weights dequantised by bitsandbytes (%s)", reason)

    def choose_attention(self, lm) -> None:
        """Varlen attention where it runs (CUDA, torch ≥ 2.10, bf16/fp16 compute, a flash head size) and
        the model is on transformers' default SDPA; otherwise the model's own attention. One log line."""
        current = getattr(lm.config, "_attn_implementation", None) or "sdpa"
        if not self.use_varlen_attention:
            reason = "switched off (FusedPath.use_varlen_attention)"
        elif current not in ("sdpa", VARLEN_ATTENTION):
            reason = f"the model asked for attn_implementation={current!r}"  # a user's explicit choice stays
        else:
            reason = varlen_unavailable_reason(lm.config, device=self.device, compute_dtype=self.compute_dtype(), max_seq_length=self.settings.max_seq_length)
        if reason is None:
            try:
                enable_varlen_attention(lm)
            except (HonedError, KeyError, ValueError) as err:
                reason = f"transformers did not take it: {err}"
        if reason is None:
            kv_heads = getattr(lm.config, "num_key_value_heads", None) or lm.config.num_attention_heads
            grouped = kv_heads != lm.config.num_attention_heads
            if grouped:
                probe_native_gqa(torch_varlen(), self.device)
            self.attention, self.padding_free = "varlen", True
            log.info("fused path: attention varlen (torch flash varlen_attn, %s); micro-batches run as one row without padding", torch_varlen().describe(grouped))
        else:
            # The model's own attention: padding-free only if that is transformers' flash attention.
            self.attention, self.padding_free = current, uses_varlen_attention(lm)
            log.info("fused path: attention %s (varlen not used: %s)", current, reason)

    def memory_plan(self, model, extra_budget: float = 0.0, host_mlp: int | None = None) -> MemoryPlan:
        """The activation plan for the memory free now (or training.memory_budget_gib), plus `extra_budget`
        bytes (what converting the bases to fp8 would free), with `host_mlp` host layers asked (default:
        `host_mlp_layers`)."""
        s = self.settings
        lm = causal_lm_of(model)
        forced = s.forced_memory
        if s.memory_budget_gib is not None:
            budget = s.memory_budget_gib * 2**30
        elif self.device.type == "cuda":
            free = usable_gpu_bytes(self.device)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            budget = free - _RESERVE_BYTES - 16 * trainable  # fp32 grads + AdamW moments
        else:
            budget = float("inf")
        budget += extra_budget
        host = self.host_bytes() if self.device.type == "cuda" else None
        layers, tokens, hidden_bytes = len(lm.model.layers), self.tokens_per_micro_batch(), self.hidden_state_bytes()
        plan = plan_memory(
            layers=layers,
            tokens=tokens,
            per_token_layer=layer_activation_bytes(lm.config),
            hidden_bytes=hidden_bytes,
            budget=budget,
            forced=forced,
            transient_per_token=backward_transient_bytes(lm.config),
            rebuilt_bytes=rebuilt_layer_bytes(lm.config, tokens),
            whole_mlp_rebuilt_bytes=rebuilt_layer_bytes(lm.config, tokens, whole_mlp=True),
            host_bytes=host,
            # Not under CUDA graphs: their capture joins the offload copies of recomputed layers only.
            host_mlp_layers=0 if s.cuda_graphs else self.host_mlp_layers if host_mlp is None else host_mlp,
            host_mlp_per_token=host_mlp_bytes(lm.config),
        )
        return plan

    def host_bytes(self) -> float | None:
        """The host memory offloading plans with (it pins at most half): training.host_memory_gib, else what is available (`available_host_bytes`)."""
        if self.settings.host_memory_gib is not None:
            return self.settings.host_memory_gib * 2**30
        return available_host_bytes()

    def warn_if_host_short(self) -> None:
        """Warn, once the plan is final, when offloading would pin more than 90% of the host's available
        memory: a host that runs out kills the process outright."""
        host = self.host_bytes() if self.device.type == "cuda" else None
        plan = self.plan
        tokens = self.tokens_per_micro_batch()
        pinned = (plan.checkpointed * tokens * self.hidden_state_bytes() * (2 if plan.keep_o else 1) if plan.mode == "offload" else 0)
        pinned += plan.host_mlp * tokens * host_mlp_bytes(self.model_config)
        if pinned and host is not None and pinned > 0.9 * host:
            log.warning("fused path: offloading keeps %.1f GiB in pinned host memory and the host has %.1f GiB available; if it runs out the "
                        "process is killed: lower data.max_seq_length or training.batch_size", pinned / 2**30, host / 2**30)

    def recover_from_oom(self) -> bool:
        """After an out-of-memory error: switch to the next leaner memory plan (more layers recompute,
        then offload). False when there is none left. Called by `engine.with_memory_fallback`."""
        layers = self.decoder_layers
        if layers is None or self.plan is None:
            return False
        leaner = escalate(self.plan, len(layers))
        if leaner is None:
            return False
        if leaner.mode == "offload":  # whether o_proj's outputs go to the host too depends on its free memory
            keep_o = offload_keeps_o(leaner.checkpointed, self.tokens_per_micro_batch(), self.hidden_state_bytes(), self.host_bytes())
            leaner = dataclasses.replace(leaner, keep_o=keep_o)
        log.warning("fused path: out of GPU memory with memory %s (%d of %d layers recompute); retrying the step with %s (%d recompute)%s",
                    self.plan.mode, self.plan.checkpointed, len(layers), leaner.mode, leaner.checkpointed,
                    "; set training.memory_budget_gib to plan less from the start" if self.settings.memory == "auto" else "")
        self.plan = leaner
        apply_memory_plan(layers, leaner)
        if self.graphs is not None:  # captured with the old plan: capture again, around the new forwards
            self.graphs.forget()
            self.graphs.install()
        return True

    def describe(self) -> dict:
        """What this path did, in one summary (run_info.json and `honed bench` report it): its memory
        plan as it is now (after any out-of-memory retry), attention, where the input embeddings are,
        and the CUDA graphs' counts and pool (None when off)."""
        return {
            "name": self.name,
            "padding_free": self.padding_free,
            "attention": self.attention,
            "memory_plan": dataclasses.asdict(self.plan) if self.plan is not None else None,
            "embeddings_on_host": self.embeddings_on_host,
            "restored_embeddings": list(self.restored),
            "cuda_graphs": self.graphs.summary() if self.graphs is not None else None,
            "cuda_graph_pool_bytes": self.graphs.held_bytes() if self.graphs is not None else 0,
            "fp8_choice": self.fp8_decision.describe() if self.fp8_decision is not None else None,
            "derived_saves": derived.ENABLED,
            "host_mlp_choice": self.host_mlp_decision.describe() if self.host_mlp_decision is not None else None,
        }

    def hidden_states(self, model, batch):
        """The decoder's last hidden states in the compute dtype (no logits), and the lm_head's weight."""
        lm = causal_lm_of(model)
        if uses_varlen(lm):
            inputs = varlen_batch_inputs(batch)  # sample boundaries found once here, used by every layer
        else:
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        with derived.derived_saves():  # norm and SwiGLU outputs are derived again in backward, not kept
            hidden = lm.model(**inputs, use_cache=False).last_hidden_state
        return hidden.to(compute_dtype_of(hidden)), lm.lm_head.weight

    def loss_sum(self, model, batch):
        hidden, head = self.hidden_states(model, batch)
        return linear_cross_entropy_sum(hidden, head, shift_targets(batch["labels"]))

    def token_logps(self, model, batch):
        """As PlainPath.token_logps, from the chunked linear cross-entropy (no full logits)."""
        from honed.engine.loss import linear_cross_entropy_per_token  # engine.loss's per-token form (with preference training)

        hidden, head = self.hidden_states(model, batch)
        targets = shift_targets(batch["labels"])
        per_token = linear_cross_entropy_per_token(hidden.reshape(-1, hidden.shape[-1]), head, targets.reshape(-1))
        if per_token.numel() != targets.numel():  # one value per trained position only: put them in place
            trained = targets.reshape(-1) != IGNORE
            per_token = torch.zeros(targets.numel(), dtype=per_token.dtype, device=per_token.device).masked_scatter(trained, per_token)
        return -per_token.view(targets.shape)[:, :-1].float()


def fused_path_factory(model, settings: EngineSettings):
    """The fused path where it applies (CUDA, covered architecture, engine not forced plain)."""
    if settings.engine == "plain":
        log.info("training.engine=plain: fused path not used")
        return None
    if settings.device.type != "cuda":
        return None
    reason = covers(model)
    if reason:
        log.info("fused path does not cover this model (%s)", reason)
        return None
    return FusedPath(settings)
