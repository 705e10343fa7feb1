"""Request bodies, with A1111's and OpenAI's field names and defaults.

Unknown fields are accepted and ignored (A1111 clients send dozens: restore_faces, tiling,
subseed, ...); the few that change the result and are not supported are refused in validate.py
rather than silently ignored.
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _NullMeansDefault(BaseModel):
    """Clients send null for "not set" (webuiapi sends "scheduler": null, "override_settings": null
    ...): a null field takes its default instead of failing validation."""
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data):
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


class A1111Txt2Img(_NullMeansDefault):
    """POST /sdapi/v1/txt2img (A1111's StableDiffusionProcessingTxt2Img defaults)."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = Field(default_factory=list)
    seed: int = -1
    sampler_name: Optional[str] = None
    sampler_index: Optional[str] = None          # the old field, used when sampler_name is absent
    scheduler: Optional[str] = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: Optional[str] = None            # "Latent" (default), "Latent (nearest)", "Lanczos"
    hr_second_pass_steps: int = 0                # 0: the first pass's steps
    hr_resize_x: int = 0                         # 0: from hr_scale
    hr_resize_y: int = 0
    denoising_strength: Optional[float] = None   # hires second pass (A1111 default 0.7)
    override_settings: dict[str, Any] = Field(default_factory=dict)
    send_images: bool = True
    save_images: bool = False


class A1111Img2Img(A1111Txt2Img):
    """POST /sdapi/v1/img2img."""
    init_images: list[Any] = Field(default_factory=list)
    denoising_strength: float = 0.75
    resize_mode: int = 0
    mask: Optional[str] = None                   # base64; white = repaint (inpainting)
    inpainting_mask_invert: int = 0              # 1: black = repaint
    mask_blur: int = 4                           # accepted, not applied: the mask is binarised (diffusers)
    include_init_images: bool = False


class OpenAIGenerate(_NullMeansDefault):
    """POST /v1/images/generations; steps, seed ... are sdcpp extensions (OpenAI has no such fields)."""

    prompt: str
    model: Optional[str] = None
    n: int = 1
    size: Optional[str] = None
    response_format: Optional[str] = "b64_json"
    negative_prompt: str = ""
    steps: int = 20
    cfg_scale: float = 7.0
    sampler: Optional[str] = None
    scheduler: Optional[str] = None
    seed: Optional[int] = None
