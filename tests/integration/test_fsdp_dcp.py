"""FSDP2 and Distributed Checkpoint on CPU ranks (gloo, spawned processes): an FSDP run must train
exactly like one process over the same global batch, and a checkpoint written by 2 ranks must resume
on 1 and on 4 ranks where the uninterrupted run goes on."""

from __future__ import annotations

import pytest
import torch

from honed.testing.fsdp_worker import make_batches, resume_and_step, run_and_save, spawn

STEPS, GLOBAL_BATCH, SEQ = 3, 4, 16


def _close(got: dict, want: dict, atol: float) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=atol, rtol=0, msg=lambda m: f"{name}: {m}")


def _close_optim(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want) and want
    for name, state in want.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(got[name][key], state[key], atol=1e-6, rtol=1e-4, msg=lambda m: f"{name}.{key}: {m}")


@pytest.fixture(scope="module")
def batches(tiny_model_dir):
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(tiny_model_dir("qwen2")).vocab_size
    return make_batches(vocab, steps=STEPS, global_batch=GLOBAL_BATCH, seq=SEQ)


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, batches, tmp_path_factory):
    """The reference: the same steps in this process, without a process group or FSDP."""
    out = tmp_path_factory.mktemp("ref") / "ref.pt"
    run_and_save(0, 1, tiny_model_dir("qwen2"), batches, None, out, shard=False)
    return torch.load(out)


@pytest.fixture(scope="module")
def two_ranks(tiny_model_dir, batches, tmp_path_factory):
    """2 ranks under FSDP2 with a sharded checkpoint saved before the last step."""
    tmp = tmp_path_factory.mktemp("fsdp2")
    ckpt, out = tmp / "checkpoint-000002", tmp / "result.pt"
    spawn(run_and_save, 2, tiny_model_dir("qwen2"), batches, ckpt, out)
    return torch.load(out), ckpt


def test_fsdp_full_finetuning_on_two_ranks_matches_one_process(one_process, two_ranks):
    fsdp, _ = two_ranks
    torch.testing.assert_close(fsdp["losses"], one_process["losses"], atol=1e-5, rtol=0)
    assert len(set(round(x, 3) for x in fsdp["losses"])) == STEPS  # the steps did change the model
    _close(fsdp["final"], one_process["final"], atol=1e-4)  # Adam steps of 1e-2: a wrong gradient is far off
    assert not torch.equal(fsdp["final"]["model.layers.0.mlp.down_proj.weight"], fsdp["at_save"]["model.layers.0.mlp.down_proj.weight"])
    # The export for the final save: whole tensors on rank 0 (the tied LM head under its own name too).
    _close({k: fsdp["export"][k] for k in fsdp["final"]}, fsdp["final"], atol=0)
    assert torch.equal(fsdp["export"]["lm_head.weight"], fsdp["final"]["model.embed_tokens.weight"])


def test_fsdp_lora_with_gradient_checkpointing_matches_one_process(tiny_model_dir, batches, tmp_path):
    folder = tiny_model_dir("qwen2")
    run_and_save(0, 1, folder, batches, None, tmp_path / "ref.pt", lora=True, checkpointing=True, shard=False)
    spawn(run_and_save, 2, folder, batches, None, tmp_path / "fsdp.pt", lora=True, checkpointing=True)
    ref, fsdp = torch.load(tmp_path / "ref.pt"), torch.load(tmp_path / "fsdp.pt")
    assert all("lora_" in name for name in fsdp["final"]) and len(fsdp["final"]) == 28  # 2 layers x 7 projections x A, B
    torch.testing.assert_close(fsdp["losses"], ref["losses"], atol=1e-5, rtol=0)
    _close(fsdp["final"], ref["final"], atol=1e-5)
    _close(fsdp["export"], fsdp["final"], atol=0)  # the adapter weights alone, whole, on rank 0
    moved = [n for n in ref["final"] if not torch.equal(ref["final"][n], ref["at_save"][n])]
    assert len(moved) == 28


def test_two_rank_checkpoint_keeps_each_ranks_random_state(two_ranks):
    _, ckpt = two_ranks
    blob = torch.load(ckpt / "extra.pt", weights_only=True)
    assert blob["world_size"] == 2 and blob["extra"]["step"] == 2 and "rng" not in blob["extra"]
    for rank in (0, 1):
        torch.testing.assert_close(blob["rng_by_rank"][rank]["torch"], torch.manual_seed(100 + rank).get_state())
    assert sorted(p.name for p in ckpt.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "extra.pt"]
    assert not [p for p in ckpt.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def _check_resumed(resumed: dict, fsdp: dict, one_process: dict) -> None:
    _close(resumed["loaded"], fsdp["at_save"], atol=0)
    _close_optim(resumed["optim_loaded"], fsdp["optim_at_save"])
    assert resumed["extra"]["step"] == 2 and resumed["extra"]["data_position"] == 8
    assert resumed["extra"]["saved_world_size"] == 2 and resumed["extra"]["rng"] is None
    assert resumed["loss"] == pytest.approx(fsdp["losses"][-1], abs=1e-5)
    _close(resumed["final"], fsdp["final"], atol=1e-4)
    _close(resumed["final"], one_process["final"], atol=1e-4)


def test_two_rank_checkpoint_resumes_in_one_process_without_process_group(tiny_model_dir, two_ranks, one_process, batches, tmp_path):
    fsdp, ckpt = two_ranks
    resume_and_step(0, 1, tiny_model_dir("qwen2"), batches[-1], ckpt, tmp_path / "resumed.pt", shard=False)
    _check_resumed(torch.load(tmp_path / "resumed.pt"), fsdp, one_process)


def test_two_rank_checkpoint_resumes_on_four_ranks(tiny_model_dir, two_ranks, one_process, batches, tmp_path):
    fsdp, ckpt = two_ranks
    spawn(resume_and_step, 4, tiny_model_dir("qwen2"), batches[-1], ckpt, tmp_path / "resumed.pt")
    _check_resumed(torch.load(tmp_path / "resumed.pt"), fsdp, one_process)
