"""The AUTOMATIC1111 web API (/sdapi/v1/...), in the shapes A1111 clients parse."""
from __future__ import annotations

import asyncio
import json
import time

from fastapi import APIRouter, Body, Request  # route annotations are resolved from this module

from .. import __version__ as _version
from .. import errors
from . import generate
from .errors import ApiError, bad_request
from .images import encode_png
from .jobs import Job
from .models import scan_loras
from .names import SAMPLER_LABELS, SCHEDULER_LABELS, sampler_list, scheduler_list
from .schemas import A1111Img2Img, A1111Txt2Img
from .validate import a1111_spec

_LABEL_OF_SAMPLER = {ours: label for label, (ours, _) in SAMPLER_LABELS.items()}
_LABEL_OF_SCHEDULE = {ours: label for _, (label, ours) in SCHEDULER_LABELS.items() if ours}
_LABEL_OF_SCHEDULE["discrete"] = "Normal"


def router(state):
    r = APIRouter(prefix="/sdapi/v1", tags=["a1111"])

    async def generation(request: Request, req, mode: str) -> dict:
        # Decoding uploads and encoding PNGs take milliseconds to seconds: off the event loop, so
        # /progress and /interrupt keep answering.
        spec = await asyncio.to_thread(a1111_spec, req, mode, state.limits, state.config.lora_dir)
        job = Job(mode, lambda j: generate.run(j, spec, state.store, state.metrics),
                  images=spec.count, steps=spec.steps)
        ckpt = req.override_settings.get("sd_model_checkpoint")
        if ckpt is not None:
            target = _find_checkpoint(state, ckpt, "override_settings.sd_model_checkpoint")

            def work(j, _inner=job.work):
                _switch(state, target, "override_settings.sd_model_checkpoint")
                return _inner(j)
            job.work = work
        result = await state.run_job(request, job)
        return await asyncio.to_thread(_response, req, spec, result)

    @r.post("/txt2img")
    async def txt2img(req: A1111Txt2Img, request: Request):
        return await generation(request, req, "txt2img")

    @r.post("/img2img")
    async def img2img(req: A1111Img2Img, request: Request):
        return await generation(request, req, "img2img")

    @r.get("/progress")
    def progress(skip_current_image: bool = False):
        return _progress(state)

    @r.post("/interrupt")
    def interrupt():
        state.queue.interrupt()
        return {}

    @r.post("/skip")
    def skip():
        state.queue.skip()
        return {}

    @r.get("/sd-models")
    def sd_models():
        return [{"title": state.store.title(c), "model_name": c.model_name, "hash": state.store.hash_of(c),
                 "sha256": None, "filename": c.path, "config": None} for c in state.store.checkpoints()]

    @r.post("/refresh-checkpoints")
    def refresh_checkpoints():
        return {}   # the folder is rescanned on every listing

    @r.get("/samplers")
    def samplers():
        return sampler_list()

    @r.get("/schedulers")
    def schedulers():
        return scheduler_list()

    @r.get("/loras")
    def loras():
        return scan_loras(state.config.lora_dir)

    @r.post("/refresh-loras")
    def refresh_loras():
        return {}

    @r.get("/upscalers")
    def upscalers():
        return []

    @r.get("/scripts")
    def scripts():
        return {"txt2img": [], "img2img": []}     # no A1111 scripts/extensions (webuiapi asks)

    @r.get("/embeddings")
    def embeddings():
        return {"loaded": {}, "skipped": {}}

    @r.get("/options")
    def get_options():
        return _options(state)

    @r.post("/options")
    async def set_options(request: Request, body: dict = Body(...)):
        ckpt = body.get("sd_model_checkpoint")
        if ckpt is not None:
            target = _find_checkpoint(state, ckpt, "sd_model_checkpoint")
            await state.run_job(request, Job("switch", lambda j: _switch(state, target, "sd_model_checkpoint")))
        state.options.update({k: v for k, v in body.items() if k != "sd_model_checkpoint"})
        return _options(state)

    return r


def _switch(state, target, field: str) -> None:
    """On the worker: load `target`; a checkpoint that fails to load leaves the old model serving."""
    try:
        state.store.switch(target)
    except errors.SdcppError as exc:
        raise ApiError(400, f"cannot load checkpoint {target.name!r}: {exc}", field) from None


def _find_checkpoint(state, value, field: str):
    if not isinstance(value, str) or not value.strip():
        raise bad_request(field, f"{field} must be a checkpoint title or name")
    target = state.store.find(value)
    if target is None:
        names = ", ".join(c.name for c in state.store.checkpoints()) or "(none)"
        raise bad_request(field, f"no checkpoint {value!r}; available: {names}")
    return target


def _options(state) -> dict:
    current = state.store.current
    out = dict(state.options)
    out["sd_model_checkpoint"] = state.store.title(current) if current else None
    out["sd_checkpoint_hash"] = state.store.hash_of(current) if current else None
    return out


def _response(req, spec, result) -> dict:
    n = len(result.images)
    info = {
        "prompt": spec.prompt,
        "all_prompts": [spec.prompt] * n,
        "negative_prompt": spec.negative_prompt,
        "all_negative_prompts": [spec.negative_prompt] * n,
        "seed": spec.seed,
        "all_seeds": result.seeds,
        "subseed": spec.seed,
        "all_subseeds": result.seeds,
        "subseed_strength": 0,
        "width": spec.width,
        "height": spec.height,
        "sampler_name": _LABEL_OF_SAMPLER.get(spec.sampler, spec.sampler),
        "scheduler": _LABEL_OF_SCHEDULE.get(spec.scheduler, spec.scheduler),
        "cfg_scale": spec.cfg_scale,
        "steps": spec.steps,
        "batch_size": req.batch_size,
        "n_iter": req.n_iter,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": result.model_name,
        "sd_model_hash": result.model_hash,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": spec.strength,
        "clip_skip": spec.clip_skip or 1,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": [img.info.get("parameters", "") for img in result.images],
        "styles": req.styles,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "is_using_inpainting_conditioning": False,
        "interrupted": result.interrupted,
        "version": f"sdcpp {_version}",
    }
    images = [encode_png(img) for img in result.images] if req.send_images else []
    params = req.model_dump()
    params.pop("init_images", None)   # A1111 echoes them; a multi-megabyte echo helps nobody
    return {"images": images, "parameters": params, "info": json.dumps(info)}


def _progress(state) -> dict:
    job = state.queue.running
    queued = state.queue.length
    if job is None:
        return {"progress": 0.0, "eta_relative": 0.0,
                "state": {"skipped": False, "interrupted": False, "job": "", "job_count": queued,
                          "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0},
                "current_image": None, "textinfo": None}
    p = job.progress()
    elapsed = time.time() - (job.started or time.time())
    eta = elapsed / p - elapsed if p > 0 else 0.0
    return {"progress": p, "eta_relative": eta,
            "state": {"skipped": job.skip_image, "interrupted": job.cancel_reason == "interrupt",
                      "job": f"{job.kind} {job.id}", "job_count": queued + 1,
                      "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)),
                      "job_no": job.image_index, "sampling_step": job.step, "sampling_steps": job.steps},
            "current_image": None, "textinfo": None}
