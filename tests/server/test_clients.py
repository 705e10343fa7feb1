"""Real clients against a real server on loopback: webuiapi (an A1111 client) and OpenAI's own
`openai` package, with an API key, concurrent requests and error answers as the clients see them."""
import io
import threading

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from sdcpp.server import ServerConfig, create_app  # noqa: E402
from server_helpers import SIZE, add_gate, init_image, live_server, pixels  # noqa: E402

PROMPT = "a lighthouse at dusk"
KEY = "k-123"


@pytest.fixture(scope="module")
def server(tiny_path, tiny_model):
    app = create_app(ServerConfig(model=tiny_path, api_key=KEY, max_queue=1), model=tiny_model)
    with live_server(app) as url:
        yield app, url


def test_webuiapi(server, reference):
    webuiapi = pytest.importorskip("webuiapi")
    app, url = server
    host, port = url.rsplit("/", 1)[-1].split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler a", steps=2)
    api.session.headers["Authorization"] = f"Bearer {KEY}"
    result = api.txt2img(prompt=PROMPT, negative_prompt="blurry", width=SIZE, height=SIZE, seed=42, cfg_scale=7)
    (ref,) = reference.txt2img(PROMPT, "blurry", width=SIZE, height=SIZE, steps=2, sampler="euler_a", seed=42)
    assert np.array_equal(pixels(result.image), pixels(ref))
    assert result.info["all_seeds"] == [42]

    src = init_image()
    result = api.img2img(images=[src], prompt=PROMPT, width=SIZE, height=SIZE, seed=9, denoising_strength=0.5,
                         sampler_name="DPM++ 2M", scheduler="Karras")
    (ref,) = reference.img2img(src, PROMPT, strength=0.5, steps=2, sampler="dpm++2m", scheduler="karras", seed=9)
    assert np.array_equal(pixels(result.image), pixels(ref))

    assert "Euler a" in [s["name"] for s in api.get_samplers()]
    assert [n.split(" [")[0] for n in api.util_get_model_names()] == ["model.safetensors"]
    assert api.get_options()["sd_model_checkpoint"].startswith("model.safetensors")
    with pytest.raises(RuntimeError) as exc:                       # webuiapi raises on non-200
        api.txt2img(prompt=PROMPT, width=SIZE, height=SIZE, sampler_name="PLMS")
    assert exc.value.args[0] == 400 and "sampler_name" in exc.value.args[1]


def test_openai_client(server, reference):
    openai = pytest.importorskip("openai")
    app, url = server
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    import base64
    from PIL import Image

    def image_of(item):
        return Image.open(io.BytesIO(base64.b64decode(item.b64_json)))

    out = client.images.generate(model="sdcpp", prompt=PROMPT, n=2, size=f"{SIZE}x{SIZE}",
                                 response_format="b64_json", extra_body={"steps": 2, "seed": 3})
    for item, seed in zip(out.data, (3, 4)):
        (ref,) = reference.txt2img(PROMPT, width=SIZE, height=SIZE, steps=2, sampler="euler_a", seed=seed)
        assert np.array_equal(pixels(image_of(item)), pixels(ref))

    src = init_image()
    buf = io.BytesIO()
    src.save(buf, format="PNG")
    out = client.images.edit(image=("in.png", buf.getvalue(), "image/png"), prompt=PROMPT,
                             extra_body={"steps": 2, "seed": 5, "strength": 0.6})
    (ref,) = reference.img2img(src, PROMPT, strength=0.6, steps=2, sampler="euler_a", seed=5)
    assert np.array_equal(pixels(image_of(out.data[0])), pixels(ref))

    assert [m.id for m in client.models.list()] == ["model.safetensors"]
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.generate(prompt=PROMPT, size="100x100")
    assert exc.value.body["param"] == "size"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.APIStatusError) as exc:
        client.images.edit(image=("in.png", buf.getvalue(), "image/png"), mask=("m.png", buf.getvalue(), "image/png"),
                           prompt=PROMPT)
    assert exc.value.status_code == 400 and exc.value.body["param"] == "mask"    # no alpha channel


def test_concurrent_clients_and_queue_full(server, reference):
    """Three clients at once on a queue of 1: one runs, one waits, one gets 429 (openai's
    RateLimitError); the two served get exactly their seeds' images."""
    openai = pytest.importorskip("openai")
    app, url = server
    gate = add_gate(app)
    queue = app.state.sdcpp.queue
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    results = {}

    def ask(seed):
        try:
            results[seed] = client.images.generate(prompt=PROMPT, size=f"{SIZE}x{SIZE}",
                                                   extra_body={"steps": 2, "seed": seed})
        except openai.RateLimitError as exc:
            results[seed] = exc

    try:
        t1 = threading.Thread(target=ask, args=(1,))
        t1.start()
        gate.wait_entered()
        t2 = threading.Thread(target=ask, args=(2,))
        t2.start()
        while queue.length != 1:
            t2.join(0.01)
        ask(3)
        assert isinstance(results[3], openai.RateLimitError)
    finally:
        queue.step_hooks.remove(gate)
        gate.release.set()
    t1.join(60)
    t2.join(60)
    import base64
    from PIL import Image
    for seed in (1, 2):
        img = Image.open(io.BytesIO(base64.b64decode(results[seed].data[0].b64_json)))
        (ref,) = reference.txt2img(PROMPT, width=SIZE, height=SIZE, steps=2, sampler="euler_a", seed=seed)
        assert np.array_equal(pixels(img), pixels(ref))
