"""benchmarks/packed_peers.py's pure parts (CPU): the layouts every stack gets, and the table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from honed.bench.data import bench_data, count_tokens, trained_tokens

SEQ = 640  # rows of several alpaca-like samples
SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "packed_peers.py"


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("packed_peers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data():
    return bench_data("alpaca", vocab_size=512, seq=SEQ, batch=3, warmup=1, steps=3)


def sample_lengths(micro_batches):
    return sorted(len(s.input_ids) for mb in micro_batches for row in mb for s in row)


@pytest.mark.parametrize("layout", ["packed", "padding-free", "grouped"])
def test_every_layout_carries_the_same_samples_and_trains_the_same_tokens(peers, data, layout):
    warm, timed = peers.layout_batches(data, layout, token_budget=3 * SEQ)
    lengths = data.timed_lengths()
    assert sum(count_tokens(b)[0] for b in timed) == sum(lengths)
    assert sum(trained_tokens(b) for b in timed) == sum(n - 1 for n in lengths)
    assert sum(count_tokens(b)[0] for b in warm) == sum(sample_lengths(data.warmup))
    for b in timed:
        assert "sample_index" not in peers.model_inputs(b)
        assert (b["input_ids"].shape[0] * b["input_ids"].shape[1]) <= 3 * SEQ
    if layout == "padding-free":
        for b, mb in zip(timed, data.timed):
            assert b["input_ids"].shape[0] == 1 and count_tokens(b)[0] == count_tokens(b)[1]
            assert b["packed_seq_lengths"].tolist() == [len(s.input_ids) for row in mb for s in row]
            assert b["packed_seq_lengths"].dtype == torch.int32
    if layout == "grouped":
        assert all("attention_mask" in b and "position_ids" not in b for b in timed)
    if layout == "packed":
        assert all("attention_mask" not in b and "position_ids" in b for b in timed)


def test_length_grouping_keeps_every_sample_within_the_token_budget(peers, data):
    groups = peers.length_grouped(data.timed, token_budget=3 * SEQ)
    assert sorted(len(s.input_ids) for g in groups for s in g) == sample_lengths(data.timed)
    widths = [len(g[0].input_ids) for g in groups]
    assert widths == sorted(widths, reverse=True)
    assert all(len(g) * max(len(s.input_ids) for s in g) <= 3 * SEQ for g in groups)


def test_no_layout_lets_a_sample_see_another(peers, data):
    """Each sample's logits in every layout equal its logits run alone: transformers' sdpa mask from
    position_ids (packed rows, the padding-free row) and the padded batches keep samples apart. The
    losses of a random-init model barely notice a leak (about 1e-4), so logits are compared."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=1024, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).eval()
    micro_batch = data.timed[0]
    assert max(len(r) for r in micro_batch) > 1  # else there is nothing to keep apart

    def logits_by_sample(batch) -> dict:
        inputs = {k: v for k, v in peers.model_inputs(batch).items() if k not in ("labels", *peers.HOST_KEYS)}
        with torch.no_grad():
            logits = model(**inputs, use_cache=False).logits  # a KV cache would turn off the packed mask
        found = {}
        for r, owners in enumerate(batch["sample_index"]):
            for owner in owners.unique().tolist():
                if owner >= 0:
                    at = (owners == owner).nonzero().flatten()
                    found[tuple(batch["input_ids"][r, at].tolist())] = logits[r, at]
        return found

    alone = {}
    for s in (s for row in micro_batch for s in row):
        alone.update(logits_by_sample({"input_ids": torch.tensor([s.input_ids]), "sample_index": torch.zeros(1, len(s.input_ids), dtype=torch.long)}))
    one_mb = type(data)(warmup=[], timed=[micro_batch], drawn=0)
    for layout in ("packed", "padding-free", "grouped"):
        _, batches = peers.layout_batches(one_mb, layout, token_budget=3 * SEQ)
        seen = {}
        for b in batches:
            seen.update(logits_by_sample(b))
        assert seen.keys() == alone.keys(), layout
        worst = max(float((seen[k] - alone[k]).abs().max()) for k in alone)
        assert worst < 1e-4, (layout, worst)
    # and the check can fail: the same packed rows with positions 0…L-1 let samples see each other
    packed = peers.packed_rows_batch(micro_batch)
    crossing = logits_by_sample(dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"])))
    assert max(float((crossing[k] - alone[k]).abs().max()) for k in alone) > 1e-2


def test_stack_commands_labels_and_results(peers):
    assert peers.stack_command("hf", ["--seq", "8"])[-4:] == ["--seq", "8", "--one", "hf"]
    assert peers.stack_command('cmd:python3 -m honed bench --memory "offload"', ["--seq", "8"]) == [
        "python3", "-m", "honed", "bench", "--memory", "offload", "--seq", "8"]
    with pytest.raises(SystemExit, match="unknown stack 'liger'"):
        peers.stack_command("liger", [])
    assert peers.stack_label("cmd:python3 -m honed bench", {"stack": "honed"}) == "honed"
    assert peers.parse_result("no result here") is None


def row(label, tokens, gib, **extra):
    return dict(label=label, layout="packed", effective_tokens_per_s=tokens, padding_pct=1.5, peak_alloc_gib=gib,
                loss_mean=12.3456, wall_s=30, data_sha="abc", **extra)


def test_the_table_gives_ratios_against_unsloth_and_flags_failures(peers):
    table = peers.format_table([row("hf", 20_000, 16.0), row("unsloth", 40_000, 4.0), row("honed", 50_000, 3.0),
                                dict(label="hf-flex", error="timeout 600s")])
    lines = table.splitlines()
    assert "tok/s ×unsloth" in lines[0]
    hf, unsloth, honed, flex = lines[1:5]
    assert "0.50×" in hf and "4.00×" in hf
    assert "1.00×" in unsloth
    assert "1.25×" in honed and "0.75×" in honed and "12.346" in honed
    assert "FAILED (timeout 600s)" in flex
    assert "same micro-batches (abc)" in lines[-1]


def test_the_table_warns_when_the_stacks_trained_on_different_data(peers):
    table = peers.format_table([row("hf", 1.0, 1.0), {**row("honed", 1.0, 1.0), "data_sha": "xyz"}])
    assert "WARNING" in table and "honed=xyz" in table
    assert "–" in table.splitlines()[1]  # no unsloth row: no ratio


def test_a_stack_is_a_subprocess_whose_result_line_joins_the_table(peers, tmp_path, capsys):
    import json
    import shlex
    import sys

    def fake_stack(name: str, body: str) -> str:
        script = tmp_path / f"{name}.py"
        script.write_text(body)
        return f"cmd:{shlex.quote(sys.executable)} {shlex.quote(str(script))}"

    result = {"stack": "fake", "effective_tokens_per_s": 10.0, "peak_alloc_gib": 1.0, "loss_mean": 2.0, "data_sha": "abc"}
    ok = fake_stack("ok", f"import sys\nassert sys.argv[1:] == ['--seq', '8']\nprint('log line')\nprint('RESULT ' + {json.dumps(result)!r})\n")
    row = peers.run_stack(ok, ["--seq", "8"], timeout=60)
    assert row["label"] == "fake" and row["effective_tokens_per_s"] == 10.0 and "wall_s" in row
    lacking = fake_stack("lacking", "print('RESULT {}')\n")
    assert peers.run_stack(lacking, [], timeout=60)["error"] == "RESULT lacks effective_tokens_per_s, peak_alloc_gib, loss_mean"
    crashing = fake_stack("crashing", "raise SystemExit(3)\n")
    assert peers.run_stack(crashing, [], timeout=60)["error"] == "rc=3"
    slow = fake_stack("slow", "import time\ntime.sleep(5)\n")
    assert peers.run_stack(slow, [], timeout=1)["error"] == "timeout 1s"
    assert "timed out after 1s" in capsys.readouterr().out
