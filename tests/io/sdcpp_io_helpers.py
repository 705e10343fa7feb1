"""Shared helpers of the tests/io suite (torch is the reference; tests only)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sdcpp.errors import CheckpointError

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def expected_numpy(t: torch.Tensor) -> np.ndarray:
    """What record.numpy() must return for a torch tensor (the project's conversions)."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.float().numpy()
    if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return t.to(torch.float16).numpy()
    return t.numpy()


def assert_bits_equal(got: np.ndarray, t: torch.Tensor) -> None:
    """Bit-exact equality with what torch holds (NaNs only need to be NaN in the same places)."""
    want = expected_numpy(t)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    if got.dtype.kind == "f":
        gnan, wnan = np.isnan(got), np.isnan(want)
        assert np.array_equal(gnan, wnan)
        u = _UINT[got.dtype.itemsize]
        gb = np.where(gnan, 0, np.ascontiguousarray(got).view(u))
        wb = np.where(wnan, 0, np.ascontiguousarray(want).view(u))
        assert np.array_equal(gb, wb)
    else:
        assert np.array_equal(got, want)


def assert_records_match(records, tensors: dict) -> None:
    assert set(records) == set(tensors), set(records) ^ set(tensors)
    for name, t in tensors.items():
        assert_bits_equal(records[name].numpy(), t)


def write_safetensors_raw(path: Path, header: dict, data: bytes, *, length: int | None = None) -> Path:
    """A safetensors file from an explicit header dict (for corrupt-input tests)."""
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h) if length is None else length) + h + data)
    return path


def expect_error(cls, fn, *, file=None, tensor=None, match=None) -> CheckpointError:
    with pytest.raises(cls, match=match) as ei:
        fn()
    e = ei.value
    if file is not None:
        assert e.file == str(file), (e.file, file)
        assert str(file) in str(e)
    if tensor is not None:
        assert e.tensor == tensor, (e.tensor, tensor)
        assert repr(tensor) in str(e)
    return e
