"""The rendezvous of the multi-process test helpers (`honed.testing.fsdp_worker.rendezvous_store`):
the port is held from the moment it is handed out, and every rank, rank 0 included, joins it as a
client (rank 0 binding a port found free earlier could lose it to another process: EADDRINUSE)."""

from __future__ import annotations

import errno
import socket

import pytest
from torch.distributed.rendezvous import rendezvous

from honed.testing.fsdp_worker import rank_environment, rendezvous_store


def test_the_port_is_held_while_the_ranks_meet():
    with rendezvous_store() as port, socket.socket() as other:
        with pytest.raises(OSError) as err:
            other.bind(("127.0.0.1", port))
        assert err.value.errno == errno.EADDRINUSE


def test_every_rank_rank_0_included_joins_the_held_store_as_a_client(monkeypatch):
    with rendezvous_store() as port:
        stores = []
        for rank in (0, 1):
            for key, value in rank_environment(rank, 2, port).items():
                monkeypatch.setenv(key, value)
            store, got_rank, world_size = next(rendezvous("env://"))  # rank 0 would host a store of its own, and fail, without the flag
            assert (got_rank, world_size) == (rank, 2)
            stores.append(store)
        stores[0].set("from-rank-0", "hello")
        assert stores[1].get("from-rank-0") == b"hello"
