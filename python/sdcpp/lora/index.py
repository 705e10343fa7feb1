"""Every real module of the loaded model under every spelling a LoRA may use for it.

Rather than guessing where a kohya name's underscores split, each real canonical module
(a ``.weight`` of 2+ dims: linear, conv, embedding) is spelled every way a LoRA file may spell
it, and LoRA keys are looked up (after ``.`` -> ``_``, so dotted and kohya spellings share one
table):

* U-Net: the diffusers name; the LDM names of the stock converters' placement
  (``sdcpp.naming.diffusers_unet_to_ldm``, both upsampler slots); and the LDM name the loaded
  checkpoint itself used for the module (``ModelInfo.origin``: right for gapped and asymmetric
  U-Nets whatever the converter did). A LoRA index that does not exist in this model (an SDXL
  ``transformer_blocks.9`` on SSD-1B) is simply not in the table: an unmatched key.
* text encoders: the transformers name with and without the ``text_model.`` level (transformers
  >= 5 and diffusers' saver drop it). Canonical text encoders already hold separate q/k/v
  (OpenCLIP's fused ``in_proj`` is split by the naming tables), so HF-named q/k/v LoRAs apply
  directly.

An alias two different modules claim at the same priority is dropped (lookups of it fail and
are reported) rather than resolved arbitrarily.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

from ..io.records import TensorRecord
from ..naming.unet import diffusers_unet_to_ldm
from .parse import TE1, TE2, UNET

COMPONENTS = (UNET, TE1, TE2)
_ORIGIN_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "unet/", "unet.",
                    "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model.",
                    "cond_stage_model.transformer.", "cond_stage_model.model.",
                    "text_encoder_2/", "text_encoder/", "text_encoder_2.", "text_encoder.")


@dataclass(frozen=True)
class Target:
    """A module of the model a LoRA can change."""
    component: str
    module: str                    # canonical module path inside the component
    weight: str                    # full canonical name of its weight
    shape: tuple[int, ...]
    bias: Optional[str]            # full canonical name of its bias, if any


def norm(path: str) -> str:
    return path.replace(".", "_")


class ModuleIndex:
    """``lookup(component, path) -> Target | None`` over one model's canonical tensors."""

    def __init__(self, tensors: Mapping[str, TensorRecord], origin: Optional[Mapping[str, str]] = None):
        origin = origin or {}
        self.targets: dict[str, Target] = {}
        # component -> alias -> (priority, Target or None when ambiguous)
        self._aliases: dict[str, dict[str, tuple[int, Optional[Target]]]] = {c: {} for c in COMPONENTS}
        self.ambiguous: dict[str, set[str]] = {c: set() for c in COMPONENTS}
        for name, rec in tensors.items():
            comp, _, rest = name.partition(".")
            if comp not in self._aliases or not rest.endswith(".weight") or len(rec.shape) < 2:
                continue
            module = rest[: -len(".weight")]
            bias = f"{comp}.{module}.bias"
            target = Target(comp, module, name, tuple(int(d) for d in rec.shape), bias if bias in tensors else None)
            self.targets[name] = target
            for priority, alias in self._spellings(comp, module, origin.get(name)):
                self._add(comp, alias, priority, target)

    @staticmethod
    def _spellings(comp: str, module: str, stored: Optional[str]) -> Iterable[tuple[int, str]]:
        yield 0, module
        if stored:
            for p in _ORIGIN_PREFIXES:
                if stored.startswith(p):
                    stored = stored[len(p):]
                    break
            if stored.endswith(".weight"):
                yield 1, stored[: -len(".weight")]
        if comp == UNET:
            for alias in diffusers_unet_to_ldm(module):
                yield 2, alias
        elif module.startswith("text_model."):
            yield 1, module[len("text_model."):]

    def _add(self, comp: str, alias: str, priority: int, target: Target) -> None:
        key = norm(alias)
        table = self._aliases[comp]
        old = table.get(key)
        if old is None or priority < old[0]:
            table[key] = (priority, target)
            self.ambiguous[comp].discard(key)
        elif priority == old[0] and old[1] is not None and old[1] != target:
            table[key] = (priority, None)
            self.ambiguous[comp].add(key)

    def lookup(self, component: str, path: str) -> Optional[Target]:
        hit = self._aliases.get(component, {}).get(norm(path))
        return None if hit is None else hit[1]

    def components(self) -> list[str]:
        return [c for c in COMPONENTS if self._aliases[c]]


__all__ = ["ModuleIndex", "Target", "norm"]
