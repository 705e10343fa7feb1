"""Inpainting's masks, diffusers' semantics (StableDiffusionInpaintPipeline and its SDXL sibling).

A mask is white (1) where the image is repainted. It is read as grayscale in [0, 1], resized to
the image (Lanczos, when its size differs), and binarised at 0.5; the latent-grid mask is its
nearest-neighbour resize (torch's interpolate). The masked image keeps the pixels where the mask
is 0 and is mid-gray (0 in [-1, 1]) elsewhere.

4-channel models repaint by blending: after every step the known region is replaced by the
image's latents noised to the next step's level (the same noise as the start), and by the clean
latents after the last step. 9-channel inpainting models get the mask and the masked image's
latents as extra U-Net input channels.
"""
from __future__ import annotations

import numpy as np

from . import errors


def mask_to_array(mask, height: int, width: int) -> np.ndarray:
    """A PIL image or array (HxW, HxWx1/3, 1xHxW) -> float32 [1, 1, height, width] of 0 / 1."""
    from PIL import Image

    if isinstance(mask, Image.Image):
        img = mask.convert("L")
        if img.size != (width, height):
            img = img.resize((width, height), Image.LANCZOS)
        arr = np.asarray(img, dtype=np.float32) / 255.0
    else:
        arr = np.asarray(mask, dtype=np.float32)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = arr.transpose(1, 2, 0)
        if arr.ndim == 3:
            arr = arr.mean(axis=2) if arr.shape[2] == 3 else arr[..., 0]
        if arr.ndim != 2:
            raise errors.InvalidArgumentError(f"mask must be a PIL image or an HxW array, got shape {np.shape(mask)}")
        if not np.all(np.isfinite(arr)):
            raise errors.InvalidArgumentError("mask holds non-finite values")
        if arr.shape != (height, width):
            if arr.max(initial=0.0) > 1.0 or arr.min(initial=0.0) < 0.0:
                raise errors.InvalidArgumentError("a mask array must hold values in [0, 1]")
            img = Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8), "L")
            arr = np.asarray(img.resize((width, height), Image.LANCZOS), dtype=np.float32) / 255.0
    return (arr >= 0.5).astype(np.float32)[None, None]


__all__ = ["mask_to_array"]
