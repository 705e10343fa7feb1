"""sdcpp on Ray: the `sdcpp serve` HTTP API as a Ray Serve deployment with N replicas, and a
callable class for Ray Data's ``map_batches`` (offline batch generation). docs/server.md, "Ray".

Needs ``pip install "sdcpp[ray]"``; ``import sdcpp`` never imports Ray. Each replica / Ray Data
actor loads its own model and answers exactly as one `sdcpp serve` process (or one
``sdcpp.load(...).txt2img`` call) would for the same parameters and seed.
"""
from __future__ import annotations

import secrets
from typing import Any, Optional

import numpy as np

from .server.config import ServerConfig

__all__ = ["deployment", "ImageGenerator", "SdcppReplica"]


class SdcppReplica:
    """One Serve replica: builds the server app (and loads its model) on the replica itself, so
    nothing but the config crosses the network."""

    def __init__(self, config: ServerConfig):
        self._config = config

    def __serve_build_asgi_app__(self):
        from .server import create_app

        return create_app(self._config)    # Serve runs the app's lifespan: model load, worker start


def deployment(config: ServerConfig, *, num_replicas: Optional[int] = 1, num_cpus: Optional[float] = None,
               num_gpus: Optional[float] = None, autoscaling_config: Optional[dict] = None, **serve_options: Any):
    """A bound Ray Serve application serving the A1111 and OpenAI APIs of docs/server.md:

        from ray import serve
        serve.run(sdcpp.ray.deployment(ServerConfig(model="m.safetensors"), num_replicas=2, num_cpus=4),
                  route_prefix="/")

    num_cpus / num_gpus: resources per replica (each holds a model; pair num_cpus with
    ServerConfig.threads). autoscaling_config: passed to Serve as is (then num_replicas is
    ignored). Other keyword arguments go to ``serve.deployment`` (max_ongoing_requests, ...).
    Each replica keeps its own bounded queue (config.max_queue), so a full replica answers 429.
    """
    from ray import serve

    options = dict(serve_options)
    actor = dict(options.pop("ray_actor_options", None) or {})
    if num_cpus is not None:
        actor["num_cpus"] = num_cpus
    if num_gpus is not None:
        actor["num_gpus"] = num_gpus
    if autoscaling_config is not None:
        options["autoscaling_config"] = autoscaling_config
    else:
        options["num_replicas"] = num_replicas
    options.setdefault("name", "sdcpp")
    cls = serve.deployment(ray_actor_options=actor, **options)(serve.ingress()(SdcppReplica))
    return cls.bind(config)


class ImageGenerator:
    """For Ray Data: prompts (and seeds) in, images out.

        ds = ray.data.from_items([{"prompt": "a fox", "seed": 1}, ...])
        images = ds.map_batches(ImageGenerator, fn_constructor_kwargs={"model": "m.safetensors", "steps": 20},
                                concurrency=2, batch_size=4, num_cpus=2)

    A batch is a dict of columns: ``prompt`` (required), optional ``seed`` (missing or -1: drawn)
    and ``negative_prompt``. Returned: the input columns, ``seed`` (the seed used, uint64) and
    ``image`` (uint8 [n, H, W, 3]). Each row is its own call with its own seed, so row i is
    exactly ``model.txt2img(prompt_i, seed=seed_i, ...)``.
    """

    def __init__(self, model: str, *, width: Optional[int] = None, height: Optional[int] = None, steps: int = 20,
                 cfg_scale: float = 7.0, sampler: str = "euler_a", scheduler: str = "discrete",
                 negative_prompt: str = "", clip_skip: Optional[int] = None, device: str = "auto",
                 threads: Optional[int] = None, weight_type: Optional[str] = None, lora_dir: Optional[str] = None):
        from .pipeline import load

        self.model = load(model, device=device, threads=threads, weight_type=weight_type, lora_dir=lora_dir)
        self.negative_prompt = negative_prompt
        self.kwargs = dict(width=width, height=height, steps=steps, cfg_scale=cfg_scale, sampler=sampler,
                           scheduler=scheduler, clip_skip=clip_skip)

    def __call__(self, batch: dict) -> dict:
        if "prompt" not in batch:
            from .errors import InvalidArgumentError
            raise InvalidArgumentError(f"the batch has no 'prompt' column (columns: {sorted(batch)})")
        prompts = [str(p) for p in batch["prompt"]]
        n = len(prompts)
        seeds = list(batch["seed"]) if "seed" in batch else [None] * n
        negatives = [str(x) for x in batch["negative_prompt"]] if "negative_prompt" in batch else [self.negative_prompt] * n
        used, images = [], []
        for prompt, seed, negative in zip(prompts, seeds, negatives):
            seed = secrets.randbits(32) if seed is None or int(seed) == -1 else int(seed)
            (image,) = self.model.txt2img(prompt, negative, seed=seed, **self.kwargs)
            used.append(seed)
            images.append(np.asarray(image))
        out = dict(batch)
        out["seed"] = np.asarray(used, dtype=np.uint64)
        out["image"] = np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8)
        return out
