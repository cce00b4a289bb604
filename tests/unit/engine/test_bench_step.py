"""`honed bench` trains with `honed train`'s own parts: its step is recipe.train_step (checked on a CPU)."""

from __future__ import annotations

import argparse

import torch

from honed.bench.run import bench_config, bench_step, build_bench_run, default_models_dir
from honed.commands import bench


def parse(*argv):
    parser = argparse.ArgumentParser()
    bench.register(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


def reference_steps(model, batches, max_grad_norm):
    """The step `honed bench` ran before it called train_step: loss_sum / n, backward, clip, AdamW."""
    from honed.engine import PlainPath

    path, params = PlainPath(), [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    losses = []
    for batch in batches:
        loss_sum, n = path.loss_sum(model, batch)
        loss = loss_sum / n
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_bench_steps_are_honed_trains_step(tiny_model_dir):
    args = parse("--seq", "32", "--batch", "2", "--rank", "4", "--max-grad-norm", "0.5", "--precision", "bf16")
    cfg = bench_config(str(tiny_model_dir("llama3")), args)
    cfg.training.precision = "fp32"  # a CPU: no autocast, so the reference needs none
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": (ids := torch.randint(10, 200, (2, 32), generator=g)), "labels": ids} for _ in range(3)]

    run = build_bench_run(cfg, total_steps=3, device=torch.device("cpu"))
    assert run.path.name == "plain" and not run.measure_grad_norm and run.cfg.training.lr_scheduler == "constant"
    got = [float(bench_step(run, b)) for b in batches]
    assert run.optimizer.param_groups[0]["lr"] == 1e-4  # constant, as the peers' AdamW

    reference = build_bench_run(cfg, total_steps=3, device=torch.device("cpu")).model  # the same seed: the same LoRA init
    assert got == reference_steps(reference, batches, max_grad_norm=0.5)


def test_shapes_are_saved_under_the_work_dir_unless_bench_models_is_set(monkeypatch, tmp_path):
    monkeypatch.delenv("BENCH_MODELS", raising=False)
    assert default_models_dir(tmp_path) == str(tmp_path / "bench_models")
    assert default_models_dir() == "bench_models"  # the current folder, never /tmp
    monkeypatch.setenv("BENCH_MODELS", "/data/shapes")
    assert default_models_dir(tmp_path) == "/data/shapes"
    assert parse().models is None and parse().work_dir == "."
