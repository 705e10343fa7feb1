"""ControlNet end to end against diffusers' StableDiffusionControlNetPipeline (and the SDXL one):
the fixture's random U-Net with a random ControlNetModel.from_unet (every weight random, the
zero convolutions too), read as a diffusers folder and in lllyasviel's layout (.pth through the
safe unpickler, .safetensors). Same prompt, latents, sampler; conditioning scale != 1, guidance
start/end, two ControlNets at once. Spec: final latents rel L2 <= 1e-3 with f32 weights, and
the control must move the result by far more than that (a test that fails if it is ignored)."""
import numpy as np
import pytest
import torch
from PIL import Image

import sdcpp
from fixtures.e2e import NEGATIVE, PROMPT, SIZE, diffusers_scheduler, rel, unit_latents
from fixtures.random_init import randomize_strongly_

LATENT_TOL = 1e-3
EMBED = (8, 16, 16, 32)           # conditioning_embedding_out_channels, small


def _control_image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[8:40, 16:56] = 255                                      # a block, as an edge map might show
    img[rng.random((SIZE, SIZE)) < 0.05] = 255
    return Image.fromarray(img, "RGB")


_NETS: dict = {}


def _controlnet(fx, seed: int):
    from diffusers import ControlNetModel

    if (fx.name, seed) not in _NETS:
        cn = ControlNetModel.from_unet(fx.unet, conditioning_embedding_out_channels=EMBED).eval().float()
        randomize_strongly_(cn, torch.Generator().manual_seed(seed))
        _NETS[(fx.name, seed)] = cn
    return _NETS[(fx.name, seed)]


def _to_lllyasviel(sd: dict) -> dict:
    """A diffusers ControlNetModel state dict in the original layout (control_model.*)."""
    from sdcpp.naming import diffusers_unet_to_ldm

    nblocks = len({k.split(".")[2] for k in sd if k.startswith("controlnet_cond_embedding.blocks.")})
    out = {}
    for k, v in sd.items():
        mod, what = k.rsplit(".", 1)
        if mod == "controlnet_cond_embedding.conv_in":
            name = f"input_hint_block.0.{what}"
        elif mod.startswith("controlnet_cond_embedding.blocks."):
            name = f"input_hint_block.{2 * (int(mod.split('.')[2]) + 1)}.{what}"
        elif mod == "controlnet_cond_embedding.conv_out":
            name = f"input_hint_block.{2 * (nblocks + 1)}.{what}"
        elif mod.startswith("controlnet_down_blocks."):
            name = f"zero_convs.{mod.split('.')[1]}.0.{what}"
        elif mod == "controlnet_mid_block":
            name = f"middle_block_out.0.{what}"
        else:
            name = diffusers_unet_to_ldm(k)[0]
        out["control_model." + name] = v.contiguous()
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    cache = {}

    def get(fx, seed, fmt):
        key = (fx.name, seed, fmt)
        if key not in cache:
            cn = _controlnet(fx, seed)
            root = tmp_path_factory.mktemp(f"cn-{fx.name}-{seed}")
            if fmt == "diffusers":
                cn.save_pretrained(root / "controlnet", safe_serialization=True)
                cache[key] = root / "controlnet"
            elif fmt == "pth":
                torch.save(_to_lllyasviel(cn.state_dict()), root / "control_test.pth")
                cache[key] = root / "control_test.pth"
            else:
                from safetensors.torch import save_file
                save_file(_to_lllyasviel(cn.state_dict()), str(root / "control_test.safetensors"))
                cache[key] = root / "control_test.safetensors"
        return cache[key]
    return get


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(fx):
        if fx.name not in cache:
            cache[fx.name] = sdcpp.load(str(fx.path("diffusers")), device="cpu", weight_type="f32", threads=2)
        return cache[fx.name]
    return get


def _reference(fx, nets, images, scales, latents, start=0.0, end=1.0, xl=False, **kw):
    import diffusers as d

    base = fx.pipeline("diffusers")
    cls = d.StableDiffusionXLControlNetPipeline if xl else d.StableDiffusionControlNetPipeline
    pipe = cls.from_pipe(base, controlnet=nets if len(nets) > 1 else nets[0])
    pipe.scheduler = diffusers_scheduler(("euler", "discrete"), pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    many = len(nets) > 1
    with torch.no_grad():
        return pipe(PROMPT, negative_prompt=NEGATIVE, image=images if many else images[0],
                    controlnet_conditioning_scale=scales if many else scales[0],
                    control_guidance_start=start, control_guidance_end=end, num_inference_steps=4,
                    guidance_scale=7.0, latents=torch.from_numpy(latents), height=SIZE, width=SIZE,
                    output_type="latent", **kw).images.numpy()


@pytest.mark.parametrize("fmt", ["diffusers", "pth", "safetensors"])
def test_controlnet_txt2img_matches_diffusers(model_fixtures, models, files, fmt):
    fx = model_fixtures.get("sd1")
    latents = unit_latents(5)
    image = _control_image(1)
    ref = _reference(fx, [_controlnet(fx, 3)], [image], [0.7], latents)
    model = models(fx)
    cn = sdcpp.load_controlnet(str(files(fx, 3, fmt)))
    assert cn.family == "sd1"
    ours = model.txt2img(PROMPT, NEGATIVE, width=SIZE, height=SIZE, steps=4, sampler="euler", latents=latents,
                         output_type="latent", control=[(cn, image, 0.7)])[0]
    err = rel(ours, ref[0])
    plain = model.txt2img(PROMPT, NEGATIVE, width=SIZE, height=SIZE, steps=4, sampler="euler", latents=latents,
                          output_type="latent")[0]
    print(f"[controlnet] sd1 {fmt}: rel L2 {err:.2e}; control effect {rel(plain, ref[0]):.2e}")
    assert err <= LATENT_TOL
    assert rel(plain, ref[0]) > 30 * LATENT_TOL       # ignoring the control would fail


@pytest.mark.parametrize("family", ["bk-sdm-base"])
def test_bk_sdm_controlnet_matches_diffusers(model_fixtures, models, files, family):
    """A ControlNet copied from a BK-SDM U-Net (diffusers' ControlNetModel.from_unet): its
    encoder has the distilled layout (one resnet per level), and so do the residuals the U-Net
    takes. BK-SDM small and tiny have no mid block, which diffusers' ControlNetModel cannot
    express, so there is no ControlNet (nor a reference) for them."""
    fx = model_fixtures.get(family)
    latents = unit_latents(7)
    image = _control_image(2)
    ref = _reference(fx, [_controlnet(fx, 9)], [image], [0.9], latents)
    cn = sdcpp.load_controlnet(str(files(fx, 9, "diffusers")))
    model = models(fx)
    ours = model.txt2img(PROMPT, NEGATIVE, width=SIZE, height=SIZE, steps=4, sampler="euler", latents=latents,
                         output_type="latent", control=[(cn, image, 0.9)])[0]
    err = rel(ours, ref[0])
    plain = model.txt2img(PROMPT, NEGATIVE, width=SIZE, height=SIZE, steps=4, sampler="euler", latents=latents,
                          output_type="latent")[0]
    print(f"[controlnet] {family}: rel L2 {err:.2e}; control effect {rel(plain, ref[0]):.2e}")
    assert err <= LATENT_TOL
    assert rel(plain, ref[0]) > 30 * LATENT_TOL


def test_two_controlnets_with_guidance_window(model_fixtures, models, files):
    fx = model_fixtures.get("sd1")
    latents = unit_latents(8)
    images = [_control_image(2), _control_image(4).transpose(Image.FLIP_LEFT_RIGHT)]
    nets = [_controlnet(fx, 3), _controlnet(fx, 11)]
    ref = _reference(fx, nets, images, [0.6, 1.3], latents, start=[0.0, 0.25], end=[0.75, 1.0])
    model = models(fx)
    cns = [sdcpp.load_controlnet(str(files(fx, s, "diffusers"))) for s in (3, 11)]
    ours = model.txt2img(PROMPT, NEGATIVE, width=SIZE, height=SIZE, steps=4, sampler="euler", latents=latents,
                         output_type="latent",
                         control=[sdcpp.ControlSpec(cns[0], images[0], 0.6, 0.0, 0.75),
                                  sdcpp.ControlSpec(cns[1], images[1], 1.3, 0.25, 1.0)])[0]
    err = rel(ours, ref[0])
    full = _reference(fx, nets, images, [0.6, 1.3], latents)
    print(f"[controlnet] two nets, windows: rel L2 {err:.2e}; window effect {rel(full, ref[0]):.2e}")
    assert err <= LATENT_TOL
    assert rel(full, ref[0]) > 30 * LATENT_TOL         # the windows matter


def test_controlnet_errors(model_fixtures, models, files, tmp_path):
    fx = model_fixtures.get("sd1")
    model = models(fx)
    with pytest.raises(sdcpp.errors.UnknownArchitectureError, match="ControlNet"):
        sdcpp.load_controlnet(str(fx.path("ldm")))
    cn = sdcpp.load_controlnet(str(files(fx, 3, "diffusers")))
    with pytest.raises(sdcpp.errors.InvalidArgumentError, match="start < end"):
        model.txt2img(PROMPT, width=SIZE, height=SIZE, steps=1, control=[(cn, _control_image(0), 1.0, 0.5, 0.5)])
    with pytest.raises(sdcpp.errors.InvalidArgumentError, match="not a ControlNet"):
        model.txt2img(PROMPT, width=SIZE, height=SIZE, steps=1, control=[(model, _control_image(0), 1.0)])


@pytest.mark.parametrize("family", ["sdxl", "ssd-1b", "vega"])
def test_sdxl_controlnet_matches_diffusers(model_fixtures, models, files, family):
    fx = model_fixtures.get(family)
    latents = unit_latents(6)
    image = _control_image(3)
    ref = _reference(fx, [_controlnet(fx, 5)], [image], [0.8], latents, xl=True)
    cn = sdcpp.load_controlnet(str(files(fx, 5, "diffusers")))
    assert cn.family == "sdxl"
    model = models(fx)
    ours = model.txt2img(PROMPT, NEGATIVE, width=SIZE, height=SIZE, steps=4, sampler="euler", latents=latents,
                         output_type="latent", control=[(cn, image, 0.8)])[0]
    err = rel(ours, ref[0])
    plain = model.txt2img(PROMPT, NEGATIVE, width=SIZE, height=SIZE, steps=4, sampler="euler", latents=latents,
                          output_type="latent")[0]
    print(f"[controlnet] {family}: rel L2 {err:.2e}; control effect {rel(plain, ref[0]):.2e}")
    assert err <= LATENT_TOL
    assert rel(plain, ref[0]) > 30 * LATENT_TOL


def test_controlnet_img2img_matches_diffusers(model_fixtures, models, files):
    import diffusers as d

    fx = model_fixtures.get("sd1")
    rng = np.random.default_rng(4)
    init = Image.fromarray((rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8), "RGB")
    control = _control_image(6)
    pipe = d.StableDiffusionControlNetImg2ImgPipeline.from_pipe(fx.pipeline("diffusers"), controlnet=_controlnet(fx, 3))
    pipe.scheduler = diffusers_scheduler(("euler_a", "discrete"), pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ref = pipe(PROMPT, negative_prompt=NEGATIVE, image=init, control_image=control, strength=0.75,
                   controlnet_conditioning_scale=0.9, num_inference_steps=4, guidance_scale=7.0,
                   generator=torch.Generator().manual_seed(21), height=SIZE, width=SIZE,
                   output_type="latent").images.numpy()
    cn = sdcpp.load_controlnet(str(files(fx, 3, "safetensors")))
    ours = models(fx).img2img(init, PROMPT, NEGATIVE, strength=0.75, steps=4, sampler="euler_a", seed=21,
                              output_type="latent", control=[(cn, control, 0.9)])[0]
    err = rel(ours, ref[0])
    print(f"[controlnet] sd1 img2img: rel L2 {err:.2e}")
    assert err <= LATENT_TOL


@pytest.mark.parametrize("fmt", ["diffusers", "pth"])
def test_controlnet_file_passed_as_a_model_says_so(model_fixtures, files, fmt):
    fx = model_fixtures.get("sd1")
    with pytest.raises(sdcpp.errors.UnknownArchitectureError, match="is a ControlNet"):
        sdcpp.inspect(str(files(fx, 3, fmt)))
    with pytest.raises(sdcpp.errors.UnknownArchitectureError, match="load_controlnet"):
        sdcpp.load(str(files(fx, 3, fmt)), device="cpu")


def test_cli_control_flags_match_the_api(model_fixtures, files, tmp_path, capsys):
    from sdcpp.cli import main
    from sdcpp.preprocess import canny

    fx = model_fixtures.get("sd1")
    src = tmp_path / "control.png"
    _control_image(9).save(src)
    cn_path = str(files(fx, 3, "pth"))
    out = tmp_path / "out.png"
    args = ["txt2img", "-m", str(fx.path("diffusers")), "-p", PROMPT, "--steps", "2", "-W", "64", "-H", "64", "-s", "5",
            "--sampler", "euler", "-o", str(out), "--no-progress", "-t", "2"]
    assert main(args + ["--control-net", cn_path, "--control-image", str(src), "--control-strength", "0.7",
                        "--canny"]) == 0
    api = sdcpp.load(str(fx.path("diffusers")), threads=2).txt2img(
        PROMPT, width=64, height=64, steps=2, seed=5, sampler="euler",
        control=[(sdcpp.load_controlnet(cn_path), canny(Image.open(src)), 0.7)])[0]
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(api))
    capsys.readouterr()
    assert main(args + ["--control-net", cn_path]) == 1
    assert "--control-image" in capsys.readouterr().err


def test_guess_mode_matches_diffusers(model_fixtures, models, files):
    fx = model_fixtures.get("sd1")
    latents = unit_latents(12)
    image = _control_image(7)
    ref = _reference(fx, [_controlnet(fx, 3)], [image], [1.2], latents, guess_mode=True)
    cn = sdcpp.load_controlnet(str(files(fx, 3, "diffusers")))
    model = models(fx)
    ours = model.txt2img(PROMPT, NEGATIVE, width=SIZE, height=SIZE, steps=4, sampler="euler", latents=latents,
                         output_type="latent", control=[sdcpp.ControlSpec(cn, image, 1.2, guess_mode=True)])[0]
    normal = _reference(fx, [_controlnet(fx, 3)], [image], [1.2], latents)
    err = rel(ours, ref[0])
    print(f"[controlnet] guess mode: rel L2 {err:.2e}; differs from normal mode by {rel(normal, ref[0]):.2e}")
    assert err <= LATENT_TOL
    assert rel(normal, ref[0]) > 30 * LATENT_TOL


def test_controlnet_inpaint_matches_diffusers(model_fixtures, models, files):
    import diffusers as d

    fx = model_fixtures.get("sd1")
    rng = np.random.default_rng(5)
    init = Image.fromarray((rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8), "RGB")
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[16:48, 8:40] = 255
    mask = Image.fromarray(m, "L")
    control = _control_image(8)
    pipe = d.StableDiffusionControlNetInpaintPipeline.from_pipe(fx.pipeline("diffusers"), controlnet=_controlnet(fx, 3))
    pipe.scheduler = diffusers_scheduler(("euler", "discrete"), pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ref = pipe(PROMPT, negative_prompt=NEGATIVE, image=init, mask_image=mask, control_image=control,
                   strength=1.0, controlnet_conditioning_scale=0.8, num_inference_steps=4, guidance_scale=7.0,
                   generator=torch.Generator().manual_seed(31), height=SIZE, width=SIZE,
                   output_type="latent").images.numpy()
    cn = sdcpp.load_controlnet(str(files(fx, 3, "diffusers")))
    ours = models(fx).inpaint(init, mask, PROMPT, NEGATIVE, strength=1.0, steps=4, sampler="euler", seed=31,
                              output_type="latent", control=[(cn, control, 0.8)])[0]
    err = rel(ours, ref[0])
    print(f"[controlnet] sd1 inpaint: rel L2 {err:.2e}")
    assert err <= LATENT_TOL


def test_controlnet_follows_the_models_compute(model_fixtures, models, files):
    """sdcpp.load(compute=) reaches the ControlNets the pipeline runs (ControlNet.compute; the
    numerics are tested in tests/engine/test_controlnet_engine.py::test_bf16_compute), so a bf16
    U-Net gets bf16 residuals and an exact one exact residuals; load_controlnet(compute=)
    overrides it, and a bad value is a typed error before anything loads."""
    fx = model_fixtures.get("sd1")

    def run(model, cn) -> str:
        model.txt2img(PROMPT, width=SIZE, height=SIZE, steps=1, sampler="euler", seed=1, output_type="latent",
                      control=[(cn, _control_image(0), 0.7)])
        (eng, _dev), = cn._engines.values()
        return eng.compute

    bf16 = sdcpp.load(str(fx.path("diffusers")), device="cpu", weight_type="f16", threads=2, compute="bf16")
    assert bf16.compute == "bf16" and bf16._c["unet"].compute == "bf16"
    cn = sdcpp.load_controlnet(str(files(fx, 3, "diffusers")))
    assert run(bf16, cn) == "bf16"
    assert models(fx).compute == "f32"
    assert run(models(fx), cn) == "f32"          # the same net with an exact model: exact again
    assert run(bf16, sdcpp.load_controlnet(str(files(fx, 3, "diffusers")), compute="f32")) == "f32"
    with pytest.raises(sdcpp.errors.InvalidArgumentError, match="compute"):
        sdcpp.load_controlnet(str(files(fx, 3, "diffusers")), compute="fp8")
