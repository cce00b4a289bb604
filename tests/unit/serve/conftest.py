"""Fixtures for the server tests (the fakes live in honed.testing.serve)."""

from __future__ import annotations

import pytest

from honed.testing.serve import CharBackend


@pytest.fixture
def backend():
    return CharBackend()


@pytest.fixture
def make_client(backend):
    """`make_client(**settings)` → a TestClient over the fake backend (use it in a `with` block)."""
    from fastapi.testclient import TestClient

    from honed.serve.app import create_app
    from honed.serve.settings import ServeSettings

    def make(gate=None, kb=None, **settings):
        app = create_app(backend, gate=gate, kb=kb, settings=ServeSettings(**settings))
        return TestClient(app, raise_server_exceptions=False)

    return make
