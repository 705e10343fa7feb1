"""TAESD in the pipeline: txt2img / img2img with vae=<AutoencoderTiny folder> against diffusers'
pipelines with vae=AutoencoderTiny (images within 1e-2, as the other image tests), the original
split files, and live previews through preview_vae= that leave the main VAE's result unchanged."""
import numpy as np
import pytest
import torch
from PIL import Image

import sdcpp
from fixtures.e2e import NEGATIVE, PROMPT, SIZE, diffusers_scheduler, unit_latents

IMAGE_TOL = 1e-2


@pytest.fixture(scope="module")
def taesd(tmp_path_factory):
    from diffusers import AutoencoderTiny

    torch.manual_seed(3)
    m = AutoencoderTiny(encoder_block_out_channels=(16, 16, 16, 16), decoder_block_out_channels=(16, 16, 16, 16)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("taesd") / "taesd"
    m.save_pretrained(folder, safe_serialization=True)
    return m, folder


def _pipe(fx, tiny, cls=None):
    pipe = fx.pipeline("ldm", cls=cls)
    pipe.vae = tiny
    pipe.scheduler = diffusers_scheduler(("euler", "discrete"), pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_txt2img_and_img2img_with_taesd_match_diffusers(model_fixtures, taesd):
    tiny, folder = taesd
    fx = model_fixtures.get("bk-sdm-tiny")
    latents = unit_latents(4)
    with torch.no_grad():
        ref = _pipe(fx, tiny)(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=3, guidance_scale=7.0,
                               latents=torch.from_numpy(latents), output_type="np", height=SIZE, width=SIZE).images
    model = sdcpp.load(str(fx.path("ldm")), device="cpu", weight_type="f32", threads=2, vae=str(folder))
    ours = model.txt2img(PROMPT, NEGATIVE, width=SIZE, height=SIZE, steps=3, sampler="euler", latents=latents,
                         output_type="np")[0]
    assert np.abs(ours - ref[0]).max() <= IMAGE_TOL

    src = Image.fromarray((np.random.default_rng(1).random((SIZE, SIZE, 3)) * 255).astype(np.uint8))
    with torch.no_grad():
        ref = _pipe(fx, tiny, "StableDiffusionImg2ImgPipeline")(
            PROMPT, negative_prompt=NEGATIVE, image=src, strength=0.6, num_inference_steps=4, guidance_scale=7.0,
            generator=torch.Generator().manual_seed(8), output_type="np").images
    ours = model.img2img(src, PROMPT, NEGATIVE, strength=0.6, steps=4, sampler="euler", seed=8, output_type="np")[0]
    assert np.abs(ours - ref[0]).max() <= IMAGE_TOL


def test_original_split_files_and_live_previews(model_fixtures, taesd, tmp_path):
    from safetensors.numpy import save_file

    tiny, _ = taesd
    sd = {k: v.numpy() for k, v in tiny.state_dict().items()}
    save_file({f"{int(k.split('.')[2]) + 1}.{k.split('.', 3)[3]}": v for k, v in sd.items() if k.startswith("decoder.")},
              str(tmp_path / "taesd_decoder.safetensors"))
    save_file({k[len("encoder.layers."):]: v for k, v in sd.items() if k.startswith("encoder.")},
              str(tmp_path / "taesd_encoder.safetensors"))
    fx = model_fixtures.get("bk-sdm-tiny")
    plain = sdcpp.load(str(fx.path("ldm")), device="cpu", threads=2)
    with pytest.raises(sdcpp.errors.InvalidArgumentError, match="preview_vae"):
        plain.txt2img(PROMPT, width=SIZE, height=SIZE, steps=2, preview=lambda s, im: None)
    model = sdcpp.load(str(fx.path("ldm")), device="cpu", threads=2,
                       preview_vae=str(tmp_path / "taesd_decoder.safetensors"))
    seen = []
    (img,) = model.txt2img(PROMPT, width=SIZE, height=SIZE, steps=4, sampler="euler", seed=2,
                           preview=lambda step, im: seen.append((step, im.size)), preview_every=2)
    assert seen == [(1, (SIZE, SIZE)), (3, (SIZE, SIZE))]
    (ref,) = plain.txt2img(PROMPT, width=SIZE, height=SIZE, steps=4, sampler="euler", seed=2)
    assert np.array_equal(np.asarray(img), np.asarray(ref))          # the main VAE decoded the result
    with pytest.raises(sdcpp.errors.UnknownArchitectureError):
        sdcpp.load(str(fx.path("ldm")), device="cpu", preview_vae=str(fx.path("ldm")))
