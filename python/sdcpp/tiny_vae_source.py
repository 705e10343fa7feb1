"""Finding a tiny autoencoder (TAESD / TAESDXL) among the things ``vae=`` / ``preview_vae=`` accept.

- a diffusers AutoencoderTiny folder (config.json ``_class_name: AutoencoderTiny``), e.g.
  madebyollin/taesd downloaded;
- a single file with AutoencoderTiny names (``decoder.layers.N...`` / ``encoder.layers.N...``);
- the original split files (``taesd_decoder.safetensors``, ``taesdxl_encoder.pth`` ...): one of
  them, or a folder holding them; the other half next to it is picked up too;
- a Hugging Face repo id (``madebyollin/taesd``) through the hub cache, like checkpoints.
Returns None when the source is none of these (then it is read as an AutoencoderKL).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from . import errors

_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def _split_files(folder: Path) -> dict[str, Path]:
    out = {}
    for half in ("decoder", "encoder"):
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix in _SUFFIXES and p.stem.lower().endswith("_" + half):
                out.setdefault(half, p)
    return out


def read_tiny_vae(source) -> Optional[tuple[dict, dict, Path]]:
    """(AutoencoderTiny-named tensors, config, path) or None."""
    from .engine.taesd import canonical_names
    from .io import read_tensors
    from .io.source import looks_like_hub_id, pick_weights_file

    p = Path(os.fspath(source))
    if not p.exists() and isinstance(source, str) and looks_like_hub_id(source):
        try:
            import huggingface_hub
        except ImportError:
            return None
        try:
            p = Path(huggingface_hub.snapshot_download(source, allow_patterns=["*.json", "*.safetensors"]))
        except Exception:   # noqa: BLE001 - not a reachable tiny-VAE repo: let the VAE reader say why
            return None
    if p.is_dir():
        cfg_file = p / "config.json"
        if cfg_file.is_file():
            try:
                cfg = json.loads(cfg_file.read_text())
            except (OSError, ValueError):
                return None
            if not isinstance(cfg, dict) or cfg.get("_class_name") != "AutoencoderTiny":
                return None
            pick = pick_weights_file([f.name for f in p.iterdir() if f.is_file()])
            if pick is None:
                raise errors.CheckpointError("an AutoencoderTiny folder without a weights file", file=p)
            return canonical_names(read_tensors(p / pick)), cfg, p
        halves = _split_files(p)
        if not halves:
            return None
    elif p.is_file():
        stem = p.stem.lower()
        half = "decoder" if stem.endswith("_decoder") else "encoder" if stem.endswith("_encoder") else None
        if half is None:
            tensors = read_tensors(p)
            if any(k.startswith(("decoder.layers.", "encoder.layers.")) for k in tensors):
                return canonical_names(tensors), {}, p
            return None
        halves = {h: f for h, f in _split_files(p.parent).items()
                  if f.stem.lower()[: -len(h)] == stem[: -len(half)]}
        halves[half] = p
    else:
        return None
    tensors: dict = {}
    for half, f in halves.items():
        tensors.update(canonical_names(read_tensors(f), half))
    return tensors, {}, p


__all__ = ["read_tiny_vae"]
