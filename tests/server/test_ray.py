"""sdcpp.ray: Ray Data's batch generator and the Serve deployment, on a local Ray cluster
(loopback only), each image equal to a direct call with the same seed."""
import socket

import numpy as np
import pytest

from server_helpers import SIZE, pixels

PROMPTS = ["a red fox", "a lighthouse at dusk", "a bowl of fruit"]


def _reference(reference, prompt, seed):
    (ref,) = reference.txt2img(prompt, width=SIZE, height=SIZE, steps=2, sampler="euler", seed=seed)
    return pixels(ref)


def test_image_generator_rows_equal_direct_calls(tiny_path, reference):
    """The callable itself (what each Ray Data actor runs), without Ray."""
    from sdcpp.ray import ImageGenerator

    gen = ImageGenerator(tiny_path, width=SIZE, height=SIZE, steps=2, sampler="euler", device="cpu", threads=2)
    out = gen({"prompt": np.array(PROMPTS, dtype=object), "seed": np.array([5, -1, 7])})
    assert out["image"].shape == (3, SIZE, SIZE, 3) and out["image"].dtype == np.uint8
    assert out["seed"][0] == 5 and out["seed"][2] == 7 and 0 <= out["seed"][1] < 2**32
    for prompt, seed, image in zip(PROMPTS, out["seed"], out["image"]):
        assert np.array_equal(image, _reference(reference, prompt, int(seed)))


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.serve")
    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_data_map_batches(ray_cluster, tiny_path, reference):
    import ray

    from sdcpp.ray import ImageGenerator

    ds = ray.data.from_items([{"prompt": p, "seed": 10 + i} for i, p in enumerate(PROMPTS)])
    rows = ds.map_batches(ImageGenerator, batch_size=2, concurrency=2, num_cpus=1,
                          fn_constructor_kwargs=dict(model=tiny_path, width=SIZE, height=SIZE, steps=2,
                                                     sampler="euler", threads=1)).take_all()
    assert sorted(r["prompt"] for r in rows) == sorted(PROMPTS)
    for r in rows:
        assert np.array_equal(r["image"], _reference(reference, r["prompt"], int(r["seed"])))


def test_serve_two_replicas(ray_cluster, tiny_path, reference):
    import httpx
    from ray import serve

    import sdcpp.ray
    from sdcpp.server import ServerConfig
    from server_helpers import decode

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        app = sdcpp.ray.deployment(ServerConfig(model=tiny_path, threads=1), num_replicas=2, num_cpus=1)
        serve.run(app, name="sdcpp", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        for seed in (1, 2, 3):
            r = httpx.post(url + "/sdapi/v1/txt2img", timeout=120,
                           json=dict(prompt=PROMPTS[0], steps=2, width=SIZE, height=SIZE, seed=seed,
                                     sampler_name="Euler"))
            assert r.status_code == 200, r.text
            assert np.array_equal(pixels(decode(r.json()["images"][0])), _reference(reference, PROMPTS[0], seed))
        r = httpx.post(url + "/sdapi/v1/txt2img", json=dict(prompt="x", sampler_name="PLMS"), timeout=60)
        assert r.status_code == 400 and r.json()["field"] == "sampler_name"
        status = serve.status().applications["sdcpp"].deployments["sdcpp"]
        assert status.replica_states.get("RUNNING") == 2
    finally:
        serve.shutdown()
