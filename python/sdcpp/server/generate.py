"""The work of a generation job, run on the worker thread: one pipeline call per image.

Image i gets seed + i and its own call (batch 1), as A1111 numbers its seeds (all_seeds), so any
image of a batch is reproduced by asking for its seed alone; the pipeline's batch_size would
draw one noise tensor for the whole batch instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .. import errors
from .validate import GenSpec


@dataclass
class GenResult:
    images: list = field(default_factory=list)       # PIL, with .info["parameters"]
    seeds: list = field(default_factory=list)
    interrupted: bool = False
    model_name: str = ""
    model_hash: Optional[str] = None


def run(job, spec: GenSpec, store, metrics) -> GenResult:
    store.ensure_loaded()
    model = store.model
    out = GenResult(model_name=store.current.model_name if store.current else "")
    common = dict(steps=spec.steps, cfg_scale=spec.cfg_scale, sampler=spec.sampler, scheduler=spec.scheduler,
                  batch_size=1, clip_skip=spec.clip_skip, callback=job.on_step)
    for i in range(spec.count):
        if job.cancelled:
            break
        job.begin_image(i)
        seed = spec.seed + i
        try:
            if spec.mode == "txt2img":
                (image,) = model.txt2img(spec.prompt, spec.negative_prompt, width=spec.width, height=spec.height,
                                         seed=seed, hires=spec.hires, **common)
            elif spec.mode == "inpaint":
                init = spec.init_images[i % len(spec.init_images)]
                (image,) = model.inpaint(init, spec.mask, spec.prompt, spec.negative_prompt, strength=spec.strength,
                                         seed=seed, **common)
            else:
                init = spec.init_images[i % len(spec.init_images)]
                (image,) = model.img2img(init, spec.prompt, spec.negative_prompt, strength=spec.strength,
                                         seed=seed, **common)
        except errors.Cancelled:
            if job.skip_image and not job.cancelled:
                continue                      # A1111 /skip: this image only
            break
        out.images.append(image)
        out.seeds.append(seed)
        metrics.image_done(spec.mode)
    out.interrupted = job.cancelled
    out.model_hash = getattr(model, "_model_hash", None)
    return out
