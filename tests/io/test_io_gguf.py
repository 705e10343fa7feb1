"""GGUF reader vs files written by the `gguf` package; dequantization vs gguf.quants."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from sdcpp.errors import CorruptFileError, UnsupportedFormatError
from sdcpp.io import open_source, read_tensors
from sdcpp.io.gguf_reader import read_gguf
from sdcpp.io.quants import QUANT_BLOCKS, dequantize_blocks
from sdcpp_io_helpers import expect_error

QUANTIZED = [QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1]


def _write(path, tensors: dict, *, alignment=None, kv=None):
    """tensors: name -> (float array, ggml type). Returns what was stored per tensor."""
    w = gguf.GGUFWriter(str(path), arch="sdcpp-test")
    if alignment:
        w.add_custom_alignment(alignment)
    for k, v in (kv or {}).items():
        if isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        elif isinstance(v, bool):
            w.add_bool(k, v)
        elif isinstance(v, int):
            w.add_uint32(k, v)
        else:
            w.add_array(k, v)
    stored = {}
    for name, (arr, qtype) in tensors.items():
        if qtype in (QT.F32, QT.F16):
            data = arr.astype(np.float32 if qtype == QT.F32 else np.float16)
            w.add_tensor(name, data)
        else:
            data = gguf.quants.quantize(arr.astype(np.float32), qtype)
            w.add_tensor(name, data, raw_dtype=qtype)
        stored[name] = data
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def test_plain_and_quantized_tensors(tmp_path):
    rng = np.random.default_rng(0)
    src = {
        "f32": (rng.standard_normal((3, 5, 7)).astype(np.float32), QT.F32),
        "f16": (rng.standard_normal((4, 6)).astype(np.float32), QT.F16),
        **{f"q.{q.name}": (rng.standard_normal((6, 64)).astype(np.float32) * 3, q) for q in QUANTIZED},
        "conv.q8": (rng.standard_normal((4, 2, 3, 32)).astype(np.float32), QT.Q8_0),
    }
    path = tmp_path / "m.gguf"
    stored = _write(path, src, kv={"general.name": "tiny", "x.count": 7, "x.scale": 0.1, "x.flag": True,
                                  "x.list": [1, 2, 3], "x.words": ["a", "b"]})
    recs, meta = read_gguf(path)
    assert set(recs) == set(src)
    for name, (arr, qtype) in src.items():
        rec = recs[name]
        assert rec.shape == arr.shape, name
        got = rec.numpy()
        if qtype in (QT.F32, QT.F16):
            assert rec.dtype == qtype.name and got.dtype == stored[name].dtype
            assert np.array_equal(got.view(np.uint8), stored[name].view(np.uint8))
        else:
            assert rec.dtype == qtype.name and got.dtype == np.float32
            want = gguf.quants.dequantize(stored[name], qtype)
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name
            assert np.abs(got - arr).max() <= np.abs(arr).max() / 6      # sanity: it is the data
    assert meta["general.name"] == "tiny" and meta["general.architecture"] == "sdcpp-test"
    assert meta["x.count"] == "7" and meta["x.scale"] == "0.1" and meta["x.flag"] == "true"
    assert json.loads(meta["x.list"]) == [1, 2, 3] and json.loads(meta["x.words"]) == ["a", "b"]
    # a row slice of a quantized record dequantizes the right blocks
    q8 = recs["q.Q8_0"]
    rows = type(q8)(q8.name, q8.dtype, (2, 64), q8.strides, q8.file, q8.offset + 2 * QUANT_BLOCKS["Q8_0"][1] * 2)
    assert np.array_equal(rows.numpy(), q8.numpy()[2:4])
    src_meta = open_source(path)
    assert src_meta.layout == "single_file" and src_meta.metadata["general.name"] == "tiny"


def test_custom_alignment(tmp_path):
    src = {"a": (np.arange(7, dtype=np.float32), QT.F32), "b": (np.ones((2, 32), np.float32), QT.Q4_0)}
    path = tmp_path / "aligned.gguf"
    _write(path, src, alignment=256)
    recs, meta = read_gguf(path)
    assert meta["general.alignment"] == "256"
    assert all(r.offset % 256 == 0 for r in recs.values())
    assert np.array_equal(recs["a"].numpy(), src["a"][0])


@pytest.mark.parametrize("qtype", [QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K, *QUANTIZED])
def test_block_dequantizers_match_gguf_on_random_blocks(qtype):
    block, size = QUANT_BLOCKS[qtype.name]
    rng = np.random.default_rng(int(qtype))
    blocks = rng.integers(0, 256, size=(64, size), dtype=np.uint8)
    # keep every f16 scale finite and moderate so the comparison is meaningful
    layout = {"Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
              "Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2]}[qtype.name]
    for pos in layout:
        blocks[:, pos:pos + 2] = rng.uniform(-2, 2, size=(64, 1)).astype(np.float16).view(np.uint8)
    got = dequantize_blocks(qtype.name, blocks)
    want = gguf.quants.dequantize(blocks, qtype).reshape(64, block)
    assert got.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_truncated_and_bad_gguf(tmp_path):
    src = {"a": (np.arange(64, dtype=np.float32), QT.F32), "w": (np.ones((4, 64), np.float32), QT.Q8_0)}
    path = tmp_path / "m.gguf"
    _write(path, src)
    data = path.read_bytes()

    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:-40])       # past the end padding, into the last tensor
    expect_error(CorruptFileError, lambda: read_tensors(cut), file=cut, tensor="w", match="truncated")

    head = tmp_path / "head.gguf"
    head.write_bytes(data[:60])
    expect_error(CorruptFileError, lambda: read_tensors(head), file=head, match="truncated")

    tiny = tmp_path / "tiny.gguf"
    tiny.write_bytes(b"GGUF\x03\x00")
    expect_error(CorruptFileError, lambda: read_tensors(tiny), file=tiny)

    v1 = tmp_path / "v1.gguf"
    v1.write_bytes(data[:4] + (1).to_bytes(4, "little") + data[8:])
    expect_error(UnsupportedFormatError, lambda: read_tensors(v1), file=v1, match="version 1")

    huge = tmp_path / "huge.gguf"
    huge.write_bytes(data[:8] + (10 ** 15).to_bytes(8, "little") + data[16:])
    expect_error(CorruptFileError, lambda: read_tensors(huge), file=huge)


def test_unknown_ggml_type_names_tensor(tmp_path):
    path = tmp_path / "t.gguf"
    _write(path, {"x": (np.zeros(4, np.float32), QT.F32)})
    data = bytearray(path.read_bytes())
    # tensor info: name, n_dims=1, ne0=4, then the type id (u32) -> 99
    pos = data.index(b"x\x01\x00\x00\x00") + 1 + 4 + 8
    assert int.from_bytes(data[pos:pos + 4], "little") == 0
    data[pos:pos + 4] = (99).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    expect_error(UnsupportedFormatError, lambda: read_tensors(path), file=path, tensor="x")
