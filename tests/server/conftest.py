"""Fixtures of the server tests: the tiny fixture model, a parity reference, apps over it."""
from __future__ import annotations

import contextlib

import pytest

import sdcpp
from sdcpp.server import Limits, ServerConfig, create_app   # imports no FastAPI: test modules skip without it


@pytest.fixture(scope="session")
def tiny_path(model_fixtures):
    return str(model_fixtures.get("bk-sdm-tiny").path("ldm"))


@pytest.fixture(scope="session")
def tiny_model(tiny_path):
    """The model the servers use (loaded once; each app gets its own queue and worker)."""
    return sdcpp.load(tiny_path, device="cpu", threads=2)


@pytest.fixture(scope="session")
def reference(tiny_path):
    """A separately loaded model: what a plain `sdcpp.load(...).txt2img` gives, the parity reference."""
    return sdcpp.load(tiny_path, device="cpu", threads=2)


@pytest.fixture
def make_client(tiny_path, tiny_model):
    """make_client(**config) -> a started TestClient over a fresh app (stopped after the test)."""
    from starlette.testclient import TestClient

    stack = contextlib.ExitStack()

    def make(*, model=None, limits=None, **kw):
        config = ServerConfig(model=kw.pop("path", tiny_path), limits=limits or Limits(), **kw)
        app = create_app(config, model=tiny_model if model is None else model)
        return stack.enter_context(TestClient(app))

    with stack:
        yield make

