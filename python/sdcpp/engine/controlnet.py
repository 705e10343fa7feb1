"""ControlNet (diffusers ControlNetModel semantics) on the native engine.

The U-Net's encoder half (time embedding, conv_in, down blocks, mid block: the same native
blocks) over ``controlnet.<diffusers ControlNetModel state_dict key>`` weights, plus the
conditioning embedding of the control image and the zero 1x1 convolutions. Its outputs are the
residuals the U-Net adds to its skip connections and mid block:

    cn = ControlNet(store, config)              # config: controlnet_native_config(...)
    res = cn(latent, t, context, cond, scale=0.8)          # list of [B, C, h, w]
    eps = unet(latent, t, context, residuals=res)
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .. import errors
from .native_call import call_native
from .unet import check_compute, float_array
from .weights import native


def controlnet_native_config(unet_config: Mapping[str, Any], conditioning_channels: int,
                             embedding_channels) -> dict:
    """The native ControlNet config: a U-Net native config (docs/internals.md §4; its up blocks
    are replaced by the mirror of the down blocks, which only the config's checks read) plus the
    conditioning embedding's widths."""
    cfg = {k: v for k, v in dict(unet_config).items()}
    down = cfg["down"]
    n = len(down)
    cfg["up"] = [{"resnets": down[n - 1 - i]["resnets"] + 1, "depths": [0] * (down[n - 1 - i]["resnets"] + 1),
                  "heads": 1, "upsample": i < n - 1} for i in range(n)]
    cfg["out_channels"] = cfg.get("out_channels") or cfg["in_channels"]
    cfg["conditioning_channels"] = int(conditioning_channels)
    cfg["conditioning_embedding_out_channels"] = [int(c) for c in embedding_channels]
    return cfg


class ControlNet:
    """``ControlNet(store, config)``; ``cn(latent, timestep, context, cond, *, text_embeds,
    time_ids, scale)`` -> the residuals (list of float32 arrays), each times `scale`.

    cond: the control image [B, conditioning_channels, H * cond_factor, W * cond_factor] in
    [0, 1] (diffusers' preprocessing; cond_factor is 8 for every published ControlNet)."""

    def __init__(self, store, config: Mapping[str, Any]):
        if not isinstance(config, Mapping):
            raise errors.InvalidArgumentError("config must be a dict (controlnet_native_config)")
        self.config = dict(config)
        self._native = call_native(native().ControlNet, store, self.config)
        self.store = store

    @property
    def cond_factor(self) -> int:
        return int(self._native.cond_factor)

    @property
    def residual_count(self) -> int:
        return int(self._native.residual_count)

    @property
    def unused_weights(self) -> list[str]:
        return list(self._native.unused_weights)

    @property
    def compute(self) -> str:
        """Arithmetic of the linear layers, convolutions and attention with f32 / f16 / bf16
        weights, as UNet.compute: "f32" (default, exact) or "bf16" (opt-in; on CPUs with AMX-BF16
        bf16 operands summed in f32, elsewhere the same as "f32"). The pipeline sets it to the
        model's (sdcpp.load(compute=)) so the residuals and the U-Net they feed agree."""
        return self._native.compute

    @compute.setter
    def compute(self, kind: str) -> None:
        self._native.compute = check_compute(kind)

    def clear(self) -> None:
        self._native.clear()

    def __call__(self, latent, timestep, context, cond, *, text_embeds=None, time_ids=None,
                 scale: float = 1.0) -> list[np.ndarray]:
        latent = float_array(latent, "latent")
        if latent.ndim != 4:
            raise errors.InvalidArgumentError(f"latent must be [B, C, H, W], got shape {latent.shape}")
        B = latent.shape[0]
        t = float_array(timestep, "timestep")
        if t.ndim == 0:
            t = np.full((B,), float(t), dtype=np.float32)
        elif t.ndim == 1 and t.shape[0] == 1 and B > 1:
            t = np.repeat(t, B)
        if not np.all(np.isfinite(t)):
            raise errors.InvalidArgumentError("timestep must be finite")
        if not np.isfinite(scale):
            raise errors.InvalidArgumentError(f"scale must be finite, got {scale!r}")
        context = float_array(context, "context")
        cond = float_array(cond, "control image")
        if text_embeds is not None:
            text_embeds = float_array(text_embeds, "text_embeds")
        if time_ids is not None:
            time_ids = float_array(time_ids, "time_ids")
        return call_native(self._native.forward, latent, t, context, cond, text_embeds, time_ids, float(scale))


__all__ = ["ControlNet", "controlnet_native_config"]
