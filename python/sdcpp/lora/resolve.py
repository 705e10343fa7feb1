"""A1111 prompt tags: ``<lora:name:multiplier>`` -> a file in the LoRA folder."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from ..errors import LoraError

TAG_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".bin", ".gguf")


def resolve_lora_name(name: str, lora_dir: Optional[Union[str, os.PathLike]]) -> Path:
    """``<lora_dir>/<name>`` + the first of .safetensors, .ckpt, .pt, .bin, .gguf that exists
    (or ``name`` itself when it already has one of them). Names may hold sub-folders but must
    stay inside ``lora_dir``."""
    if lora_dir is None:
        raise LoraError(f"the prompt asks for <lora:{name}> but no LoRA folder is set "
                        f"(Model.lora_dir / load(lora_dir=...) / --lora-dir)")
    root = Path(os.path.abspath(os.fspath(lora_dir)))
    if not root.is_dir():
        raise LoraError(f"LoRA folder {str(root)!r} does not exist")
    base = Path(os.path.abspath(root / name))
    if os.path.commonpath([str(root), str(base)]) != str(root):
        raise LoraError(f"<lora:{name}> points outside the LoRA folder {str(root)!r}")
    candidates = [base] if base.suffix.lower() in TAG_EXTENSIONS else []
    candidates += [base.with_name(base.name + ext) for ext in TAG_EXTENSIONS]
    for c in candidates:
        if c.is_file():
            return c
    raise LoraError(f"<lora:{name}>: no {name}{{{','.join(TAG_EXTENSIONS)}}} in {str(root)!r}")
