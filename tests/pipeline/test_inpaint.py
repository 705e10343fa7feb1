"""Inpainting end to end against diffusers' StableDiffusionInpaintPipeline (and the SDXL one):
4-channel models (blend of the known region after every step) and a 9-channel inpainting U-Net
(mask and masked-image latents as input channels), strength 1 and < 1, a stochastic sampler
(same generator stream). Spec: final latents rel L2 <= 1e-3 with f32 weights."""
import copy
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import sdcpp
from fixtures.e2e import NEGATIVE, PROMPT, SIZE, diffusers_scheduler, rel

LATENT_TOL = 1e-3
PIPES = {"sd1": "StableDiffusionInpaintPipeline", "bk-sdm-tiny": "StableDiffusionInpaintPipeline",
         "ssd-1b": "StableDiffusionXLInpaintPipeline"}


def _image_and_mask(seed=0):
    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8), "RGB")
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[16:48, 8:40] = 255                      # repaint a block
    return img, Image.fromarray(m, "L")


def _reference(pipe, sampler, image, mask, strength, seed):
    pipe.scheduler = diffusers_scheduler(sampler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe(PROMPT, negative_prompt=NEGATIVE, image=image, mask_image=mask, strength=strength,
                    num_inference_steps=4, guidance_scale=7.0, generator=torch.Generator().manual_seed(seed),
                    height=SIZE, width=SIZE, output_type="latent").images.numpy()


@pytest.mark.parametrize("family,sampler,strength", [("bk-sdm-tiny", ("euler", "discrete"), 1.0),
                                                     ("sd1", ("euler_a", "discrete"), 0.75),
                                                     ("ssd-1b", ("euler", "discrete"), 1.0)])
def test_four_channel_inpainting_matches_diffusers(model_fixtures, family, sampler, strength):
    fx = model_fixtures.get(family)
    image, mask = _image_and_mask(1)
    ref = _reference(fx.pipeline("ldm", cls=PIPES[family]), sampler, image, mask, strength, seed=17)
    model = sdcpp.load(str(fx.path("ldm")), device="cpu", weight_type="f32", threads=2)
    ours = model.inpaint(image, mask, PROMPT, NEGATIVE, strength=strength, steps=4, sampler=sampler[0],
                         scheduler=sampler[1], seed=17, output_type="latent")[0]
    err = rel(ours, ref[0])
    print(f"[inpaint] {family} 4-channel {sampler[0]} strength {strength}: rel L2 {err:.2e}")
    assert err <= LATENT_TOL


@pytest.fixture(scope="module")
def nine_channel(model_fixtures, tmp_path_factory):
    """The sd1 fixture with a 9-channel (inpainting) U-Net of random weights, as a diffusers folder."""
    from diffusers import UNet2DConditionModel

    fx = model_fixtures.get("sd1")
    cfg = dict(fx.unet.config)
    cfg["in_channels"] = 9
    torch.manual_seed(9)
    unet = UNet2DConditionModel.from_config(cfg).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    root = tmp_path_factory.mktemp("inpaint-model") / "sd1-inpainting"
    shutil.copytree(fx.path("diffusers"), root)
    shutil.rmtree(root / "unet")
    unet.save_pretrained(root / "unet", safe_serialization=True)
    return fx, unet, root


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_nine_channel_inpainting_model_matches_diffusers(nine_channel, strength):
    fx, unet, root = nine_channel
    pipe = fx.pipeline("diffusers", cls="StableDiffusionInpaintPipeline")
    pipe.unet = copy.deepcopy(unet)
    image, mask = _image_and_mask(2)
    ref = _reference(pipe, ("euler", "discrete"), image, mask, strength, seed=23)
    assert sdcpp.inspect(str(root)).inpainting
    model = sdcpp.load(str(root), device="cpu", weight_type="f32", threads=2)
    ours = model.inpaint(image, mask, PROMPT, NEGATIVE, strength=strength, steps=4, sampler="euler", seed=23,
                         output_type="latent")[0]
    err = rel(ours, ref[0])
    print(f"[inpaint] sd1 9-channel strength {strength}: rel L2 {err:.2e}")
    assert err <= LATENT_TOL
    with pytest.raises(sdcpp.errors.InvalidArgumentError, match="inpainting model"):
        model.txt2img(PROMPT, width=SIZE, height=SIZE, steps=1)


def test_mask_handling_and_errors(model_fixtures):
    from sdcpp.inpaint import mask_to_array

    m = np.zeros((16, 24), np.float32)
    m[4:8, :] = 0.7
    out = mask_to_array(m, 16, 24)
    assert out.shape == (1, 1, 16, 24) and set(np.unique(out)) == {0.0, 1.0} and out[0, 0, 5, 3] == 1.0
    assert mask_to_array(Image.fromarray((m * 255).astype(np.uint8)), 32, 48).shape == (1, 1, 32, 48)
    fx = model_fixtures.get("bk-sdm-tiny")
    model = sdcpp.load(str(fx.path("ldm")), device="cpu", threads=2)
    image, mask = _image_and_mask()
    with pytest.raises(sdcpp.errors.InvalidArgumentError, match="strength"):
        model.inpaint(image, mask, PROMPT, strength=0.0)
    with pytest.raises(sdcpp.errors.InvalidArgumentError, match="no step"):
        model.inpaint(image, mask, PROMPT, strength=0.1, steps=4)
    with pytest.raises(sdcpp.errors.InvalidArgumentError, match="mask"):
        model.inpaint(image, np.zeros((2, 3, 4, 5)), PROMPT, steps=1)
    # the unmasked region survives a repaint (4-channel blend), the masked one changes
    (out,) = model.inpaint(image, mask, PROMPT, steps=3, sampler="euler", seed=1, output_type="np")
    assert out.shape == (SIZE, SIZE, 3)
