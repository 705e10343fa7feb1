"""Typed LoRA errors (all subclasses of ``sdcpp.errors.LoraError``) and the warning class."""
from __future__ import annotations

from typing import Iterable, Optional

from ..errors import LoraError


def _listing(keys: Iterable[str], limit: int = 20) -> str:
    keys = list(keys)
    shown = "\n  ".join(keys[:limit])
    more = f"\n  ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"\n  {shown}{more}" if keys else ""


class LoraUnmatchedError(LoraError):
    """Keys of a LoRA file that match no module of the loaded model (or whose shapes do not fit).

    ``keys``: the file's keys that matched nothing; ``mismatched``: ``(key, why)`` for keys that
    named a real module but whose shapes do not fit it; ``file``: the LoRA file.
    """

    def __init__(self, file: str, keys: list[str], mismatched: Optional[list[tuple[str, str]]] = None,
                 unsupported: Optional[list[tuple[str, str]]] = None):
        self.file, self.keys = file, list(keys)
        self.mismatched = list(mismatched or [])
        self.unsupported = list(unsupported or [])
        parts = [f"LoRA {file!r} does not fully apply to this model (pass strict=False to apply the rest "
                 f"with a warning)"]
        if self.keys:
            parts.append(f"{len(self.keys)} key(s) match no module of the model:{_listing(self.keys)}")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} key(s) have shapes that do not fit their module:"
                         + _listing(f"{k}: {why}" for k, why in self.mismatched))
        if self.unsupported:
            parts.append(f"{len(self.unsupported)} key(s) use an unsupported LoRA kind:"
                         + _listing(f"{k}: {why}" for k, why in self.unsupported))
        super().__init__("\n".join(parts))


class LoraFamilyError(LoraError):
    """The LoRA was made for another model family (e.g. an SD1 LoRA on an SDXL model)."""

    def __init__(self, file: str, lora_family: str, model_family: str, evidence: str):
        self.file, self.lora_family, self.model_family = file, lora_family, model_family
        super().__init__(f"LoRA {file!r} was made for {lora_family} models, but the loaded model is "
                         f"{model_family} ({evidence})")


class LoraFormatError(LoraError):
    """The file is not a LoRA sdcpp can read (no LoRA keys, inconsistent tensors, bad config).

    ``file`` / ``key`` (when given) are the file and the tensor or config key at fault; both are
    named in the message too."""

    def __init__(self, message: str, *, file: Optional[str] = None, key: Optional[str] = None):
        self.file = str(file) if file is not None else None
        self.key = key
        parts = [message]
        if key is not None:
            parts.append(f"key {key!r}")
        if file is not None:
            parts.append(f"file {self.file!r}")
        super().__init__(" | ".join(parts))


class LoraWarning(UserWarning):
    """Emitted with ``strict=False`` for the keys that were left out."""


__all__ = ["LoraError", "LoraUnmatchedError", "LoraFamilyError", "LoraFormatError", "LoraWarning"]
