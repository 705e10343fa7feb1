"""Images out: PIL images carrying A1111-style generation parameters."""
from __future__ import annotations

from typing import Optional

import numpy as np

# Our sampler names -> the names A1111 writes in its "parameters" text.
_A1111_SAMPLER = {
    "euler": "Euler", "euler_a": "Euler a", "heun": "Heun", "dpm2": "DPM2", "dpm++2m": "DPM++ 2M",
    "dpm++2s_a": "DPM++ 2S a", "lcm": "LCM", "ddim_trailing": "DDIM", "ipndm": "IPNDM",
}
_A1111_SCHEDULE = {
    "discrete": "Automatic", "karras": "Karras", "exponential": "Exponential", "ays": "Align Your Steps",
    "sgm_uniform": "SGM Uniform", "simple": "Simple", "lcm": "LCM",
}


def a1111_parameters(p, *, seed: int, index: int, model_name: str, model_hash: Optional[str]) -> str:
    """The "parameters" text A1111 writes into its PNGs (what UIs read back to re-create an image)."""
    fields = [
        f"Steps: {p.steps}",
        f"Sampler: {_A1111_SAMPLER.get(p.sampler, p.sampler)}",
        f"Schedule type: {_A1111_SCHEDULE.get(p.scheduler, p.scheduler)}",
        f"CFG scale: {p.cfg_scale:g}",
        f"Seed: {seed}",
        f"Size: {p.width}x{p.height}",
    ]
    if model_hash:
        fields.append(f"Model hash: {model_hash}")
    fields.append(f"Model: {model_name}")
    if p.strength is not None:
        fields.append(f"Denoising strength: {p.strength:g}")
    if p.clip_skip:
        fields.append(f"Clip skip: {p.clip_skip}")
    if p.batch_size > 1:
        fields.append(f"Batch pos: {index}")
    for k, v in p.extra.items():
        fields.append(f"{k}: {v}")
    text = p.prompt
    if p.negative_prompt:
        text += f"\nNegative prompt: {p.negative_prompt}"
    return text + "\n" + ", ".join(fields)


def to_pil(image: np.ndarray, parameters: str):
    """float32 HxWx3 in [0, 1] -> RGB PIL image (rounded as diffusers does) with `.info["parameters"]`."""
    from PIL import Image

    pixels = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
    img = Image.fromarray(pixels)
    img.info["parameters"] = parameters
    return img


def save_png(image, path: str) -> None:
    """Save with the "parameters" text chunk A1111 and most UIs read."""
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    if "parameters" in image.info:
        meta.add_text("parameters", image.info["parameters"])
    image.save(path, pnginfo=meta)
