"""Byte-level builders of checkpoint files, valid or hostile (tests of the readers' limits).

Everything is assembled by hand (no torch, no safetensors/gguf packages) so a test can put any
number where the format has one: a pickle assembler, torch zip and legacy containers, raw
safetensors and GGUF writers, and diffusers folders.
"""
from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Iterable, Optional

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


# ----------------------------------------------------------------------- pickles
def p_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def p_str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def p_int(i: int) -> bytes:
    if -(1 << 31) <= i < (1 << 31):
        return b"J" + struct.pack("<i", i)
    raw = i.to_bytes((i.bit_length() + 8) // 8, "little", signed=True)     # LONG1
    return b"\x8a" + bytes([len(raw)]) + raw


def p_tuple(items: Iterable[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def p_storage(key: str, storage: str = "FloatStorage", numel: int = 0) -> bytes:
    """A persistent id ('storage', torch.<storage>, key, 'cpu', numel), loaded."""
    return p_tuple([p_str("storage"), p_global("torch", storage), p_str(key), p_str("cpu"), p_int(numel)]) + b"Q"


def p_tensor(key: str, size, stride, offset: int = 0, storage: str = "FloatStorage", numel: int = 0) -> bytes:
    """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""
    return (p_global("torch._utils", "_rebuild_tensor_v2")
            + p_tuple([p_storage(key, storage, numel), p_int(offset), p_tuple(map(p_int, size)),
                       p_tuple(map(p_int, stride)), b"\x89", p_global("collections", "OrderedDict") + b")R"])
            + b"R")


def p_dict(items: dict[str, bytes]) -> bytes:
    """A dict from name -> value-pickle fragments (no STOP, no PROTO)."""
    return b"}(" + b"".join(p_str(k) + v for k, v in items.items()) + b"u"


def pickle_of(body: bytes) -> bytes:
    """PROTO 2 + body + STOP."""
    return b"\x80\x02" + body + b"."


# --------------------------------------------------------------------- torch files
def torch_zip(path: Path, data_pkl: bytes, storages: Optional[dict[str, bytes]] = None,
              pkl_compress: int = zipfile.ZIP_STORED) -> Path:
    """A torch.save-style zip: archive/data.pkl, archive/byteorder, archive/data/<key>."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(zipfile.ZipInfo("archive/data.pkl"), data_pkl, compress_type=pkl_compress)
        z.writestr("archive/byteorder", b"little")
        for key, raw in (storages or {}).items():
            z.writestr(zipfile.ZipInfo(f"archive/data/{key}"), raw)
    return path


def torch_legacy(path: Path, object_pkl: bytes, storages: Optional[dict[str, tuple[int, bytes]]] = None) -> Path:
    """A legacy torch.save file: magic, protocol, sys info, object, keys, then per storage an
    int64 element count and its bytes. `storages`: key -> (element count, bytes)."""
    storages = storages or {}
    parts = [pickle.dumps(LEGACY_MAGIC, protocol=2), pickle.dumps(1001, protocol=2),
             pickle.dumps({"protocol_version": 1001, "little_endian": True,
                           "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2),
             object_pkl, pickle.dumps(list(storages), protocol=2)]
    for count, raw in storages.values():
        parts += [struct.pack("<q", count), raw]
    path.write_bytes(b"".join(parts))
    return path


# ---------------------------------------------------------------------- safetensors
def safetensors_raw(path: Path, header: bytes | str | dict, data: bytes = b"") -> Path:
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def safetensors_f32(path: Path, tensors: dict[str, tuple[tuple[int, ...], bytes]],
                    metadata: Optional[dict] = None) -> Path:
    """F32 tensors name -> (shape, raw bytes), laid out back to back."""
    header: dict = {"__metadata__": metadata} if metadata is not None else {}
    data, off = b"", 0
    for name, (shape, raw) in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        data += raw
        off += len(raw)
    return safetensors_raw(path, header, data)


def f32(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


# ---------------------------------------------------------------------------- GGUF
def gguf_string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gguf_raw(path: Path, kvs: bytes = b"", n_kv: int = 0, infos: bytes = b"", n_tensors: int = 0,
             data: bytes = b"", alignment: int = 32) -> Path:
    """GGUF v3 from pre-encoded key-values and tensor infos (counts given separately, so they may lie)."""
    head = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kvs + infos
    pad = (-len(head)) % alignment
    path.write_bytes(head + b"\0" * pad + data)
    return path


def gguf_info(name: str, ne: Iterable[int], ggml_type: int = 0, offset: int = 0) -> bytes:
    ne = list(ne)
    return gguf_string(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne) \
        + struct.pack("<IQ", ggml_type, offset)


# ------------------------------------------------------------------ diffusers folders
def diffusers_folder(root: Path, configs: dict[str, dict | bytes], *, model_index: Optional[dict | bytes] = None,
                     weights: Optional[dict[str, list[str]]] = None) -> Path:
    """A diffusers pipeline folder: model_index.json, <comp>/config.json (dict or raw bytes), and for
    each component the weight files named in `weights` (default diffusion_pytorch_model.safetensors),
    each holding one small F32 tensor ``w``."""
    root.mkdir(parents=True, exist_ok=True)
    if model_index is None:
        model_index = {"_class_name": "StableDiffusionPipeline",
                       **{c: ["diffusers", "X"] for c in configs if c != "scheduler"}}
    _write_json(root / "model_index.json", model_index)
    for comp, cfg in configs.items():
        folder = root / comp
        folder.mkdir(exist_ok=True)
        _write_json(folder / ("scheduler_config.json" if comp == "scheduler" else "config.json"), cfg)
        if comp == "scheduler":
            continue
        for name in (weights or {}).get(comp, ["diffusion_pytorch_model.safetensors"]):
            if name.endswith(".index.json"):
                shard = name.replace(".index.json", "").replace(".safetensors", "-00001-of-00001.safetensors")
                safetensors_f32(folder / shard, {"w": ((2,), f32(1, 2))})
                _write_json(folder / name, {"weight_map": {"w": shard}})
            else:
                safetensors_f32(folder / name, {"w": ((2,), f32(1, 2))})
    return root


def _write_json(path: Path, value) -> None:
    path.write_bytes(value if isinstance(value, bytes) else json.dumps(value).encode())


def nested_json(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth
