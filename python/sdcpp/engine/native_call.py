"""One translation of native-engine errors into sdcpp.errors, for every engine module.

The extension raises ``_core.InvalidArgument`` (a ValueError) for input it refuses and
``_core.NativeError`` (a RuntimeError) for failures of the engine; pybind11 itself raises
ValueError/RuntimeError/TypeError when an argument cannot be converted. Callers see
``InvalidArgumentError`` or ``BackendError`` with the engine's message (which names the
tensor, shape or value).
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

from .. import errors
from .weights import native

T = TypeVar("T")


def call_native(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a native call that runs no Python code of the caller's: every ValueError/TypeError
    is a refused argument, every RuntimeError an engine failure."""
    try:
        return fn(*args, **kwargs)
    except errors.SdcppError:
        raise
    except (ValueError, TypeError) as exc:
        raise errors.InvalidArgumentError(str(exc)) from None
    except RuntimeError as exc:
        raise errors.BackendError(str(exc)) from None


def call_native_with_callbacks(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a native call that calls back into Python (a denoiser, a progress callback):
    only the engine's own exceptions are translated, so whatever a callback raises
    (KeyboardInterrupt, its own ValueError ...) passes through unchanged."""
    core = native()
    try:
        return fn(*args, **kwargs)
    except core.InvalidArgument as exc:
        raise errors.InvalidArgumentError(str(exc)) from None
    except core.NativeError as exc:
        raise errors.BackendError(str(exc)) from None
