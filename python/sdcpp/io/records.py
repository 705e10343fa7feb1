"""TensorRecord: where one tensor's bytes live in a file, and how to view them.

Every reader (safetensors, pickle, GGUF, diffusers folder) yields these; nothing is
read until ``numpy()`` is called, and then only through a memory map.

Name maps express their transforms (row slices of a fused qkv, a transpose, dropping
trailing 1x1 dims) as new records over the same bytes: offset/shape/strides change,
the file does not.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

# safetensors dtype names are the project-wide dtype vocabulary.
DTYPE_ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}


@dataclass(frozen=True)
class TensorRecord:
    name: str                     # name as stored in the file
    dtype: str                    # a key of DTYPE_ITEMSIZE (or a GGUF quant type name, see io.gguf)
    shape: tuple[int, ...]
    strides: tuple[int, ...]      # in elements, numpy order (C-contiguous: last stride 1)
    file: Path
    offset: int                   # byte offset of element [0, ..., 0] within `file`

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * DTYPE_ITEMSIZE.get(self.dtype, 1)

    def numpy(self) -> np.ndarray:
        """The tensor as a numpy array (memory-mapped where the dtype allows).

        Exact conversions: BF16 -> float32, F8_E4M3 / F8_E5M2 -> float16.
        """
        from .mmap_view import record_to_numpy  # filled in by the io module
        return record_to_numpy(self)

    # --- views used by name maps (no bytes are read) -------------------------------
    def renamed(self, name: str) -> "TensorRecord":
        return replace(self, name=name)

    def select_rows(self, start: int, stop: int) -> "TensorRecord":
        """Rows [start, stop) of dimension 0 (e.g. q, k, v out of OpenCLIP's fused in_proj)."""
        item = DTYPE_ITEMSIZE[self.dtype]
        return replace(self, shape=(stop - start,) + self.shape[1:],
                       offset=self.offset + start * self.strides[0] * item)

    def transposed(self) -> "TensorRecord":
        """2-D transpose (OpenCLIP text_projection is stored as x @ P, HF as Linear)."""
        assert len(self.shape) == 2
        return replace(self, shape=self.shape[::-1], strides=self.strides[::-1])

    def squeezed_to(self, ndim: int) -> "TensorRecord":
        """Drop trailing size-1 dims down to `ndim` dims (1x1 conv weight -> linear)."""
        shape, strides = list(self.shape), list(self.strides)
        while len(shape) > ndim and shape[-1] == 1:
            shape.pop(); strides.pop()
        return replace(self, shape=tuple(shape), strides=tuple(strides))

    def unsqueezed_to(self, ndim: int) -> "TensorRecord":
        """Append size-1 dims up to `ndim` dims (linear -> 1x1 conv weight)."""
        return replace(self, shape=self.shape + (1,) * (ndim - len(self.shape)),
                       strides=self.strides + (1,) * (ndim - len(self.strides)))
