"""Shared pytest setup: the model-fixture factory (tests/fixtures) as session fixtures.

    def test_something(model_fixtures):
        fx = model_fixtures.get("sdxl")          # torch models + canonical reference tensors
        path = fx.path("ldm")                    # file written once per session (lazily)
        expected = fx.expected("ldm")            # {canonical name: numpy array}

Families: ``fixtures.FAMILIES`` (sd1, sd2, sdxl, ssd-1b, vega, bk-sdm-base, bk-sdm-small,
bk-sdm-tiny); formats: ``fixtures.FORMATS``; made-up layouts:
``model_fixtures.get("my-layout", fixtures.custom_spec("my-layout", {"layers_per_block": 1}))``.
``fx.unet`` / ``fx.vae`` / ``fx.text_encoders`` / ``fx.pipeline()`` are the live torch objects
(eval mode) for parity tests; ``fx.ldm_state_dict()`` the single-file dict for variants. Files go to one temporary folder per test run;
set ``SDCPP_FIXTURE_CACHE=<dir>`` to keep them between runs (a sub-folder per fixture-code
version, so edits to tests/fixtures never reuse stale files).

torch/diffusers are imported only when a test asks for the factory.
"""
from __future__ import annotations

import os

# torch (the reference) and ggml (ours) each bring an OpenMP runtime into this one process; with
# the default active wait policy the idle threads of one spin while the other computes, which
# made the tiny fixtures up to 9x slower on 2 cores. Passive waiting changes no result.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import shutil
import sys
from pathlib import Path

import pytest

# tests/ holds the shared `fixtures` package. The sdcpp under test is the installed one (its
# native extension is built by the install); for an in-tree build use PYTHONPATH=python.
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


@pytest.fixture(scope="session")
def model_fixtures(tmp_path_factory):
    """The session's ``fixtures.FixtureFactory``."""
    from fixtures import FixtureFactory, fixture_version

    cache = os.environ.get("SDCPP_FIXTURE_CACHE")
    if cache:
        root = Path(cache).expanduser().resolve() / fixture_version()
        root.mkdir(parents=True, exist_ok=True)
        yield FixtureFactory(root)
        return
    root = tmp_path_factory.mktemp("sdcpp-models")
    yield FixtureFactory(root)
    shutil.rmtree(root, ignore_errors=True)      # ~1-2 GB when every family x format was written


@pytest.fixture(autouse=True)
def _device_runs_every_node(request):
    """On a non-CPU test device, a device-suite test fails if ggml's scheduler placed any graph
    node off the device (a silent CPU fallback): issue 10, "every op of every graph runs on
    that device"."""
    from fixtures.devices import ON_CPU

    if ON_CPU or request.node.get_closest_marker("device") is None:
        yield
        return
    from sdcpp import _core

    before = _core.off_device_nodes()
    yield
    moved = _core.off_device_nodes() - before
    assert moved == 0, f"{moved} graph node(s) ran on the CPU fallback instead of {os.environ.get('SDCPP_TEST_DEVICE')}"
    _assert_mappings_left()


def _assert_mappings_left():
    """Fail a device test while the process still has memory mappings to spare. lavapipe maps
    each ggml-vulkan descriptor set (one per graph node) as its own memfd; at Linux's
    vm.max_map_count it segfaults with no message. Past 80 % of the limit, this names the cause
    (too many models alive in one process: fixtures.devices.RecentModels) instead."""
    try:
        limit = int(Path("/proc/sys/vm/max_map_count").read_text())
        with open("/proc/self/maps", "rb") as f:
            used = sum(1 for _ in f)
    except OSError:
        return                                    # not Linux
    assert used <= 0.8 * limit, (f"{used} memory mappings in this test process, near vm.max_map_count "
                                 f"({limit}): too many models alive at once")
