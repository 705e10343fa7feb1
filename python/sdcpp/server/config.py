"""What one `sdcpp serve` process is allowed to do: the model, folders, queue and input limits."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class Limits:
    """Caps on request sizes. A request over one gets a 400 naming the field, before it is queued,
    so one client cannot hold the worker for hours or exhaust memory with a single call."""
    max_width: int = 2048          # pixels
    max_height: int = 2048
    max_steps: int = 150
    max_images: int = 16           # images per request (A1111 batch_size * n_iter, OpenAI n)
    max_prompt_chars: int = 20000
    max_upload_pixels: int = 16 * 2048 * 2048   # decoded size of an uploaded image (decompression bombs)
    max_body_bytes: int = 64 * 2**20            # announced request size (Content-Length)


@dataclass
class ServerConfig:
    model: Optional[str] = None            # checkpoint loaded at start (file, diffusers folder or repo id)
    models_dir: Optional[str] = None       # checkpoints offered by sd-models / options
    lora_dir: Optional[str] = None         # <lora:name:w> prompt tags resolve here
    max_queue: int = 16                    # jobs waiting behind the running one; more -> 429
    api_key: Optional[str] = None          # when set, every route but /health needs "Bearer KEY"
    device: str = "auto"
    threads: Optional[int] = None
    weight_type: Optional[str] = None
    limits: Limits = None                  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.limits is None:
            self.limits = Limits()
        if not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ValueError(f"max_queue must be an integer >= 0, got {self.max_queue!r}")
