"""Memory modes of a loaded model (``sdcpp.load(..., memory=...)``) and the components whose
native weights can be dropped and rebuilt.

What each mode keeps (docs/generation.md, "Memory"):

==========================  =========  ==========  =====
                            low        balanced    fast
==========================  =========  ==========  =====
text-encoder weights        prompt     always      always
VAE weights                 enc/dec    always      always
VAE compute buffers         enc/dec    enc/dec     always
U-Net compute buffers       sampling   one shape   all
U-Net weights               sampling   always      always
mapped U-Net weights        streamed   always      always
==========================  =========  ==========  =====

*prompt*: built for encoding, freed right after; rebuilt from the (memory-mapped) source for the
next prompt. *enc/dec*: present only while the VAE encodes or decodes. *one shape*: when a call
has another latent shape than the previous one, the U-Net's graphs and compute buffers are
dropped first, so 512 then 1024 then 512 holds the 512 buffers again (each GraphRunner keeps
one set of buffers, grown to the largest graph it ran since it was last cleared). *sampling*:
dropped before the VAE decodes (``release_unet``). For the U-Net's weights that depends on what
they are: the checkpoint's own mapped pages (zero copy, sdcpp.engine.weights: a file's stored type
loaded as such) only leave the process's RSS (WeightStore.release_mapped_pages, madvise DONTNEED:
the page cache keeps them, the next sampling faults them back from it, pages a LoRA merge wrote
are kept); a converted copy (weight_type="q8_0" of an f16 file, f16 of an f32 file) lives in a
spill file (WeightStore.spill_to, ``spill_dir()``) and pages the same way, or, where no spill
file could be made, is freed and converted again from the mapped file at the next sampling (the conversion's time per call, merged
LoRA tensors written again). *streamed*: the checkpoint's own mapped U-Net pages are given back
module by module while a step runs (UNet.stream_weights), so about one module's weights are in
RSS at a time and every step reads the rest back from the page cache (about 0.17 s per GiB of
weights per step); converted copies stay whole while sampling. Every mode computes the same
numbers: only memory and time change.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from . import errors

MEMORY_MODES = ("low", "balanced", "fast")
DEFAULT_MEMORY = "balanced"


@dataclass(frozen=True)
class MemoryPolicy:
    mode: str
    release_text_encoders: bool     # free the text encoders' weights after encoding
    vae_on_demand: bool             # VAE weights only while encoding / decoding
    free_vae_buffers: bool          # free the VAE's compute buffers after each encode / decode
    free_unet_before_decode: bool   # free the U-Net's compute buffers before decoding
    fit_unet_to_shape: bool         # drop the U-Net's buffers when the latent shape changes
    unet_on_demand: bool            # U-Net weights out of RSS while decoding (see release_unet)
    stream_unet_weights: bool = False  # mapped U-Net weights given back module by module while sampling


def policy(mode: Optional[str]) -> MemoryPolicy:
    mode = DEFAULT_MEMORY if mode is None else mode
    if mode not in MEMORY_MODES:
        raise errors.InvalidArgumentError(f"memory must be one of {MEMORY_MODES}, got {mode!r}")
    low = mode == "low"
    return MemoryPolicy(mode, release_text_encoders=low, vae_on_demand=low, free_vae_buffers=mode != "fast",
                        free_unet_before_decode=low, fit_unet_to_shape=mode != "fast", unet_on_demand=low,
                        stream_unet_weights=low)


def spill_dir() -> str:
    """Where memory="low" keeps a converted U-Net's temporary file: SDCPP_SPILL_DIR, else the
    system's temporary folder (a tmpfs /tmp holds it in RAM: then set SDCPP_SPILL_DIR to a disk)."""
    import tempfile

    return os.environ.get("SDCPP_SPILL_DIR") or tempfile.gettempdir()


def paged_nbytes(store) -> int:
    """Bytes of a store that can leave RSS without being lost: mapped from the checkpoint or
    spilled to its temporary file."""
    return int(getattr(store, "mapped_nbytes", 0)) + int(getattr(store, "spilled_nbytes", 0))


def mostly_paged(store) -> bool:
    """Whether most of a store's bytes can leave RSS without being lost (paged_nbytes): then its
    pages are given back rather than the store freed and rebuilt."""
    return 2 * paged_nbytes(store) >= store.nbytes


def release_file_pages(store) -> int:
    """Drop a WeightStore's unwritten mapped pages from the process's RSS (bytes advised; 0 for
    a store without mappings or a stand-in without the method)."""
    fn = getattr(store, "release_mapped_pages", None) if store is not None else None
    return int(fn()) if fn is not None else 0


def release_unet(unet, store=None) -> None:
    """Before decoding (memory="low"): drop the U-Net's graphs and compute buffers, and its
    weights from RSS. A LazyComponent whose store is mostly the mapped checkpoint keeps its store
    and only gives back the file pages (nothing to rebuild; LoRA-written pages stay); one whose
    store is mostly a converted copy is freed (rebuilt at its next use). A plain U-Net (`store`
    its WeightStore) keeps its weights and gives back their file pages."""
    if isinstance(unet, LazyComponent):
        res = unet.resident
        if not res.resident:
            return
        res.obj.clear()
        if mostly_paged(res.store):
            release_file_pages(res.store)
        else:
            res.release()
        return
    unet.clear()
    release_file_pages(store)


class Resident:
    """One component (a text encoder, the VAE) over its own WeightStore, which can be freed and
    rebuilt from the source's tensor records.

    ``build_store() -> WeightStore`` fills a new store (the loader's conversion), ``make(store)``
    wraps it (TextEncoder, VAE). ``on_rebuild`` callbacks run on every rebuilt store (the LoRA
    manager writes its merged tensors again). ``builds`` and ``build_seconds`` say what rebuilding
    cost (docs, tests)."""

    def __init__(self, name: str, build_store: Callable[..., Any], make: Callable[[Any], Any]):
        self.name = name
        self._build_store = build_store
        self._make = make
        self.store = None
        self.obj = None
        self.part: Optional[str] = None   # what the resident store holds: None = everything
        self.on_rebuild: list[Callable[[str, Any], None]] = []
        self.builds = 0
        self.build_seconds = 0.0

    @property
    def resident(self) -> bool:
        return self.obj is not None

    def get(self, part: Optional[str] = None):
        """The component, built if needed. `part` (the VAE: "encoder" / "decoder") asks for a
        store of that part only (``build_store(part)``): memory="low" decodes without building
        the encoder's weights. A resident whole component serves any part."""
        if self.obj is not None and self.part is not None and self.part != part:
            self.release()
        if self.obj is None:
            t0 = time.perf_counter()
            store = self._build_store(part) if part is not None else self._build_store()
            obj = self._make(store)
            self.store, self.obj, self.part = store, obj, part
            if self.builds:
                for cb in self.on_rebuild:
                    cb(self.name, store)
            self.builds += 1
            self.build_seconds += time.perf_counter() - t0
        return self.obj

    def release(self) -> None:
        """Drop the weights and the component (its graphs and compute buffers go with it)."""
        self.obj = None
        self.store = None
        self.part = None


class LazyComponent:
    """Stands where the pipeline expects a TextEncoder / VAE: every attribute is looked up on the
    resident component, built on first use."""

    def __init__(self, resident: Resident):
        self._resident = resident

    def __getattr__(self, name):
        return getattr(self._resident.get(), name)

    def __call__(self, *args, **kwargs):      # the U-Net is called (special methods skip __getattr__)
        return self._resident.get()(*args, **kwargs)

    @property
    def resident(self) -> Resident:
        return self._resident


class StoreHandle:
    """A Resident's store as the LoRA manager writes it: a write to a freed store is dropped (the
    manager writes every merged tensor again when the store is rebuilt, see ``on_rebuild``);
    reads build the store."""

    def __init__(self, resident: Resident):
        self._resident = resident

    def set(self, name, array) -> None:
        if self._resident.store is not None:
            self._resident.store.set(name, array)

    def set_value(self, name, value) -> None:
        """engine.weights.set_value (a GGUF's quantized blocks as they are), dropped when freed."""
        if self._resident.store is not None:
            from .engine.weights import set_value

            set_value(self._resident.store, name, value)

    def merge_low_rank(self, name, original, terms) -> None:
        """WeightStore.merge_low_rank, dropped when freed (as set)."""
        if self._resident.store is not None:
            self._resident.store.merge_low_rank(name, original, terms)

    def __getattr__(self, name):
        self._resident.get()
        return getattr(self._resident.store, name)


__all__ = ["MEMORY_MODES", "DEFAULT_MEMORY", "MemoryPolicy", "policy", "release_file_pages", "release_unet", "Resident",
           "LazyComponent", "StoreHandle"]
