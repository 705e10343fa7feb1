"""Property-based fuzzing of every reader: any bytes give a result or a typed sdcpp error.

Readers: safetensors, torch zip and legacy pickles, GGUF, diffusers folder configs, LoRA files
(and PEFT adapter configs). Inputs are valid seed files mutated byte-wise (flips, overwrites
with boundary integers, insertions, deletions, truncation) and structure-aware generators
(JSON headers and configs of random values, pickles assembled from random opcode fragments,
GGUF headers with random counts/types/offsets, LoRA key sets with random shapes).

For every input: the reader either succeeds -- and then every record's ``numpy()`` also
succeeds or raises a typed error -- or raises ``sdcpp.errors.SdcppError``. Any other exception
fails the test. Per example: a time bound (hypothesis ``deadline``) and a memory bound (the
tracemalloc peak).

Budgets: the default profile (``SDCPP_FUZZ`` unset or ``ci``) runs a fixed, derandomized few
dozen examples per reader, a few seconds in all. ``SDCPP_FUZZ=long`` (examples per reader:
``SDCPP_FUZZ_EXAMPLES``, default 3000) is the longer, randomized run documented in
docs/formats.md; what it finds is kept below as ``@example`` cases and in test_io_hostile.py.
"""
from __future__ import annotations

import atexit
import io
import itertools
import json
import os
import shutil
import struct
import tempfile
import tracemalloc
import zipfile
from datetime import timedelta
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from hostile_builders import (diffusers_folder, f32, gguf_info, gguf_raw, gguf_string, p_dict, p_global,
                              p_int, p_storage, p_str, p_tensor, pickle_of, safetensors_f32, safetensors_raw,
                              torch_legacy, torch_zip)
from sdcpp.errors import SdcppError
from sdcpp.io import open_source, read_tensors
from sdcpp.io.mmap_view import clear_map_cache
from sdcpp.lora import read_lora

_COMMON = dict(deadline=timedelta(seconds=3), database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.function_scoped_fixture])
settings.register_profile("sdcpp-fuzz-ci", max_examples=40, derandomize=True, **_COMMON)
settings.register_profile("sdcpp-fuzz-long", max_examples=int(os.environ.get("SDCPP_FUZZ_EXAMPLES", "3000")),
                          derandomize=False, **_COMMON)
FUZZ = settings.get_profile("sdcpp-fuzz-long" if os.environ.get("SDCPP_FUZZ") == "long" else "sdcpp-fuzz-ci")

MAX_PEAK_BYTES = 64 << 20          # per example; every input here is at most a few KB
MAX_RECORDS_READ = 64

# ---------------------------------------------------------------------- harness
_dir = Path(tempfile.mkdtemp(prefix="sdcpp-fuzz-"))
_names = itertools.count()
atexit.register(shutil.rmtree, _dir, True)        # also when the module's tests are deselected


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    clear_map_cache()
    shutil.rmtree(_dir, ignore_errors=True)


def fresh(suffix: str = "") -> Path:
    """A new path per example (a new inode: a rewritten file could meet its old cached map)."""
    return _dir / f"f{next(_names)}{suffix}"


def typed_or_ok(fn):
    """Run `fn` under a memory bound; None if it raised a typed sdcpp error, else its result.
    Any other exception propagates (and fails the property)."""
    tracemalloc.start()
    try:
        result = fn()
        _event("accepted")
        return result
    except SdcppError as e:
        _event(f"refused: {type(e).__name__}")
        return None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        clear_map_cache()
        assert peak < MAX_PEAK_BYTES, f"reader used {peak} bytes"


def _event(name: str) -> None:
    """Outcome statistics (pytest --hypothesis-show-statistics); a no-op outside a property."""
    try:
        event(name)
    except Exception:
        pass


def read_all(path: Path):
    """read_tensors(path), then numpy() of (up to MAX_RECORDS_READ of) its records."""
    def run():
        recs = read_tensors(path)
        for rec in itertools.islice(recs.values(), MAX_RECORDS_READ):
            try:
                rec.numpy()
            except SdcppError:
                pass
        return recs
    return typed_or_ok(run)


# ------------------------------------------------------------------ strategies
INTERESTING = [0, 1, 2, 7, 8, 255, 256, 2**15, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40,
               2**62, 2**63 - 1, 2**63, 2**64 - 1]


@st.composite
def mutated(draw, seed: bytes, max_ops: int = 6):
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "set", "int", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "int":
            width = draw(st.sampled_from([1, 2, 4, 8]))
            v = draw(st.sampled_from(INTERESTING)) & ((1 << (8 * width)) - 1)
            data[pos:pos + width] = v.to_bytes(width, "little")
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 32))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.sampled_from(INTERESTING)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
ints = st.integers(-3, 2**64) | st.sampled_from(INTERESTING)
DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2"]


# ------------------------------------------------------------------------ seeds
def _torch_seed(legacy: bool) -> bytes:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(4, 6, generator=g)
    obj = {"state_dict": {"a": m, "t": m.t(), "h": torch.randn(3, generator=g).half(),
                          "b": torch.randn(2, 2, generator=g).bfloat16(), "i": torch.arange(3),
                          "x": torch.arange(3.0).expand(2, 3)}, "epoch": 3}
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _safetensors_seed() -> bytes:
    p = fresh(".safetensors")
    safetensors_f32(p, {"w": ((2, 3), f32(*range(6))), "b": ((3,), f32(1, 2, 3)), "s": ((), f32(5))},
                    metadata={"format": "pt", "k": "v"})
    return p.read_bytes()


def _gguf_seed() -> bytes:
    p = fresh(".gguf")
    w = gguf.GGUFWriter(str(p), arch="sdcpp-fuzz")
    w.add_string("general.name", "seed")
    w.add_array("some.list", [1, 2, 3])
    w.add_tensor("w", np.arange(6, dtype=np.float32).reshape(2, 3))
    q = gguf.quants.quantize(np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("q", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return p.read_bytes()


SEEDS = {"zip": _torch_seed(False), "legacy": _torch_seed(True), "safetensors": _safetensors_seed(),
         "gguf": _gguf_seed()}
SUFFIX = {"zip": ".ckpt", "legacy": ".ckpt", "safetensors": ".safetensors", "gguf": ".gguf"}


# ============================================================ mutated seed files
@pytest.mark.parametrize("fmt", list(SEEDS))
def test_seeds_are_valid(fmt):
    p = fresh(SUFFIX[fmt])
    p.write_bytes(SEEDS[fmt])
    assert read_all(p), fmt


def _mutation_test(fmt):
    @FUZZ
    @given(data=mutated(SEEDS[fmt]))
    def run(data):
        p = fresh(SUFFIX[fmt])
        p.write_bytes(data)
        read_all(p)
        p.unlink()
    return run


test_fuzz_safetensors_mutated = _mutation_test("safetensors")
test_fuzz_torch_zip_mutated = _mutation_test("zip")
test_fuzz_torch_legacy_mutated = _mutation_test("legacy")
test_fuzz_gguf_mutated = _mutation_test("gguf")


def _zip_members(raw: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        return {n: z.read(n) for n in z.namelist()}


_ZIP_SEED = _zip_members(SEEDS["zip"])
_PKL_NAME = next(n for n in _ZIP_SEED if n.endswith("/data.pkl"))


@FUZZ
@given(pkl=mutated(_ZIP_SEED[_PKL_NAME], max_ops=4))
def test_fuzz_torch_zip_object_pickle_mutated(pkl):
    """The zip stays valid (CRCs match); only the object pickle inside is mutated."""
    p = fresh(".ckpt")
    with zipfile.ZipFile(p, "w") as z:
        for name, raw in _ZIP_SEED.items():
            z.writestr(zipfile.ZipInfo(name), pkl if name == _PKL_NAME else raw)
    read_all(p)
    p.unlink()


# ================================================================= safetensors
entry = st.fixed_dictionaries({
    "dtype": st.sampled_from(DTYPES) | st.text(max_size=4) | json_values,
    "shape": st.lists(ints, max_size=5) | json_values,
    "data_offsets": st.lists(ints, min_size=2, max_size=3) | json_values,
})


@FUZZ
@given(header=st.dictionaries(st.text(max_size=6), entry | json_values, max_size=5),
       meta=st.none() | json_values, data=st.binary(max_size=128))
@example(header={"w": {"dtype": "F32", "shape": [0, 2**62], "data_offsets": [0, 0]}}, meta=None, data=b"")
@example(header={"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, meta=[[[[1]]]], data=b"\0" * 4)
def test_fuzz_safetensors_headers(header, meta, data):
    if meta is not None:
        header = {"__metadata__": meta, **header}
    p = fresh(".safetensors")
    safetensors_raw(p, json.dumps(header), data)
    read_all(p)
    p.unlink()


# ====================================================================== pickles
_T = p_tensor("0", (2,), (1,))
FRAGMENTS = [
    b"(", b"t", b"l", b"d", b"}", b"]", b")", b"a", b"e", b"s", b"u", b"N", b"\x88", b"0", b"1", b"2",
    b"\x85", b"\x86", b"\x87", b"R", b"b", b"Q", b"\x81", b"\x93", b"\x94", b"\x90", b"\x91", b"\x8f",
    b"K\x01", b"K\x00", p_int(-1), p_int(2**31 - 1), p_str("w"), p_str("state_dict"), p_str("storage"),
    b"q\x00", b"q\x01", b"h\x00", b"h\x01", b"r\xff\xff\xff\x7f", b"j\x00\x00\x00\x00",
    b"\x8e" + struct.pack("<Q", 2**40), b"\x8b" + struct.pack("<i", 2**30), b"\x95" + struct.pack("<Q", 4),
    b"p3\n", b"g0\n", b"I99999999999999999999\n", b"L" + b"9" * 5000 + b"L\n",
    p_global("torch._utils", "_rebuild_tensor_v2"), p_global("torch", "FloatStorage"),
    p_global("collections", "OrderedDict"), p_global("builtins", "tuple"), p_global("builtins", "set"),
    p_global("builtins", "bytes"), p_global("_codecs", "encode"), p_global("torch", "Size"),
    p_global("os", "system"), p_global("torch._utils", "_rebuild_qtensor"), p_global("lightning", "Thing"),
    p_storage("0"), p_storage("1", "HalfStorage"), _T, p_tensor("0", (3,), (1,)), p_tensor("0", (2,), (-1,), 1),
    p_dict({"w": _T}), p_dict({"w": _T, "v": p_tensor("0", (1,), (1,), 1)}),
]


@st.composite
def pickles(draw):
    frags = draw(st.lists(st.sampled_from(FRAGMENTS), max_size=24))
    if draw(st.booleans()):               # often a state dict around them, so some of it loads
        return pickle_of(b"}(" + p_str("w") + _T + b"".join(frags) + b"u")
    return pickle_of(b"".join(frags))


@FUZZ
@given(pkl=pickles(), container=st.sampled_from(["zip", "legacy"]), storage=st.binary(max_size=24))
@example(pkl=pickle_of(b"}N" + b"\x85" * 5000 + b"K\x01s"), container="zip", storage=b"")
@example(pkl=pickle_of(p_dict({"w": p_tensor("0", (2,), (-1,), 1)})), container="legacy", storage=f32(1, 2))
def test_fuzz_torch_pickles(pkl, container, storage):
    p = fresh(".ckpt")
    if container == "zip":
        torch_zip(p, pkl, {"0": storage, "1": storage})
    else:
        n = len(storage) // 4
        torch_legacy(p, pkl, {"0": (n, storage[:4 * n])})
    read_all(p)
    p.unlink()


# ========================================================================= GGUF
_GGUF_VALUE = {                 # GGUF value type -> strategy of its encoded payload
    0: st.binary(min_size=1, max_size=1), 4: st.binary(min_size=4, max_size=4),
    6: st.binary(min_size=4, max_size=4), 7: st.binary(min_size=1, max_size=1),
    10: st.binary(min_size=8, max_size=8), 12: st.binary(min_size=8, max_size=8),
    8: st.text(max_size=8).map(gguf_string),
}


@st.composite
def gguf_kv(draw):
    key = gguf_string(draw(st.sampled_from(["general.alignment", "general.name", "k"])))
    vtype = draw(st.sampled_from(sorted(_GGUF_VALUE) + [9, 13, 2**31]))
    if vtype == 9:
        etype = draw(st.sampled_from([4, 8, 9, 77]))
        count = draw(st.integers(0, 3) | st.sampled_from(INTERESTING))
        body = struct.pack("<IQ", etype, count & (2**64 - 1)) + draw(st.binary(max_size=24))
    elif vtype in _GGUF_VALUE:
        body = draw(_GGUF_VALUE[vtype])
    else:
        body = draw(st.binary(max_size=8))
    return key + struct.pack("<I", vtype) + body


@FUZZ
@given(kvs=st.lists(gguf_kv(), max_size=3), n_kv_extra=st.sampled_from([0, 0, 1, 2**40]),
       infos=st.lists(st.tuples(st.sampled_from(["w", "v", "w"]), st.lists(ints, max_size=5),
                                st.sampled_from([0, 1, 8, 30, 99, 2**31]), ints), max_size=3),
       n_t_extra=st.sampled_from([0, 0, 1, 2**40]), data=st.binary(max_size=96))
def test_fuzz_gguf_headers(kvs, n_kv_extra, infos, n_t_extra, data):
    enc = b"".join(gguf_info(n, [d & (2**64 - 1) for d in ne], t, o & (2**64 - 1)) if len(ne) < 2**32 else b""
                   for n, ne, t, o in infos)
    p = gguf_raw(fresh(".gguf"), kvs=b"".join(kvs), n_kv=len(kvs) + n_kv_extra, infos=enc,
                 n_tensors=len(infos) + n_t_extra, data=data)
    read_all(p)
    p.unlink()


# ============================================================ diffusers configs
from sdcpp.io.config_check import SCHEMAS  # noqa: E402  (after the seeds: keys to draw from)


def _config(kind):
    keys = sorted(SCHEMAS[kind]) + ["_class_name", "other"]
    return st.dictionaries(st.sampled_from(keys), json_values, max_size=6)


@FUZZ
@given(unet=_config("unet"), vae=_config("vae"), te=_config("text_encoder"), sched=_config("scheduler"),
       index=st.none() | _config("model_index"), raw=st.none() | mutated(b'{"in_channels": 4, "x": [1, {"y": 2}]}'),
       weights=st.lists(st.sampled_from(["diffusion_pytorch_model.safetensors", "model.safetensors",
                                         "diffusion_pytorch_model.fp16.safetensors", "model.ema.safetensors",
                                         "diffusion_pytorch_model.safetensors.index.json",
                                         "diffusion_pytorch_model.bin"]), min_size=1, max_size=3, unique=True))
def test_fuzz_diffusers_folders(unet, vae, te, sched, index, raw, weights):
    root = fresh()
    weights = [w for w in weights if not w.endswith(".bin")] or ["diffusion_pytorch_model.safetensors"]
    configs = {"unet": raw if raw is not None else unet, "vae": vae, "text_encoder": te, "scheduler": sched}
    diffusers_folder(root, configs, model_index=index, weights={"unet": weights})
    for variant in (None, "fp16"):
        typed_or_ok(lambda: open_source(root, variant=variant))
    typed_or_ok(lambda: open_source(root / "vae"))
    shutil.rmtree(root)


# ========================================================================== LoRA
_LORA_PREFIX = ["lora_unet_down_blocks_0_attentions_0_proj_in", "unet.down_blocks.0.attentions.0.proj_in",
                "base_model.model.conv_in", "lora_te1_text_model_encoder_layers_0_mlp_fc1",
                "text_encoder.text_model.encoder.layers.0.self_attn.q_proj", "nowhere.x"]
_LORA_SUFFIX = [".lora_down.weight", ".lora_up.weight", ".lora_mid.weight", ".alpha", ".scale",
                ".lora_A.weight", ".lora_B.weight", ".lora_B.bias", ".lora.down.weight", ".lora.up.weight",
                ".diff", ".diff_b", ".hada_w1_a", ".lora_A.x.weight", ".lora_A.y.weight", ".weight"]


@st.composite
def lora_tensors(draw):
    out = {}
    for _ in range(draw(st.integers(0, 5))):
        key = draw(st.sampled_from(_LORA_PREFIX)) + draw(st.sampled_from(_LORA_SUFFIX))
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
        n = int(np.prod(shape)) if shape else 1
        values = draw(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=n, max_size=n))
        out[key] = (shape, f32(*values))
    return out


@FUZZ
@given(tensors=lora_tensors(), meta=st.none() | json_values | st.dictionaries(
           st.sampled_from(["unet.lora_alpha", "unet.alpha_pattern", "text_encoder.use_rslora", "unet.peft_type",
                            "lora_alpha", "unet.use_dora"]), json_values, max_size=3),
       peft=st.none() | st.dictionaries(st.sampled_from(["lora_alpha", "alpha_pattern", "use_rslora", "peft_type",
                                                          "use_dora", "r"]), json_values, max_size=4) | json_values)
@example(tensors={"lora_unet_conv_in.lora_down.weight": ((0, 4), b""),
                  "lora_unet_conv_in.lora_up.weight": ((4, 0), b"")}, meta=None, peft=None)
def test_fuzz_lora_files(tensors, meta, peft):
    folder = fresh()
    folder.mkdir()
    name = "adapter_model.safetensors" if peft is not None else "lora.safetensors"
    metadata = None if meta is None else {"lora_adapter_metadata": json.dumps(meta)}
    path = safetensors_f32(folder / name, tensors, metadata)
    if peft is not None:
        (folder / "adapter_config.json").write_text(json.dumps(peft))

    def run():
        lf = read_lora(path)
        for m in lf.modules:
            m.rank, m.strength()
        return lf
    typed_or_ok(run)
    shutil.rmtree(folder)
