"""The tiny autoencoder (TAESD for the sd1 family, TAESDXL for sdxl; diffusers AutoencoderTiny)
on the native engine.

``TinyVAE.from_tensors(device, tensors, config)``: tensors by diffusers AutoencoderTiny names
(``decoder.layers.N...``, ``encoder.layers.N...``); the original TAESD files
(``taesd_decoder.safetensors`` with keys ``1.weight``..., ``taesd_encoder.safetensors`` with
``0.weight``...) are renamed by :func:`canonical_names`. ``decode(latents)`` takes the latents as
the sampler makes them (TAESD works in the scaled latent space) and returns images in [-1, 1];
``encode(images in [-1, 1])`` returns such latents. The op lists that drive the native model are
derived from the config (model/taesd.h).
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import numpy as np

from .. import errors
from .native_call import call_native
from .weights import build_store, native

DEFAULT_CONFIG = {"encoder_block_out_channels": [64, 64, 64, 64], "decoder_block_out_channels": [64, 64, 64, 64],
                  "num_encoder_blocks": [1, 3, 3, 3], "num_decoder_blocks": [3, 3, 3, 1], "latent_channels": 4,
                  "act_fn": "relu", "upsample_fn": "nearest", "upsampling_scaling_factor": 2}
PREFIX = "taesd."


def ops_from_config(config: Mapping[str, Any]) -> tuple[list, list]:
    """(decoder ops, encoder ops) as (kind, name, stride), in diffusers' layer numbering."""
    cfg = dict(DEFAULT_CONFIG)
    cfg.update({k: v for k, v in config.items() if k in DEFAULT_CONFIG})
    if cfg["act_fn"] != "relu" or cfg["upsample_fn"] != "nearest" or cfg["upsampling_scaling_factor"] != 2:
        raise errors.UnknownArchitectureError(
            f"tiny autoencoder: only relu / nearest 2x upsampling is supported, got {cfg['act_fn']!r} / "
            f"{cfg['upsample_fn']!r} x{cfg['upsampling_scaling_factor']}")
    dec, i = [("conv", "decoder.layers.0", 1), ("relu", "", 1)], 2
    blocks = list(cfg["num_decoder_blocks"])
    for n_i, n in enumerate(blocks):
        for _ in range(n):
            dec.append(("block", f"decoder.layers.{i}", 1))
            i += 1
        if n_i < len(blocks) - 1:
            dec.append(("up", "", 1))
            i += 1
        dec.append(("conv", f"decoder.layers.{i}", 1))
        i += 1
    enc, i = [], 0
    for n_i, n in enumerate(cfg["num_encoder_blocks"]):
        enc.append(("conv", f"encoder.layers.{i}", 1 if n_i == 0 else 2))
        i += 1
        for _ in range(n):
            enc.append(("block", f"encoder.layers.{i}", 1))
            i += 1
    enc.append(("conv", f"encoder.layers.{i}", 1))
    return dec, enc


_ORIGINAL = re.compile(r"^(\d+)\.(.+)$")


def canonical_names(tensors: Mapping[str, Any], half: Optional[str] = None) -> dict:
    """AutoencoderTiny names from either spelling. The original files hold one half each, as a
    Sequential: the decoder's index 0 is its Clamp (no weights), so its layer i is diffusers'
    layer i - 1; the encoder's indices are diffusers' own. `half` ("decoder" / "encoder") says
    which one an original file is (from its file name)."""
    if any(k.startswith(("decoder.layers.", "encoder.layers.")) for k in tensors):
        return {k: v for k, v in tensors.items() if k.startswith(("decoder.layers.", "encoder.layers."))}
    if half not in ("decoder", "encoder"):
        raise errors.UnknownArchitectureError("an original TAESD file must be named *_decoder.* or *_encoder.*")
    out = {}
    for k, v in tensors.items():
        m = _ORIGINAL.match(k)
        if not m:
            raise errors.UnknownArchitectureError(f"tensor {k!r} is not a TAESD layer")
        idx = int(m.group(1)) - (1 if half == "decoder" else 0)
        out[f"{half}.layers.{idx}.{m.group(2)}"] = v
    return out


class TinyVAE:
    """A TinyAutoencoder over its own WeightStore (f32 or f16 weights; activations f32)."""

    def __init__(self, store, config: Mapping[str, Any]):
        self.config = dict(DEFAULT_CONFIG)
        self.config.update(config)
        dec, enc = ops_from_config(self.config)
        names = set(store.names()) if hasattr(store, "names") else None
        if names is not None:
            if not any(n.startswith(PREFIX + "decoder.") for n in names):
                dec = []
            if not any(n.startswith(PREFIX + "encoder.") for n in names):
                enc = []
        self.latent_channels = int(self.config["latent_channels"])
        self._store = store
        self._native = call_native(native().TinyAutoencoder, store, PREFIX, dec, enc, self.latent_channels)

    @classmethod
    def from_tensors(cls, device, tensors: Mapping[str, Any], config: Optional[Mapping[str, Any]] = None,
                     weight_type: str = "f32") -> "TinyVAE":
        store = build_store(device, {PREFIX + k: v for k, v in tensors.items()}, weight_type,
                            lambda name, shape, wt: "f32" if len(shape) < 2 else wt)
        return cls(store, config or {})

    @property
    def factor(self) -> int:
        return int(self._native.factor)

    @property
    def has_decoder(self) -> bool:
        return bool(self._native.has_decoder)

    @property
    def has_encoder(self) -> bool:
        return bool(self._native.has_encoder)

    def decode(self, latents) -> np.ndarray:
        """[B, C, h, w] latents (as sampled) -> [B, 3, 8h, 8w] images in [-1, 1]."""
        z = np.ascontiguousarray(latents, dtype=np.float32)
        return call_native(self._native.decode, z, self.latent_channels)

    def encode(self, images) -> np.ndarray:
        """[B, 3, H, W] images in [-1, 1] -> [B, C, H/8, W/8] latents (as the sampler uses them)."""
        x = np.ascontiguousarray(images, dtype=np.float32)
        return call_native(self._native.encode, x, self.latent_channels)

    def clear(self) -> None:
        self._native.clear()

    @property
    def compute_buffer_size(self) -> int:
        return int(self._native.compute_buffer_size)


__all__ = ["TinyVAE", "ops_from_config", "canonical_names", "DEFAULT_CONFIG"]
