"""The A1111 API over the tiny fixture: the server's images are the Python API's images (the
pipeline itself is verified against diffusers in tests/pipeline), with A1111's fields, names and
seed numbering."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from server_helpers import SIZE, b64_png, decode, init_image, pixels  # noqa: E402

PROMPT = "a lighthouse at dusk, oil painting"


def body(**kw):
    out = dict(prompt=PROMPT, negative_prompt="blurry", steps=2, width=SIZE, height=SIZE, seed=42, cfg_scale=7)
    out.update(kw)
    return out


@pytest.mark.parametrize("sampler_name,scheduler,ours", [
    ("Euler a", None, ("euler_a", "discrete")),
    ("DPM++ 2M", "Karras", ("dpm++2m", "karras")),
    ("DPM++ 2M Karras", None, ("dpm++2m", "karras")),     # the pre-1.9 combined name
    ("Euler", "Automatic", ("euler", "discrete")),
])
def test_txt2img_equals_the_python_api(make_client, reference, sampler_name, scheduler, ours):
    client = make_client()
    r = client.post("/sdapi/v1/txt2img", json=body(sampler_name=sampler_name, scheduler=scheduler, batch_size=2))
    assert r.status_code == 200, r.text
    data = r.json()
    info = json.loads(data["info"])
    assert info["seed"] == 42 and info["all_seeds"] == [42, 43]     # A1111: image i has seed + i
    assert len(data["images"]) == 2
    for b64, seed, infotext in zip(data["images"], info["all_seeds"], info["infotexts"]):
        (ref,) = reference.txt2img(PROMPT, "blurry", width=SIZE, height=SIZE, steps=2, cfg_scale=7.0,
                                   sampler=ours[0], scheduler=ours[1], seed=seed)
        img = decode(b64)
        assert img.size == (SIZE, SIZE)
        assert np.array_equal(pixels(img), pixels(ref))
        assert img.text["parameters"] == ref.info["parameters"] == infotext
    assert data["parameters"]["sampler_name"] == sampler_name and data["parameters"]["steps"] == 2


def test_seed_minus_one_reports_the_seed_it_used(make_client, reference):
    client = make_client()
    data = client.post("/sdapi/v1/txt2img", json=body(seed=-1, n_iter=2)).json()
    info = json.loads(data["info"])
    seed = info["seed"]
    assert 0 <= seed < 2**32 and info["all_seeds"] == [seed, seed + 1]
    (ref,) = reference.txt2img(PROMPT, "blurry", width=SIZE, height=SIZE, steps=2, sampler="euler", seed=seed + 1)
    assert np.array_equal(pixels(decode(data["images"][1])), pixels(ref))


def test_img2img_equals_the_python_api(make_client, reference):
    client = make_client()
    src = init_image()
    r = client.post("/sdapi/v1/img2img", json=body(init_images=["data:image/png;base64," + b64_png(src)],
                                                   denoising_strength=0.5, sampler_name="Euler a"))
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["denoising_strength"] == 0.5
    (ref,) = reference.img2img(src, PROMPT, "blurry", strength=0.5, steps=2, sampler="euler_a", seed=42)
    assert np.array_equal(pixels(decode(r.json()["images"][0])), pixels(ref))


def test_img2img_resizes_the_init_image_to_the_requested_size(make_client, reference):
    """A1111's resize mode 0: the init image is stretched to width x height."""
    from PIL import Image

    client = make_client()
    big = init_image().resize((96, 80))
    r = client.post("/sdapi/v1/img2img", json=body(init_images=[b64_png(big)], sampler_name="Euler"))
    assert r.status_code == 200, r.text
    (ref,) = reference.img2img(big.resize((SIZE, SIZE), Image.LANCZOS), PROMPT, "blurry", steps=2,
                               sampler="euler", seed=42)
    assert np.array_equal(pixels(decode(r.json()["images"][0])), pixels(ref))


def test_lists_samplers_schedulers_models_loras(make_client, tmp_path):
    (tmp_path / "loras" / "sub").mkdir(parents=True)
    (tmp_path / "loras" / "sub" / "ink.safetensors").write_bytes(b"")
    client = make_client(lora_dir=str(tmp_path / "loras"))
    samplers = {s["name"] for s in client.get("/sdapi/v1/samplers").json()}
    assert {"Euler a", "Euler", "DPM++ 2M", "LCM"} <= samplers
    assert "karras" in {s["name"] for s in client.get("/sdapi/v1/schedulers").json()}
    (model,) = client.get("/sdapi/v1/sd-models").json()
    assert model["model_name"] == "model" and model["title"].startswith("model.safetensors")
    assert client.get("/sdapi/v1/loras").json() == [
        {"name": "sub/ink", "alias": "sub/ink", "path": str(tmp_path / "loras" / "sub" / "ink.safetensors"),
         "metadata": {}}]
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("model.safetensors")


def test_lora_tag_in_the_prompt(make_client, model_fixtures, tmp_path, tiny_path):
    """<lora:name:w> resolves in --lora-dir and gives what the Python API gives for the same prompt."""
    import sdcpp

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lora"))
    from lora_helpers import make_lora, write_kohya

    fx = model_fixtures.get("bk-sdm-tiny")
    loras = tmp_path / "loras"
    loras.mkdir()
    write_kohya(fx, make_lora(fx, seed=3, std=0.3), loras / "ink.safetensors")
    server_model = sdcpp.load(tiny_path, device="cpu", threads=2)
    client = make_client(model=server_model, lora_dir=str(loras))
    prompt = PROMPT + " <lora:ink:0.8>"
    r = client.post("/sdapi/v1/txt2img", json=body(prompt=prompt, sampler_name="Euler"))
    assert r.status_code == 200, r.text
    ref_model = sdcpp.load(tiny_path, device="cpu", threads=2, lora_dir=str(loras))
    (ref,) = ref_model.txt2img(prompt, "blurry", width=SIZE, height=SIZE, steps=2, sampler="euler", seed=42)
    (plain,) = ref_model.txt2img(PROMPT, "blurry", width=SIZE, height=SIZE, steps=2, sampler="euler", seed=42)
    got = pixels(decode(r.json()["images"][0]))
    assert np.array_equal(got, pixels(ref))
    assert not np.array_equal(got, pixels(plain))      # the LoRA did something
    r = client.post("/sdapi/v1/txt2img", json=body(prompt=PROMPT + " <lora:missing:1>"))
    assert r.status_code == 400 and r.json()["field"] == "prompt" and "missing" in r.json()["detail"]


def test_options_switches_the_checkpoint(make_client, model_fixtures, tiny_path, reference, tmp_path):
    import sdcpp

    other_path = model_fixtures.get("sd1").path("ldm")
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny_path, models / "tiny.safetensors")
    shutil.copy(other_path, models / "other.safetensors")
    client = make_client(path=str(models / "tiny.safetensors"), models_dir=str(models))
    names = [m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()]
    assert names == ["other", "tiny"]
    r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "other.safetensors"})
    assert r.status_code == 200, r.text
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("other.safetensors")
    data = client.post("/sdapi/v1/txt2img", json=body(sampler_name="Euler")).json()
    assert json.loads(data["info"])["sd_model_name"] == "other"
    (ref,) = sdcpp.load(str(models / "other.safetensors"), device="cpu", threads=2).txt2img(
        PROMPT, "blurry", width=SIZE, height=SIZE, steps=2, sampler="euler", seed=42)
    assert np.array_equal(pixels(decode(data["images"][0])), pixels(ref))
    # per-request override_settings, then back by bare model name
    data = client.post("/sdapi/v1/txt2img", json=body(sampler_name="Euler",
                                                      override_settings={"sd_model_checkpoint": "tiny"})).json()
    (ref,) = reference.txt2img(PROMPT, "blurry", width=SIZE, height=SIZE, steps=2, sampler="euler", seed=42)
    assert np.array_equal(pixels(decode(data["images"][0])), pixels(ref))
    r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope"})
    assert r.status_code == 400 and r.json()["field"] == "sd_model_checkpoint"


def test_hires_fix_and_inpainting_equal_the_python_api(make_client, reference):
    """enable_hr maps onto txt2img(hires=...), an img2img mask onto inpaint(); pixels equal."""
    from PIL import Image

    client = make_client()
    r = client.post("/sdapi/v1/txt2img", json=body(sampler_name="Euler", enable_hr=True, hr_scale=1.5,
                                                   hr_second_pass_steps=2, denoising_strength=0.6,
                                                   hr_upscaler="Latent (nearest)"))
    assert r.status_code == 200, r.text
    (ref,) = reference.txt2img(PROMPT, "blurry", width=SIZE, height=SIZE, steps=2, sampler="euler", seed=42,
                               hires=dict(scale=1.5, steps=2, denoise=0.6, upscaler="latent-nearest"))
    img = decode(r.json()["images"][0])
    assert img.size == (96, 96) and np.array_equal(pixels(img), pixels(ref))

    src = init_image()
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[:, : SIZE // 2] = 255
    mask = Image.fromarray(m, "L")
    for invert in (0, 1):
        r = client.post("/sdapi/v1/img2img", json=body(sampler_name="Euler", init_images=[b64_png(src)],
                                                       mask=b64_png(mask.convert("RGB")), denoising_strength=0.8,
                                                       inpainting_mask_invert=invert))
        assert r.status_code == 200, r.text
        want = Image.fromarray(255 - m, "L") if invert else mask
        (ref,) = reference.inpaint(src, want, PROMPT, "blurry", strength=0.8, steps=2, sampler="euler", seed=42)
        assert np.array_equal(pixels(decode(r.json()["images"][0])), pixels(ref))
