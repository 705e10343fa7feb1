"""Devices and weight stores: canonical tensors into ggml backend buffers.

Python decides *what* (names, shapes, the storage type of each tensor); the native
WeightStore does the copy and the f32 -> f16/bf16/q8_0/q5_0/q4_0 conversion with the GIL
released. Tensors that a GGUF file already holds in one of the quantized types are copied
block for block where their role takes that type (``build_store``).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional

import numpy as np

from .. import errors

WEIGHT_TYPES = ("f32", "f16", "bf16", "q8_0", "q5_0", "q4_0")
# ggml's block-quantized types (32 values per block): products with them run ggml's integer
# dot products (the activations are quantized to q8 per row).
QUANT_TYPES = ("q8_0", "q5_0", "q4_0")
# Quantized types are not worth their error on matrices with fewer output rows than this
# (the U-Net's conv_out: 4): those stay f16.
MIN_QUANT_ROWS = 32


def native():
    """The compiled extension, imported lazily so pure-Python parts work without it."""
    try:
        from .. import _core
    except ImportError as exc:  # pragma: no cover - a broken install
        raise errors.BackendError(
            f"the sdcpp native extension is not built or failed to load ({exc}); reinstall with `pip install .`"
        ) from exc
    return _core


def physical_cores() -> int:
    """Physical cores available to this process: ggml gains nothing from SMT siblings.

    x86 Linux lists SMT siblings as separate processors sharing a (physical id, core id); other
    systems (Arm Linux, macOS, Windows) either have no SMT or do not say, so every processor
    we may run on counts.
    """
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 1
    try:
        cores = set()
        with open("/proc/cpuinfo") as fh:
            phys = core = None
            for line in fh:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                elif not line.strip():
                    if core is not None:
                        cores.add((phys, core))
                    phys = core = None
        if cores:
            return max(1, min(len(cores), allowed))
    except OSError:
        pass
    return max(1, allowed)


def open_device(device: str = "auto", threads: Optional[int] = None):
    """A native Device; `threads` defaults to the physical core count."""
    core = native()
    try:
        return core.Device(device, threads or physical_cores())
    except ValueError as exc:
        raise errors.InvalidArgumentError(str(exc)) from None


def storage_type(name: str, shape: tuple[int, ...], weight_type: str) -> str:
    """The ggml type a tensor is stored in: matrices and conv kernels take `weight_type`;
    vectors (biases, norms), embeddings (token/position tables, the time embedding) and tiny
    tensors stay f32 (they cost little and ggml's element-wise ops want f32). With a quantized
    `weight_type`, matrices of fewer than MIN_QUANT_ROWS output rows take f16, and the native
    store takes f16 for a weight whose reduction length (a row; IC*KH*KW of a conv kernel) is
    not a whole number of 32-value blocks (``WeightStore.types()`` says what was stored)."""
    if weight_type not in WEIGHT_TYPES:
        raise errors.InvalidArgumentError(f"weight_type must be one of {WEIGHT_TYPES}, got {weight_type!r}")
    if len(shape) < 2 or "embedding" in name or "norm" in name:
        return "f32"
    if weight_type in QUANT_TYPES and shape[0] < MIN_QUANT_ROWS:
        return "f16"
    return weight_type


def _as_native_array(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.float32 or arr.dtype == np.float16:
        return arr
    if arr.dtype.kind in "fiub":
        return arr.astype(np.float32)
    raise errors.InvalidArgumentError(f"cannot store an array of dtype {arr.dtype}")


def _quant_dtype(value) -> Optional[str]:
    """The quantized type ("q8_0"...) of a TensorRecord that holds WEIGHT_TYPES' quantized blocks."""
    dtype = getattr(value, "dtype", None)
    if isinstance(dtype, str) and dtype.lower() in QUANT_TYPES:
        return dtype.lower()
    return None


def _raw_blocks(rec) -> Optional[np.ndarray]:
    """The record's quantized blocks as uint8 bytes, or None when its view is not the whole
    contiguous tensor (a row slice that splits the file's order is dequantized instead)."""
    from ..io.safetensors_reader import contiguous_strides
    from ..io.mmap_view import file_map
    from ..io.quants import QUANT_BLOCKS

    if tuple(rec.strides) != tuple(contiguous_strides(tuple(rec.shape))):
        return None
    block, type_size = QUANT_BLOCKS[rec.dtype]
    count = int(np.prod(rec.shape, dtype=np.int64))
    if count % block:
        return None
    nbytes = count // block * type_size
    mm, size = file_map(rec.file)
    if mm is None or rec.offset < 0 or rec.offset + nbytes > size:
        raise errors.CorruptFileError(
            f"{rec.dtype} tensor data (bytes {rec.offset}..{rec.offset + nbytes}) lies outside the file ({size} bytes)",
            file=rec.file, tensor=rec.name)
    return np.frombuffer(mm, dtype=np.uint8, count=nbytes, offset=rec.offset)


def set_value(store, name: str, value) -> None:
    """Write one tensor (numpy array or TensorRecord) into `store`: quantized records of the
    stored type as their blocks, anything else as numbers (converted natively)."""
    qt = _quant_dtype(value)
    if qt is not None and store.type(name) == qt:
        blocks = _raw_blocks(value)
        if blocks is not None:
            store.set_blocks(name, blocks, qt)
            return
    arr = value if isinstance(value, np.ndarray) else value.numpy()
    store.set(name, _as_native_array(np.asarray(arr)))


def build_store(device, tensors: Mapping[str, Any], weight_type: str = "f32",
                type_of: Callable[[str, tuple, str], str] = storage_type,
                on_tensor: Optional[Callable[[int], None]] = None, repack: bool = True):
    """A WeightStore holding `tensors` (name -> numpy array or TensorRecord), converted
    one tensor at a time so peak host memory stays at one tensor. `on_tensor(elements)` is
    called after each tensor (progress).

    A record already quantized in q8_0 / q5_0 / q4_0 (GGUF) keeps its type and its blocks
    when its role takes that type (``type_of(name, shape, that type)`` returns it), whatever
    `weight_type` is: dequantizing would add no precision. Elsewhere it is dequantized.

    repack: on the CPU, q4_0 matrices go to ggml's CPU_REPACK buffer (rows interleaved for its
    AVX2 / NEON GEMM kernels); ``store.repacked(name)`` tells, and such tensors cannot be read
    back with ``store.get`` (False keeps every tensor readable)."""
    core = native()
    store = core.WeightStore(device, repack)
    for name, value in tensors.items():
        shape = tuple(int(d) for d in value.shape)
        declared = type_of(name, shape, weight_type)
        qt = _quant_dtype(value)
        if qt is not None and type_of(name, shape, qt) == qt:
            declared = qt
        store.declare(name, list(shape), declared)
    store.allocate()
    for name, value in tensors.items():
        set_value(store, name, value)
        if on_tensor is not None:
            on_tensor(int(np.prod(value.shape, dtype=np.int64)))
    return store
