"""Hires fix against diffusers: txt2img, the latents upscaled as A1111's "Latent" upscaler does
(torch's bilinear interpolate), then diffusers' img2img handed those latents, one generator
through both passes. Spec: final latents rel L2 <= 1e-3 with f32 weights."""
import numpy as np
import pytest
import torch

import sdcpp
from fixtures.e2e import NEGATIVE, PROMPT, SIZE, diffusers_scheduler, rel

LATENT_TOL = 1e-3
IMG2IMG = {"sd1": "StableDiffusionImg2ImgPipeline", "bk-sdm-tiny": "StableDiffusionImg2ImgPipeline",
           "ssd-1b": "StableDiffusionXLImg2ImgPipeline"}


def _pipe(fx, cls=None):
    pipe = fx.pipeline("ldm", cls=cls)
    pipe.scheduler = diffusers_scheduler(("euler", "discrete"), pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("family,mode", [("bk-sdm-tiny", "bilinear"), ("sd1", "nearest"), ("ssd-1b", "bilinear")])
def test_latent_hires_matches_diffusers_txt2img_then_img2img(model_fixtures, family, mode):
    fx = model_fixtures.get(family)
    seed, big = 21, 2 * SIZE
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        first = _pipe(fx)(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=4, guidance_scale=7.0, generator=g,
                          output_type="latent", height=SIZE, width=SIZE).images
        up = torch.nn.functional.interpolate(first, size=(big // 8, big // 8), mode=mode)
        ref = _pipe(fx, IMG2IMG[family])(PROMPT, negative_prompt=NEGATIVE, image=up, strength=0.5,
                                         num_inference_steps=6, guidance_scale=7.0, generator=g,
                                         output_type="latent").images.numpy()
    model = sdcpp.load(str(fx.path("ldm")), device="cpu", weight_type="f32", threads=2)
    upscaler = "latent" if mode == "bilinear" else "latent-nearest"
    ours = model.txt2img(PROMPT, NEGATIVE, width=SIZE, height=SIZE, steps=4, sampler="euler", seed=seed,
                         hires=dict(scale=2.0, steps=6, denoise=0.5, upscaler=upscaler), output_type="latent")
    assert ours[0].shape == (4, big // 8, big // 8)
    err = rel(ours[0], ref[0])
    print(f"[hires] {family} {upscaler}: rel L2 vs diffusers {err:.2e}")
    assert err <= LATENT_TOL


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_resize_latents_is_torch_interpolate(mode):
    from sdcpp.hires import resize_latents

    x = np.random.default_rng(0).standard_normal((2, 4, 7, 9)).astype(np.float32)
    for size in [(14, 18), (10, 13), (7, 9), (5, 4)]:
        ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode=mode).numpy()
        np.testing.assert_allclose(resize_latents(x, *size, mode), ref, rtol=0, atol=2e-6)


def test_lanczos_hires_and_parameters_text(model_fixtures):
    fx = model_fixtures.get("bk-sdm-tiny")
    model = sdcpp.load(str(fx.path("ldm")), device="cpu", threads=2)
    (img,) = model.txt2img(PROMPT, width=SIZE, height=SIZE, steps=2, sampler="euler", seed=3,
                           hires=dict(width=96, height=80, steps=2, denoise=0.6, upscaler="lanczos"))
    assert img.size == (96, 80)
    text = img.info["parameters"]
    assert "Size: 64x64" in text and "Hires resize: 96x80" in text and "Hires upscaler: Lanczos" in text
    assert "Denoising strength: 0.6" in text and "vae_tiling" not in text


@pytest.mark.parametrize("hires,match", [(dict(scale=0), "scale"), (dict(denoise=1.5), "denoise"),
                                         (dict(upscaler="esrgan"), "upscaler"), (dict(steps=0), "steps"),
                                         (dict(sclae=2), "unknown key"), ("2x", "must be a dict")])
def test_bad_hires_arguments(model_fixtures, hires, match):
    fx = model_fixtures.get("bk-sdm-tiny")
    model = sdcpp.load(str(fx.path("ldm")), device="cpu", threads=2)
    with pytest.raises(sdcpp.errors.InvalidArgumentError, match=match):
        model.txt2img(PROMPT, width=SIZE, height=SIZE, steps=1, hires=hires)
