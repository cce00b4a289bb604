"""How much host memory offloading plans with: /proc/meminfo's MemAvailable, a container's memory cgroup
(v2 or v1) where it leaves less, and `training.host_memory_gib` over both. Fake files stand for /proc
and /sys/fs/cgroup."""

from __future__ import annotations

import pytest
import torch

from honed.config import config_from_dict
from honed.engine.fused import FusedPath
from honed.engine.memory import available_host_bytes, cgroup_room_bytes
from honed.engine.settings import resolve_engine_settings
from honed.errors import ConfigError

GiB = 2**30


def meminfo(tmp_path, available_gib: float):
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal:       {int(64 * GiB / 1024)} kB\nMemAvailable:   {int(available_gib * GiB / 1024)} kB\n")
    return path


def cgroup_v2(tmp_path, limit: str, current: int, inactive_file: int, own: str = "/"):
    root = tmp_path / "cgroup"
    folder = root / own.strip("/") if own.strip("/") else root
    folder.mkdir(parents=True)
    (folder / "memory.max").write_text(limit + "\n")
    (folder / "memory.current").write_text(f"{current}\n")
    (folder / "memory.stat").write_text(f"anon 123\nfile 456\ninactive_file {inactive_file}\nactive_file 7\n")
    own_file = tmp_path / "self_cgroup"
    own_file.write_text(f"0::{own}\n")
    return root, own_file


def test_without_a_cgroup_limit_it_is_memavailable(tmp_path):
    root, own = cgroup_v2(tmp_path, "max", current=5 * GiB, inactive_file=0)
    assert cgroup_room_bytes(root, own) is None
    assert available_host_bytes(meminfo(tmp_path, 40), root, own) == 40 * GiB


def test_a_container_limit_below_memavailable_wins_counting_reclaimable_cache_as_free(tmp_path):
    # limit 16 GiB, 10 GiB used of which 4 GiB inactive file cache: 16 - (10 - 4) = 10 GiB of room.
    root, own = cgroup_v2(tmp_path, str(16 * GiB), current=10 * GiB, inactive_file=4 * GiB)
    assert cgroup_room_bytes(root, own) == 10 * GiB
    assert available_host_bytes(meminfo(tmp_path, 100), root, own) == 10 * GiB
    assert available_host_bytes(meminfo(tmp_path, 6), root, own) == 6 * GiB  # the machine itself is shorter


def test_the_process_own_v2_group_is_read_before_the_root_s(tmp_path):
    root, own = cgroup_v2(tmp_path, str(8 * GiB), current=2 * GiB, inactive_file=0, own="/kubepods/pod1/ctr")
    assert cgroup_room_bytes(root, own) == 6 * GiB


def test_cgroup_v1_and_its_no_limit_number(tmp_path):
    v1 = tmp_path / "cgroup" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(f"{12 * GiB}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{5 * GiB}\n")
    (v1 / "memory.stat").write_text(f"cache 1\ntotal_inactive_file {1 * GiB}\n")
    missing = tmp_path / "no_self_cgroup"
    assert cgroup_room_bytes(tmp_path / "cgroup", missing) == 8 * GiB
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert cgroup_room_bytes(tmp_path / "cgroup", missing) is None


def test_nothing_readable_is_none(tmp_path):
    assert available_host_bytes(tmp_path / "none", tmp_path / "none", tmp_path / "none") is None


def cfg(**training):
    return config_from_dict({"model": {"name_or_path": "m"}, "data": {"train": ["a.jsonl"]}, "training": training})


def test_training_host_memory_gib_replaces_what_the_host_reports(monkeypatch):
    import honed.engine.fused as fused_module

    monkeypatch.setattr(fused_module, "available_host_bytes", lambda: 3.0 * GiB)
    assert FusedPath(resolve_engine_settings(cfg(), torch.device("cpu"))).host_bytes() == 3.0 * GiB
    assert FusedPath(resolve_engine_settings(cfg(host_memory_gib=96), torch.device("cpu"))).host_bytes() == 96 * GiB


def test_host_memory_gib_must_be_positive():
    with pytest.raises(ConfigError, match="host_memory_gib"):
        cfg(host_memory_gib=0)


def test_the_process_own_v1_memory_group_is_read_before_the_hierarchy_s_root(tmp_path):
    own_v1 = tmp_path / "cgroup" / "memory" / "process_api" / "abc"
    own_v1.mkdir(parents=True)
    (tmp_path / "cgroup" / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (own_v1 / "memory.limit_in_bytes").write_text(f"{20 * GiB}\n")
    (own_v1 / "memory.usage_in_bytes").write_text(f"{4 * GiB}\n")
    own = tmp_path / "self_cgroup"
    own.write_text("9:name=systemd:/\n4:memory:/process_api/abc\n3:cpuset:/\n0::/\n")
    assert cgroup_room_bytes(tmp_path / "cgroup", own) == 16 * GiB  # no memory.stat: no cache counted as free


def test_a_limit_on_a_parent_group_counts_when_the_process_own_group_has_none(tmp_path):
    # Slurm-like: the job's group is limited, the task's own group below it is not.
    root, own = cgroup_v2(tmp_path, "max", current=1 * GiB, inactive_file=0, own="/job_7/step_0/task_0")
    job = root / "job_7"
    (job / "memory.max").write_text(f"{32 * GiB}\n")
    (job / "memory.current").write_text(f"{30 * GiB}\n")
    assert cgroup_room_bytes(root, own) == 2 * GiB
    (job / "memory.max").write_text("max\n")
    assert cgroup_room_bytes(root, own) is None
