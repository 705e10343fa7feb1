"""Routes every key of a Source to a naming scheme and collects canonical names.

Routing is data too: ``SINGLE_FILE_PREFIXES`` (longest prefix wins), ``BARE_ROOTS`` for files
without a prefix (U-Net-only / VAE-only / text-encoder-only files), ``COMPONENTS`` for
diffusers folders.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..io.records import TensorRecord
from .clip import HF_CLIP, OPENCLIP_BIGG, OPENCLIP_H
from .ignore import is_ignored
from .rules import Scheme
from .unet import DIFFUSERS_ROOTS, LDM_ROOTS, UNET
from .vae import VAE

# canonical component prefixes (docs/internals.md §3)
UNET_C, VAE_C, TE_C, TE2_C = "unet", "vae", "text_encoder", "text_encoder_2"

# raw prefix in a single file -> (scheme, canonical component)
SINGLE_FILE_PREFIXES: list[tuple[str, Scheme, str]] = [
    ("model.diffusion_model.", UNET, UNET_C),
    ("diffusion_model.", UNET, UNET_C),
    ("unet.", UNET, UNET_C),
    ("first_stage_model.", VAE, VAE_C),
    ("vae.", VAE, VAE_C),
    ("cond_stage_model.transformer.", HF_CLIP, TE_C),          # SD1 CLIP-L
    ("cond_stage_model.model.", OPENCLIP_H, TE_C),              # SD2 OpenCLIP ViT-H
    ("conditioner.embedders.0.transformer.", HF_CLIP, TE_C),   # SDXL CLIP-L
    ("conditioner.embedders.1.model.", OPENCLIP_BIGG, TE2_C),  # SDXL OpenCLIP bigG
    ("text_encoder.", HF_CLIP, TE_C),
    ("text_encoder_2.", HF_CLIP, TE2_C),
]

# first name component of an unprefixed key -> (scheme, canonical component)
BARE_ROOTS: dict[str, tuple[Scheme, str]] = {
    **{r: (UNET, UNET_C) for r in DIFFUSERS_ROOTS | LDM_ROOTS},
    **{r: (VAE, VAE_C) for r in ("encoder", "decoder", "quant_conv", "post_quant_conv")},
    "text_model": (HF_CLIP, TE_C),
}

# diffusers folder component -> (scheme, canonical component)
COMPONENTS: dict[str, tuple[Scheme, str]] = {
    "unet": (UNET, UNET_C), "vae": (VAE, VAE_C),
    "text_encoder": (HF_CLIP, TE_C), "text_encoder_2": (HF_CLIP, TE2_C),
}


@dataclass
class NamingResult:
    """Canonical view of a source.

    tensors: canonical name -> record (transforms applied as record views)
    origin:  canonical name -> the key it came from (``component/key`` for folders)
    ignored: keys deliberately skipped (ignorable buffers/markers, SD2's unused projection)
    unknown: keys that fit no rule (reported, never silently dropped)
    """
    tensors: dict[str, TensorRecord] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def component(self, prefix: str) -> dict[str, TensorRecord]:
        """The tensors of one canonical component, prefix removed (e.g. ``"unet"``)."""
        p = prefix + "."
        return {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p)}


def _route_single(key: str):
    best = None
    for prefix, scheme, comp in SINGLE_FILE_PREFIXES:
        if key.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, scheme, comp)
    if best is not None:
        return best
    root = key.split(".", 1)[0]
    if root in BARE_ROOTS:
        scheme, comp = BARE_ROOTS[root]
        return "", scheme, comp
    return None


def canonicalize_components(components: Mapping[str, Mapping[str, TensorRecord]]) -> NamingResult:
    """Map ``Source.components``-shaped input (``{"": {...}}`` or per-folder components)."""
    res = NamingResult()
    # (scheme, canonical component) -> {inner key: (display key, record)}
    groups: dict[tuple[Scheme, str], dict[str, tuple[str, TensorRecord]]] = defaultdict(dict)
    for comp, tensors in components.items():
        for key, rec in tensors.items():
            shown = f"{comp}/{key}" if comp else key
            if is_ignored(shown):
                res.ignored.append(shown)
                continue
            if comp:
                if comp not in COMPONENTS:
                    res.unknown.append(shown)
                    continue
                (scheme, canon), inner = COMPONENTS[comp], key
            else:
                route = _route_single(key)
                if route is None:
                    res.unknown.append(shown)
                    continue
                prefix, scheme, canon = route
                inner = key[len(prefix):]
            group = groups[(scheme, canon)]
            if inner in group:                      # same tensor under two prefixes
                res.unknown.append(shown)
                continue
            group[inner] = (shown, rec)
    for (scheme, canon), group in groups.items():
        out = scheme.map({k: rec for k, (_, rec) in group.items()})
        res.ignored += [group[k][0] for k in out.ignored]
        res.unknown += [group[k][0] for k in out.unknown]
        for name, rec in out.mapped.items():
            full = f"{canon}.{name}"
            if full in res.tensors:
                res.unknown.append(group[out.source[name]][0])
                continue
            res.tensors[full] = rec
            res.origin[full] = group[out.source[name]][0]
    res.ignored.sort()
    res.unknown.sort()
    return res


def canonicalize(source: Any) -> NamingResult:
    """Canonical names of a ``sdcpp.io.Source`` (or anything with ``.components``)."""
    components = source.components if hasattr(source, "components") else source
    return canonicalize_components(components)
