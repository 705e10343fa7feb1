"""sdcpp: Stable Diffusion from Python on a native ggml engine, without PyTorch."""
from __future__ import annotations

from . import errors

__version__ = "0.1.0"

__all__ = ["errors", "__version__"]
