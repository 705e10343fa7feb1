"""The ASGI application: create_app(config) -> FastAPI app serving the A1111 and OpenAI image APIs.

    from sdcpp.server import ServerConfig, create_app
    app = create_app(ServerConfig(model="model.safetensors", max_queue=8))
    # uvicorn.run(app, host="127.0.0.1", port=7860)   (what `sdcpp serve` does)
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Callable, Optional

from .. import errors
from .config import ServerConfig
from .errors import ApiError, bad_request
from .jobs import Job, JobQueue, QueueFull
from .metrics import Metrics
from .models import ModelStore

DISCONNECT_POLL_S = 0.1


class ServerState:
    """What the routes share: config, model store, queue, metrics (app.state.sdcpp)."""

    def __init__(self, config: ServerConfig, model=None, loader: Optional[Callable[[str], object]] = None):
        self.config = config
        self.limits = config.limits
        self.metrics = Metrics()
        self.store = ModelStore(config.model, config.models_dir, config.lora_dir, loader or self._load, model)
        if model is not None:
            self.store._configure()
        self.queue = JobQueue(config.max_queue, [self.metrics.step_hook])
        self.queue.on_finish = self.metrics.job_done
        self.options: dict = {}

    def _load(self, source: str):
        from ..pipeline import load

        c = self.config
        return load(source, device=c.device, threads=c.threads, weight_type=c.weight_type, lora_dir=c.lora_dir)

    @property
    def model_name(self) -> str:
        return self.store.current.name if self.store.current else ""

    async def run_job(self, request, job: Job):
        """Queue `job` and wait for it; 429 when the queue is full; a client that goes away
        cancels its job (dropped if waiting, stopped at the next step if running)."""
        try:
            self.queue.submit(job)
        except QueueFull as exc:
            self.metrics.queue_full()
            raise ApiError(429, f"the server is busy: {exc}; retry later", None, headers={"Retry-After": "1"})
        fut = asyncio.wrap_future(job.future)
        try:
            while True:
                done, _ = await asyncio.wait({fut}, timeout=DISCONNECT_POLL_S)
                if done:
                    break
                if await request.is_disconnected():
                    self.queue.cancel(job, "disconnect")
                    await asyncio.wait({fut})
                    break
        except asyncio.CancelledError:       # the server is cancelling this handler (client gone)
            self.queue.cancel(job, "disconnect")
            raise
        try:
            return fut.result()
        except ApiError:
            raise
        except errors.Cancelled as exc:
            raise ApiError(499 if job.cancel_reason == "disconnect" else 503, str(exc), None) from None
        except (errors.InvalidArgumentError, errors.LoraError) as exc:
            raise bad_request(_guess_field(str(exc)), str(exc)) from None
        except errors.SdcppError as exc:
            raise ApiError(500, f"{type(exc).__name__}: {exc}", None) from None


def _guess_field(message: str) -> Optional[str]:
    """The pipeline's messages start with the argument's name ("steps must be ..."); LoRA errors
    come from the prompt's tags."""
    if "lora" in message.lower():
        return "prompt"
    first = message.split(" ", 1)[0].strip(":")
    known = {"width", "height", "steps", "cfg_scale", "sampler", "scheduler", "seed", "strength", "prompt",
             "negative_prompt", "batch_size", "image"}
    if first in known:
        return first
    if "working memory" in message:
        return "width"
    return None


def create_app(config: ServerConfig, *, model=None, loader: Optional[Callable[[str], object]] = None):
    """The FastAPI app. `model`: an already loaded sdcpp Model for config.model (else it is loaded
    when the app starts); `loader(path) -> Model` replaces sdcpp.load for switches."""
    try:
        from fastapi import FastAPI
        from fastapi.responses import PlainTextResponse
    except ImportError as exc:   # pragma: no cover - depends on the install
        raise errors.SdcppError("the server needs FastAPI and uvicorn: pip install 'sdcpp[server]'") from exc

    from . import a1111, auth, openai_api
    from .errors import install_handlers

    state = ServerState(config, model=model, loader=loader)

    @asynccontextmanager
    async def lifespan(app):
        if state.store.model is None and state.store.current is not None:
            await asyncio.to_thread(state.store.ensure_loaded)
        state.queue.start()
        try:
            yield
        finally:
            await asyncio.to_thread(state.queue.stop)

    app = FastAPI(title="sdcpp", lifespan=lifespan)
    app.state.sdcpp = state
    install_handlers(app)
    app.add_middleware(auth.Guard, api_key=config.api_key, max_body_bytes=config.limits.max_body_bytes)

    @app.get("/health")
    def health():
        return {"status": "ok", "model": state.model_name, "loaded": state.store.model is not None,
                "queue": state.queue.length, "running": state.queue.running is not None}

    @app.get("/metrics")
    def metrics():
        text = state.metrics.render(state.queue.length, state.queue.running is not None, state.model_name)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    app.include_router(a1111.router(state))
    app.include_router(openai_api.router(state))
    return app

