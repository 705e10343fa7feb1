"""Turn a TensorRecord into a numpy array through a read-only memory map.

One ``mmap`` per file is cached (keyed by device/inode/size/mtime, so a file rewritten in
place is mapped afresh); arrays of plain dtypes are zero-copy, read-only views of it.
Conversions are exact:

* BF16 -> float32 (the bf16 bits are the top half of an f32),
* F8_E4M3 (e4m3fn: bias 7, subnormals, no inf, 0x7F/0xFF NaN) -> float16 via a 256-entry
  table (every e4m3fn value is an f16 value),
* F8_E5M2 -> float16 (an e5m2 byte is the top byte of an f16),
* ggml block-quantized types (GGUF) -> float32, see ``sdcpp.io.quants``.
"""
from __future__ import annotations

import mmap
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import CheckpointError, CorruptFileError, UnsupportedFormatError
from .quants import QUANT_BLOCKS, dequantize_blocks
from .records import DTYPE_ITEMSIZE, TensorRecord

# Raw on-disk numpy dtype of each plain record dtype (all little-endian).
RAW_NUMPY_DTYPE = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"), "F8_E4M3": np.dtype("u1"), "F8_E5M2": np.dtype("u1"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}

_MAX_CACHED_MAPS = 64
_maps: "OrderedDict[tuple, Optional[mmap.mmap]]" = OrderedDict()
_lock = threading.Lock()


def _e4m3fn_table() -> np.ndarray:
    b = np.arange(256)
    sign = np.where(b & 0x80, -1.0, 1.0)
    exp = (b >> 3) & 0x0F
    man = (b & 0x07).astype(np.float64)
    mag = np.where(exp == 0, man * 2.0 ** -9, (1.0 + man / 8.0) * np.exp2(exp - 7.0))
    val = sign * mag
    val[(b & 0x7F) == 0x7F] = np.nan
    return val.astype(np.float16)        # exact: every finite e4m3fn value is an f16 value


_E4M3FN_TO_F16 = _e4m3fn_table()


def file_map(path: Path | str) -> tuple[Optional[mmap.mmap], int]:
    """The cached read-only map of `path` and the file size (None for an empty file)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError("No such file (it was moved or deleted after it was read)", file=path) from None
    except OSError as e:
        raise CheckpointError(f"cannot stat file: {e}", file=path) from None
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _maps:
            _maps.move_to_end(key)
            return _maps[key], st.st_size
    mm: Optional[mmap.mmap] = None
    if st.st_size > 0:
        try:
            with open(path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise CheckpointError(f"cannot memory-map file: {e}", file=path) from None
    with _lock:
        _maps[key] = mm
        _maps.move_to_end(key)
        while len(_maps) > _MAX_CACHED_MAPS:
            _maps.popitem(last=False)       # arrays still viewing it keep that map alive
    return mm, st.st_size


def clear_map_cache() -> None:
    """Forget every cached map (arrays already returned stay valid)."""
    with _lock:
        _maps.clear()


def _check_geometry(rec: TensorRecord) -> None:
    if len(rec.shape) != len(rec.strides):
        raise CorruptFileError(f"shape {rec.shape} and strides {rec.strides} differ in rank",
                               file=rec.file, tensor=rec.name)
    if any((not isinstance(d, (int, np.integer))) or d < 0 for d in rec.shape):
        raise CorruptFileError(f"invalid shape {rec.shape}", file=rec.file, tensor=rec.name)
    if rec.offset < 0:
        raise CorruptFileError(f"negative data offset {rec.offset}", file=rec.file, tensor=rec.name)


def _byte_extent(offset: int, shape, byte_strides, itemsize: int) -> tuple[int, int]:
    """[lo, hi) byte range touched by a strided view with >= 1 element."""
    lo = hi = offset
    for d, s in zip(shape, byte_strides):
        if s >= 0:
            hi += (d - 1) * s
        else:
            lo += (d - 1) * s
    return lo, hi + itemsize


def _strided_bytes_view(rec: TensorRecord, shape, byte_strides, dtype: np.dtype, itemsize: int) -> np.ndarray:
    """np.ndarray over the file's map after checking the view lies inside the file."""
    mm, size = file_map(rec.file)
    lo, hi = _byte_extent(rec.offset, shape, byte_strides, itemsize)
    if lo < 0 or hi > size:
        raise CorruptFileError(
            f"tensor data (bytes {lo}..{hi}) lies outside the file ({size} bytes); truncated file?",
            file=rec.file, tensor=rec.name)
    return np.ndarray(tuple(shape), dtype=dtype, buffer=mm, offset=rec.offset,
                      strides=tuple(byte_strides))


def raw_view(rec: TensorRecord) -> np.ndarray:
    """The record's bytes as a read-only strided array of its on-disk dtype (bf16/fp8 as uints)."""
    _check_geometry(rec)
    dt = RAW_NUMPY_DTYPE.get(rec.dtype)
    if dt is None:
        raise UnsupportedFormatError(f"dtype {rec.dtype!r} has no raw numpy view", file=rec.file, tensor=rec.name)
    item = DTYPE_ITEMSIZE[rec.dtype]
    if any(d == 0 for d in rec.shape):
        return np.empty(rec.shape, dtype=dt)
    return _strided_bytes_view(rec, rec.shape, [s * item for s in rec.strides], dt, item)


def _dequantize_record(rec: TensorRecord) -> np.ndarray:
    block, type_size = QUANT_BLOCKS[rec.dtype]
    shape, strides = tuple(rec.shape), tuple(rec.strides)
    if not shape:
        raise CorruptFileError(f"{rec.dtype} tensor without dimensions", file=rec.file, tensor=rec.name)
    if shape[-1] % block != 0:
        raise CorruptFileError(f"last dim {shape[-1]} is not a multiple of the {rec.dtype} block size {block}",
                               file=rec.file, tensor=rec.name)
    if any(d == 0 for d in shape):
        return np.empty(shape, dtype=np.float32)
    if strides[-1] != 1 or any(s % block for s in strides[:-1]):
        raise UnsupportedFormatError(
            f"{rec.dtype} tensor view with strides {strides} splits quantization blocks",
            file=rec.file, tensor=rec.name)
    nb = shape[-1] // block
    vshape = shape[:-1] + (nb, type_size)
    vstrides = [s // block * type_size for s in strides[:-1]] + [type_size, 1]
    blocks = _strided_bytes_view(rec, vshape, vstrides, np.dtype(np.uint8), 1)
    try:
        values = dequantize_blocks(rec.dtype, blocks.reshape(-1, type_size))
    except KeyError:
        raise UnsupportedFormatError(
            f"dequantizing ggml type {rec.dtype} is not implemented", file=rec.file, tensor=rec.name) from None
    return values.reshape(shape)


def record_to_numpy(rec: TensorRecord) -> np.ndarray:
    """The tensor of `rec` as numpy (read-only zero-copy view for F32/F16/F64/ints/bool).

    BF16 -> float32, F8_E4M3/F8_E5M2 -> float16, ggml quant types -> float32, all exact.
    Raises CorruptFileError (naming file and tensor) if the view would leave the file.
    """
    if rec.dtype in QUANT_BLOCKS:
        _check_geometry(rec)
        return _dequantize_record(rec)
    if rec.dtype not in DTYPE_ITEMSIZE:
        raise UnsupportedFormatError(f"unknown dtype {rec.dtype!r}", file=rec.file, tensor=rec.name)
    raw = raw_view(rec)
    if rec.dtype == "BF16":
        out = raw.astype(np.uint32)
        out <<= 16
        return out.view(np.float32)
    if rec.dtype == "F8_E4M3":
        return _E4M3FN_TO_F16[raw]
    if rec.dtype == "F8_E5M2":
        out = raw.astype(np.uint16)
        out <<= 8
        return out.view(np.float16)
    return raw


def release_pages(rec: TensorRecord) -> None:
    """Drop this process's mapping of the pages under `rec` (madvise DONTNEED on the read-only
    file map) once its bytes were copied into a weight store: the pages stay in the OS page
    cache, but no longer count in our resident set beside the converted copy. A later read
    (LoRA restore, a rebuilt store) faults them back in from the cache. No-op where madvise is
    unavailable."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None or not rec.shape or any(d == 0 for d in rec.shape) or rec.dtype not in DTYPE_ITEMSIZE:
        return
    item = DTYPE_ITEMSIZE[rec.dtype]
    lo, hi = _byte_extent(rec.offset, rec.shape, [s * item for s in rec.strides], item)
    try:
        mm, size = file_map(rec.file)
    except CheckpointError:
        return
    if mm is None:
        return
    page = mmap.PAGESIZE
    start = max(0, lo // page * page)
    end = min(size, hi)
    if end <= start:
        return
    try:
        mm.madvise(advice, start, end - start)
    except (OSError, ValueError):
        pass


__all__ = ["record_to_numpy", "raw_view", "file_map", "clear_map_cache", "release_pages", "RAW_NUMPY_DTYPE"]
