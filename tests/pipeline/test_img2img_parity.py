"""img2img against StableDiffusionImg2ImgPipeline / StableDiffusionXLImg2ImgPipeline.

Same weights, prompt, init image and seed: the generator draws the VAE posterior sample first,
then the noise, in diffusers' order, so the runs are comparable. Spec: latents rel L2 <= 1e-3.
"""
import numpy as np
import pytest
from PIL import Image

import sdcpp
from fixtures.e2e import NEGATIVE, PROMPT, SIZE, rel, run_diffusers


def init_image() -> Image.Image:
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    base = np.stack([x, y, 0.5 * (x + y)], axis=-1)
    pixels = np.clip(base + 0.1 * rng.standard_normal(base.shape), 0, 1)
    return Image.fromarray((pixels * 255).astype(np.uint8))


@pytest.mark.parametrize("family,cls", [("sd1", "StableDiffusionImg2ImgPipeline"),
                                        ("sdxl", "StableDiffusionXLImg2ImgPipeline")])
@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_img2img_matches_diffusers(model_fixtures, family, cls, strength):
    fx = model_fixtures.get(family)
    image = init_image()
    ref = run_diffusers(fx, "ldm", cls=cls, image=image, strength=strength, seed=2024, steps=6)
    model = sdcpp.load(str(fx.path("ldm")), device="cpu", weight_type="f32")
    ours = model.img2img(image, PROMPT, NEGATIVE, strength=strength, steps=6, sampler="euler",
                         seed=2024, output_type="latent")[0]
    err = rel(ours, ref[0])
    assert err <= 1e-3, f"{family} strength {strength}: {err:.2e}"


def test_img2img_rejects_sizes_not_multiple_of_8(model_fixtures):
    fx = model_fixtures.get("bk-sdm-tiny")
    model = sdcpp.load(str(fx.path("ldm")), device="cpu")
    bad = Image.new("RGB", (60, 64))
    with pytest.raises(sdcpp.errors.InvalidArgumentError, match="multiple of 8"):
        model.img2img(bad, PROMPT, steps=2)
    out = model.img2img(bad, PROMPT, steps=2, resize=True, output_type="np", seed=1)
    assert out[0].shape == (64, 56, 3)
