"""Shared pytest settings of the engine tests.

`slow` tests (real-size models) run by default, CI included (the whole suite takes minutes);
SDCPP_FAST=1 or `-m "not slow"` skips them during development.
"""
import os

# Before torch loads libgomp (sdcpp's extension then shares it): passive OpenMP waiting, else
# on a busy machine every ggml barrier can stall on a descheduled thread (see
# sdcpp.engine.weights.native).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real-size model tests (skipped with SDCPP_FAST=1)")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("SDCPP_FAST") != "1":
        return
    skip = pytest.mark.skip(reason="slow: SDCPP_FAST=1 skips real-size tests")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
