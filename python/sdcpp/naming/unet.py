"""U-Net: LDM/SGM names (``input_blocks`` / ``middle_block`` / ``output_blocks``) and diffusers
names -> diffusers ``UNet2DConditionModel`` names, without assuming the block stride.

The LDM numbering always keeps the SD "stride 3" layout (ARCHITECTURES.md §2.2): level i of the
encoder owns ``input_blocks.3i+1`` and ``3i+2`` (resnet ``.0`` + attention ``.1``) and its
downsampler is ``input_blocks.3(i+1).0.op``; level i of the decoder owns ``output_blocks.3i``
to ``3i+2`` and its upsampler sits at ``output_blocks.3i+2.{1|2}.conv``. Distilled U-Nets
delete layers and leave gaps (BK-SDM: ``input_blocks.2, 5, 8`` missing). So:

1. every ``input_blocks.N.m`` / ``output_blocks.N.m`` / ``middle_block.m`` sub-module is
   classified by its content (``MODULE_KINDS``: resnet / attention / down- / upsampler),
2. the level comes from the stride-3 arithmetic, and
3. the resnet/attention layers present in a level are renumbered consecutively.

Leftover diffusers names inside an LDM file (``model.diffusion_model.up_blocks.0.attentions.0.*``
written by the stock converter for tiny U-Nets) pass through unchanged.

Reusable by the LoRA code:
* ``ldm_unet_to_diffusers(keys)``: the forward map (needs the full key set: renumbering);
* ``diffusers_unet_to_ldm(name)``: the LDM spellings of one diffusers tensor or module name
  (the stock converters' stride-3 placement; both upsampler slots as aliases).
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Iterable, Mapping, Optional

from ..io.records import TensorRecord
from .rules import MapResult, Scheme

SD_STRIDE = 3     # LDM slots per level: 2 layers + 1 resample

RESNET, ATTENTION, DOWNSAMPLER, UPSAMPLER = "resnet", "attention", "downsampler", "upsampler"

# First name component inside an LDM block -> what kind of module it is.
MODULE_KINDS = {
    "in_layers": RESNET, "out_layers": RESNET, "emb_layers": RESNET, "skip_connection": RESNET,
    "norm": ATTENTION, "proj_in": ATTENTION, "proj_out": ATTENTION, "transformer_blocks": ATTENTION,
    "op": DOWNSAMPLER, "conv": UPSAMPLER,
}

# ResBlock sub-modules: LDM -> diffusers ResnetBlock2D.
RESNET_NAMES = {
    "in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut",
}
RESNET_NAMES_INV = {v: k for k, v in RESNET_NAMES.items()}

# Top-level modules: LDM -> diffusers.
TOP_LEVEL = {
    "time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1", "label_emb.0.2": "add_embedding.linear_2",
    "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out",
}
TOP_LEVEL_INV = {v: k for k, v in TOP_LEVEL.items()}

# Diffusers top-level names (a key starting with one of these is already diffusers-spelled).
DIFFUSERS_ROOTS = frozenset({
    "conv_in", "conv_out", "conv_norm_out", "time_embedding", "add_embedding", "class_embedding",
    "down_blocks", "up_blocks", "mid_block", "encoder_hid_proj",
})
LDM_ROOTS = frozenset({"input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb", "out"})

# Spelling fix-ups applied to every U-Net name (some converters drop the ModuleList index).
FIXUPS = [(re.compile(r"\.to_out\.(weight|bias)$"), r".to_out.0.\1")]

_BLOCK_RE = re.compile(r"(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(.+)")
_MIDDLE_RE = re.compile(r"middle_block\.(\d+)\.(.+)")


def _fix(name: str) -> str:
    for pat, rep in FIXUPS:
        name = pat.sub(rep, name)
    return name


def _sub_prefix(rest: str, table: Mapping[str, str]) -> Optional[str]:
    """Rename the leading module path of ``rest`` through ``table`` (longest match, dot boundary)."""
    best = None
    for old in table:
        if (rest == old or rest.startswith(old + ".")) and (best is None or len(old) > len(best)):
            best = old
    return None if best is None else table[best] + rest[len(best):]


def _root(key: str) -> str:
    return key.split(".", 1)[0]


def ldm_unet_to_diffusers(keys: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Map U-Net keys (prefix removed; LDM, diffusers or mixed) to diffusers names.

    Returns ({key: diffusers name}, [keys that fit no rule]). Needs the whole key set of one
    U-Net, because layers are renumbered per level from what exists.
    """
    mapping: dict[str, str] = {}
    unknown: list[str] = []
    # (key, section, level, N, m, kind, rest)
    parsed: list[tuple[str, str, int, int, int, str, str]] = []
    for key in keys:
        root = _root(key)
        if root in DIFFUSERS_ROOTS:
            mapping[key] = _fix(key)
            continue
        top = _sub_prefix(key, TOP_LEVEL)
        if top is not None:
            mapping[key] = top
            continue
        mb = _BLOCK_RE.fullmatch(key)
        mm = _MIDDLE_RE.fullmatch(key)
        if mb:
            section, n, m, rest = mb.group(1), int(mb.group(2)), int(mb.group(3)), mb.group(4)
        elif mm:
            section, n, m, rest = "middle_block", 0, int(mm.group(1)), mm.group(2)
        else:
            unknown.append(key)
            continue
        kind = MODULE_KINDS.get(_root(rest))
        if section == "input_blocks":
            level, slot = divmod(n - 1, SD_STRIDE)
            ok = n > 0 and ((kind in (RESNET, ATTENTION) and slot < 2) or (kind == DOWNSAMPLER and slot == 2 and m == 0))
        elif section == "output_blocks":
            level = n // SD_STRIDE
            ok = kind in (RESNET, ATTENTION, UPSAMPLER)
        else:
            level = 0
            ok = kind in (RESNET, ATTENTION)
        if not ok:
            unknown.append(key)
            continue
        parsed.append((key, section, level, n, m, kind, rest))

    # Consecutive layer numbers per level, from the LDM block indices that hold a layer.
    layer_slots: dict[tuple[str, int], set[int]] = defaultdict(set)
    mid_modules: dict[str, set[int]] = defaultdict(set)
    for _, section, level, n, m, kind, _ in parsed:
        if section == "middle_block":
            mid_modules[kind].add(m)
        elif kind in (RESNET, ATTENTION):
            layer_slots[(section, level)].add(n)
    rank = {k: {n: j for j, n in enumerate(sorted(v))} for k, v in layer_slots.items()}
    mid_rank = {k: {m: j for j, m in enumerate(sorted(v))} for k, v in mid_modules.items()}

    container = {"input_blocks": "down_blocks", "output_blocks": "up_blocks"}
    for key, section, level, n, m, kind, rest in parsed:
        if section == "middle_block":
            j = mid_rank[kind][m]
            base = f"mid_block.{'resnets' if kind == RESNET else 'attentions'}.{j}"
        elif kind == DOWNSAMPLER:
            base, rest = f"down_blocks.{level}.downsamplers.0", "conv" + rest[len("op"):]
        elif kind == UPSAMPLER:
            base = f"up_blocks.{level}.upsamplers.0"
        else:
            j = rank[(section, level)][n]
            base = f"{container[section]}.{level}.{'resnets' if kind == RESNET else 'attentions'}.{j}"
        if kind == RESNET:
            sub = _sub_prefix(rest, RESNET_NAMES)
            if sub is None:
                unknown.append(key)
                continue
            rest = sub
        mapping[key] = _fix(f"{base}.{rest}")
    return mapping, unknown


_D_LAYER_RE = re.compile(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)(?:\.(.+))?")
_D_SAMPLER_RE = re.compile(r"(down_blocks|up_blocks)\.(\d+)\.(downsamplers|upsamplers)\.0\.conv(?:\.(.+))?")
_D_MID_RE = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)(?:\.(.+))?")


def diffusers_unet_to_ldm(name: str) -> list[str]:
    """LDM spellings of a diffusers U-Net tensor or module name (no ``unet.`` prefix).

    Uses the stock converters' placement (layer j of level i at ``3i+j+1`` / ``3i+j``). The
    upsampler has two spellings in the wild (``.2.conv`` SDXL and SD up blocks with attention,
    ``.1.conv`` SD up block 0 / tiny U-Nets): both are returned, ``.2`` first. [] = no LDM name.
    """
    def join(*parts: Optional[str]) -> str:
        return ".".join(p for p in parts if p)

    top = _sub_prefix(name, TOP_LEVEL_INV)
    if top is not None:
        return [top]
    m = _D_LAYER_RE.fullmatch(name)
    if m:
        blocks, i, what, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        n = SD_STRIDE * i + j + 1 if blocks == "down_blocks" else SD_STRIDE * i + j
        section = "input_blocks" if blocks == "down_blocks" else "output_blocks"
        if what == "resnets":
            if rest is None:
                return [f"{section}.{n}.0"]
            sub = _sub_prefix(rest, RESNET_NAMES_INV)
            return [f"{section}.{n}.0.{sub}"] if sub is not None else []
        return [join(f"{section}.{n}.1", rest)]
    m = _D_SAMPLER_RE.fullmatch(name)
    if m:
        i, rest = int(m.group(2)), m.group(4)
        if m.group(1) == "down_blocks":
            return [join(f"input_blocks.{SD_STRIDE * (i + 1)}.0.op", rest)]
        n = SD_STRIDE * i + 2
        return [join(f"output_blocks.{n}.2.conv", rest), join(f"output_blocks.{n}.1.conv", rest)]
    m = _D_MID_RE.fullmatch(name)
    if m:
        what, j, rest = m.group(1), int(m.group(2)), m.group(3)
        if what == "attentions":
            return [join(f"middle_block.{2 * j + 1}", rest)] if j == 0 else []
        idx = 2 * j
        if rest is None:
            return [f"middle_block.{idx}"]
        sub = _sub_prefix(rest, RESNET_NAMES_INV)
        return [f"middle_block.{idx}.{sub}"] if sub is not None else []
    return []


class UnetScheme(Scheme):
    name = "unet"

    def map(self, items: Mapping[str, TensorRecord]) -> MapResult:
        mapping, unknown = ldm_unet_to_diffusers(items.keys())
        res = MapResult(unknown=sorted(unknown))
        for key in sorted(mapping):
            res.add(mapping[key], items[key], key)
        return res


UNET = UnetScheme()
