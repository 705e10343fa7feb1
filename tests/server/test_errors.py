"""Bad requests get 4xx JSON naming the field; the server stays up and keeps serving."""
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from sdcpp.server import Limits  # noqa: E402
from server_helpers import SIZE, b64_png, init_image  # noqa: E402


def body(**kw):
    out = dict(prompt="a red fox", steps=1, width=SIZE, height=SIZE, seed=1, sampler_name="Euler")
    out.update(kw)
    return out


@pytest.mark.parametrize("path,change,status,field,words", [
    ("txt2img", dict(sampler_name="PLMS"), 400, "sampler_name", "unknown sampler_name 'PLMS'"),
    ("txt2img", dict(scheduler="Cosine"), 400, "scheduler", "unknown scheduler"),
    ("txt2img", dict(width=60), 400, "width", "multiple of 8"),
    ("txt2img", dict(height=0), 400, "height", "multiple of 8"),
    ("txt2img", dict(width=4096), 400, "width", "over the server's limit of 256"),
    ("txt2img", dict(steps=11), 400, "steps", "over the server's limit of 10"),
    ("txt2img", dict(steps=0), 400, "steps", ">= 1"),
    ("txt2img", dict(batch_size=3, n_iter=2), 400, "batch_size", "limit of 4"),
    ("txt2img", dict(n_iter=0), 400, "n_iter", ">= 1"),
    ("txt2img", dict(cfg_scale=1e9), 400, "cfg_scale", "finite number"),
    ("txt2img", dict(seed=-5), 400, "seed", "-1 or an integer"),
    ("txt2img", dict(seed=2**64 - 1, batch_size=2), 400, "seed", "2**64"),
    ("txt2img", dict(steps="many"), 422, "steps", "valid integer"),
    ("txt2img", dict(prompt=["a", "b"]), 422, "prompt", "valid string"),
    ("txt2img", dict(prompt="x <lora:nowhere:1>"), 400, "prompt", "no LoRA folder"),
    ("txt2img", dict(prompt="x <lora::1>"), 400, "prompt", "has no name"),
    ("txt2img", dict(enable_hr=True, hr_upscaler="R-ESRGAN 4x+"), 400, "hr_upscaler", "not available"),
    ("txt2img", dict(enable_hr=True, hr_scale=8.0), 400, "hr_resize_x", "limit of 256"),
    ("txt2img", dict(enable_hr=True, denoising_strength=0), 400, "denoising_strength", "(0, 1]"),
    ("txt2img", dict(override_settings={"sd_model_checkpoint": "nope"}), 400,
     "override_settings.sd_model_checkpoint", "no checkpoint 'nope'"),
    ("img2img", dict(), 400, "init_images", "at least one image"),
    ("img2img", dict(init_images=["%%%"]), 400, "init_images[0]", "not valid base64"),
    ("img2img", dict(init_images=["aGVsbG8="]), 400, "init_images[0]", "not a readable image"),
    ("img2img", dict(init_images=[123]), 400, "init_images[0]", "base64 string"),
    ("img2img", dict(init_images=["IMG"], denoising_strength=0), 400, "denoising_strength", "(0, 1]"),
    ("img2img", dict(init_images=["IMG"], mask="%%%"), 400, "mask", "not valid base64"),
])
def test_a1111_bad_requests(make_client, path, change, status, field, words):
    client = make_client(limits=Limits(max_width=256, max_height=256, max_steps=10, max_images=4))
    b = body(**change)
    if b.get("init_images") == ["IMG"]:
        b["init_images"] = [b64_png(init_image())]
    if b.get("mask") == "IMG":
        b["mask"] = b64_png(init_image())
    r = client.post(f"/sdapi/v1/{path}", json=b)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field
    assert words in r.json()["detail"]
    assert client.post("/sdapi/v1/txt2img", json=body()).status_code == 200   # still serving


def test_lora_tags_in_the_negative_prompt_are_not_looked_up(make_client):
    """Only the prompt's tags are applied (docs/lora.md); a tag in the negative prompt is no error."""
    r = make_client().post("/sdapi/v1/txt2img", json=body(negative_prompt="ugly <lora:absent:1>"))
    assert r.status_code == 200, r.text


def test_broken_json_and_huge_bodies(make_client):
    client = make_client(limits=Limits(max_body_bytes=1000))
    r = client.post("/sdapi/v1/txt2img", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]
    r = client.post("/sdapi/v1/txt2img", content=b"{" + b" " * 2000 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.get("/health").json()["status"] == "ok"


def test_decompression_bomb_is_refused(make_client):
    from PIL import Image

    client = make_client(limits=Limits(max_upload_pixels=100 * 100))
    big = Image.new("RGB", (200, 200))
    r = client.post("/sdapi/v1/img2img", json=body(init_images=[b64_png(big)]))
    assert r.status_code == 400 and r.json()["field"] == "init_images[0]" and "200x200" in r.json()["detail"]


def test_errors_raised_inside_the_pipeline_are_400_and_the_worker_survives(make_client, tiny_model):
    """A check only the pipeline makes (its working-memory estimate) still answers 4xx, naming the field."""
    client = make_client(limits=Limits(max_width=1 << 20, max_height=1 << 20))
    r = client.post("/sdapi/v1/txt2img", json=body(width=65536, height=65536))
    assert r.status_code == 400 and r.json()["field"] == "width" and "working memory" in r.json()["detail"]
    assert 'sdcpp_jobs_total{outcome="error"} 1' in client.get("/metrics").text
    assert client.post("/sdapi/v1/txt2img", json=body()).status_code == 200


def test_unknown_route_is_json_404(make_client):
    r = make_client().get("/sdapi/v1/nothing")
    assert r.status_code == 404 and r.json()["error"] == "not_found_error"
