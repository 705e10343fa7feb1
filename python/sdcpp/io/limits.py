"""Limits every reader applies before it trusts a number from a file (docs/formats.md, Hostile files).

Real checkpoints are far inside all of them; a file beyond one is refused with a typed error
naming the file (and the tensor / key), before anything is allocated for it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import CorruptFileError

# JSON (safetensors headers and their __metadata__, *.index.json, model_index.json, config.json,
# adapter_config.json): real files nest 2-4 levels.
MAX_JSON_DEPTH = 64
# Pickled objects (lists/tuples/dicts inside one another): a torch checkpoint nests about 6.
# Deeper tuples would crash CPython's hash(), which does not guard its recursion.
MAX_PICKLE_DEPTH = 100
# Tensor rank: torch and numpy both stop at 64 (numpy 1 at 32); checkpoints use at most 5.
MAX_NDIM = 32
# Product of the non-zero dims of an empty tensor: anything numpy can describe for any dtype.
MAX_EMPTY_EXTENT = 1 << 40
# Names flattened out of a pickle (dotted paths): far longer than any module path.
MAX_NAME_CHARS = 1 << 16


def check_shape(shape, file_size: int, *, file: Optional[str | Path], tensor: Optional[str],
                itemsize: int = 1) -> None:
    """Refuse a shape no file of `file_size` bytes can back: more than MAX_NDIM dims, or
    elements (times `itemsize`) beyond the file size -- so a broadcast (stride 0) view cannot
    claim terabytes either. An empty tensor holds no bytes; its non-zero dims are only kept
    below MAX_EMPTY_EXTENT, so that numpy can describe it ((0, 2**70) is a lie)."""
    if len(shape) > MAX_NDIM:
        raise CorruptFileError(f"tensor has {len(shape)} dims (at most {MAX_NDIM} are read)",
                               file=file, tensor=tensor)
    count, empty = 1, False
    for d in shape:
        if d < 0:
            raise CorruptFileError(f"negative dimension {d} in shape", file=file, tensor=tensor)
        if d:
            count *= d
        else:
            empty = True
    if empty and count > MAX_EMPTY_EXTENT:
        raise CorruptFileError(f"empty tensor's shape {_short_shape(shape)} has other dims too large to describe",
                               file=file, tensor=tensor)
    if not empty and count * itemsize > file_size:
        raise CorruptFileError(
            f"shape {_short_shape(shape)} describes {count} elements, more than the {file_size}-byte file holds",
            file=file, tensor=tensor)


def _short_shape(shape) -> str:
    s = str(tuple(shape))
    return s if len(s) <= 200 else s[:200] + "...)"


__all__ = ["MAX_JSON_DEPTH", "MAX_PICKLE_DEPTH", "MAX_NDIM", "MAX_EMPTY_EXTENT", "MAX_NAME_CHARS", "check_shape"]
