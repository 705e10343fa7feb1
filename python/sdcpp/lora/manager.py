"""Merge a set of LoRAs into a loaded model's weights, switch sets, restore the base bit-exactly.

``LoraManager(info, stores).apply([(path, scale), ...], strict=True) -> LoraReport``

1. every file is read and its modules looked up in the model's ``ModuleIndex``; shapes are
   checked; unmatched keys, shape misfits and unsupported kinds are collected per file. A LoRA
   of the other family (SD1/SD2 vs SDXL) raises ``LoraFamilyError``; otherwise anything left
   out raises ``LoraUnmatchedError`` (``strict=False``: a ``LoraWarning`` and the rest applies).
   Nothing is written before all files passed.
2. per weight (and bias) of the model, the *recipe* is the list of (file identity, module,
   multiplier) contributions. Only tensors whose recipe changed are written: a new set that
   shares files with the old one touches only the difference.
3. a tensor is written as ``original + sum(multiplier * delta)``, from the original record of
   the memory-mapped checkpoint (``ModelInfo.tensors[name]``), in float32, converted to the
   tensor's storage type (f32 / f16 / bf16 / q8_0 / q5_0 / q4_0). Low-rank deltas (up @ down,
   linear or conv) merge natively (``WeightStore.merge_low_rank``: tiled, multi-threaded, the
   GIL released, no full-size temporaries); Tucker cores, full ``.diff`` deltas and biases merge
   in numpy and the store converts the result (``SDCPP_LORA_MERGE=numpy`` forces numpy for
   everything). A tensor leaving the set is restored by setting its original record again: the same
   bytes through the same conversion (a GGUF's quantized blocks copied as they are), so
   ``apply([])`` gives the loaded weights back bit for bit.

The checkpoint files are ``stat``-ed when the manager is made; if one was rewritten in place
since, restoring refuses (``LoraError``) instead of loading different weights.
"""
from __future__ import annotations

import math
import os
import re
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import LoraError
from .delta import bias_delta, check, is_low_rank, low_rank_terms, weight_delta
from .errors import LoraFamilyError, LoraUnmatchedError, LoraWarning
from .index import ModuleIndex, Target, norm
from .parse import TE2, UNET, LoraFile, LoraModule, read_lora

PathLike = Union[str, os.PathLike]
MERGE_WORKERS = max(1, min(4, os.cpu_count() or 1))
LoraSpec = Union[PathLike, tuple]


# ------------------------------------------------------------------------------ reports
@dataclass
class LoraFileReport:
    """What one LoRA of a set did."""
    path: str
    name: str
    scale: float
    format: str                                     # kohya | diffusers | diffusers-old | peft | full | a+b
    tensors: dict[str, int] = field(default_factory=dict)   # component -> weights/biases changed
    modules: dict[str, int] = field(default_factory=dict)   # "unet:attn1.to_q" -> how many modules
    targets: dict[str, str] = field(default_factory=dict)   # LoRA module key -> canonical weight name
    unmatched: list[str] = field(default_factory=list)      # file keys that matched no module
    mismatched: list[tuple[str, str]] = field(default_factory=list)   # (key, why) shape misfits
    unsupported: list[tuple[str, str]] = field(default_factory=list)  # (key, kind) LoHa/LoKr/DoRA...

    @property
    def matched(self) -> int:
        return len(self.targets)

    @property
    def skipped(self) -> list[str]:
        return self.unmatched + [k for k, _ in self.mismatched] + [k for k, _ in self.unsupported]

    def summary(self) -> str:
        comps = ", ".join(f"{c} {n}" for c, n in sorted(self.tensors.items())) or "nothing"
        line = f"{self.name} x{self.scale:g} ({self.format}): {self.matched} modules -> {comps} tensors"
        if self.skipped:
            line += f"; {len(self.skipped)} keys left out"
        return line


@dataclass
class LoraReport:
    """Result of ``Model.set_loras`` / ``LoraManager.apply``."""
    loras: list[LoraFileReport]
    written: int = 0          # tensors merged in this call
    restored: int = 0         # tensors put back to the base weights in this call
    seconds: float = 0.0

    def __str__(self) -> str:
        lines = [r.summary() for r in self.loras] or ["no LoRA (base weights)"]
        lines.append(f"{self.written} tensors merged, {self.restored} restored in {self.seconds:.2f} s")
        return "\n".join(lines)


# ------------------------------------------------------------------------------ helpers
_KIND_RE = re.compile(r"(?:^|\.)(?:transformer_blocks|resnets|attentions|layers)\.\d+\.(.+)$")
_SAMPLER_RE = re.compile(r"(?:^|\.)((?:down|up)samplers)\.\d+\.(.+)$")


def module_kind(target: Target) -> str:
    m = _SAMPLER_RE.search(target.module)
    if m:
        kind = f"{m.group(1)}.{m.group(2)}"
    else:
        m = _KIND_RE.search(target.module)
        kind = m.group(1) if m else target.module
    return f"{target.component}:{kind}"


def _file_key(path: Path) -> tuple:
    st = os.stat(path)
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def normalize_specs(loras: Optional[Sequence[LoraSpec]]) -> list[tuple[Path, float]]:
    """``[path | (path, scale)]`` -> ``[(absolute path, scale)]`` with checks."""
    if loras is None:
        return []
    if isinstance(loras, (str, os.PathLike)) or (isinstance(loras, tuple) and len(loras) == 2
                                                 and isinstance(loras[1], (int, float))):
        raise LoraError("loras must be a list of paths or (path, scale) pairs, e.g. [('style.safetensors', 0.8)]")
    out = []
    for item in loras:
        if isinstance(item, (str, os.PathLike)):
            path, scale = item, 1.0
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            path, scale = item
        else:
            raise LoraError(f"a LoRA must be a path or a (path, scale) pair, got {item!r}")
        if not isinstance(path, (str, os.PathLike)):
            raise LoraError(f"LoRA path must be a str or path, got {type(path).__name__}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)) \
                or not math.isfinite(float(scale)):
            raise LoraError(f"LoRA scale must be a finite number, got {scale!r} for {path!r}")
        p = Path(os.path.abspath(os.fspath(path)))
        if not p.exists():
            raise LoraError(f"no such LoRA file: {str(p)!r}")
        out.append((p, float(scale)))
    return out


# ------------------------------------------------------------------------------ family guess
_XL_HINTS = [re.compile(p) for p in (r"^(add_embedding|label_emb)_", r"transformer_blocks_([1-9]|\d\d+)_")]
_SD_HINTS = [re.compile(p) for p in (r"^down_blocks_0_attentions_", r"^input_blocks_[12]_1_",
                                     r"^up_blocks_3_", r"^output_blocks_(9|10|11)_")]


def guess_family(lora: LoraFile) -> tuple[Optional[str], str]:
    """("sdxl" | "sd1/sd2" | None, evidence) from the structure of the LoRA's module names:
    a second text encoder or an add-embedding / deep transformer stack is SDXL; attention at
    the first level or a fourth up level is SD1/SD2. Conflicting or no evidence: None."""
    found: dict[str, str] = {}
    for mod in lora.modules:
        comp = mod.components[0] if len(mod.components) == 1 else None
        if comp == TE2:
            found.setdefault("sdxl", f"second text encoder key {mod.keys[0]!r}")
        if comp != UNET:
            continue
        p = norm(mod.path)
        if any(h.search(p) for h in _XL_HINTS):
            found.setdefault("sdxl", f"key {mod.keys[0]!r}")
        if any(h.search(p) for h in _SD_HINTS):
            found.setdefault("sd1/sd2", f"key {mod.keys[0]!r}")
    if len(found) == 1:
        fam, why = next(iter(found.items()))
        return fam, why
    return None, ""


# ------------------------------------------------------------------------------ manager
@dataclass
class _Plan:
    report: LoraFileReport
    pairs: list[tuple[LoraModule, Target]]
    ident: tuple


class LoraManager:
    """Owns the LoRA state of one model's weight stores (see the module doc)."""

    def __init__(self, info, stores: Mapping[str, object]):
        self.info = info
        self.stores = dict(stores)
        self._index: Optional[ModuleIndex] = None
        self._applied: dict[str, tuple] = {}      # canonical tensor name -> recipe now merged
        self._merges: dict[str, tuple] = {}       # name -> ("w"|"b", contributions) behind _applied
        self._files: dict[tuple, LoraFile] = {}   # file identity -> parsed file
        self._lock = threading.RLock()
        self.reports: list[LoraFileReport] = []   # the set now merged
        self._base_files = self._stat_files()

    # ------------------------------------------------------------------ public
    @property
    def index(self) -> ModuleIndex:
        if self._index is None:
            tensors = {k: v for k, v in self.info.tensors.items() if k.split(".", 1)[0] in self.stores}
            self._index = ModuleIndex(tensors, getattr(self.info, "origin", {}))
        return self._index

    @property
    def modified(self) -> list[str]:
        """Canonical names of the tensors that now differ from the checkpoint."""
        return sorted(self._applied)

    def apply(self, loras: Optional[Sequence[LoraSpec]], strict: bool = True) -> LoraReport:
        t0 = time.perf_counter()
        specs = normalize_specs(loras)
        with self._lock:
            plans = [self._plan(path, scale) for path, scale in specs]
            self._validate(plans, strict)
            weights, biases = self._contributions(plans)
            written, restored = self._write(weights, biases)
            self.reports = [p.report for p in plans]
        return LoraReport(list(self.reports), written, restored, time.perf_counter() - t0)

    def clear(self) -> LoraReport:
        return self.apply([])

    # ------------------------------------------------------------------ planning
    def _read(self, path: Path) -> tuple[tuple, LoraFile]:
        target = path
        if path.is_dir():
            from .parse import pick_file
            target = pick_file(path)
        ident = _file_key(target)
        lf = self._files.get(ident)
        if lf is None:
            lf = read_lora(path)
            if len(self._files) > 32:
                self._files.pop(next(iter(self._files)))
            self._files[ident] = lf
        return ident, lf

    def _resolve(self, mod: LoraModule) -> tuple[Optional[Target], Optional[str]]:
        """(target, why it does not fit) for a module; (None, None) when nothing matches."""
        found = []
        for comp in mod.components:
            if comp not in self.stores:
                continue
            t = self.index.lookup(comp, mod.path)
            if t is not None:
                found.append((t, check(mod, t)))
        for t, why in found:
            if why is None:
                return t, None
        return found[0] if found else (None, None)

    def _plan(self, path: Path, scale: float) -> _Plan:
        ident, lf = self._read(path)
        rep = LoraFileReport(str(path), lf.name, scale, lf.format, unmatched=list(lf.unknown))
        pairs: list[tuple[LoraModule, Target]] = []
        seen: dict[str, str] = {}
        for mod in lf.modules:
            target, why = self._resolve(mod)
            if target is None:
                if mod.unsupported:
                    rep.unsupported += [(k, mod.unsupported) for k in mod.keys]
                else:
                    rep.unmatched += mod.keys
                continue
            if why is not None:
                bucket = rep.unsupported if mod.unsupported else rep.mismatched
                bucket += [(k, why) for k in mod.keys]
                continue
            if target.weight in seen:
                rep.mismatched += [(k, f"module already adapted by {seen[target.weight]!r} in this file")
                                   for k in mod.keys]
                continue
            seen[target.weight] = mod.key
            pairs.append((mod, target))
            rep.targets[mod.key] = target.weight
            kind = module_kind(target)
            rep.modules[kind] = rep.modules.get(kind, 0) + 1
            n = 1 + (1 if (mod.bias is not None or mod.diff_b is not None) else 0)
            rep.tensors[target.component] = rep.tensors.get(target.component, 0) + n
        rep.unmatched.sort()
        return _Plan(rep, pairs, ident)

    def _validate(self, plans: list[_Plan], strict: bool) -> None:
        model_family = "sdxl" if self.info.family == "sdxl" else "sd1/sd2"
        for plan in plans:
            rep = plan.report
            if not rep.skipped:
                continue
            lf = self._files[plan.ident]
            fam, why = guess_family(lf)
            if fam is not None and fam != model_family:
                raise LoraFamilyError(rep.path, fam.upper(), f"{self.info.family.upper()} ({self.info.variant})",
                                      f"{why}; {len(rep.skipped)} of its keys do not fit this model")
            if not rep.targets and not strict:
                warnings.warn(f"LoRA {rep.path!r}: none of its {len(rep.skipped)} keys matches this model",
                              LoraWarning, stacklevel=4)
        bad = [p.report for p in plans if p.report.skipped]
        if not bad:
            return
        if strict:
            r = bad[0]
            raise LoraUnmatchedError(r.path, r.unmatched, r.mismatched, r.unsupported)
        for r in bad:
            err = LoraUnmatchedError(r.path, r.unmatched, r.mismatched, r.unsupported)
            warnings.warn(f"{err}\n(left out; the rest of the LoRA is applied)", LoraWarning, stacklevel=4)

    @staticmethod
    def _contributions(plans: list[_Plan]):
        weights: dict[str, list] = {}
        biases: dict[str, list] = {}
        for plan in plans:
            scale = plan.report.scale
            if scale == 0.0:
                continue
            for mod, target in plan.pairs:
                weights.setdefault(target.weight, []).append((plan.ident, mod, target, scale))
                if mod.bias is not None or mod.diff_b is not None:
                    biases.setdefault(target.bias, []).append((plan.ident, mod, target, scale))
        return weights, biases

    # ------------------------------------------------------------------ writing
    def _store(self, name: str):
        return self.stores[name.split(".", 1)[0]]

    def _original(self, name: str) -> np.ndarray:
        from ..engine.weights import as_native_array

        rec = self.info.tensors[name]
        self._check_file(rec.file)
        return as_native_array(np.asarray(rec.numpy()))   # exactly what the loader stored

    def _merged(self, name: str, how: tuple) -> np.ndarray:
        merged = np.array(self._original(name), dtype=np.float32)   # a fresh, writable copy
        kind, contribs = how
        for _, mod, target, s in contribs:
            merged += weight_delta(mod, target, s) if kind == "w" else bias_delta(mod, s)
        return merged

    def _original_raw(self, name: str) -> np.ndarray:
        """The original as the native merge reads it: f32 / f16 as mapped, bf16 as its uint16 bits
        (no float32 copy); anything else (quantized GGUF blocks, ints) as ``_original`` gives it."""
        from ..io.mmap_view import raw_view
        from ..io.records import TensorRecord

        rec = self.info.tensors[name]
        if isinstance(rec, TensorRecord) and rec.dtype == "BF16":
            self._check_file(rec.file)
            return raw_view(rec)
        return self._original(name)

    @staticmethod
    def _native(how: tuple) -> bool:
        """Whether the native merge covers this tensor's recipe (low-rank weight deltas only)."""
        kind, contribs = how
        return (kind == "w" and os.environ.get("SDCPP_LORA_MERGE", "native") != "numpy"
                and all(is_low_rank(mod) for _, mod, _, _ in contribs))

    def _native_terms(self, how: tuple) -> Optional[list]:
        """[(up, down, scale)] for the native merge, or None when numpy must merge this tensor."""
        if not self._native(how):
            return None
        return [low_rank_terms(mod, s) for _, mod, _, s in how[1]]

    def _put(self, store, name: str, how: tuple) -> None:
        """Write the merged tensor `name` into `store`: natively where the deltas allow (a
        freed memory="low" store drops the write either way, see sdcpp.memory.StoreHandle)."""
        terms = self._native_terms(how)
        if terms is not None and hasattr(type(store), "merge_low_rank"):
            store.merge_low_rank(name, self._original_raw(name), terms)
        else:
            store.set(name, self._merged(name, how))

    def rewrite(self, component: str, store) -> int:
        """Write the merged tensors of `component` into `store` again: the model rebuilt that
        component's weights from the checkpoint (sdcpp.memory, memory="low"). Returns how many."""
        with self._lock:
            names = [n for n in self._applied if n.split(".", 1)[0] == component and store.has(n)]
            for name in names:   # (a partial store, memory="low"'s decode-only VAE, lacks some)
                self._put(store, name, self._merges[name])
            return len(names)

    def _restore(self, name: str) -> None:
        """Put the loaded weight back: the original record through the loader's own path (a
        GGUF's quantized blocks copied as they are, anything else converted the same way)."""
        from ..engine.weights import set_value
        from ..memory import StoreHandle

        rec = self.info.tensors[name]
        self._check_file(rec.file)
        store = self._store(name)
        if isinstance(store, StoreHandle):   # memory="low": a freed store drops the write
            store.set_value(name, rec)
        else:
            set_value(store, name, rec)

    def _write(self, weights: dict, biases: dict) -> tuple[int, int]:
        recipes = {}
        for table in (weights, biases):
            for name, contribs in table.items():
                recipes[name] = tuple((ident, mod.key, s) for ident, mod, _, s in contribs)
        restore = [n for n in self._applied if n not in recipes]
        change = [n for n, r in recipes.items() if self._applied.get(n) != r]
        if not restore and not change:
            return 0, 0
        set_lock = threading.Lock()     # stores are written one tensor at a time
        hows = {n: ("w", weights[n]) if n in weights else ("b", biases[n]) for n in change}
        natives = [n for n in change if self._native(hows[n])]

        def merge(name: str) -> None:
            merged = self._merged(name, hows[name])
            with set_lock:
                self._store(name).set(name, merged)
                self._applied[name] = recipes[name]
                self._merges[name] = hows[name]

        def merge_native(name: str) -> None:
            self._put(self._store(name), name, hows[name])
            self._applied[name] = recipes[name]
            self._merges[name] = hows[name]

        try:
            for name in restore:
                self._restore(name)
                del self._applied[name]
                self._merges.pop(name, None)
            # The native merge runs on the device's threads itself: one tensor after the other.
            for name in natives:
                merge_native(name)
            # numpy and the store release the GIL: the rest is merged in parallel (each worker
            # holds one float32 tensor at a time).
            native = set(natives)
            rest = [n for n in change if n not in native]
            workers = min(MERGE_WORKERS, len(rest))
            if workers > 1:
                with ThreadPoolExecutor(workers) as pool:
                    for fut in [pool.submit(merge, n) for n in rest]:
                        fut.result()
            else:
                for name in rest:
                    merge(name)
        except BaseException:
            self._emergency_restore()
            raise
        return len(change), len(restore)

    def _emergency_restore(self) -> None:
        """After a failure part-way, put every modified tensor back (best effort)."""
        for name in list(self._applied):
            try:
                self._restore(name)
                del self._applied[name]
                self._merges.pop(name, None)
            except Exception:   # pragma: no cover - the original error is re-raised
                pass
        self.reports = []

    # ------------------------------------------------------------------ base-file guard
    def _stat_files(self) -> dict[Path, tuple]:
        out: dict[Path, tuple] = {}
        for name, rec in self.info.tensors.items():
            if name.split(".", 1)[0] in self.stores and rec.file not in out:
                try:
                    st = os.stat(rec.file)
                    out[rec.file] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                except OSError:
                    out[rec.file] = None
        return out

    def _check_file(self, path: Path) -> None:
        want = self._base_files.get(path)
        try:
            st = os.stat(path)
            have = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            have = None
        if want is None or have != want:
            raise LoraError(f"the checkpoint file {str(path)!r} changed or disappeared since the model was loaded; "
                            f"its original weights cannot be re-read. Reload the model.")


__all__ = ["LoraManager", "LoraReport", "LoraFileReport", "guess_family", "normalize_specs", "module_kind"]
