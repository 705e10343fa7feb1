"""safetensors reader: every dtype vs torch, sharded indexes, and each kind of corrupt header."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sdcpp.errors import CheckpointError, CorruptFileError, UnsupportedFormatError
from sdcpp.io import read_tensors
from sdcpp.io.safetensors_reader import read_safetensors
from sdcpp_io_helpers import assert_records_match, expect_error, write_safetensors_raw


def _all_dtypes() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=g) * 10
    return {
        "f64": x.double(), "f32": x, "f16": x.half(), "bf16": x.bfloat16(),
        "f8_e4m3": x.to(torch.float8_e4m3fn), "f8_e5m2": x.to(torch.float8_e5m2),
        "i64": (x * 1e6).long(), "i32": (x * 1e3).int(), "i16": x.short(), "i8": x.to(torch.int8),
        "u8": x.abs().to(torch.uint8), "bool": x > 0,
        "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4), "conv": torch.randn(4, 2, 3, 3, generator=g),
    }


def test_all_dtypes_match_torch_and_metadata(tmp_path):
    tensors = _all_dtypes()
    path = tmp_path / "all.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "modelspec.title": "tiny"})
    recs, meta = read_safetensors(path)
    assert meta == {"format": "pt", "modelspec.title": "tiny"}
    assert_records_match(recs, tensors)
    assert recs["f8_e4m3"].dtype == "F8_E4M3" and recs["bool"].dtype == "BOOL"
    assert recs["scalar"].shape == () and recs["conv"].strides == (18, 9, 3, 1)


def _write_shards(tmp_path, tensors, split, name="model.safetensors.index.json"):
    wmap = {}
    for i, names in enumerate(split):
        shard = f"model-{i + 1:05d}-of-{len(split):05d}.safetensors"
        save_file({n: tensors[n] for n in names}, str(tmp_path / shard))
        wmap.update({n: shard for n in names})
    index = tmp_path / name
    index.write_text(json.dumps({"metadata": {"total_size": 123}, "weight_map": wmap}))
    return index


def test_sharded_index_gives_union_of_shards(tmp_path):
    tensors = {f"layer.{i}.weight": torch.randn(4, 3) for i in range(5)}
    index = _write_shards(tmp_path, tensors, [["layer.0.weight", "layer.1.weight"],
                                              ["layer.2.weight", "layer.3.weight", "layer.4.weight"]])
    recs = read_tensors(index)
    assert_records_match(recs, tensors)
    assert recs["layer.0.weight"].file != recs["layer.4.weight"].file


def test_sharded_index_errors(tmp_path):
    tensors = {"a": torch.zeros(2), "b": torch.ones(2)}
    index = _write_shards(tmp_path, tensors, [["a"], ["b"]])
    wmap = json.loads(index.read_text())
    wmap["weight_map"]["c"] = wmap["weight_map"]["a"]           # names a tensor the shard lacks
    index.write_text(json.dumps(wmap))
    expect_error(CorruptFileError, lambda: read_tensors(index), file=tmp_path / wmap["weight_map"]["a"],
                 tensor="c")
    (tmp_path / wmap["weight_map"]["b"]).unlink()
    expect_error(CheckpointError, lambda: read_tensors(index), file=index, match="missing")
    index.write_text("{not json")
    expect_error(CorruptFileError, lambda: read_tensors(index), file=index, match="JSON")


GOOD = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}


@pytest.mark.parametrize("case", [
    "truncated", "header_past_eof", "invalid_json", "offsets_past_end", "size_mismatch",
    "unknown_dtype", "missing_key", "short_file", "absurd_length", "not_object", "bad_shape", "reversed_offsets",
])
def test_corrupt_inputs_raise_typed_errors(tmp_path, case):
    path = tmp_path / f"{case}.safetensors"
    tensor = "w"
    cls = CorruptFileError
    if case == "truncated":
        save_file({"a": torch.zeros(8), "w": torch.zeros(64)}, str(path))
        path.write_bytes(path.read_bytes()[:-10])
    elif case == "header_past_eof":
        write_safetensors_raw(path, GOOD, bytes(16), length=10_000)
        tensor = None
    elif case == "invalid_json":
        path.write_bytes((12).to_bytes(8, "little") + b'{"w": {"dty' + bytes(16))
        tensor = None
    elif case == "offsets_past_end":
        write_safetensors_raw(path, {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [16, 32]}}, bytes(16))
    elif case == "size_mismatch":
        write_safetensors_raw(path, {"w": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 16]}}, bytes(16))
    elif case == "unknown_dtype":
        write_safetensors_raw(path, {"w": {"dtype": "C64", "shape": [2], "data_offsets": [0, 16]}}, bytes(16))
        cls = UnsupportedFormatError
    elif case == "missing_key":
        write_safetensors_raw(path, {"w": {"dtype": "F32", "shape": [4]}}, bytes(16))
    elif case == "short_file":
        path.write_bytes(b"\x10\x00\x00")
        tensor = None
    elif case == "absurd_length":
        path.write_bytes((10 ** 12).to_bytes(8, "little") + b"{}")
        tensor = None
    elif case == "not_object":
        write_safetensors_raw(path, [1, 2], b"")
        tensor = None
    elif case == "bad_shape":
        write_safetensors_raw(path, {"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, bytes(16))
    elif case == "reversed_offsets":
        write_safetensors_raw(path, {"w": {"dtype": "F32", "shape": [0], "data_offsets": [16, 0]}}, bytes(16))
    expect_error(cls, lambda: read_tensors(path), file=path, tensor=tensor)


def test_duplicate_names_in_header_are_corrupt(tmp_path):
    path = tmp_path / "dup.safetensors"
    h = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, ' \
        b'"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    path.write_bytes(len(h).to_bytes(8, "little") + h + bytes(4))
    expect_error(CorruptFileError, lambda: read_tensors(path), file=path, match="duplicate")
