"""record_to_numpy: exact conversions, strided views, bounds checks, read-only maps."""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sdcpp.errors import CorruptFileError, UnsupportedFormatError
from sdcpp.io import TensorRecord, read_tensors, record_to_numpy
from sdcpp_io_helpers import assert_bits_equal, expect_error


@pytest.fixture
def every_byte_file(tmp_path):
    """Every bit pattern of the 1- and 2-byte float formats, written by safetensors."""
    b8 = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    b16 = torch.arange(65536, dtype=torch.int32).to(torch.int16)
    tensors = {
        "e4m3": b8.clone().view(torch.float8_e4m3fn),
        "e5m2": b8.clone().view(torch.float8_e5m2),
        "bf16": b16.clone().view(torch.bfloat16),
        "f16": b16.clone().view(torch.float16),
    }
    path = tmp_path / "all.safetensors"
    save_file(tensors, str(path))
    return path, tensors


def test_every_fp8_bf16_f16_value_converts_exactly(every_byte_file):
    path, tensors = every_byte_file
    recs = read_tensors(path)
    for name, t in tensors.items():
        assert_bits_equal(recs[name].numpy(), t)
    e4 = recs["e4m3"].numpy()
    assert np.isnan(e4[0x7F]) and np.isnan(e4[0xFF]) and not np.isinf(e4).any()   # e4m3fn: no inf
    assert e4[0x7E] == 448 and e4[0x01] == 2.0 ** -9 and np.signbit(e4[0x80])
    e5 = recs["e5m2"].numpy()
    assert np.isinf(e5[0x7C]) and e5[0x7B] == 57344
    bf = recs["bf16"].numpy()
    assert bf.dtype == np.float32
    # bf16 -> f32 keeps every bit, NaN payloads included
    assert np.array_equal(bf.view(np.uint32), np.arange(65536, dtype=np.uint32) << 16)


def _float_record(tmp_path, arr: np.ndarray, name="t") -> TensorRecord:
    path = tmp_path / f"{name}.safetensors"
    save_file({name: torch.from_numpy(arr)}, str(path))
    return read_tensors(path)[name]


def test_views_are_readonly_zero_copy_and_leave_the_file_alone(tmp_path):
    arr = np.arange(24, dtype=np.float32).reshape(4, 6)
    rec = _float_record(tmp_path, arr)
    before = rec.file.read_bytes()
    out = rec.numpy()
    assert np.array_equal(out, arr) and not out.flags.writeable
    with pytest.raises(ValueError):
        out[0, 0] = 1
    assert rec.file.read_bytes() == before


def test_record_views_match_numpy(tmp_path):
    arr = np.arange(2 * 3 * 5, dtype=np.float32).reshape(6, 5)
    rec = _float_record(tmp_path, arr)
    assert np.array_equal(rec.select_rows(2, 5).numpy(), arr[2:5])
    assert np.array_equal(rec.transposed().numpy(), arr.T)
    assert np.array_equal(rec.transposed().select_rows(1, 3).numpy(), arr.T[1:3])
    assert np.array_equal(rec.unsqueezed_to(4).numpy(), arr[:, :, None, None])
    assert np.array_equal(rec.unsqueezed_to(4).squeezed_to(2).numpy(), arr)
    strided = replace(rec, shape=(3, 2), strides=(10, 2), offset=rec.offset + 4)   # arr[::2, 1::2]
    assert np.array_equal(strided.numpy(), arr[::2, 1::2])
    bcast = replace(rec, shape=(4, 5), strides=(0, 1))
    assert np.array_equal(bcast.numpy(), np.broadcast_to(arr[0], (4, 5)))


def test_bf16_and_fp8_strided_views_convert(tmp_path):
    t = torch.randn(6, 4).to(torch.bfloat16)
    path = tmp_path / "b.safetensors"
    save_file({"b": t, "f8": torch.randn(6, 4).to(torch.float8_e4m3fn)}, str(path))
    recs = read_tensors(path)
    assert_bits_equal(recs["b"].transposed().numpy(), t.t())
    assert_bits_equal(recs["b"].select_rows(1, 4).numpy(), t[1:4])
    assert recs["f8"].transposed().numpy().dtype == np.float16


def test_out_of_file_views_raise_corrupt_naming_file_and_tensor(tmp_path):
    rec = _float_record(tmp_path, np.zeros((4, 4), np.float32), name="w")
    size = os.path.getsize(rec.file)
    past = replace(rec, offset=size - 8)
    expect_error(CorruptFileError, past.numpy, file=rec.file, tensor="w", match="outside the file")
    wide = replace(rec, shape=(40, 4), strides=(4, 1))
    expect_error(CorruptFileError, wide.numpy, file=rec.file, tensor="w")
    expect_error(CorruptFileError, replace(rec, shape=(4,), strides=(-2,), offset=4).numpy, tensor="w")
    assert np.array_equal(replace(rec, shape=(2,), strides=(-1,), offset=rec.offset + 4).numpy(), [0, 0])
    expect_error(CorruptFileError, replace(rec, shape=(2, 2), strides=(1,)).numpy, tensor="w")


def test_empty_tensor_and_unknown_dtype(tmp_path):
    rec = _float_record(tmp_path, np.zeros((0, 3), np.float32))
    assert rec.numpy().shape == (0, 3)
    expect_error(UnsupportedFormatError, lambda: record_to_numpy(replace(rec, dtype="C64")), tensor="t")


def test_rewritten_file_is_mapped_afresh(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"t": torch.zeros(4)}, str(path))
    first = read_tensors(path)["t"].numpy()
    tmp = tmp_path / "new.safetensors"
    save_file({"t": torch.ones(4)}, str(tmp))
    os.replace(tmp, path)
    assert np.array_equal(read_tensors(path)["t"].numpy(), np.ones(4, np.float32))
    assert np.array_equal(first, np.zeros(4, np.float32))   # old arrays keep their old map


def test_released_pages_read_back_the_same_bytes(tmp_path):
    """release_pages (madvise DONTNEED after a tensor is copied into a store) only drops our
    mapping: the bytes read again are the same, and a store built from the records (which
    releases every record as it goes) holds exactly the file's values."""
    from sdcpp.engine.weights import build_store, open_device
    from sdcpp.io.mmap_view import release_pages

    g = torch.Generator().manual_seed(0)
    sd = {f"t{i}": torch.randn(300 + i, 257, generator=g).to(torch.float16) for i in range(6)}
    sd["odd"] = torch.randn(3, 5, generator=g)
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    recs = read_tensors(path)
    before = {k: np.array(r.numpy()) for k, r in recs.items()}
    for r in recs.values():
        release_pages(r)
        release_pages(r.transposed() if len(r.shape) == 2 else r)
    for k, r in recs.items():
        assert np.array_equal(r.numpy().view(np.uint8), before[k].view(np.uint8))
    store = build_store(open_device("cpu", 1), recs, "f16",
                        type_of=lambda name, shape, wt: "f16" if name != "odd" else "f32")
    for k in recs:
        assert np.array_equal(store.get(k), before[k].astype(np.float32))
        assert np.array_equal(recs[k].numpy().view(np.uint8), before[k].view(np.uint8))
    assert all(np.array_equal(recs[k].numpy(), sd[k].numpy()) for k in recs)
