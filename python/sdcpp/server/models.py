"""The checkpoints a server offers (its -m model and --models-dir) and the loaded one.

Only the worker thread loads or switches (jobs.py), so a switch is ordered with the generations
around it; listing is read-only and rescans the folder each time (a new file shows up without a
restart, as A1111's refresh does).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..lora.resolve import TAG_EXTENSIONS

CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt", ".gguf", ".pt", ".bin")


@dataclass(frozen=True)
class Checkpoint:
    name: str          # what clients send back: relative path under --models-dir, or the -m argument
    path: str          # what sdcpp.load gets

    @property
    def model_name(self) -> str:
        base = self.name.rstrip("/").rsplit("/", 1)[-1]
        return base.rsplit(".", 1)[0] if base.lower().endswith(CHECKPOINT_EXTENSIONS) else base


def scan_checkpoints(models_dir: Optional[str]) -> list[Checkpoint]:
    """Checkpoint files and diffusers folders (model_index.json) under models_dir, sorted."""
    if not models_dir or not os.path.isdir(models_dir):
        return []
    root = Path(models_dir)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if "model_index.json" in filenames:
            found.append(Checkpoint(Path(dirpath).relative_to(root).as_posix(), dirpath))
            dirnames[:] = []          # a diffusers folder's parts are not checkpoints of their own
            continue
        dirnames.sort()
        for f in filenames:
            if f.lower().endswith(CHECKPOINT_EXTENSIONS):
                p = Path(dirpath) / f
                found.append(Checkpoint(p.relative_to(root).as_posix(), str(p)))
    return sorted(found, key=lambda c: c.name.lower())


def scan_loras(lora_dir: Optional[str]) -> list[dict]:
    """GET /sdapi/v1/loras: every LoRA file under lora_dir, named as <lora:NAME:w> finds it."""
    if not lora_dir or not os.path.isdir(lora_dir):
        return []
    root = Path(lora_dir)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            p = Path(dirpath) / f
            if p.suffix.lower() in TAG_EXTENSIONS:
                name = p.relative_to(root).with_suffix("").as_posix()
                out.append({"name": name, "alias": name, "path": str(p), "metadata": {}})
    return out


class ModelStore:
    def __init__(self, initial: Optional[str], models_dir: Optional[str], lora_dir: Optional[str],
                 loader: Callable[[str], object], model=None):
        self.models_dir = models_dir
        self.lora_dir = lora_dir
        self._loader = loader
        self.initial: Optional[Checkpoint] = None
        if initial is not None:
            self.initial = self._as_checkpoint(initial)
        self.current: Optional[Checkpoint] = self.initial
        self.model = model
        self._owned = model is None      # a model the caller passed in is the caller's to close

    def _as_checkpoint(self, source: str) -> Checkpoint:
        """-m given as a path inside --models-dir keeps its listed name, so it is not listed twice."""
        if self.models_dir and os.path.exists(source):
            try:
                rel = Path(os.path.abspath(source)).relative_to(os.path.abspath(self.models_dir))
                return Checkpoint(rel.as_posix(), source)
            except ValueError:
                pass
        name = Path(source).name if os.path.exists(source) else source   # a hub repo id stays whole
        return Checkpoint(name, source)

    def checkpoints(self) -> list[Checkpoint]:
        found = scan_checkpoints(self.models_dir)
        if self.initial is not None and all(c.name != self.initial.name for c in found):
            found.insert(0, self.initial)
        return found

    def find(self, title: str) -> Optional[Checkpoint]:
        """A checkpoint by what A1111 clients send: its title ("name [hash]"), name or bare model name."""
        text = title.strip()
        if text.endswith("]") and " [" in text:
            text = text[: text.rindex(" [")]
        ckpts = self.checkpoints()
        for match in (lambda c: c.name == text, lambda c: c.model_name == text,
                      lambda c: c.name.rsplit("/", 1)[-1] == text):
            hits = [c for c in ckpts if match(c)]
            if hits:
                return hits[0]
        return None

    def title(self, ckpt: Checkpoint) -> str:
        h = self.hash_of(ckpt)
        return f"{ckpt.name} [{h}]" if h else ckpt.name

    def hash_of(self, ckpt: Checkpoint) -> Optional[str]:
        """The short hash, only when already known: hashing gigabytes for a listing would stall it."""
        if self.model is not None and ckpt == self.current:
            return getattr(self.model, "_model_hash", None)
        return None

    # ------------------------------------------------------------------ worker thread only
    def ensure_loaded(self) -> None:
        if self.model is None:
            if self.current is None:
                from .. import errors
                raise errors.InvalidArgumentError("no model: start the server with -m MODEL")
            self.model = self._loader(self.current.path)
            self._owned = True
            self._configure()

    def switch(self, ckpt: Checkpoint) -> None:
        """Load `ckpt` and make it current; on failure the old model stays loaded and current."""
        if ckpt == self.current and self.model is not None:
            return
        new = self._loader(ckpt.path)
        old, owned = self.model, self._owned
        self.model, self.current, self._owned = new, ckpt, True
        self._configure()
        if old is not None and owned and hasattr(old, "close"):
            old.close()

    def _configure(self) -> None:
        if self.lora_dir is not None and hasattr(self.model, "lora_dir"):
            self.model.lora_dir = self.lora_dir
