"""Queue, interrupt, client disconnect, progress, metrics and auth. Timing is controlled by a gate
that holds the worker inside a sampling step, never by sleeps."""
import json
import socket
import threading
import time
from urllib.parse import urlparse

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from server_helpers import SIZE, add_gate, decode, live_server, pixels  # noqa: E402

PROMPT = "a red fox"


def body(**kw):
    out = dict(prompt=PROMPT, steps=2, width=SIZE, height=SIZE, seed=7, sampler_name="Euler")
    out.update(kw)
    return out


def in_thread(fn, *args, **kw):
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", fn(*args, **kw)), daemon=True)
    t.start()
    return t, box


def wait_for(cond, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_queue_full_is_429_and_order_is_fifo(make_client, reference):
    client = make_client(max_queue=1)
    state = client.app.state.sdcpp
    gate = add_gate(client.app)
    first, box1 = in_thread(client.post, "/sdapi/v1/txt2img", json=body(seed=1))
    gate.wait_entered()                                       # job 1 runs (held at its first step)
    second, box2 = in_thread(client.post, "/sdapi/v1/txt2img", json=body(seed=2))
    wait_for(lambda: state.queue.length == 1, "job 2 to be queued")
    r = client.post("/sdapi/v1/txt2img", json=body(seed=3))
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert "max-queue 1" in r.json()["detail"]
    assert client.get("/health").json()["queue"] == 1
    gate.release.set()
    first.join(30)
    second.join(30)
    for box, seed in ((box1, 1), (box2, 2)):
        assert box["r"].status_code == 200
        (ref,) = reference.txt2img(PROMPT, width=SIZE, height=SIZE, steps=2, sampler="euler", seed=seed)
        assert np.array_equal(pixels(decode(box["r"].json()["images"][0])), pixels(ref))
    assert "sdcpp_rejected_total 1" in client.get("/metrics").text


def test_progress_interrupt_and_the_model_stays_usable(make_client, reference):
    client = make_client()
    gate = add_gate(client.app)
    t, box = in_thread(client.post, "/sdapi/v1/txt2img", json=body(steps=4, n_iter=3))
    gate.wait_entered()
    p = client.get("/sdapi/v1/progress").json()
    assert p["state"]["sampling_step"] == 1 and p["state"]["sampling_steps"] == 4
    assert p["state"]["job_count"] == 1 and 0 < p["progress"] < 1
    assert client.post("/sdapi/v1/interrupt").status_code == 200
    gate.release.set()
    t.join(30)
    r = box["r"]
    assert r.status_code == 200
    info = json.loads(r.json()["info"])
    assert info["interrupted"] is True and r.json()["images"] == []     # stopped in the first of 3 images
    assert 'sdcpp_jobs_total{outcome="interrupted"} 1' in client.get("/metrics").text
    client.app.state.sdcpp.queue.step_hooks.remove(gate)
    r = client.post("/sdapi/v1/txt2img", json=body())                   # the next job runs normally
    (ref,) = reference.txt2img(PROMPT, width=SIZE, height=SIZE, steps=2, sampler="euler", seed=7)
    assert np.array_equal(pixels(decode(r.json()["images"][0])), pixels(ref))


def test_skip_drops_only_the_current_image(make_client):
    client = make_client()
    gate = add_gate(client.app)
    t, box = in_thread(client.post, "/sdapi/v1/txt2img", json=body(n_iter=2))
    gate.wait_entered()
    client.post("/sdapi/v1/skip")
    client.app.state.sdcpp.queue.step_hooks.remove(gate)
    gate.release.set()
    t.join(30)
    info = json.loads(box["r"].json()["info"])
    assert info["all_seeds"] == [8] and not info["interrupted"]


def test_metrics_count_images_and_step_time(make_client):
    client = make_client()
    assert client.post("/sdapi/v1/txt2img", json=body(steps=3, batch_size=2)).status_code == 200
    text = client.get("/metrics").text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values['sdcpp_images_total{mode="txt2img"}'] == 2
    assert values["sdcpp_queue_length"] == 0 and values["sdcpp_job_running"] == 0
    assert values["sdcpp_step_seconds_count"] == 4                  # 2 images x (3 steps - the first)
    assert values["sdcpp_step_seconds_sum"] > 0


def test_api_key(make_client):
    client = make_client(api_key="s3cret")
    assert client.get("/health").status_code == 200                # open: load balancers probe it
    for path in ("/metrics", "/sdapi/v1/sd-models", "/v1/models"):
        r = client.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    r = client.post("/v1/images/generations", json={"prompt": "x"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = client.post("/sdapi/v1/txt2img", json=body(), headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200


def test_client_disconnect_cancels_its_job(make_client, tiny_path, tiny_model):
    """A real server on loopback: the client sends a request and hangs up while it runs; the job
    stops at its next step and the worker takes the next request."""
    from sdcpp.server import ServerConfig, create_app

    app = create_app(ServerConfig(model=tiny_path), model=tiny_model)
    gate = add_gate(app)
    queue = app.state.sdcpp.queue
    with live_server(app) as url:
        u = urlparse(url)
        payload = json.dumps(body(steps=4, n_iter=2)).encode()
        sock = socket.create_connection((u.hostname, u.port))
        sock.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
        gate.wait_entered()
        job = queue.running
        sock.close()
        wait_for(lambda: job.cancel_reason == "disconnect", "the server to notice the disconnect")
        queue.step_hooks.remove(gate)
        gate.release.set()
        wait_for(lambda: queue.running is None, "the cancelled job to stop")
        assert job.image_index == 0 and job.step == 1                   # it stopped at the next step
        import httpx
        metrics = httpx.get(url + "/metrics").text
        assert 'sdcpp_jobs_total{outcome="cancelled"} 1' in metrics
        assert 'sdcpp_images_total{mode="txt2img"} 0' in metrics
        r = httpx.post(url + "/sdapi/v1/txt2img", json=body(), timeout=60)
        assert r.status_code == 200 and len(r.json()["images"]) == 1


def test_a_waiting_job_whose_client_left_is_dropped(make_client):
    client = make_client()
    state = client.app.state.sdcpp
    gate = add_gate(client.app)
    t, _ = in_thread(client.post, "/sdapi/v1/txt2img", json=body())
    gate.wait_entered()
    from sdcpp.server.jobs import Job
    waiting = state.queue.submit(Job("txt2img", lambda j: "never"))
    assert state.queue.length == 1
    state.queue.cancel(waiting, "disconnect")
    assert state.queue.length == 0 and waiting.future.exception() is not None
    gate.release.set()
    t.join(30)
