"""Helpers of the server tests: a gate that holds the worker inside a sampling step (so queue,
interrupt and disconnect tests control timing by events, never by sleeping), a live loopback
server, and image encoding."""
from __future__ import annotations

import base64
import contextlib
import io
import socket
import threading
import time

import numpy as np
from PIL import Image

SIZE = 64


class Gate:
    """A step hook that holds the worker at its first sampling step until released."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, job, step, total):
        self.entered.set()
        assert self.release.wait(30), "gate never released"

    def wait_entered(self):
        assert self.entered.wait(30), "the worker never reached a sampling step"


def add_gate(app) -> Gate:
    gate = Gate()
    app.state.sdcpp.queue.step_hooks.append(gate)
    return gate


@contextlib.contextmanager
def live_server(app):
    """uvicorn serving `app` on a free loopback port, in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def b64_png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def init_image() -> Image.Image:
    rng = np.random.default_rng(5)
    return Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
