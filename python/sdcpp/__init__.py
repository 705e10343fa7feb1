"""sdcpp: Stable Diffusion from Python on a native ggml engine, without PyTorch."""
from __future__ import annotations

from . import errors, preprocess
from .arch import ModelInfo, inspect
from .controlnet import ControlNet, ControlSpec, load_controlnet
from .pipeline import Model, load

__version__ = "0.1.0"


def system_info() -> dict:
    """ggml version, backends/devices, CPU features compiled vs present, default threads."""
    from .system import system_info as _system_info

    return _system_info()


__all__ = ["errors", "preprocess", "system_info", "__version__", "inspect", "ModelInfo", "load", "Model",
           "load_controlnet", "ControlNet", "ControlSpec"]
