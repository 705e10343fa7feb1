"""OpenAI's images API (/v1/images/generations, /v1/images/edits, /v1/models).

Not OpenAI's: the `model` field picks nothing (the loaded checkpoint answers; switch it with
/sdapi/v1/options), `response_format` "url" is refused (there is no file host); an edit without a mask is an img2img
of the image, with one (transparent = edit) an inpainting.
Extensions a client may add: negative_prompt, steps, cfg_scale, sampler, scheduler, seed and,
for edits, strength.
"""
from __future__ import annotations

import asyncio
import math
import time

from fastapi import APIRouter, Request  # route annotations are resolved from this module

from . import generate
from .errors import ApiError, bad_request
from .images import decode_image_bytes, encode_png
from .jobs import Job
from .schemas import OpenAIGenerate
from .validate import (GenSpec, check_cfg, check_count, check_prompt, check_seed, check_steps, fit, parse_size,
                       sampler_and_scheduler)

_NATIVE_SIZE = {"sd1": 512, "sd2": 768, "sdxl": 1024}
_MAX_N = 10   # OpenAI's own cap on n


def router(state):
    r = APIRouter(prefix="/v1", tags=["openai"])

    def native_size() -> int:
        model = state.store.model
        return _NATIVE_SIZE.get(getattr(model, "family", "sd1"), 512)

    def common(prompt, n, size, response_format, negative, steps, cfg, sampler, scheduler, seed, mode) -> GenSpec:
        prompt = check_prompt(prompt, "prompt", state.limits, state.config.lora_dir)
        negative = check_prompt(negative, "negative_prompt", state.limits, state.config.lora_dir, loras=False)
        if not isinstance(n, int) or not 1 <= n <= _MAX_N:
            raise bad_request("n", f"n must be an integer in [1, {_MAX_N}], got {n!r}")
        check_count(n, state.limits, "n")
        if response_format not in (None, "b64_json"):
            raise bad_request("response_format", f"response_format {response_format!r} is not supported; "
                                                 "use 'b64_json' (this server hosts no image URLs)")
        width, height = parse_size(size, native_size(), state.limits)
        steps = check_steps(steps, state.limits)
        cfg = check_cfg(cfg)
        sampler, scheduler = sampler_and_scheduler(sampler, scheduler, "euler_a", names=("sampler", "scheduler"))
        seed = check_seed(seed, n)
        return GenSpec(mode, prompt, negative, width, height, steps, cfg, sampler, scheduler, seed, n)

    async def run(request, spec: GenSpec) -> dict:
        job = Job(spec.mode, lambda j: generate.run(j, spec, state.store, state.metrics),
                  images=spec.count, steps=spec.steps)
        result = await state.run_job(request, job)
        if result.interrupted and not result.images:
            raise ApiError(503, "the generation was interrupted before an image was done", None)
        encoded = await asyncio.to_thread(lambda: [encode_png(img) for img in result.images])
        return {"created": int(time.time()),
                "data": [{"b64_json": b64, "revised_prompt": spec.prompt, "seed": seed}
                         for b64, seed in zip(encoded, result.seeds)]}

    @r.post("/images/generations")
    async def generations(req: OpenAIGenerate, request: Request):
        spec = common(req.prompt, req.n, req.size, req.response_format, req.negative_prompt, req.steps,
                      req.cfg_scale, req.sampler, req.scheduler, req.seed, "txt2img")
        return await run(request, spec)

    @r.post("/images/edits")
    async def edits(request: Request):
        try:
            form = await request.form(max_files=4, max_fields=64)
        except Exception as exc:   # malformed multipart
            raise bad_request("image", f"the body must be multipart/form-data with an image: {exc}") from None
        upload = form.get("image") or form.get("image[]")
        if upload is None or isinstance(upload, str):
            raise bad_request("image", "image must be an uploaded file (multipart/form-data)")
        raw = await upload.read()
        image = await asyncio.to_thread(decode_image_bytes, raw, "image", state.limits.max_upload_pixels)
        prompt = form.get("prompt")
        if not isinstance(prompt, str):
            raise bad_request("prompt", "prompt is required")
        size = form.get("size")
        if size in (None, "auto"):   # OpenAI keeps the image's size; ours must be a multiple of 8
            w, h = image.size
            size = f"{max(8, w // 8 * 8)}x{max(8, h // 8 * 8)}"
        spec = common(prompt, _form_int(form, "n", 1), size, form.get("response_format", "b64_json"),
                      form.get("negative_prompt", ""), _form_int(form, "steps", 20),
                      _form_float(form, "cfg_scale", 7.0), form.get("sampler"), form.get("scheduler"),
                      _form_int(form, "seed", None), "img2img")
        strength = _form_float(form, "strength", 0.75)
        if not 0.0 < strength <= 1.0:
            raise bad_request("strength", f"strength must be in (0, 1], got {strength!r}")
        spec.strength = strength
        spec.init_images = [await asyncio.to_thread(fit, image, spec.width, spec.height)]
        mask_upload = form.get("mask")
        if mask_upload is not None:     # OpenAI: the fully transparent pixels of the mask are edited
            if isinstance(mask_upload, str):
                raise bad_request("mask", "mask must be an uploaded PNG file")
            mask = await asyncio.to_thread(decode_image_bytes, await mask_upload.read(), "mask",
                                           state.limits.max_upload_pixels, True)
            if "A" not in mask.getbands():
                raise bad_request("mask", "mask must be a PNG with an alpha channel (transparent = edit)")
            alpha = await asyncio.to_thread(fit, mask.getchannel("A"), spec.width, spec.height)
            spec.mask = alpha.point(lambda a: 255 if a < 128 else 0)
            spec.mode = "inpaint"
        return await run(request, spec)

    @r.get("/models")
    def models():
        return {"object": "list",
                "data": [{"id": c.name, "object": "model", "created": 0, "owned_by": "sdcpp"}
                         for c in state.store.checkpoints()]}

    return r


def _form_int(form, name: str, default):
    value = form.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise bad_request(name, f"{name} must be an integer, got {value!r}") from None


def _form_float(form, name: str, default: float) -> float:
    value = form.get(name)
    if value is None or value == "":
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise bad_request(name, f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise bad_request(name, f"{name} must be finite, got {value!r}")
    return out
