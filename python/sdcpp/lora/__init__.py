"""LoRA for every family: read (kohya / A1111, diffusers old and new, PEFT, LCM-LoRA; safetensors,
pickles, GGUF), map through the naming tables, merge into the loaded weights, switch sets
without reloading, restore bit-exactly. See docs/lora.md.

    report = model.set_loras([("style.safetensors", 0.8), ("lcm.safetensors", 1.0)])
    model.set_loras([])                       # base weights again, bit for bit

Lower level: ``read_lora(path) -> LoraFile``; ``LoraManager(info, stores).apply(specs, strict)``.
"""
from .errors import LoraError, LoraFamilyError, LoraFormatError, LoraUnmatchedError, LoraWarning
from .index import ModuleIndex, Target
from .manager import LoraFileReport, LoraManager, LoraReport, guess_family, normalize_specs
from .parse import LORA_EXTENSIONS, LoraFile, LoraModule, parse_lora, read_lora
from .resolve import resolve_lora_name

__all__ = ["LoraError", "LoraFamilyError", "LoraFormatError", "LoraUnmatchedError", "LoraWarning",
           "ModuleIndex", "Target", "LoraFileReport", "LoraManager", "LoraReport", "guess_family",
           "normalize_specs", "LORA_EXTENSIONS", "LoraFile", "LoraModule", "parse_lora", "read_lora",
           "resolve_lora_name"]
