"""torch pickle reader (zip and legacy) vs torch.load, and refusal of hostile pickles."""
from __future__ import annotations

import argparse
import builtins
import os
import pickle
import sys
import types
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch

from sdcpp.errors import CorruptFileError, UnsafePickleError, UnsupportedFormatError
from sdcpp.io import read_tensors
from sdcpp_io_helpers import assert_records_match, expect_error

FORMATS = {"zip": {}, "legacy": {"_use_new_zipfile_serialization": False}}


def _save(obj, path, fmt):
    torch.save(obj, str(path), **FORMATS[fmt])
    return path


def _tricky_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(200, generator=g)
    m = torch.randn(6, 8, generator=g)
    conv = torch.randn(4, 3, 5, 5, generator=g)
    return {
        "plain": torch.randn(3, 4, generator=g),
        "t": m.t(),                                  # transposed: strides (1, 8)
        "transpose": conv.transpose(0, 1),
        "permute": conv.permute(2, 3, 1, 0),
        "step_slice": m[1::2, ::3],                   # storage offset + steps
        "narrow": conv[:, 1:3, 2:],
        "expanded": torch.arange(3.0).expand(4, 3),   # stride 0
        "share_a": base[10:30].view(4, 5),             # two views of one storage
        "share_b": base[50:70],
        "share_c": base[5:105:10],
        "f16": m.half().t(), "bf16": m.bfloat16()[::2], "f64": m.double(),
        "f8": m.to(torch.float8_e4m3fn).t(), "f8_e5m2": m.to(torch.float8_e5m2),
        "i64": torch.arange(10)[::3], "i32": torch.arange(6, dtype=torch.int32), "i16": torch.arange(4, dtype=torch.int16),
        "i8": torch.arange(-3, 3, dtype=torch.int8), "u8": torch.arange(5, dtype=torch.uint8), "bool": m > 0,
        "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3),
        "param": torch.nn.Parameter(torch.randn(2, 2, generator=g)),
    }


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_tricky_tensors_match_torch_load(tmp_path, fmt):
    tensors = _tricky_tensors()
    path = _save(tensors, tmp_path / f"{fmt}.pt", fmt)
    recs = read_tensors(path)
    assert_records_match(recs, tensors)
    # torch itself cannot load float8 tensors from a legacy file (torch.load raises
    # AttributeError: UntypedStorage has no dtype), so check torch.load's view without them.
    no_f8 = {k: v for k, v in tensors.items() if fmt == "zip" or not k.startswith("f8")}
    ref_path = _save(no_f8, tmp_path / f"{fmt}_ref.pt", fmt)
    reference = torch.load(str(ref_path), weights_only=True)
    assert not reference["t"].is_contiguous() and reference["expanded"].stride() == (0, 1)
    assert_records_match(read_tensors(ref_path), reference)
    assert recs["t"].strides == (1, 8) and recs["expanded"].strides == (0, 1)
    # views of one storage share the file bytes: offsets differ by the element offsets
    a, b, c = recs["share_a"], recs["share_b"], recs["share_c"]
    assert a.file == b.file and b.offset - a.offset == 40 * 4 and a.offset - c.offset == 5 * 4
    assert c.strides == (10,)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_nested_checkpoints_are_flattened(tmp_path, fmt):
    sd = OrderedDict([("model.diffusion_model.w", torch.randn(2, 3)), ("cond_stage_model.x", torch.ones(4))])
    ckpt = {"epoch": 6, "global_step": 1234, "pytorch-lightning_version": "1.4.2", "state_dict": sd,
            "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(2, 3)}}}]}
    recs = read_tensors(_save(ckpt, tmp_path / "ldm.ckpt", fmt))
    assert_records_match(recs, sd)                      # only the state_dict; no optimizer tensors

    wrapped = {"model": {"module": sd}}
    assert_records_match(read_tensors(_save(wrapped, tmp_path / "w.pt", fmt)), sd)

    nested = {"string_to_param": {"*": torch.randn(2, 4)}, "name": "emb", "step": 5,
              "layers": [torch.ones(1), torch.zeros(2)]}
    recs = read_tensors(_save(nested, tmp_path / "n.pt", fmt))
    assert_records_match(recs, {"string_to_param.*": nested["string_to_param"]["*"],
                                "layers.0": nested["layers"][0], "layers.1": nested["layers"][1]})

    bare = torch.randn(3)
    assert_records_match(read_tensors(_save(bare, tmp_path / "bare.pt", fmt)), {"": bare})


def _fake_lightning_class(monkeypatch):
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    for n in names:
        monkeypatch.setitem(sys.modules, n, types.ModuleType(n))
    ModelCheckpoint = type("ModelCheckpoint", (), {"__module__": names[-1]})
    sys.modules[names[-1]].ModelCheckpoint = ModelCheckpoint
    return ModelCheckpoint


def test_lightning_numpy_and_namespace_metadata_are_inert(tmp_path, monkeypatch):
    cls = _fake_lightning_class(monkeypatch)
    sd = {"w": torch.randn(3, 3), "b": torch.zeros(3)}
    ckpt = {"state_dict": sd, "callbacks": {cls: {"best_model_score": torch.tensor(0.5)}},
            "checkpoint_callback": cls(), "hparams": argparse.Namespace(lr=1e-4),
            "np_scalar": np.float64(1.5), "np_array": np.arange(3), "device": torch.device("cpu"),
            "dtype": torch.float16, "size": torch.Size([2, 3]), "blob": b"\x00\xffbytes", "s": {1, 2}}
    path = tmp_path / "pl.ckpt"
    torch.save(ckpt, str(path))
    assert_records_match(read_tensors(path), sd)


class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("how", ["os.system", "eval", "exec"])
def test_hostile_pickles_are_refused_and_never_run(tmp_path, fmt, how):
    marker = tmp_path / "pwned"
    cmd = f"touch {marker}"
    payload = {
        "os.system": (os.system, cmd),
        "eval": (builtins.eval, f"__import__('os').system({cmd!r})"),
        "exec": (builtins.exec, f"import os; os.system({cmd!r})"),
    }[how]
    obj = {"state_dict": {"w": torch.zeros(2)}, "evil": _Evil(*payload)}
    path = _save(obj, tmp_path / "evil.pt", fmt)
    assert not marker.exists()
    e = expect_error(UnsafePickleError, lambda: read_tensors(path), file=path)
    # protocol 2 writes builtins as __builtin__ (Python 2 names); the error names it as stored
    expected = {"os.system": [f"{os.system.__module__}.system"],
                "eval": ["builtins.eval", "__builtin__.eval"],
                "exec": ["builtins.exec", "__builtin__.exec"]}[how]
    assert any(g in str(e) for g in expected), str(e)
    assert not marker.exists()


def test_hostile_global_hidden_in_state_dict_value_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    torch.save({"w": torch.zeros(1), "x": _Evil(os.system, f"touch {marker}")}, str(path))
    expect_error(UnsafePickleError, lambda: read_tensors(path), file=path, match="system")
    assert not marker.exists()


def test_plain_pickle_without_torch_magic_is_not_loaded(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "plain.pt"
    path.write_bytes(pickle.dumps(_Evil(os.system, f"touch {marker}"), protocol=2))
    with pytest.raises((UnsafePickleError, UnsupportedFormatError)):
        read_tensors(path)
    assert not marker.exists()


def test_truncated_and_damaged_zip(tmp_path):
    tensors = {"a": torch.randn(64), "b": torch.randn(8, 8)}
    path = tmp_path / "m.pt"
    torch.save(tensors, str(path))
    data = path.read_bytes()

    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    expect_error(CorruptFileError, lambda: read_tensors(trunc), file=trunc, match="zip")

    # rewrite the archive deflating every member: storages are no longer mappable
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    e = expect_error(UnsupportedFormatError, lambda: read_tensors(deflated), file=deflated, match="compressed")
    assert e.tensor in tensors

    # drop one storage member
    missing = tmp_path / "missing.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(missing, "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("/data/1"):
                dst.writestr(info, src.read(info.filename))
    e = expect_error(CorruptFileError, lambda: read_tensors(missing), file=missing, match="missing")
    assert e.tensor in tensors

    # stored, but a short storage member: the tensor view exceeds its storage
    short = tmp_path / "short.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(short, "w") as dst:
        for info in src.infolist():
            body = src.read(info.filename)
            dst.writestr(info, body[:16] if info.filename.endswith("/data/0") else body)
    expect_error(CorruptFileError, lambda: read_tensors(short), file=short, tensor="a", match="exceeds")


def test_truncated_legacy(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"a": torch.randn(100), "b": torch.randn(100)}, str(path), _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    for cut in (len(data) - 7, 30, 300):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(data[:cut])
        expect_error(CorruptFileError, lambda: read_tensors(bad), file=bad)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_unsupported_dtype_names_the_tensor(tmp_path, fmt):
    path = _save({"ok": torch.zeros(2), "c": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "c.pt", fmt)
    expect_error(UnsupportedFormatError, lambda: read_tensors(path), file=path, tensor="c")


def _load_raw(data: bytes):
    from pathlib import Path
    from sdcpp.io.pickle_reader import SafeUnpickler
    import io as _io
    return SafeUnpickler(_io.BytesIO(data), source=Path("crafted.pkl")).load()


def _unicode(s: str) -> bytes:
    b = s.encode()
    return b"X" + len(b).to_bytes(4, "little") + b


def test_unpickler_stand_ins_cannot_be_tampered_with():
    from sdcpp.io.pickle_reader import ALLOWED_GLOBALS, Inert
    rebuild = ALLOWED_GLOBALS["torch._utils._rebuild_tensor_v2"]
    fn_before = rebuild.fn
    # BUILD with slot state on an allowed callable: refused, nothing set
    data = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n" + b"N}" + _unicode("fn") + b"N" + b"s\x86b.")
    with pytest.raises(CorruptFileError):
        _load_raw(data)
    assert rebuild.fn is fn_before
    # BUILD on a placeholder *class*: fails, the class keeps no new attribute
    data = b"\x80\x02cpytorch_lightning\nEvil\n" + b"N}" + _unicode("__reduce__") + b"N" + b"s\x86b."
    with pytest.raises(Exception):
        _load_raw(data)
    from sdcpp.io.pickle_reader import _inert_class
    assert "__reduce__" not in vars(_inert_class("pytorch_lightning.Evil"))
    # placeholders swallow construction and state
    data = b"\x80\x02cargparse\nNamespace\n)\x81}" + _unicode("lr") + b"K\x01sb."
    assert isinstance(_load_raw(data), Inert)
    # anything else, including getattr/__import__, is refused by name before it is called
    for mod, name in [("builtins", "getattr"), ("__builtin__", "__import__"), ("subprocess", "Popen"),
                      ("torch", "load"), ("numpy", "load"), ("collections", "namedtuple")]:
        with pytest.raises(UnsafePickleError, match=f"{mod}.{name}"):
            _load_raw(b"\x80\x02c" + mod.encode() + b"\n" + name.encode() + b"\n.")
    # _codecs.encode only turns latin-1 text into bytes
    assert _load_raw(b"\x80\x02c_codecs\nencode\n" + _unicode("\xff") + _unicode("latin1") + b"\x86R.") == b"\xff"
    with pytest.raises(UnsafePickleError):
        _load_raw(b"\x80\x02c_codecs\nencode\n" + _unicode("x") + _unicode("rot13") + b"\x86R.")
