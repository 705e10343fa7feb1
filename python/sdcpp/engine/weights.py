"""Devices and weight stores: canonical tensors into ggml backend buffers.

Python decides *what* (names, shapes, the storage type of each tensor); the native
WeightStore does the copy and the f32 -> f16/bf16/q8_0/q5_0/q4_0 conversion with the GIL
released. Tensors that a GGUF file already holds in one of the quantized types are copied
block for block where their role takes that type (``build_store``).
"""
from __future__ import annotations

import os
import re
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
# Roles that keep f16 under a quantized weight_type, as llama.cpp keeps its most sensitive
# tensors in higher types: role -> (pattern of its canonical weight names, the weight types it
# applies to). Chosen by their share of the final-latent error per byte (bench/q8_sensitivity.py,
# bench/q8_fidelity_real.py; docs/generation.md, "Quantized weights: what stays f16"). Most of
# q8_0's error is ggml's q8 rounding of the activations, and these roles' inputs lose most to it.
KEEP_F16 = {
    # the 1x1 projections at the resnets' and the transformers' entry / exit, and the stride-2
    # convolutions between resolutions: a few percent of the weights, each as harmful quantized
    # as a role ten times its size
    "resnet shortcut": (r"\.conv_shortcut\.weight$", QUANT_TYPES),
    "transformer proj_in": (r"\.attentions\.\d+\.proj_in\.weight$", QUANT_TYPES),
    "transformer proj_out": (r"\.attentions\.\d+\.proj_out\.weight$", QUANT_TYPES),
    "downsampler": (r"\.downsamplers\.\d+\.conv\.weight$", QUANT_TYPES),
    # CLIP self-attention: its error reaches every U-Net call through the context and CFG
    "text self-attention": (r"\.self_attn\.(q|k|v|out)_proj\.weight$", QUANT_TYPES),
    # the largest share left (23% of SD1.5's U-Net weights): for q8_0 only, the type chosen for
    # fidelity (issue 8: final latents within 3e-2), not for q5_0 / q4_0, chosen for size
    "resnet conv2": (r"\.resnets\.\d+\.conv2\.weight$", ("q8_0",)),
}
_KEEP_F16 = [(role, re.compile(pattern), types) for role, (pattern, types) in KEEP_F16.items()]
LOAD_WORKERS = max(1, min(4, os.cpu_count() or 1))   # threads filling a store (build_store)
# Weights used in place from the checkpoint where possible (build_store); SDCPP_ZERO_COPY=0 copies.
ZERO_COPY = os.environ.get("SDCPP_ZERO_COPY", "1") != "0"


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


def f16_role(name: str, weight_type: Optional[str] = None) -> Optional[str]:
    """The KEEP_F16 role of a weight name (that applies to `weight_type`, if given), or None."""
    for role, pattern, types in _KEEP_F16:
        if pattern.search(name) and (weight_type is None or weight_type in types):
            return role
    return None


def storage_type(name: str, shape: tuple[int, ...], weight_type: str, keep_f16: bool = True) -> str:
    """The ggml type a tensor is stored in: matrices and conv kernels take `weight_type`;
    vectors (biases, norms), embeddings (token/position tables, the time embedding) and tiny
    tensors stay f32 (they cost little and ggml's element-wise ops want f32). With a quantized
    `weight_type`, matrices of fewer than MIN_QUANT_ROWS output rows and the KEEP_F16 roles
    (unless `keep_f16` is False) take f16, and the native store takes f16 for a weight whose
    reduction length (a row; IC*KH*KW of a conv kernel) is not a whole number of 32-value
    blocks (``WeightStore.types()`` says what was stored)."""
    if weight_type not in WEIGHT_TYPES:
        raise errors.InvalidArgumentError(f"weight_type must be one of {WEIGHT_TYPES}, got {weight_type!r}")
    if len(shape) < 2 or "embedding" in name or "norm" in name:
        return "f32"
    if weight_type in QUANT_TYPES and (shape[0] < MIN_QUANT_ROWS or (keep_f16 and f16_role(name, weight_type))):
        return "f16"
    return weight_type


def _keeps_blocks(type_of, name: str, shape: tuple, qt: str) -> bool:
    """Whether a record a file holds in quantized type `qt` is stored as its own blocks: where its
    role takes `qt`, and for the KEEP_F16 roles too (the policy is for converting from float:
    dequantizing a file's blocks to f16 would round them again and gain nothing)."""
    declared = type_of(name, shape, qt)
    if declared == qt:
        return True
    return (type_of is storage_type and declared == "f16"
            and storage_type(name, shape, qt, keep_f16=False) == qt)


def as_native_array(arr: np.ndarray) -> np.ndarray:
    """`arr` in a dtype the native store takes as is (f32 or f16); other real dtypes widen to f32."""
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
    store.set(name, as_native_array(np.asarray(arr)))


# What a record's on-disk dtype must be for the store to use its bytes in place (zero copy).
_IN_PLACE = {"F32": "f32", "F16": "f16", "BF16": "bf16"}


def _mappable(record, stored: str) -> bool:
    """Whether `record`'s bytes can serve as the stored tensor as they are: same type, C order
    (no transposed/strided view), at a multiple of the element size, in a plain file (records
    of .ckpt archives are stored members, still plain bytes of the file)."""
    from ..io.records import DTYPE_ITEMSIZE, TensorRecord
    from ..io.safetensors_reader import contiguous_strides

    return (isinstance(record, TensorRecord) and _IN_PLACE.get(record.dtype) == stored
            and tuple(record.strides) == tuple(contiguous_strides(record.shape))
            and record.offset % DTYPE_ITEMSIZE[record.dtype] == 0 and len(record.shape) >= 1
            and all(int(d) > 0 for d in record.shape))


def _without_aliases(records: dict) -> set:
    """The names whose bytes overlap no other record's: tensors sharing storage (a pickled
    checkpoint's tied weights) must stay separate copies, or a LoRA written into one would
    change the other through the shared mapping."""
    from ..io.records import DTYPE_ITEMSIZE

    spans = sorted((str(r.file), int(r.offset), int(r.offset) + DTYPE_ITEMSIZE[r.dtype] * int(np.prod(r.shape)), n)
                   for n, r in records.items())
    # sorted by start: a span overlapping anything overlaps the earlier span reaching furthest
    clash: set = set()
    end, prev = {}, {}
    for f, s0, e, n in spans:
        if f in end and s0 < end[f]:
            clash.update((n, prev[f]))
        if f not in end or e > end[f]:
            end[f], prev[f] = e, n
    return set(records) - clash


def build_store(device, tensors: Mapping[str, Any], weight_type: str = "f32",
                type_of: Callable[[str, tuple, str], str] = storage_type,
                on_tensor: Optional[Callable[[int], None]] = None, repack: bool = True,
                zero_copy: Optional[bool] = None, spill: Optional[str] = None):
    """A WeightStore holding `tensors` (name -> numpy array or TensorRecord), converted
    one tensor per worker thread at a time (LOAD_WORKERS) so peak host memory beyond the store
    stays at a few tensors. `on_tensor(elements)` is called after each tensor (progress).

    A record already quantized in q8_0 / q5_0 / q4_0 (GGUF) keeps its type and its blocks
    when its role takes that type (``type_of(name, shape, that type)`` returns it, or would but
    for KEEP_F16), whatever `weight_type` is: dequantizing would add no precision. Elsewhere it
    is dequantized.

    repack: on the CPU, q4_0 matrices go to ggml's CPU_REPACK buffer (rows interleaved for its
    AVX2 / NEON GEMM kernels), except on CPUs with AVX-512 VNNI, where sdcpp's own integer product
    is faster on the plain layout; ``store.repacked(name)`` tells, and such tensors cannot be read
    back with ``store.get`` (False keeps every tensor readable).

    zero_copy (default ZERO_COPY; CPU only): a TensorRecord already in its stored plain type
    (f32/f16/bf16), C order, at a multiple of its element size in its file and sharing no bytes
    with another record is not copied: the store maps the file privately and uses those bytes in
    place (WeightStore.map_to_file; copy-on-write if a LoRA writes it). The other records' file
    pages are released from this process's mapping as soon as their tensor is stored
    (io.mmap_view.release_pages), so the checkpoint's pages never sit in RSS beside the copy.

    spill (CPU): a folder for the converted tensors' temporary file (WeightStore.spill_to,
    unlinked at once): they then page like the checkpoint and memory="low" can stream them
    (UNet.stream_weights). Memory as usual where the file cannot be made."""
    core = native()
    store = core.WeightStore(device, repack)
    zero_copy = ZERO_COPY if zero_copy is None else bool(zero_copy)
    zero_copy = zero_copy and device.is_cpu and core.WeightStore.mapping_supported()
    candidates = {}
    for name, value in tensors.items():
        shape = tuple(int(d) for d in value.shape)
        declared = type_of(name, shape, weight_type)
        qt = _quant_dtype(value)
        if qt is not None and _keeps_blocks(type_of, name, shape, qt):
            declared = qt
        store.declare(name, list(shape), declared)
        if zero_copy and _mappable(value, declared):
            candidates[name] = value
    mapped = _without_aliases(candidates)
    for name in mapped:
        store.map_to_file(name, str(tensors[name].file), int(tensors[name].offset))
    if spill and device.is_cpu and core.WeightStore.mapping_supported():
        store.spill_to(str(spill))
    try:
        store.allocate()
    except Exception:
        if not mapped:
            raise
        # a file system that refuses private writable maps: copy instead
        return build_store(device, tensors, weight_type, type_of, on_tensor, repack, zero_copy=False, spill=spill)
    import threading

    progress_lock = threading.Lock()

    def done(value) -> None:
        if on_tensor is not None:
            with progress_lock:
                on_tensor(int(np.prod(value.shape, dtype=np.int64)))

    for name in mapped:
        done(tensors[name])

    spilled = int(getattr(store, "spilled_nbytes", 0)) > 0

    def fill(name, value) -> None:
        set_value(store, name, value)
        if not isinstance(value, np.ndarray):
            # the copy is in the store: the mapped file's pages need not stay in our RSS
            _release(value)
        if spilled:
            store.release_pages(name)   # nor the spill file's pages just written (they are in the file)
        done(value)

    items = [(k, v) for k, v in tensors.items() if k not in mapped]
    workers = min(LOAD_WORKERS, len(items))
    if workers <= 1:
        for name, value in items:
            fill(name, value)
        return store
    # The copy is bound by page faults (reading the mapped file, first touch of the store's
    # memory) and conversions, both outside the GIL: a few threads overlap them. Each holds at
    # most one converted tensor. Errors surface in tensor order.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        for fut in [pool.submit(fill, name, value) for name, value in items]:
            fut.result()
    return store


def _release(record) -> None:
    from ..io.mmap_view import release_pages
    from ..io.records import TensorRecord

    if isinstance(record, TensorRecord):
        release_pages(record)
