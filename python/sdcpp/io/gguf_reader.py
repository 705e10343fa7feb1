"""GGUF (v2/v3, little-endian) reader with its own parser.

Layout: ``GGUF`` magic, u32 version, u64 tensor count, u64 key-value count, the key-values
(string key, u32 value type, value), the tensor infos (string name, u32 n_dims, u64 ne[n_dims],
u32 ggml type, u64 offset), padding to ``general.alignment`` (default 32), then the data area;
each tensor offset is relative to the data area and a multiple of the alignment.

Shapes: ggml lists dims fastest first (ne0, ne1, ...); records use numpy order (reversed).
F32/F16/BF16/F64/I8..I64 give plain records; block-quantized types give records whose dtype
is the ggml type name (``"Q8_0"``...), dequantized by ``record.numpy()`` (sdcpp.io.quants).
Key-values become strings in the metadata: strings as is, numbers/bools as JSON text,
arrays as JSON lists.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, CorruptFileError, UnsupportedFormatError
from .limits import check_shape
from .quants import GGML_TYPE_NAMES, QUANT_BLOCKS
from .records import DTYPE_ITEMSIZE, TensorRecord
from .safetensors_reader import contiguous_strides

Tensors = dict[str, TensorRecord]
Metadata = dict[str, str]

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4

# ggml plain types -> record dtype names
PLAIN_TYPES = {"F32": "F32", "F16": "F16", "BF16": "BF16", "F64": "F64",
               "I8": "I8", "I16": "I16", "I32": "I32", "I64": "I64"}

# GGUF value types: id -> (name, struct format or None)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_NP_SCALARS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "u1",
               10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise CorruptFileError(
                f"GGUF {what} at byte {self.pos} needs {n} bytes but the file ends at {self.size}; truncated?",
                file=self.path)

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return v

    def string(self, what: str) -> str:
        n = self.unpack("<Q", what + " length")
        self.need(n, what)
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            if depth > 8:
                raise CorruptFileError(f"GGUF {what}: arrays nested too deeply", file=self.path)
            etype = self.unpack("<I", what + " array type")
            count = self.unpack("<Q", what + " array length")
            if etype in _NP_SCALARS:
                dt = np.dtype(_NP_SCALARS[etype])
                self.need(count * dt.itemsize, what)
                arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos)
                self.pos += count * dt.itemsize
                return arr.astype(bool).tolist() if etype == 7 else arr.tolist()
            if etype not in (_STRING, _ARRAY):
                raise CorruptFileError(f"GGUF {what}: unknown array element type {etype}", file=self.path)
            # every string/array element takes at least 8 bytes: bound count before looping
            self.need(count * 8, what)
            return [self.value(etype, what, depth + 1) for _ in range(count)]
        raise CorruptFileError(f"GGUF {what}: unknown value type {vtype}", file=self.path)


def _meta_string(v: Any, vtype: int) -> str:
    if isinstance(v, str):
        return v
    if vtype == 6:                       # float32: shortest text that round-trips in f32
        return str(np.float32(v))
    return json.dumps(v)


def read_gguf(path: str | os.PathLike) -> tuple[Tensors, Metadata]:
    """Records and key-values (as strings) of a GGUF file."""
    path = Path(os.path.abspath(path))
    try:
        size = path.stat().st_size
        if size < 24:
            raise CorruptFileError(f"file is {size} bytes, too short for a GGUF header; truncated?", file=path)
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise CheckpointError("No such file or directory", file=path) from None
    try:
        return _parse(memoryview(mm), path, size)
    finally:
        try:
            mm.close()
        except BufferError:              # a numpy view of it is still alive: let GC close it
            pass


def _parse(buf, path: Path, size: int) -> tuple[Tensors, Metadata]:
    c = _Cursor(buf, path)
    c.need(4, "magic")
    if bytes(buf[:4]) != GGUF_MAGIC:
        raise CorruptFileError("not a GGUF file (bad magic)", file=path)
    c.pos = 4
    version = c.unpack("<I", "version")
    if version not in (2, 3):
        if version == 1:
            raise UnsupportedFormatError("GGUF version 1 is not supported (re-convert to v3)", file=path)
        if int.from_bytes(version.to_bytes(4, "little"), "big") in (2, 3):
            raise UnsupportedFormatError("big-endian GGUF is not supported", file=path)
        raise UnsupportedFormatError(f"GGUF version {version} is not supported", file=path)
    n_tensors = c.unpack("<Q", "tensor count")
    n_kv = c.unpack("<Q", "key-value count")
    # smallest kv: 8 (key len) + 4 (type) + 1; smallest tensor info: 8 + 4 + 8 + 4 + 8
    if n_kv * 13 > size or n_tensors * 32 > size:
        raise CorruptFileError(f"GGUF header claims {n_tensors} tensors / {n_kv} key-values, "
                               f"more than a {size}-byte file can hold", file=path)

    metadata: Metadata = {}
    alignment = DEFAULT_ALIGNMENT
    for i in range(n_kv):
        key = c.string(f"key #{i}")
        vtype = c.unpack("<I", f"type of key {key!r}")
        value = c.value(vtype, f"value of key {key!r}")
        if key == "general.alignment":
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value & (value - 1):
                raise CorruptFileError(f"general.alignment {value!r} is not a power of two", file=path)
            alignment = value
        metadata[key] = _meta_string(value, vtype)

    infos = []
    for i in range(n_tensors):
        name = c.string(f"name of tensor #{i}")
        n_dims = c.unpack("<I", f"n_dims of tensor {name!r}")
        if not 0 < n_dims <= MAX_DIMS:
            raise CorruptFileError(f"tensor has {n_dims} dims (ggml allows 1..{MAX_DIMS})", file=path, tensor=name)
        ne = [c.unpack("<Q", f"dims of tensor {name!r}") for _ in range(n_dims)]
        ttype = c.unpack("<I", f"type of tensor {name!r}")
        offset = c.unpack("<Q", f"offset of tensor {name!r}")
        infos.append((name, ne, ttype, offset))
    data_start = (c.pos + alignment - 1) // alignment * alignment

    records: Tensors = {}
    for name, ne, ttype, offset in infos:
        tname = GGML_TYPE_NAMES.get(ttype)
        if tname is None:
            raise UnsupportedFormatError(f"unknown ggml type id {ttype}", file=path, tensor=name)
        count = 1
        for d in ne:
            count *= d
        if tname in PLAIN_TYPES:
            dtype = PLAIN_TYPES[tname]
            nbytes = count * DTYPE_ITEMSIZE[dtype]
        elif tname in QUANT_BLOCKS:
            dtype = tname
            block, type_size = QUANT_BLOCKS[tname]
            if ne[0] % block:
                raise CorruptFileError(f"{tname} tensor's ne0={ne[0]} is not a multiple of the block size {block}",
                                       file=path, tensor=name)
            nbytes = count // block * type_size
        else:
            raise UnsupportedFormatError(f"ggml type {tname} is not supported", file=path, tensor=name)
        if offset % alignment:
            raise CorruptFileError(f"data offset {offset} is not a multiple of the alignment {alignment}",
                                   file=path, tensor=name)
        if data_start + offset + nbytes > size:
            raise CorruptFileError(f"tensor data (bytes {data_start + offset}..{data_start + offset + nbytes}) runs "
                                   f"past the end of the file ({size} bytes); truncated?", file=path, tensor=name)
        if name in records:
            raise CorruptFileError("tensor name appears twice", file=path, tensor=name)
        shape = tuple(int(d) for d in reversed(ne))
        # non-empty tensors are bounded by `nbytes` above; this also bounds the other dims of
        # an empty one (ggml quants pack at most 8 elements per byte)
        check_shape(shape, 8 * size, file=path, tensor=name)
        records[name] = TensorRecord(name=name, dtype=dtype, shape=shape, strides=contiguous_strides(shape),
                                     file=path, offset=data_start + offset)
    return records, metadata


__all__ = ["read_gguf", "PLAIN_TYPES", "DEFAULT_ALIGNMENT"]
