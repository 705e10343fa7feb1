"""`sdcpp serve`: the A1111 and OpenAI image APIs over one model (docs/server.md).

Needs the server extra (``pip install "sdcpp[server]"``: FastAPI, uvicorn, python-multipart);
``import sdcpp`` never imports this package.
"""
from .config import Limits, ServerConfig

__all__ = ["Limits", "ServerConfig", "create_app"]


def create_app(config: ServerConfig, **kw):
    from .app import create_app as _create

    return _create(config, **kw)
