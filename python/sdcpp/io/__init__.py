"""Checkpoint readers: every supported source -> TensorRecords (docs/internals.md §2).

``read_tensors(path)``: one file (safetensors, torch .ckpt/.pt/.bin zip or legacy pickle,
GGUF) or a sharded ``*.index.json``. ``open_source(source)``: a file, a diffusers folder, a
bare component folder or a Hugging Face Hub repo id. Nothing here imports torch; tensor bytes
are only touched through memory maps when ``TensorRecord.numpy()`` is called.
"""
from __future__ import annotations

from .mmap_view import record_to_numpy
from .records import DTYPE_ITEMSIZE, TensorRecord
from .source import Source, open_source, read_tensors

__all__ = ["TensorRecord", "Source", "read_tensors", "open_source", "record_to_numpy", "DTYPE_ITEMSIZE"]
