"""From a source to a ready Model: inspect, pick storage types, fill native weight stores.

Each component (text encoders, U-Net, VAE) gets its own WeightStore so that one can be freed
or swapped (a separate VAE, text encoders dropped after encoding) without touching the others.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Union

import numpy as np

from . import errors
from .engine.weights import QUANT_TYPES, WEIGHT_TYPES, build_store, open_device, storage_type
from .memory import spill_dir

PathLike = Union[str, os.PathLike]


def _vae_storage_type(name: str, shape: tuple, weight_type: str) -> str:
    """The VAE computes in f32 whatever its storage (its activations overflow f16) and is a small
    share of the model, so it keeps its exact default storage unless bf16 was asked for (it is
    never quantized)."""
    from .engine.vae import DEFAULT_WEIGHT_TYPE, storage_type as vae_storage

    if weight_type in QUANT_TYPES:  # asked of a GGUF's quantized record (build_store): never
        return "f32" if len(shape) < 2 else DEFAULT_WEIGHT_TYPE
    return vae_storage(name, shape, "bf16" if weight_type == "bf16" else DEFAULT_WEIGHT_TYPE)


def _separate_vae(vae: PathLike) -> dict:
    from .io import open_source
    from .naming import canonicalize

    names = canonicalize(open_source(vae))
    tensors = {k: v for k, v in names.tensors.items() if k.startswith("vae.")}
    if not tensors:
        raise errors.UnknownArchitectureError("no VAE tensors found in the file given as vae=", file=vae)
    return tensors


def _default_weight_type(tensors: dict) -> str:
    """The U-Net's and text encoders' storage type when none is asked for: f16, except that a
    bf16 checkpoint stays bf16. f16 halves the resident size of an f32 checkpoint (SSD-1B: 9 GB
    -> 4.6 GB) at a fidelity cost far below the sampling noise (final latents within 5e-3 of
    diffusers fp32 in the tests); ask for weight_type="f32" to compute exactly. Tensors a GGUF
    holds in q8_0 / q5_0 / q4_0 keep that type whatever weight_type is (engine.weights.build_store)."""
    counts: dict[str, int] = {}
    for name, rec in tensors.items():
        if name.startswith("unet.") and len(rec.shape) >= 2:
            counts[rec.dtype] = counts.get(rec.dtype, 0) + 1
    dtype = max(counts, key=counts.get) if counts else "F32"
    return "bf16" if dtype == "BF16" else "f16"


def load_model(source: PathLike, *, vae: Optional[PathLike] = None, device: str = "auto",
               weight_type: Optional[str] = None, threads: Optional[int] = None,
               prediction_type: Optional[str] = None, variant: Optional[str] = None,
               revision: Optional[str] = None, memory: Optional[str] = None, progress: bool = False,
               preview_vae: Optional[PathLike] = None, compute: str = "f32"):
    from .arch import inspect
    from .engine.text import TextEncoder
    from .engine.vae import VAE
    from .memory import LazyComponent, Resident, StoreHandle, policy, mostly_paged, release_file_pages
    from .pipeline import Model

    if weight_type is not None and weight_type not in WEIGHT_TYPES:
        raise errors.InvalidArgumentError(f"weight_type must be one of {WEIGHT_TYPES}, got {weight_type!r}")
    if prediction_type not in (None, "epsilon", "v_prediction"):
        raise errors.InvalidArgumentError(
            f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise errors.InvalidArgumentError(f"threads must be a positive integer, got {threads!r}")
    mem = policy(memory)
    from .engine.unet import check_compute

    check_compute(compute)

    from .io import open_source

    from .tiny_vae_source import read_tiny_vae

    info = inspect(open_source(source, variant=variant, revision=revision))
    tensors = dict(info.tensors)
    tiny = read_tiny_vae(vae) if vae is not None else None       # TAESD in place of the VAE
    preview = read_tiny_vae(preview_vae) if preview_vae is not None else None
    if preview_vae is not None and preview is None:
        raise errors.UnknownArchitectureError("preview_vae= must be a tiny autoencoder (TAESD / TAESDXL)",
                                              file=preview_vae)
    if vae is not None and tiny is None:
        tensors = {k: v for k, v in tensors.items() if not k.startswith("vae.")}
        tensors.update(_separate_vae(vae))
        info = info.with_vae(tensors)
    if info.vae is None and tiny is None:
        raise errors.MissingTensorError("the checkpoint has no VAE; pass vae= with a VAE file or folder",
                                        file=info.path)
    if not info.text_encoders:
        raise errors.MissingTensorError("the checkpoint has no text encoder", file=info.path)

    dev = open_device(device, threads)
    wt = weight_type or _default_weight_type(tensors)

    stores = {}     # component -> WeightStore (kept for LoRA merging, sdcpp.lora)
    from .progress import phases
    bar = phases(progress).bar("load", sum(int(np.prod(v.shape)) for v in tensors.values()), "param", scale=True)

    def fill(prefix: str, type_of=storage_type, without: tuple = ()):
        sub = {k: v for k, v in tensors.items() if k.startswith(prefix) and not k.startswith(without)}
        # memory="low": a converted U-Net goes to a temporary file so that it streams like a
        # mapped checkpoint (sdcpp.memory)
        spill = spill_dir() if prefix == "unet." and mem.stream_unet_weights else None
        try:
            return build_store(dev, sub, wt, type_of, on_tensor=bar.update, spill=spill)
        except ValueError as exc:
            raise errors.BackendError(f"loading {prefix[:-1]} weights from {info.path}: {exc}") from None

    def named(make, prefix: str):
        """`make`, with the native model's complaints (a weight of the wrong shape, a missing
        one) re-raised as CheckpointError naming the file and the tensor as stored in it."""
        def build(store):
            try:
                return make(store)
            except (errors.InvalidArgumentError, errors.BackendError) as exc:
                m = re.search(r"'((?:unet|vae|text_encoder(?:_2)?)\.[^']+)'", str(exc))
                tensor = info.origin.get(m.group(1), m.group(1)) if m else None
                raise errors.CheckpointError(f"the {prefix[:-1]} cannot be built from this checkpoint: {exc}",
                                             file=info.path, tensor=tensor) from None
        return build

    def component(prefix: str, make, on_demand: bool, type_of=storage_type, parts: Optional[dict] = None):
        """The component over a store of `prefix`'s tensors; with `on_demand`, a LazyComponent
        whose weights can be freed and rebuilt (sdcpp.memory). Built here either way, so bad
        weights fail at load. `parts`: part name -> the tensor prefixes such a partial store leaves out."""
        make = named(make, prefix)
        if not on_demand:
            stores[prefix[:-1]] = fill(prefix, type_of)
            return make(stores[prefix[:-1]])
        res = Resident(prefix[:-1], lambda part=None: fill(prefix, type_of, (parts or {}).get(part, ())), make)
        res.get()
        if prefix.startswith("text_encoder"):
            res.release()   # checked; rebuilt for each prompt (memory="low"), so not held while the rest loads
        stores[prefix[:-1]] = StoreHandle(res)
        return LazyComponent(res)

    def tiny_vae(found):
        from .engine.taesd import TinyVAE

        t_tensors, t_config, t_path = found
        try:
            return TinyVAE.from_tensors(dev, t_tensors, t_config)
        except (errors.InvalidArgumentError, errors.BackendError) as exc:
            raise errors.CheckpointError(f"not a usable tiny autoencoder: {exc}", file=t_path) from None

    # The VAE first: with memory="low" it is checked and freed before the rest is built. A tiny
    # autoencoder (a few MB) stays resident in every mode.
    if tiny is not None:
        vae_obj = tiny_vae(tiny)
    else:
        vae_obj = component("vae.", lambda st: VAE(st, info.vae_native_config()), mem.vae_on_demand,
                            _vae_storage_type, parts=VAE_PARTS)
        if mem.vae_on_demand:
            vae_obj.resident.release()
    encoders = []
    for meta, cfg in zip(info.text_encoders, info.text_encoder_native_configs()):
        prefix = meta["name"] + "."
        encoders.append(component(prefix, lambda st, p=prefix, c=cfg: TextEncoder(st, p, c), mem.release_text_encoders))
    components = {
        "text_encoders": encoders,
        "unet": component("unet.", lambda st: _unet(st, info.unet_native_config(), mem.stream_unet_weights, compute),
                          mem.unet_on_demand),
        "vae": vae_obj,
        "preview": tiny_vae(preview) if preview is not None else None,
        "stores": stores,
        "memory": mem,
    }
    bar.close()
    # memory="low": the U-Net's mapped / spilled pages leave RSS until its first step, so encoding
    # does not sit on top of them
    unet_res = components["unet"].resident if isinstance(components["unet"], LazyComponent) else None
    if unet_res is not None and mostly_paged(unet_res.store):
        release_file_pages(unet_res.store)
    prediction = prediction_type or info.prediction_type or "epsilon"
    return Model(info, dev, components, wt, Path(info.path) if info.path else Path(str(source)), prediction,
                 compute)


# What a VAE store built for one direction leaves out (memory="low" builds the VAE per encode /
# decode): decoding needs no encoder weights (137 of SD's 335 MB in f32), encoding no decoder.
VAE_PARTS = {"decoder": ("vae.encoder.", "vae.quant_conv."),
             "encoder": ("vae.decoder.", "vae.post_quant_conv.")}


def _unet(store, config, stream: bool, compute: str = "f32"):
    """The U-Net over its store; memory="low" streams its mapped weights (UNet.stream_weights);
    compute: its arithmetic (UNet.compute)."""
    from .engine.unet import UNet

    unet = UNet(store, config)
    unet.stream_weights = stream
    unet.compute = compute
    return unet
