"""safetensors reader (own parser, no safetensors package) and sharded ``*.index.json``.

File layout: 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data
area. Each JSON entry ``name: {"dtype", "shape", "data_offsets": [start, end]}`` gives
byte offsets relative to the data area; ``__metadata__`` is a str -> str map.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from ..errors import CheckpointError, CorruptFileError, UnsupportedFormatError
from .json_safe import loads_json
from .limits import check_shape
from .records import DTYPE_ITEMSIZE, TensorRecord

# The safetensors library refuses headers above 100 MB; so do we.
MAX_HEADER_SIZE = 100_000_000

Tensors = dict[str, TensorRecord]
Metadata = dict[str, str]


def contiguous_strides(shape) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(tuple(shape)):
        strides.append(acc)
        acc *= max(int(d), 1)
    return tuple(reversed(strides))


def _reject_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _meta_str(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _short_json(v: Any) -> str:
    """A header value for a message: at most ~100 characters (values can be megabytes)."""
    s = repr(v) if not isinstance(v, (list, dict)) else json.dumps(v)
    return s if len(s) <= 100 else s[:100] + "..."


def read_safetensors(path: str | os.PathLike) -> tuple[Tensors, Metadata]:
    """Records and ``__metadata__`` of one .safetensors file. Nothing but the header is read."""
    path = Path(os.path.abspath(path))
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CorruptFileError(
                    f"file is {size} bytes, too short for a safetensors header (truncated?)", file=path)
            n = int.from_bytes(head, "little")
            if n < 2 or n > MAX_HEADER_SIZE:
                raise CorruptFileError(f"safetensors header length {n} is not plausible", file=path)
            if 8 + n > size:
                raise CorruptFileError(
                    f"safetensors header length {n} runs past the end of the file ({size} bytes); truncated?",
                    file=path)
            raw = f.read(n)
    except FileNotFoundError:
        raise CheckpointError("No such file or directory", file=path) from None
    except IsADirectoryError:
        raise CheckpointError("expected a file, got a directory", file=path) from None
    if len(raw) != n:
        raise CorruptFileError("file shrank while reading the header", file=path)
    header = loads_json(raw, file=path, what="safetensors header", object_pairs_hook=_reject_duplicates)
    if not isinstance(header, dict):
        raise CorruptFileError("safetensors header is not a JSON object", file=path)

    data_start = 8 + n
    data_len = size - data_start
    metadata: Metadata = {}
    meta = header.pop("__metadata__", None)
    if meta is not None:
        if not isinstance(meta, dict):
            raise CorruptFileError("__metadata__ is not a JSON object", file=path)
        metadata = {str(k): _meta_str(v) for k, v in meta.items()}

    records: Tensors = {}
    for name, entry in header.items():
        def bad(msg: str, cls=CorruptFileError):
            return cls(msg, file=path, tensor=name)
        if not isinstance(entry, dict):
            raise bad("header entry is not a JSON object")
        for key in ("dtype", "shape", "data_offsets"):
            if key not in entry:
                raise bad(f"header entry lacks {key!r}")
        dtype, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str):
            raise bad(f"dtype {_short_json(dtype)} is not a string")
        if dtype not in DTYPE_ITEMSIZE:
            raise bad(f"dtype {_short_json(dtype)} is not supported (known: {', '.join(DTYPE_ITEMSIZE)})",
                      UnsupportedFormatError)
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise bad(f"shape {_short_json(shape)} is not a list of non-negative integers")
        check_shape(shape, size, file=path, tensor=name, itemsize=DTYPE_ITEMSIZE[dtype])
        if (not isinstance(offs, list) or len(offs) != 2 or not all(_is_int(o) for o in offs)
                or not 0 <= offs[0] <= offs[1]):
            raise bad(f"data_offsets {_short_json(offs)} is not [start, end] with 0 <= start <= end")
        count = 1
        for d in shape:
            count *= d
        need = count * DTYPE_ITEMSIZE[dtype]
        start, end = offs
        if end - start != need:
            raise bad(f"data_offsets {offs} span {end - start} bytes but {dtype} {shape} needs {need}")
        if end > data_len:
            raise bad(f"data_offsets end {end} runs past the data area ({data_len} bytes); truncated?")
        records[name] = TensorRecord(name=name, dtype=dtype, shape=tuple(shape),
                                     strides=contiguous_strides(shape), file=path,
                                     offset=data_start + start)
    return records, metadata


def read_sharded_index(path: str | os.PathLike,
                       read_file: Callable[[Path], tuple[Tensors, Metadata]]) -> tuple[Tensors, Metadata]:
    """A ``*.index.json`` (``weight_map``: tensor name -> shard file): the union of the shards.

    `read_file` reads one shard (so .bin shards work too). Every name the map lists must be in
    the shard it names; tensors a shard holds beyond the map are kept as well.
    """
    path = Path(os.path.abspath(path))
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError("No such file or directory", file=path) from None
    index = loads_json(raw, file=path, what="index")
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        raise CorruptFileError("index has no 'weight_map' object of tensor name -> shard file", file=path)

    metadata: Metadata = {}
    meta = index.get("metadata")
    if isinstance(meta, dict):
        metadata.update({str(k): _meta_str(v) for k, v in meta.items()})

    shards: dict[str, Tensors] = {}
    for shard in dict.fromkeys(wmap.values()):
        shard_path = (path.parent / shard)
        if os.path.isabs(shard) or ".." in Path(shard).parts:
            raise CorruptFileError(f"shard path {shard!r} leaves the index's folder", file=path)
        if shard.lower().endswith(".json"):        # an index naming an index would loop forever
            raise CorruptFileError(f"shard {shard!r} is itself a JSON index, not a weights file", file=path)
        if not shard_path.is_file():
            raise CheckpointError(f"shard {shard!r} named by the index is missing "
                                  f"(No such file: {shard_path})", file=path)
        tensors, shard_meta = read_file(shard_path)
        shards[shard] = tensors
        for k, v in shard_meta.items():
            metadata.setdefault(k, v)

    out: Tensors = {}
    for name, shard in wmap.items():
        rec = shards[shard].get(name)
        if rec is None:
            raise CorruptFileError(f"index puts this tensor in shard {shard!r}, which lacks it",
                                   file=path.parent / shard, tensor=name)
        out[name] = rec
    for tensors in shards.values():
        for name, rec in tensors.items():
            out.setdefault(name, rec)
    return out, metadata


__all__ = ["read_safetensors", "read_sharded_index", "contiguous_strides", "MAX_HEADER_SIZE"]
