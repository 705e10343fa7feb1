"""The weight delta of one LoRA module (ARCHITECTURES.md §4.2), in float32.

    dW = multiplier * strength * up @ down          strength = alpha / rank (1 without alpha)

* linear: up [out, r], down [r, in];
* conv k x k (LoCon): down [r, in, kh, kw], up [out, r, 1, 1]:
  dW = reshape(up[out, r] @ down[r, in*kh*kw], [out, in, kh, kw]);
* a 1x1 conv and a linear of the same sizes are interchangeable (SD1's proj_in is a 1x1 conv,
  SD2's a linear): only the element counts have to agree;
* Tucker (``lora_mid`` [r, r, kh, kw], down/up 1x1): dW[o,i,y,x] = sum_ab up[o,a] mid[a,b,y,x] down[b,i];
* full deltas (``.diff``) are added as they are; PEFT's ``lora_B.bias`` (and ``.diff_b``)
  change the bias.

``check(module, target)`` returns why the shapes do not fit (None when they do) without
reading any weight bytes, so a whole LoRA set is validated before the model is touched.
"""
from __future__ import annotations

from math import prod
from typing import Optional

import numpy as np

from .index import Target
from .parse import LoraModule


def _f32(rec) -> np.ndarray:
    return np.asarray(rec.numpy(), dtype=np.float32)


def check(mod: LoraModule, target: Target) -> Optional[str]:
    """Why ``mod`` cannot be applied to ``target`` (None = it can)."""
    shape = target.shape
    if mod.unsupported:
        return f"{mod.unsupported} is not supported"
    if mod.diff is not None:
        if prod(mod.diff.shape) != prod(shape):
            return f"diff {tuple(mod.diff.shape)} does not fit the weight {shape}"
        if mod.diff_b is not None and target.bias is None:
            return "diff_b given but the module has no bias"
        return None
    if mod.down is None or mod.up is None:
        missing = "down (lora_A)" if mod.down is None else "up (lora_B)"
        return f"incomplete LoRA: no {missing} tensor"
    d, u = tuple(mod.down.shape), tuple(mod.up.shape)
    if len(d) < 2 or len(u) < 2:
        return f"down {d} / up {u} must have 2 or more dims"
    r = d[0]
    if u[1] != r or prod(u[2:]) != 1:
        return f"up {u} does not fit down {d} (rank {r})"
    if u[0] != shape[0]:
        return f"up {u} gives {u[0]} outputs, the weight {shape} has {shape[0]}"
    if mod.mid is not None:
        m = tuple(mod.mid.shape)
        if len(m) != 4 or m[0] != r or m[1] != r or len(shape) != 4 or tuple(m[2:]) != tuple(shape[2:]):
            return f"Tucker core {m} does not fit rank {r} and the weight {shape}"
        if prod(d[1:]) != shape[1]:
            return f"down {d} does not fit the weight {shape} (Tucker)"
    elif prod(d[1:]) != prod(shape[1:]):
        return f"down {d} does not fit the weight {shape}"
    if mod.bias is not None and (target.bias is None or tuple(mod.bias.shape) != (shape[0],)):
        return "lora_B bias given but the module has no bias of that size"
    return None


def weight_delta(mod: LoraModule, target: Target, multiplier: float = 1.0) -> np.ndarray:
    """multiplier * strength * up @ down in the weight's shape (float32). The factor is folded
    into ``up`` ([out, r], small) so the full-size delta is written once."""
    shape = target.shape
    factor = np.float32(multiplier * mod.strength()) if mod.diff is None else np.float32(multiplier)
    if mod.diff is not None:
        delta = _f32(mod.diff).reshape(shape)
        return delta * factor if factor != 1.0 else np.array(delta)
    down = _f32(mod.down)
    r = down.shape[0]
    u = _f32(mod.up).reshape(-1, r)
    if factor != 1.0:
        u = u * factor
    if mod.mid is not None:
        delta = np.einsum("oa,abyx,bi->oiyx", u, _f32(mod.mid), down.reshape(r, -1), optimize=True)
    else:
        delta = u @ down.reshape(r, -1)
    return delta.reshape(shape)


def is_low_rank(mod: LoraModule) -> bool:
    """A plain up @ down module (linear, or conv: kohya/LoCon k x k down with 1x1 up): what the
    native merge covers; Tucker cores and full deltas are merged by ``weight_delta``."""
    return mod.diff is None and mod.mid is None and mod.down is not None and mod.up is not None


def _as_stored(rec) -> np.ndarray:
    """A LoRA factor as the native merge reads it: f32 / f16 as mapped, bf16 as its uint16 bits
    (converted to float32 in C++, in parallel), anything else (fp8, GGUF blocks) in float32."""
    from ..io.mmap_view import raw_view
    from ..io.records import TensorRecord

    if isinstance(rec, TensorRecord):
        if rec.dtype in ("F32", "F16", "BF16"):
            return raw_view(rec)
    else:
        arr = np.asarray(rec.numpy())
        if arr.dtype in (np.float32, np.float16):
            return arr
    return _f32(rec)


def low_rank_terms(mod: LoraModule, multiplier: float = 1.0) -> Optional[tuple[np.ndarray, np.ndarray, float]]:
    """(up [out, r], down [r, in*kh*kw], multiplier * strength): the operands of the native merge
    (``WeightStore.merge_low_rank``), which adds scale * float32(up) @ float32(down) in the
    weight's layout, as ``weight_delta`` does. up and down keep the file's dtype when it is f32,
    f16 or bf16 (one dtype for both). None for what it does not cover (Tucker, full deltas)."""
    if not is_low_rank(mod):
        return None
    up, down = _as_stored(mod.up), _as_stored(mod.down)
    if up.dtype != down.dtype:
        up, down = _f32(mod.up), _f32(mod.down)
    r = down.shape[0]
    return up.reshape(-1, r), down.reshape(r, -1), float(np.float32(multiplier * mod.strength()))


def bias_delta(mod: LoraModule, multiplier: float = 1.0) -> Optional[np.ndarray]:
    if mod.diff_b is not None:
        return _f32(mod.diff_b).reshape(-1) * np.float32(multiplier)
    if mod.bias is not None:
        return _f32(mod.bias).reshape(-1) * np.float32(multiplier * mod.strength())
    return None


__all__ = ["check", "weight_delta", "is_low_rank", "low_rank_terms", "bias_delta"]
