"""Shared pytest settings of the engine tests.

`slow` tests (real-size models) are skipped unless selected with `-m slow` or SDCPP_SLOW=1.
"""
import os

# Before torch loads libgomp (sdcpp's extension then shares it): passive OpenMP waiting, else
# on a busy machine every ggml barrier can stall on a descheduled thread (see
# sdcpp.engine.weights.native).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real-size model tests (run with -m slow or SDCPP_SLOW=1)")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("SDCPP_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow or SDCPP_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
