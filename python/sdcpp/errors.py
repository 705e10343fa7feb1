"""Typed errors raised by sdcpp.

Every error that bad input can cause is one of these, so callers can catch
``sdcpp.errors.SdcppError`` and get a message naming the file, tensor or value.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional


class SdcppError(Exception):
    """Base class of every sdcpp error."""


class InvalidArgumentError(SdcppError, ValueError):
    """An argument of a public call has a wrong value (size, steps, sampler name...)."""


class CheckpointError(SdcppError):
    """A checkpoint file or folder cannot be read. Names the file and, where known, the tensor."""

    def __init__(self, message: str, *, file: Optional[str | Path] = None, tensor: Optional[str] = None):
        self.file = str(file) if file is not None else None
        self.tensor = tensor
        parts = [message]
        if tensor is not None:
            parts.append(f"tensor {tensor!r}")
        if file is not None:
            parts.append(f"file {self.file!r}")
        super().__init__(" | ".join(parts) if len(parts) > 1 else message)


class CorruptFileError(CheckpointError):
    """The file's bytes do not form a valid checkpoint (bad header, truncated, offsets out of range)."""


class UnsupportedFormatError(CheckpointError):
    """The file is of a format or dtype sdcpp does not read."""


class UnsafePickleError(CheckpointError):
    """A pickle asked for a global outside the allow-list; nothing of it was run."""


class MissingTensorError(CheckpointError):
    """A tensor the architecture needs is absent."""


class UnknownArchitectureError(CheckpointError):
    """The tensors do not describe an architecture sdcpp knows how to run."""


class ConfigError(CheckpointError):
    """A config file (model_index.json, config.json, scheduler_config.json, adapter_config.json)
    holds a value of the wrong type or range. Names the file and the key."""

    def __init__(self, message: str, *, file: Optional[str | Path] = None, key: Optional[str] = None):
        self.key = key
        super().__init__(f"{message} | key {key!r}" if key is not None else message, file=file)


class AmbiguousSourceError(CheckpointError):
    """A folder holds two weight files for one component that sdcpp cannot order (e.g. two
    stems of the same format holding the same tensors); sdcpp does not silently pick one."""


class BackendError(SdcppError):
    """The native engine failed (allocation, unsupported op or device)."""


class LoraError(SdcppError):
    """A LoRA cannot be applied (unmatched keys, wrong family, bad shapes)."""


class EmbeddingError(SdcppError):
    """A textual-inversion embedding cannot be read or does not fit the model (names the file)."""


class Cancelled(SdcppError):
    """A generation was stopped by its callback or by Ctrl-C; the model stays usable."""


__all__ = [
    "SdcppError", "InvalidArgumentError", "CheckpointError", "CorruptFileError",
    "UnsupportedFormatError", "UnsafePickleError", "MissingTensorError",
    "UnknownArchitectureError", "ConfigError", "AmbiguousSourceError", "BackendError", "LoraError",
    "EmbeddingError", "Cancelled",
]
