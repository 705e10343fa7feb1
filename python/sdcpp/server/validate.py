"""Requests -> GenSpec, checked against the server's limits before anything is queued.

Every refusal is an ApiError naming the field (A1111's or OpenAI's name for it), so a client
knows what to change; the pipeline's own checks run again in the worker as a second line.
"""
from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Optional

from .. import errors
from .config import Limits
from .errors import ApiError, bad_request
from .images import decode_b64_image
from .names import UnknownName, resolve_sampler


@dataclass
class GenSpec:
    mode: str                     # "txt2img" | "img2img"
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    cfg_scale: float
    sampler: str
    scheduler: str
    seed: int                     # the first image's; image i gets seed + i (A1111's all_seeds)
    count: int                    # images in all
    clip_skip: Optional[int] = None
    init_images: list = field(default_factory=list)   # RGB PIL images, already width x height
    strength: Optional[float] = None
    mask: object = None           # inpainting: an "L" PIL image, width x height, white = repaint
    hires: Optional[dict] = None  # txt2img's hires fix (sdcpp.hires)


def check_prompt(text, field_name: str, limits: Limits, lora_dir: Optional[str], loras: bool = True) -> str:
    """Length, and (loras=True) that every <lora:name:w> tag names a file in lora_dir. Only the
    prompt's tags are applied (docs/lora.md), so the negative prompt's are not looked up."""
    if not isinstance(text, str):
        raise bad_request(field_name, f"{field_name} must be a string")
    if len(text) > limits.max_prompt_chars:
        raise bad_request(field_name, f"{field_name} is {len(text)} characters, over the limit of "
                                      f"{limits.max_prompt_chars}")
    if not loras:
        return text
    from ..lora import resolve_lora_name
    from ..tokenizer.prompt import extract_lora_tags

    try:
        _, tags = extract_lora_tags(text)
        for name, _ in tags:
            resolve_lora_name(name, lora_dir)       # a missing LoRA is the client's error: 400 now
    except (errors.InvalidArgumentError, errors.LoraError) as exc:
        raise bad_request(field_name, f"{field_name}: {exc}") from None
    return text


def check_size(width, height, limits: Limits, names=("width", "height")) -> tuple[int, int]:
    for value, name, cap in ((width, names[0], limits.max_width), (height, names[1], limits.max_height)):
        if not isinstance(value, int) or value <= 0 or value % 8:
            raise bad_request(name, f"{name} must be a positive multiple of 8, got {value!r}")
        if value > cap:
            raise bad_request(name, f"{name} {value} is over the server's limit of {cap}")
    return int(width), int(height)


def check_steps(steps, limits: Limits, name: str = "steps") -> int:
    if not isinstance(steps, int) or steps < 1:
        raise bad_request(name, f"{name} must be an integer >= 1, got {steps!r}")
    if steps > limits.max_steps:
        raise bad_request(name, f"{name} {steps} is over the server's limit of {limits.max_steps}")
    return steps


def check_count(count: int, limits: Limits, name: str) -> int:
    if count < 1:
        raise bad_request(name, f"{name} must be >= 1")
    if count > limits.max_images:
        raise bad_request(name, f"{count} images in one request is over the server's limit of {limits.max_images}")
    return count


def check_cfg(value, name: str = "cfg_scale") -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not (0.0 <= value <= 100.0):
        raise bad_request(name, f"{name} must be a finite number in [0, 100], got {value!r}")
    return float(value)


def check_seed(seed, count: int, name: str = "seed") -> int:
    """-1 / None: a fresh random seed (32 bits, as A1111 draws); the seeds seed..seed+count-1 must fit 64 bits."""
    if seed is None or seed == -1:
        return secrets.randbits(32)
    if not isinstance(seed, int) or seed < 0 or seed + count - 1 >= 2 ** 64:
        raise bad_request(name, f"{name} must be -1 or an integer in [0, 2**64 - {count}], got {seed!r}")
    return seed


def sampler_and_scheduler(sampler, scheduler, default: str, names=("sampler_name", "scheduler")) -> tuple[str, str]:
    for value, name in ((sampler, names[0]), (scheduler, names[1])):
        if value is not None and not isinstance(value, str):
            raise bad_request(name, f"{name} must be a string")
    try:
        return resolve_sampler(sampler, scheduler, default)
    except UnknownName as exc:
        raise bad_request(names[0] if exc.field == "sampler_name" else names[1], str(exc)) from None


def a1111_spec(req, mode: str, limits: Limits, lora_dir: Optional[str]) -> GenSpec:
    """An A1111 txt2img / img2img body -> GenSpec."""
    prompt = check_prompt(req.prompt, "prompt", limits, lora_dir)
    negative = check_prompt(req.negative_prompt, "negative_prompt", limits, lora_dir, loras=False)
    width, height = check_size(req.width, req.height, limits)
    steps = check_steps(req.steps, limits)
    if req.batch_size < 1:
        raise bad_request("batch_size", f"batch_size must be >= 1, got {req.batch_size}")
    if req.n_iter < 1:
        raise bad_request("n_iter", f"n_iter must be >= 1, got {req.n_iter}")
    count = check_count(req.batch_size * req.n_iter, limits, "batch_size")
    cfg = check_cfg(req.cfg_scale)
    sampler, scheduler = sampler_and_scheduler(req.sampler_name or req.sampler_index, req.scheduler, "Euler")
    seed = check_seed(req.seed, count)
    clip_skip = req.override_settings.get("CLIP_stop_at_last_layers")
    if clip_skip is not None and (not isinstance(clip_skip, int) or not 1 <= clip_skip <= 12):
        raise bad_request("override_settings.CLIP_stop_at_last_layers",
                          f"CLIP_stop_at_last_layers must be an integer in [1, 12], got {clip_skip!r}")
    spec = GenSpec(mode, prompt, negative, width, height, steps, cfg, sampler, scheduler, seed, count, clip_skip)
    if mode == "txt2img" and req.enable_hr:
        spec.hires = hires_of(req, width, height, steps, limits)
    if mode == "img2img":
        if req.mask is not None:
            from PIL import ImageOps

            mask = fit(decode_b64_image(req.mask, "mask", limits.max_upload_pixels).convert("L"), width, height)
            spec.mask = ImageOps.invert(mask) if req.inpainting_mask_invert else mask
            spec.mode = "inpaint"
        if not req.init_images:
            raise bad_request("init_images", "img2img needs at least one image in init_images")
        if len(req.init_images) > limits.max_images:
            raise bad_request("init_images", f"{len(req.init_images)} init_images is over the limit of {limits.max_images}")
        s = req.denoising_strength
        if not isinstance(s, (int, float)) or not math.isfinite(s) or not 0.0 < s <= 1.0:
            raise bad_request("denoising_strength", f"denoising_strength must be in (0, 1], got {s!r}")
        spec.strength = float(s)
        spec.init_images = [fit(decode_b64_image(b, f"init_images[{i}]", limits.max_upload_pixels), width, height)
                            for i, b in enumerate(req.init_images)]
    return spec


_HR_UPSCALERS = {None: "latent", "latent": "latent", "latent (bilinear)": "latent", "latent (nearest)": "latent-nearest",
                 "latent (nearest-exact)": "latent-nearest", "lanczos": "lanczos"}


def hires_of(req, width: int, height: int, steps: int, limits: Limits) -> dict:
    """A1111's enable_hr fields -> txt2img's hires dict (sdcpp.hires), sizes within the limits."""
    key = req.hr_upscaler.lower() if isinstance(req.hr_upscaler, str) else req.hr_upscaler
    if key not in _HR_UPSCALERS:
        raise bad_request("hr_upscaler", f"hr_upscaler {req.hr_upscaler!r} is not available; sdcpp has "
                                         "'Latent', 'Latent (nearest)' and 'Lanczos'")
    scale = req.hr_scale
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or not 0 < scale <= 8:
        raise bad_request("hr_scale", f"hr_scale must be a number in (0, 8], got {scale!r}")
    w = req.hr_resize_x or int(width * scale) // 8 * 8
    h = req.hr_resize_y or int(height * scale) // 8 * 8
    check_size(w, h, limits, names=("hr_resize_x", "hr_resize_y"))
    second = req.hr_second_pass_steps or steps
    check_steps(second, limits, "hr_second_pass_steps")
    s = 0.7 if req.denoising_strength is None else req.denoising_strength
    if not isinstance(s, (int, float)) or not math.isfinite(s) or not 0.0 < s <= 1.0:
        raise bad_request("denoising_strength", f"denoising_strength must be in (0, 1], got {s!r}")
    return dict(width=w, height=h, steps=second, denoise=float(s), upscaler=_HR_UPSCALERS[key])


def fit(image, width: int, height: int):
    """A1111's resize mode 0 ("just resize"): the init image is stretched to the requested size."""
    from PIL import Image

    return image if image.size == (width, height) else image.resize((width, height), Image.LANCZOS)


def parse_size(size: Optional[str], default: int, limits: Limits, name: str = "size") -> tuple[int, int]:
    """OpenAI's "WIDTHxHEIGHT" ("auto" or absent: the model's native size)."""
    if size is None or size == "auto":
        w = h = str(default)
    elif not isinstance(size, str):
        raise bad_request(name, f"{name} must be a string like '512x512'")
    else:
        w, sep, h = size.lower().partition("x")
        if not sep or not w.strip().isdigit() or not h.strip().isdigit():
            raise bad_request(name, f"{name} must look like '512x512', got {size!r}")
    try:
        return check_size(int(w), int(h), limits, names=(name, name))
    except ApiError as exc:
        exc.field = name
        raise
