"""OpenAI's images API over the tiny fixture: same images as the Python API, OpenAI's shapes."""
import io

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from server_helpers import SIZE, decode, init_image, pixels  # noqa: E402

PROMPT = "a lighthouse at dusk"


def test_generations_equal_the_python_api(make_client, reference):
    client = make_client()
    r = client.post("/v1/images/generations", json=dict(prompt=PROMPT, n=2, size=f"{SIZE}x{SIZE}",
                                                        response_format="b64_json", model="dall-e-2",
                                                        steps=2, seed=11))
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["seed"] for d in data] == [11, 12]
    for d in data:
        (ref,) = reference.txt2img(PROMPT, width=SIZE, height=SIZE, steps=2, sampler="euler_a", seed=d["seed"])
        assert np.array_equal(pixels(decode(d["b64_json"])), pixels(ref))


def test_generations_default_to_the_native_size(make_client):
    """No size (or "auto"): the family's native size, 512 for sd1; seen through the size limit,
    since generating 512x512 would only slow the test down."""
    from sdcpp.server import Limits

    client = make_client(limits=Limits(max_width=256, max_height=256))
    for size in ("auto", None):
        r = client.post("/v1/images/generations", json={k: v for k, v in dict(prompt=PROMPT, size=size).items() if v})
        assert r.status_code == 400 and "size 512 is over the server's limit of 256" in r.json()["error"]["message"]


def _upload(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_edits_are_img2img(make_client, reference):
    client = make_client()
    src = init_image()
    r = client.post("/v1/images/edits", files={"image": ("in.png", _upload(src), "image/png")},
                    data={"prompt": PROMPT, "steps": "2", "seed": "5", "strength": "0.6"})
    assert r.status_code == 200, r.text
    (ref,) = reference.img2img(src, PROMPT, strength=0.6, steps=2, sampler="euler_a", seed=5)
    assert np.array_equal(pixels(decode(r.json()["data"][0]["b64_json"])), pixels(ref))


@pytest.mark.parametrize("kind,change,status,param", [
    ("gen", dict(size="64x65"), 400, "size"),
    ("gen", dict(size="big"), 400, "size"),
    ("gen", dict(n=11), 400, "n"),
    ("gen", dict(response_format="url"), 400, "response_format"),
    ("gen", dict(sampler="plms"), 400, "sampler"),
    ("gen", dict(prompt=None), 422, "prompt"),
    ("edit", dict(mask=True), 400, "mask"),          # a mask without an alpha channel
    ("edit", dict(image=b"not an image"), 400, "image"),
    ("edit", dict(image=None), 400, "image"),
    ("edit", dict(strength="2"), 400, "strength"),
    ("edit", dict(n="two"), 400, "n"),
])
def test_openai_bad_requests(make_client, kind, change, status, param):
    client = make_client()
    if kind == "gen":
        b = dict(prompt=PROMPT, size=f"{SIZE}x{SIZE}", steps=1)
        b.update(change)
        r = client.post("/v1/images/generations", json={k: v for k, v in b.items() if v is not None})
    else:
        files = {"image": ("in.png", _upload(init_image()), "image/png")}
        data = {"prompt": PROMPT, "steps": "1"}
        if change.get("mask"):
            files["mask"] = ("mask.png", _upload(init_image()), "image/png")
        elif "image" in change:
            if change["image"] is None:
                files = {}
            else:
                files["image"] = ("in.png", change["image"], "image/png")
        else:
            data.update(change)
        r = client.post("/v1/images/edits", files=files or None, data=data)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"]


def test_models(make_client):
    data = make_client().get("/v1/models").json()
    assert data["object"] == "list" and data["data"][0]["id"] == "model.safetensors"


def test_edit_with_an_alpha_mask_is_inpainting(make_client, reference):
    """OpenAI's edits: the mask's fully transparent pixels are repainted."""
    from PIL import Image

    src = init_image()
    rgba = np.full((SIZE, SIZE, 4), 255, np.uint8)
    rgba[: SIZE // 2, :, 3] = 0                          # top half transparent: edit it
    files = {"image": ("in.png", _upload(src), "image/png"),
             "mask": ("mask.png", _upload(Image.fromarray(rgba, "RGBA")), "image/png")}
    r = make_client().post("/v1/images/edits", files=files,
                           data={"prompt": PROMPT, "steps": "2", "seed": "3", "strength": "0.9"})
    assert r.status_code == 200, r.text
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[: SIZE // 2] = 255
    (ref,) = reference.inpaint(src, Image.fromarray(m, "L"), PROMPT, strength=0.9, steps=2, sampler="euler_a", seed=3)
    got = decode(r.json()["data"][0]["b64_json"])
    assert np.array_equal(pixels(got), pixels(ref))
