"""`precision: fp8` under `memory: auto` keeps bf16 bases where they train faster (`engine.fp8_choice`).

The matmul and attention timings need a GPU (tests/gpu/test_fp8.py measures them there); here they are
given, and what is checked is the step estimate, the choice, which projections are measured as one
matrix, the bytes fp8 frees, and that the fused path converts the bases exactly when the choice says so.
"""

from __future__ import annotations

import pytest
import torch

from honed.engine import fp8, fp8_choice, fused
from honed.engine.fp8 import FP8_DTYPE, convert_lora_bases_to_fp8
from honed.engine.fp8_choice import BaseTimes, choose, estimated_step_ms, fp8_freed_bytes, layer_bases
from honed.engine.fused import FusedPath
from honed.engine.memory import MemoryPlan
from honed.engine.settings import EngineSettings
from honed.testing.lora import lora_model

SLOW_FP8 = {"bf16": BaseTimes(forward_ms=3.0, dx_ms=3.0, rebuild_forward_ms=2.0, o_forward_ms=0.4),
            "fp8": BaseTimes(forward_ms=4.0, dx_ms=5.0, rebuild_forward_ms=2.5, o_forward_ms=0.5)}
FAST_FP8 = {"bf16": SLOW_FP8["bf16"], "fp8": BaseTimes(forward_ms=2.0, dx_ms=2.0, rebuild_forward_ms=1.0, o_forward_ms=0.2)}


def plan(recomputed: int, keep_o: bool = True) -> MemoryPlan:
    return MemoryPlan("checkpoint" if recomputed else "none", recomputed, 0.0, keep_o)


def test_a_step_counts_every_layer_s_forward_and_dx_and_each_rebuild_s_forwards_and_attention():
    times = BaseTimes(forward_ms=3.0, dx_ms=5.0, rebuild_forward_ms=2.0, o_forward_ms=0.5)
    assert estimated_step_ms(10, plan(0), times, attention_ms=1.5) == 80.0  # 10 × (3 + 5)
    assert estimated_step_ms(10, plan(4), times, attention_ms=1.5) == 80.0 + 4 * (2.0 + 1.5)
    # Without o_proj's output kept (host memory short), its forward runs again in each rebuild too.
    assert estimated_step_ms(10, plan(4, keep_o=False), times, attention_ms=1.5) == 80.0 + 4 * (2.0 + 0.5 + 1.5)


def test_bf16_is_kept_when_fp8_matmuls_are_slower_and_the_memory_buys_nothing():
    choice = choose(32, {"bf16": plan(0), "fp8": plan(0)}, SLOW_FP8, attention_ms=1.0)
    assert choice.precision == "bf16"
    assert choice.step_ms == {"bf16": 192.0, "fp8": 288.0}
    assert choice.recomputed_layers == {"bf16": 0, "fp8": 0}


def test_fp8_is_chosen_where_the_layers_it_spares_from_recompute_outweigh_its_slower_matmuls():
    # bf16: 32 × 6 + 24 × (2 + 8) = 432; fp8: 32 × 9 + 4 × (2.5 + 8) = 330.
    choice = choose(32, {"bf16": plan(24), "fp8": plan(4)}, SLOW_FP8, attention_ms=8.0)
    assert (choice.precision, choice.step_ms) == ("fp8", {"bf16": 432.0, "fp8": 330.0})
    # The same plans with free attention: what fp8 spares is too little (bf16 192 + 24 × 2 = 240, fp8 288 + 4 × 2.5 = 298).
    assert choose(32, {"bf16": plan(24), "fp8": plan(4)}, SLOW_FP8, attention_ms=0.0).precision == "bf16"


def test_faster_fp8_matmuls_win_on_their_own_and_a_tie_keeps_what_was_asked():
    assert choose(32, {"bf16": plan(0), "fp8": plan(0)}, FAST_FP8, attention_ms=1.0).precision == "fp8"
    same = {"bf16": SLOW_FP8["bf16"], "fp8": SLOW_FP8["bf16"]}
    assert choose(32, {"bf16": plan(3), "fp8": plan(3)}, same, attention_ms=1.0).precision == "fp8"


def tiny_llama(tiny_model_dir, dtype=torch.bfloat16):
    return lora_model(tiny_model_dir("llama3"), dtype=dtype)


def test_the_layer_is_measured_in_the_sets_fp8_stores_with_each_set_s_part_in_a_lean_rebuild(tiny_model_dir):
    model = tiny_llama(tiny_model_dir)
    layer = model.get_base_model().model.layers[0]
    names = {id(module): name for name, module in layer.named_modules()}
    found = sorted((role, [names[id(m)] for m in members]) for role, members in layer_bases(layer))
    assert found == [("not rebuilt", ["mlp.down_proj"]), ("o", ["self_attn.o_proj"]),
                     ("rebuilt", ["mlp.gate_proj", "mlp.up_proj"]), ("rebuilt", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"])]
    convert_lora_bases_to_fp8(model)
    assert layer_bases(layer) == []  # already fp8: nothing left to convert or measure


def test_siblings_that_are_not_all_lora_projections_are_measured_alone_and_rebuilt(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from honed.config import LoraSettings
    from honed.model.adapters import apply_lora

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama3"), dtype=torch.bfloat16)
    model = apply_lora(base, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    layer = model.get_base_model().model.layers[0]
    names = {id(module): name for name, module in layer.named_modules()}
    found = sorted((role, [names[id(m)] for m in members]) for role, members in layer_bases(layer))
    assert found == [("not rebuilt", ["mlp.down_proj"]), ("rebuilt", ["self_attn.q_proj"]), ("rebuilt", ["self_attn.v_proj"])]


def test_the_bytes_fp8_frees_are_what_conversion_frees(tiny_model_dir):
    model = tiny_llama(tiny_model_dir)
    bases = [m.base_layer for m in model.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")]

    def held() -> int:  # weights and fp8 scales as stored
        scales = [getattr(b, fp8.SCALE_NAME, None) for b in bases]
        return sum(b.weight.numel() * b.weight.element_size() for b in bases) + sum(s.numel() * s.element_size() for s in scales if s is not None)

    before, predicted = held(), fp8_freed_bytes(model)
    convert_lora_bases_to_fp8(model)
    assert predicted == before - held() > 0


class Probe:
    """Stands in for the GPU measurements; counts calls."""

    def __init__(self, times):
        self.times, self.calls = times, 0

    def base_times(self, layer, tokens, device):
        self.calls += 1
        return self.times

    def attention_ms(self, config, tokens, max_seq_length, device):
        return 1.0


@pytest.fixture
def probe(monkeypatch):
    """fp8 allowed on this CPU (its matmuls run as their plain-torch reference) and the measurements given."""
    monkeypatch.setattr(fused, "check_fp8_device", lambda device: None)
    monkeypatch.setattr(fp8, "check_fp8_device", lambda device: None)
    monkeypatch.setattr(fp8_choice, "ENABLED", True)

    def install(times):
        p = Probe(times)
        monkeypatch.setattr(fp8_choice, "measure_base_times", p.base_times)
        monkeypatch.setattr(fp8_choice, "measure_attention_ms", p.attention_ms)
        return p

    return install


def bases_dtypes(model) -> set:
    return {m.base_layer.weight.dtype for m in model.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")}


def prepared(model, **settings):
    path = FusedPath(EngineSettings(torch.device("cpu"), precision="fp8", batch_size=2, max_seq_length=32, **settings))
    path.prepare(model)
    return path


def test_under_memory_auto_the_fused_path_keeps_bf16_bases_when_they_measure_faster(tiny_model_dir, probe):
    p = probe(SLOW_FP8)
    model = tiny_llama(tiny_model_dir)
    path = prepared(model)
    assert p.calls == 1
    assert bases_dtypes(model) == {torch.bfloat16}
    described = path.describe()["fp8_choice"]
    assert described["bases"] == "bf16"
    assert described["estimated_step_ms"] == {"bf16": 2 * 6.0, "fp8": 2 * 9.0}  # 2 layers, nothing recomputes on a CPU
    assert path.fp8_bases == "bf16"  # what a checkpoint records


def test_under_memory_auto_the_fused_path_converts_when_fp8_measures_faster(tiny_model_dir, probe):
    p = probe(FAST_FP8)
    model = tiny_llama(tiny_model_dir)
    path = prepared(model)
    assert p.calls == 1 and bases_dtypes(model) == {FP8_DTYPE}
    assert path.describe()["fp8_choice"]["bases"] == "fp8" and path.fp8_bases == "fp8"


@pytest.mark.parametrize("recorded, dtype", [("bf16", torch.bfloat16), ("fp8", FP8_DTYPE)])
def test_a_resumed_run_takes_the_bases_its_checkpoint_recorded_without_measuring(tiny_model_dir, probe, recorded, dtype):
    p = probe(FAST_FP8 if recorded == "bf16" else SLOW_FP8)  # the opposite of what was recorded, were it measured
    model = tiny_llama(tiny_model_dir)
    path = prepared(model, fp8_bases=recorded)
    assert p.calls == 0 and bases_dtypes(model) == {dtype} and path.fp8_bases == recorded


def test_a_measurement_that_fails_keeps_fp8_as_asked(tiny_model_dir, probe, monkeypatch, caplog):
    probe(FAST_FP8)

    def broken(*args):
        raise RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate")

    monkeypatch.setattr(fp8_choice, "measure_base_times", broken)
    model = tiny_llama(tiny_model_dir)
    with caplog.at_level("WARNING", logger="honed.engine.fused"):
        path = prepared(model)
    assert bases_dtypes(model) == {FP8_DTYPE} and path.fp8_bases == "fp8"
    assert "measuring bf16 against fp8 bases failed (CUBLAS_STATUS_ALLOC_FAILED" in caplog.text


def test_the_memory_fp8_frees_is_planned_with(tiny_model_dir):
    """Under a budget too small to keep every layer, the bytes fp8 frees let fewer layers recompute."""
    model = tiny_llama(tiny_model_dir)
    path = FusedPath(EngineSettings(torch.device("cpu"), precision="bf16", batch_size=2, max_seq_length=256, memory_budget_gib=1e-4))
    path.prepare(model)
    tight = path.memory_plan(model)
    roomy = path.memory_plan(model, extra_budget=1e9)
    assert tight.checkpointed == 2 and roomy.checkpointed == 0


@pytest.mark.parametrize("settings", [{"memory_budget_gib": 10.0}, {"memory": "checkpoint"}, {"gradient_checkpointing": True}])
def test_a_budget_or_a_fixed_memory_mode_keeps_fp8_as_asked_without_measuring(tiny_model_dir, probe, settings):
    p = probe(SLOW_FP8)
    model = tiny_llama(tiny_model_dir)
    path = prepared(model, **settings)
    assert p.calls == 0 and bases_dtypes(model) == {FP8_DTYPE}
    assert path.describe()["fp8_choice"] is None


def test_bf16_precision_never_measures(tiny_model_dir, probe):
    p = probe(FAST_FP8)
    model = tiny_llama(tiny_model_dir)
    FusedPath(EngineSettings(torch.device("cpu"), precision="bf16", batch_size=2, max_seq_length=32)).prepare(model)
    assert p.calls == 0 and bases_dtypes(model) == {torch.bfloat16}


def _rank_choice(rank: int, store_path: str, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    try:
        measured = "bf16" if rank == 0 else "fp8"  # the ranks' GPUs measured differently
        queue.put((rank, fp8_choice.agreed_across_ranks(measured, torch.device("cpu"))))
    finally:
        dist.destroy_process_group()


def test_every_rank_of_a_distributed_run_takes_rank_0_s_choice(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank_choice, args=(r, str(tmp_path / "store"), queue)) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(queue.get(timeout=5) for _ in procs) == [(0, "bf16"), (1, "bf16")]
    assert fp8_choice.agreed_across_ranks("fp8", torch.device("cpu")) == "fp8"  # no process group: its own
