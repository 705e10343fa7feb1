"""ControlNet names -> diffusers ``ControlNetModel`` names (canonical, prefix ``controlnet.``).

Spellings (data below, the U-Net part through the U-Net scheme's LDM map):

* diffusers (``diffusion_pytorch_model.safetensors`` of a ControlNetModel folder, or the file
  alone): canonical as it is;
* lllyasviel's original layout (``control_sd15_*.pth``, ``control_v11*.pth``, A1111's
  ``control_*`` safetensors), with or without the ``control_model.`` prefix: the U-Net encoder
  in LDM names (``input_blocks``, ``middle_block``, ``time_embed``, ``label_emb``) plus
  ``input_hint_block.N`` (the conditioning embedding: Conv2d modules at even indices, SiLU
  between), ``zero_convs.N.0`` and ``middle_block_out.0``.

A file holding a whole SD model beside ``control_model.*`` (the first released .pth files) is
read for its ``control_model.*`` keys only.
"""
from __future__ import annotations

import re
from typing import Mapping

from ..io.records import TensorRecord
from .ignore import is_ignored
from .unet import DIFFUSERS_ROOTS, ldm_unet_to_diffusers

PREFIX = "controlnet."
LLLYASVIEL_PREFIX = "control_model."

# ControlNet-only roots of the diffusers names
DIFFUSERS_CONTROL_ROOTS = frozenset({"controlnet_cond_embedding", "controlnet_down_blocks", "controlnet_mid_block"})

# lllyasviel module -> diffusers module (the hint block is numbered from what exists, below)
ORIGINAL_MODULES = [
    (re.compile(r"zero_convs\.(\d+)\.0\.(weight|bias)"), r"controlnet_down_blocks.\1.\2"),
    (re.compile(r"middle_block_out\.0\.(weight|bias)"), r"controlnet_mid_block.\1"),
]
_HINT_RE = re.compile(r"input_hint_block\.(\d+)\.(weight|bias)")


def _hint_names(indices: list[int]) -> dict[int, str]:
    """input_hint_block conv indices (sorted) -> controlnet_cond_embedding module names: the
    first is conv_in, the last conv_out, those between blocks.0, blocks.1, ..."""
    out = {}
    for k, idx in enumerate(indices):
        if k == 0:
            out[idx] = "controlnet_cond_embedding.conv_in"
        elif k == len(indices) - 1:
            out[idx] = "controlnet_cond_embedding.conv_out"
        else:
            out[idx] = f"controlnet_cond_embedding.blocks.{k - 1}"
    return out


def canonicalize_controlnet(items: Mapping[str, TensorRecord]) -> tuple[dict[str, TensorRecord], dict[str, str],
                                                                         list[str], list[str]]:
    """Raw keys -> (canonical tensors, canonical -> raw key, ignored keys, unknown keys)."""
    keys = list(items)
    if any(k.startswith(LLLYASVIEL_PREFIX) for k in keys):
        ignored = [k for k in keys if not k.startswith(LLLYASVIEL_PREFIX)]   # a whole SD model beside it
        stripped = {k[len(LLLYASVIEL_PREFIX):]: k for k in keys if k.startswith(LLLYASVIEL_PREFIX)}
    else:
        ignored = []
        stripped = {k: k for k in keys}
    tensors: dict[str, TensorRecord] = {}
    origin: dict[str, str] = {}
    unknown: list[str] = []
    unet_part: dict[str, str] = {}
    hint: dict[int, list[tuple[str, str]]] = {}
    for short, raw in stripped.items():
        if is_ignored(short):
            ignored.append(raw)
            continue
        root = short.split(".", 1)[0]
        if root in DIFFUSERS_CONTROL_ROOTS:
            tensors[PREFIX + short], origin[PREFIX + short] = items[raw], raw
            continue
        if m := _HINT_RE.fullmatch(short):
            hint.setdefault(int(m.group(1)), []).append((m.group(2), raw))
            continue
        for pat, rep in ORIGINAL_MODULES:
            if pat.fullmatch(short):
                name = PREFIX + pat.sub(rep, short)
                tensors[name], origin[name] = items[raw], raw
                break
        else:
            unet_part[short] = raw
    names = _hint_names(sorted(hint))
    for idx, entries in hint.items():
        for what, raw in entries:
            name = f"{PREFIX}{names[idx]}.{what}"
            tensors[name], origin[name] = items[raw], raw
    mapping, bad = ldm_unet_to_diffusers(unet_part)
    for short, canon in mapping.items():
        root = canon.split(".", 1)[0]
        if root not in DIFFUSERS_ROOTS or root in ("up_blocks", "conv_out", "conv_norm_out"):
            bad.append(short)          # a decoder part has no place in a ControlNet
            continue
        tensors[PREFIX + canon], origin[PREFIX + canon] = items[unet_part[short]], unet_part[short]
    unknown += [unet_part[k] for k in bad]
    return tensors, origin, sorted(ignored), sorted(unknown)


def looks_like_controlnet(keys) -> bool:
    """Whether a key set is a ControlNet's (either spelling)."""
    for k in keys:
        if k.startswith(LLLYASVIEL_PREFIX) or k.split(".", 1)[0] in DIFFUSERS_CONTROL_ROOTS:
            return True
        if k.startswith(("zero_convs.", "input_hint_block.", "middle_block_out.")):
            return True
    return False


__all__ = ["canonicalize_controlnet", "looks_like_controlnet", "PREFIX"]
