"""Hires fix (A1111): a first pass at the asked size, an upscale, and a second img2img pass.

``txt2img(..., hires=dict(scale=2.0, steps=10, denoise=0.5, upscaler="latent"))``:

- ``scale`` (default 2.0) or ``width`` / ``height``: the final size (rounded down to multiples of 8);
- ``steps``: the second pass's steps (default: the first pass's);
- ``denoise``: the second pass's strength, diffusers img2img semantics (default 0.5);
- ``upscaler``: ``"latent"`` (bilinear on the latents, A1111's "Latent"), ``"latent-nearest"``
  (A1111's "Latent (nearest)"), or ``"lanczos"`` (decode, Lanczos-resize the pixels, encode again:
  A1111's pixel upscalers without a model).

The second pass is img2img on the upscaled latents with the same prompt, sampler and seed stream
(the generator continues), which is what diffusers' img2img pipeline computes when handed those
latents as its image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from . import errors

UPSCALERS = ("latent", "latent-nearest", "lanczos")
_KEYS = ("scale", "width", "height", "steps", "denoise", "upscaler")


@dataclass(frozen=True)
class HiresSpec:
    scale: Optional[float]      # as asked (None when width / height were given)
    width: int
    height: int
    steps: int
    denoise: float
    upscaler: str


def parse_hires(hires: Optional[Mapping[str, Any]], width: int, height: int, steps: int) -> Optional[HiresSpec]:
    """Check a ``hires=`` dict against the first pass's size and steps."""
    if hires is None or hires is False:
        return None
    if hires is True:
        hires = {}
    if not isinstance(hires, Mapping):
        raise errors.InvalidArgumentError(f"hires must be a dict such as dict(scale=2.0), got {type(hires).__name__}")
    unknown = sorted(set(hires) - set(_KEYS))
    if unknown:
        raise errors.InvalidArgumentError(f"hires: unknown key(s) {unknown}; valid: {list(_KEYS)}")
    scale = hires.get("scale", 2.0)
    if not isinstance(scale, (int, float)) or not np.isfinite(scale) or not 0 < scale <= 8:
        raise errors.InvalidArgumentError(f"hires scale must be a number in (0, 8], got {scale!r}")
    sized = hires.get("width") is not None or hires.get("height") is not None
    w = hires.get("width") if hires.get("width") is not None else int(width * scale) // 8 * 8
    h = hires.get("height") if hires.get("height") is not None else int(height * scale) // 8 * 8
    for name, v in (("width", w), ("height", h)):
        if not isinstance(v, (int, np.integer)) or v < 8 or v % 8:
            raise errors.InvalidArgumentError(f"hires {name} must be a positive multiple of 8, got {v!r}")
    n = steps if hires.get("steps") is None else hires["steps"]
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise errors.InvalidArgumentError(f"hires steps must be an integer >= 1, got {n!r}")
    denoise = hires.get("denoise", 0.5)
    if not isinstance(denoise, (int, float)) or not 0.0 < float(denoise) <= 1.0:
        raise errors.InvalidArgumentError(f"hires denoise must be in (0, 1], got {denoise!r}")
    upscaler = hires.get("upscaler", "latent")
    if upscaler not in UPSCALERS:
        raise errors.InvalidArgumentError(f"hires upscaler must be one of {UPSCALERS}, got {upscaler!r}")
    return HiresSpec(None if sized else float(scale), int(w), int(h), int(n), float(denoise), upscaler)


def _source_index(out_size: int, in_size: int, mode: str):
    """Per output index: (i0, i1, weight of i1), as torch.nn.functional.interpolate computes them
    for an output size (align_corners=False)."""
    scale = in_size / out_size
    dst = np.arange(out_size, dtype=np.float64)
    if mode == "nearest":
        i0 = np.minimum(np.floor(dst * np.float32(scale)).astype(np.int64), in_size - 1)
        return i0, i0, np.zeros(out_size, np.float32)
    src = np.maximum((dst + 0.5) * np.float32(scale) - 0.5, 0.0).astype(np.float32)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (src - i0).astype(np.float32)


def resize_latents(latents: np.ndarray, height: int, width: int, mode: str = "bilinear") -> np.ndarray:
    """[B, C, h, w] -> [B, C, height, width], bilinear (or nearest) like torch's interpolate
    (align_corners=False, no antialiasing), in float32."""
    x = np.asarray(latents, dtype=np.float32)
    y0, y1, wy = _source_index(height, x.shape[2], mode)
    x0, x1, wx = _source_index(width, x.shape[3], mode)
    rows = x[:, :, y0, :] * (1 - wy)[None, None, :, None] + x[:, :, y1, :] * wy[None, None, :, None]
    out = rows[:, :, :, x0] * (1 - wx) + rows[:, :, :, x1] * wx
    return out.astype(np.float32)


def lanczos(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """[B, 3, H, W] float in [0, 1] -> [B, 3, height, width]: through 8-bit RGB and PIL's Lanczos
    filter, as A1111 resizes decoded images."""
    from PIL import Image

    out = []
    for img in images:
        u8 = (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8).transpose(1, 2, 0)
        big = Image.fromarray(u8, "RGB").resize((width, height), Image.LANCZOS)
        out.append(np.asarray(big, dtype=np.float32).transpose(2, 0, 1) / 255.0)
    return np.stack(out).astype(np.float32)


def infotext_fields(spec: HiresSpec) -> dict:
    """A1111's "parameters" fields for a hires run."""
    fields = {"Hires upscale": f"{spec.scale:g}"} if spec.scale is not None else {
        "Hires resize": f"{spec.width}x{spec.height}"}
    fields["Hires steps"] = spec.steps
    fields["Hires upscaler"] = {"latent": "Latent", "latent-nearest": "Latent (nearest)", "lanczos": "Lanczos"}[spec.upscaler]
    return fields


__all__ = ["HiresSpec", "parse_hires", "resize_latents", "lanczos", "infotext_fields", "UPSCALERS"]
