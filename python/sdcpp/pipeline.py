"""`sdcpp.load(...)` and the Model it returns: txt2img / img2img.

Python decides what (prompts, conditioning, schedule, outputs); the native engine does the
heavy how (text encoders, U-Net, VAE, sampler updates). One Model serves any number of calls;
calls on one Model from several threads are serialised by a lock (the native graphs and
compute buffers of a model are shared state).
"""
from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from . import errors
from .conditioning import Conditioner, EncoderSlot, default_pad
from .progress import phases
from .engine.sampling import SAMPLERS, SCHEDULES

PathLike = Union[str, os.PathLike]
Callback = Callable[[int, int, np.ndarray], Optional[bool]]

SCHEDULERS = SCHEDULES  # the pipeline's word for sampling's schedules
OUTPUT_TYPES = ("pil", "np", "latent")

_DEFAULT_SIZE = {"sd1": 512, "sd2": 768, "sdxl": 1024}

# vae_tiling=None tiles images with more pixels than this (above SDXL's native 1024x1024): the
# VAE's compute buffers grow with the area (~3 GB untiled at 1024x1024, ~780 MB per 512 tile).
# The rule depends on the size only, never on the memory mode, so modes never change results.
AUTO_TILE_PIXELS = 1024 * 1024

# Samplers whose diffusers counterpart works in variance-preserving form (DPMSolverMultistep,
# DDIM, LCM): their unit noise starts at x_vp = noise, which in our sigma form is
# noise * sqrt(sigma_max^2 + 1), not noise * sigma_max (k-diffusion's start, 0.2% apart).
_VP_SAMPLERS = frozenset({"dpm++2m", "ddim_trailing", "lcm"})


def _initial_noise_scale(sampler: str, sigma_max: float) -> float:
    """diffusers' init_noise_sigma for the scheduler matching `sampler`, in sigma form."""
    return float(np.sqrt(sigma_max * sigma_max + 1.0)) if sampler in _VP_SAMPLERS else sigma_max


@dataclass
class GenerationParams:
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    cfg_scale: float
    sampler: str
    scheduler: str
    seed: int
    batch_size: int
    clip_skip: Optional[int]
    strength: Optional[float] = None
    vae_tiling: bool = False          # the VAE runs in tiles for this size (not written to PNG text)
    preview: Optional[tuple] = None   # (callable(step, PIL image), every n steps): live previews
    extra: dict = field(default_factory=dict)    # further A1111 "parameters" fields
    control: list = field(default_factory=list)  # sdcpp.controlnet.ControlSpec, images prepared


class Model:
    """A loaded checkpoint. Build it with :func:`sdcpp.load`."""

    def __init__(self, info, device, components: dict, weight_type: str, source: Path,
                 prediction_type: str, compute: str = "f32"):
        self.info = info
        self.device = device
        self.weight_type = weight_type
        self._compute = compute
        self.source = source
        self.prediction_type = prediction_type
        self._c = components
        from .memory import LazyComponent, policy

        self.memory = components.get("memory") or policy(None)
        # Tiled VAE (vae_tiling=): tile size in pixels and overlap, diffusers' SD defaults
        # (tile_sample_min_size 512, tile_overlap_factor 0.25).
        self.vae_tile_size: int = 512
        self.vae_tile_overlap: float = 0.25
        self._unet_shape: Optional[tuple] = None
        self._control = None          # the last call's ControlNets (sdcpp.controlnet.ControlRunner)
        self._lock = threading.Lock()
        self._model_hash: Optional[str] = None
        self.family: str = info.family
        self.vae_scale: float = float(info.vae["scaling_factor"]) if info.vae else 1.0
        from .engine.taesd import TinyVAE
        # TAESD as the VAE (load(vae=<taesd>)): it works in the scaled latent space and encodes
        # without a posterior to sample (diffusers' AutoencoderTiny semantics).
        self._tiny_vae = isinstance(components["vae"], TinyVAE)
        slots = []
        for enc, meta in zip(components["text_encoders"], info.text_encoders):
            n = int(meta["layers"])
            default_skip = 1
            if info.family == "sdxl" or (info.family == "sd2" and n == 24):
                default_skip = 2
            slots.append(EncoderSlot(enc, n, int(meta.get("pad_id", default_pad(meta["kind"]))),
                                     final_norm=info.family != "sdxl", default_skip=default_skip))
        self.conditioner = Conditioner(info.family, slots, zero_empty_negative=info.family == "sdxl")
        # LoRA (sdcpp.lora, docs/lora.md): the model's own set, and the folder for prompt tags.
        self.lora_dir: Optional[PathLike] = None
        self._lora_specs: list = []
        self._lora_strict = True
        self._lora_manager = None
        if components.get("stores"):
            from .lora import LoraManager
            self._lora_manager = LoraManager(info, components["stores"])
        # memory="low" rebuilds text encoders / the VAE / a converted U-Net from the checkpoint:
        # merged LoRA tensors are written into the rebuilt store again.
        for comp in list(components.get("text_encoders", [])) + [components.get("vae"), components.get("unet")]:
            if isinstance(comp, LazyComponent):
                comp.resident.on_rebuild.append(self._lora_rewrite)
        self.info.loras = []

    @property
    def compute(self) -> str:
        """The arithmetic chosen at load (``sdcpp.load(compute=)``): the U-Net's and that of the
        ControlNets it runs with (unless ``load_controlnet(compute=)`` said otherwise)."""
        return self._compute

    # ------------------------------------------------------------ embeddings
    def load_embeddings(self, sources: Sequence[PathLike]) -> list[str]:
        """Load textual-inversion embeddings (files, or folders of them): A1111 ``.pt`` /
        ``.safetensors`` (``emb_params``, ``string_to_param``, SDXL ``clip_l``/``clip_g``) and
        diffusers ``learned_embeds``. Each is used by writing its file stem in a prompt or
        negative prompt (``"a photo, easynegative"``). Adds to the embeddings loaded before (a
        file with the same stem replaces the older one); returns the words now known. Raises
        :class:`sdcpp.errors.EmbeddingError` naming the file when one cannot be read or does not
        fit this model (another family's width); nothing is added then."""
        from .embeddings import EmbeddingTable, embedding_files, read_embedding

        if isinstance(sources, (str, os.PathLike)):
            sources = [sources]
        metas = self.info.text_encoders      # (not the encoders: memory="low" may have freed them)
        table = EmbeddingTable(list(zip(self.conditioner.slot_keys(), (int(t["width"]) for t in metas))),
                               int(metas[0]["vocab_size"]))
        if self.conditioner.embeddings is not None:
            for emb in self.conditioner.embeddings.embeddings.values():
                table.add(emb)
        for path in embedding_files(sources):
            table.add(read_embedding(path))
        with self._lock:
            self.conditioner.set_embeddings(table)
        return table.names()

    def placement(self) -> dict:
        """Where each part of this model runs: ``{"text_encoders": name, "unet": name, "vae": name,
        "lora_merge": ..., "ops_off_device": n}``. Every graph of a model runs on its one device
        (``device=`` of :func:`sdcpp.load`); LoRA factors are merged on the host and the merged
        weights uploaded. ``ops_off_device`` counts the graph nodes ggml's scheduler has placed on
        the CPU instead of a non-CPU device (an op the device lacks), summed over this process:
        0 means nothing fell back."""
        from .engine.weights import native

        name = self.device.info["name"]
        return {
            "device": name,
            "text_encoders": name,
            "unet": name,
            "vae": name + (" (TAESD)" if self._tiny_vae else ""),
            "lora_merge": "host CPU, merged weights uploaded" if not self.device.is_cpu else name,
            "ops_off_device": int(native().off_device_nodes()),
        }

    # ------------------------------------------------------------------ LoRA
    def weight_types(self) -> dict:
        """The storage type of every weight, per component: ``{"unet": {name: "q8_0", ...},
        "text_encoder": ..., "vae": ...}`` (what weight_type, the f16 fallbacks and a GGUF's own
        quantized tensors gave)."""
        return {k: dict(s.types()) for k, s in (self._c.get("stores") or {}).items()}

    def set_loras(self, loras: Sequence = (), strict: bool = True):
        """Merge LoRAs into the weights: ``[(path, scale), ...]`` (or bare paths, scale 1).
        Replaces the previous set (only the tensors that change are rewritten); ``[]`` restores
        the loaded weights bit-exactly. Returns a :class:`sdcpp.lora.LoraReport` (also kept in
        ``model.info.loras``). A key that matches nothing raises
        :class:`sdcpp.lora.LoraUnmatchedError` (``strict=False``: a warning, the rest applies);
        a LoRA of another family raises :class:`sdcpp.lora.LoraFamilyError`."""
        from .lora import normalize_specs

        specs = normalize_specs(loras)
        with self._lock:
            report = self._lora_apply(specs, strict)
            self._lora_specs, self._lora_strict = specs, strict
            return report

    @property
    def loras(self) -> list:
        """The model's own LoRA set as ``[(path, scale)]`` (prompt tags not included)."""
        return [(str(p), s) for p, s in self._lora_specs]

    def _lora_apply(self, specs: list, strict: bool):
        if self._lora_manager is None:
            raise errors.LoraError("this model has no weight stores to merge LoRAs into (closed?)")
        report = self._lora_manager.apply(specs, strict)
        self.info.loras = report.loras
        return report

    def _prompt_loras(self, prompt: str) -> None:
        """Apply the prompt's ``<lora:name:scale>`` tags on top of the model's own set for this
        call. The merged weights stay until the next call or set_loras needs another set, so
        repeating a prompt costs nothing; a call without tags goes back to the model's set."""
        from .tokenizer.prompt import extract_lora_tags

        _, tags = extract_lora_tags(prompt)
        if not tags and (self._lora_manager is None or not self._lora_manager_differs()):
            return
        from .lora import resolve_lora_name

        specs = list(self._lora_specs) + [(resolve_lora_name(name, self.lora_dir), float(m)) for name, m in tags]
        self._lora_apply(specs, self._lora_strict)

    def _lora_rewrite(self, component: str, store) -> None:
        if self._lora_manager is not None:
            self._lora_manager.rewrite(component, store)

    def _lora_manager_differs(self) -> bool:
        cur = [(r.path, r.scale) for r in self._lora_manager.reports]
        return cur != [(str(p), s) for p, s in self._lora_specs]

    # ------------------------------------------------------------------ public API
    def txt2img(self, prompt: str, negative_prompt: str = "", *, width: Optional[int] = None,
                height: Optional[int] = None, steps: int = 20, cfg_scale: float = 7.0,
                sampler: str = "euler_a", scheduler: str = "discrete", seed: Optional[int] = None,
                batch_size: int = 1, clip_skip: Optional[int] = None, latents: Optional[np.ndarray] = None,
                output_type: str = "pil", callback: Optional[Callback] = None, rng: str = "cpu",
                progress: bool = False, vae_tiling: Optional[bool] = None,
                hires: Optional[Mapping[str, Any]] = None, preview: Optional[Callable] = None,
                preview_every: int = 1, control=None) -> list:
        """Generate images from a prompt. Returns a list with one entry per image.

        vae_tiling: decode in overlapping tiles of ``model.vae_tile_size`` pixels (True), whole
        (False), or tiled only above ``AUTO_TILE_PIXELS`` (None); see docs/generation.md.
        hires: A1111's hires fix, e.g. ``dict(scale=2.0, steps=10, denoise=0.5, upscaler="latent")``
        (sdcpp.hires): the result has the upscaled size; `callback` sees both passes' steps.
        control: ControlNets, ``[(controlnet, image, scale), ...]`` or sdcpp.controlnet.ControlSpec
        entries (with start / end step fractions); see docs/generation.md "ControlNet"."""
        size = _DEFAULT_SIZE[self.family]
        if latents is not None:
            # The latents set the size and the batch; a width / height / batch_size that says
            # otherwise is an error, not silently overruled.
            latents = np.asarray(latents, dtype=np.float32)
            if latents.ndim != 4 or latents.shape[1] != 4:
                raise errors.InvalidArgumentError(f"latents must be [batch, 4, h/8, w/8], got {latents.shape}")
            lh, lw = latents.shape[2] * 8, latents.shape[3] * 8
            if (width is not None and width != lw) or (height is not None and height != lh):
                raise errors.InvalidArgumentError(
                    f"latents {tuple(latents.shape)} are for a {lw}x{lh} image, but width x height is "
                    f"{width}x{height}; leave width/height out or make them agree")
            if batch_size not in (1, latents.shape[0]):
                raise errors.InvalidArgumentError(
                    f"latents hold {latents.shape[0]} images but batch_size is {batch_size}")
            height, width, batch_size = lh, lw, latents.shape[0]
        width = size if width is None else width
        height = size if height is None else height
        from .engine import sampling
        from .hires import infotext_fields, parse_hires

        params = self._params(prompt, negative_prompt, width, height, steps, cfg_scale, sampler, scheduler,
                              seed, batch_size, clip_skip, output_type, rng, vae_tiling)
        spec = parse_hires(hires, width, height, steps)
        second = None
        if spec is not None:
            second = self._params(prompt, negative_prompt, spec.width, spec.height, spec.steps, cfg_scale, sampler,
                                  scheduler, params.seed, params.batch_size, clip_skip, output_type, rng, vae_tiling)
            second.strength = params.strength = spec.denoise
            params.extra.update(infotext_fields(spec))
        params.preview = self._check_preview(preview, preview_every)
        params.control = _parse_control(control, width, height)
        if second is not None:
            second.control = _parse_control(control, spec.width, spec.height)
        with self._lock:
            self._prompt_loras(prompt)
            gen = sampling.Generator(params.seed, rng)
            final = self._run(params, latents, None, callback, rng, progress, gen=gen)
            if second is None:
                return self._outputs(final, params, output_type, progress)
            final = self._hires_pass(final, params, second, spec, callback, rng, progress, gen)
            return self._outputs(final, second, output_type, progress, info=params)

    def img2img(self, image, prompt: str, negative_prompt: str = "", *, strength: float = 0.75,
                steps: int = 20, cfg_scale: float = 7.0, sampler: str = "euler_a", scheduler: str = "discrete",
                seed: Optional[int] = None, batch_size: int = 1, clip_skip: Optional[int] = None,
                output_type: str = "pil", callback: Optional[Callback] = None, rng: str = "cpu",
                resize: bool = False, progress: bool = False, vae_tiling: Optional[bool] = None,
                preview: Optional[Callable] = None, preview_every: int = 1, control=None) -> list:
        """Transform an image (PIL, or float HxWx3 / 3xHxW array in [0, 1]) guided by a prompt.
        vae_tiling: as for txt2img, for the encode and the decode."""
        pixels = _image_to_array(image, resize)
        height, width = pixels.shape[-2:]
        if not (isinstance(strength, (int, float)) and 0.0 < float(strength) <= 1.0):
            raise errors.InvalidArgumentError(f"strength must be in (0, 1], got {strength!r}")
        params = self._params(prompt, negative_prompt, width, height, steps, cfg_scale, sampler, scheduler,
                              seed, batch_size, clip_skip, output_type, rng, vae_tiling)
        params.strength = float(strength)
        params.preview = self._check_preview(preview, preview_every)
        params.control = _parse_control(control, width, height)
        with self._lock:
            self._prompt_loras(prompt)
            final = self._run(params, None, pixels, callback, rng, progress)
            return self._outputs(final, params, output_type, progress)

    def inpaint(self, image, mask, prompt: str, negative_prompt: str = "", *, strength: float = 1.0,
                steps: int = 20, cfg_scale: float = 7.0, sampler: str = "euler_a", scheduler: str = "discrete",
                seed: Optional[int] = None, batch_size: int = 1, clip_skip: Optional[int] = None,
                output_type: str = "pil", callback: Optional[Callback] = None, rng: str = "cpu",
                resize: bool = False, progress: bool = False, vae_tiling: Optional[bool] = None,
                preview: Optional[Callable] = None, preview_every: int = 1, control=None) -> list:
        """Repaint the white part of `mask` (PIL image or array, resized to the image when its
        size differs) in `image`, diffusers' semantics (sdcpp.inpaint): 4-channel models blend
        the known region back after every step, 9-channel inpainting models (``info.inpainting``)
        take the mask and the masked image as extra input. strength < 1 starts from the image."""
        from .inpaint import mask_to_array

        pixels = _image_to_array(image, resize)
        height, width = pixels.shape[-2:]
        if not (isinstance(strength, (int, float)) and 0.0 < float(strength) <= 1.0):
            raise errors.InvalidArgumentError(f"strength must be in (0, 1], got {strength!r}")
        m = mask_to_array(mask, height, width)
        params = self._params(prompt, negative_prompt, width, height, steps, cfg_scale, sampler, scheduler,
                              seed, batch_size, clip_skip, output_type, rng, vae_tiling, inpainting=True)
        params.strength = float(strength)
        if min(int(steps * strength), steps) < 1:
            raise errors.InvalidArgumentError(f"strength {strength} of {steps} steps leaves no step to run")
        params.preview = self._check_preview(preview, preview_every)
        params.control = _parse_control(control, width, height)
        with self._lock:
            self._prompt_loras(prompt)
            final = self._run_inpaint(params, pixels, m, callback, rng, progress)
            return self._outputs(final, params, output_type, progress)

    def close(self) -> None:
        """Free the native weights and buffers now (otherwise freed with the object)."""
        self._c.clear()
        self._lora_manager = None

    @property
    def model_hash(self) -> Optional[str]:
        """A1111's short model hash (first 10 hex digits of the file's sha256); None for folders."""
        if self._model_hash is None and self.source.is_file():
            import hashlib
            h = hashlib.sha256()
            with open(self.source, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 24), b""):
                    h.update(block)
            self._model_hash = h.hexdigest()[:10]
        return self._model_hash

    # ------------------------------------------------------------------ internals
    def _params(self, prompt, negative, width, height, steps, cfg_scale, sampler, scheduler, seed,
                batch_size, clip_skip, output_type, rng, vae_tiling=None, inpainting=False) -> GenerationParams:
        if not isinstance(prompt, str):
            raise errors.InvalidArgumentError(f"prompt must be a str, got {type(prompt).__name__}")
        if self.info.inpainting and not inpainting:
            raise errors.InvalidArgumentError(
                f"{self.source.name} is a 9-channel inpainting model: use model.inpaint(image, mask, prompt)")
        if not isinstance(negative, str):
            raise errors.InvalidArgumentError(f"negative_prompt must be a str, got {type(negative).__name__}")
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, (int, np.integer)) or value <= 0 or value % 8:
                raise errors.InvalidArgumentError(f"{name} must be a positive multiple of 8, got {value!r}")
        if not isinstance(steps, (int, np.integer)) or steps < 1:
            raise errors.InvalidArgumentError(f"steps must be an integer >= 1, got {steps!r}")
        if not isinstance(cfg_scale, (int, float)) or not np.isfinite(cfg_scale):
            raise errors.InvalidArgumentError(f"cfg_scale must be a finite number, got {cfg_scale!r}")
        if sampler not in SAMPLERS:
            raise errors.InvalidArgumentError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
        if scheduler not in SCHEDULERS:
            raise errors.InvalidArgumentError(f"unknown scheduler {scheduler!r}; valid: {', '.join(SCHEDULERS)}")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise errors.InvalidArgumentError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if output_type not in OUTPUT_TYPES:
            raise errors.InvalidArgumentError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if rng not in ("cpu", "cpu_scalar", "cuda"):
            raise errors.InvalidArgumentError(f"rng must be 'cpu', 'cpu_scalar' or 'cuda', got {rng!r}")
        if seed is None:
            seed = secrets.randbits(63)
        elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (0 <= seed < 2 ** 64):
            raise errors.InvalidArgumentError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        if vae_tiling not in (None, True, False):
            raise errors.InvalidArgumentError(f"vae_tiling must be True, False or None (automatic), got {vae_tiling!r}")
        tiled = self._tiles(vae_tiling, int(height), int(width))
        _check_memory(self, int(batch_size), int(height), int(width), float(cfg_scale) != 1.0,
                      self.vae_tile_size if tiled else None)
        p = GenerationParams(prompt, negative, int(width), int(height), int(steps), float(cfg_scale),
                             sampler, scheduler, int(seed), int(batch_size), clip_skip)
        p.vae_tiling = tiled
        return p

    def _tiles(self, vae_tiling: Optional[bool], height: int, width: int) -> bool:
        """Whether the VAE runs in tiles: as asked, else above AUTO_TILE_PIXELS; never when the
        image fits in one tile (diffusers' rule: tiles only when a side exceeds the tile)."""
        from .engine.vae_tiling import check_tile, needs_tiles

        want = height * width > AUTO_TILE_PIXELS if vae_tiling is None else bool(vae_tiling)
        if not want:
            return False
        check_tile(self.vae_tile_size, self.vae_tile_overlap, 8)
        return needs_tiles((height, width), self.vae_tile_size)

    # -- VAE and U-Net phases under the memory policy (sdcpp.memory) ---------------------------
    def _vae_run(self, encode: bool, x: np.ndarray, tiled: bool) -> np.ndarray:
        from .memory import LazyComponent

        vae = self._c["vae"]
        if self.memory.vae_on_demand and isinstance(vae, LazyComponent):
            # built for this direction only (memory="low"): no encoder weights while decoding
            vae = vae.resident.get("encoder" if encode else "decoder")
        try:
            if not tiled:
                return vae.encode(x) if encode else vae.decode(x)
            if encode:
                return vae.encode_tiled(x, tile=self.vae_tile_size, overlap=self.vae_tile_overlap)
            return vae.decode_tiled(x, tile=self.vae_tile_size // vae.factor, overlap=self.vae_tile_overlap)
        finally:
            if self.memory.vae_on_demand:
                self._c["vae"].resident.release()
            elif self.memory.free_vae_buffers:
                vae.free_compute_memory()

    def _release_text_encoders(self) -> None:
        if self.memory.release_text_encoders:
            for enc in self._c["text_encoders"]:
                enc.resident.release()

    def _run(self, p: GenerationParams, latents, init_pixels, callback, rng, progress, gen=None,
             init_latents: Optional[np.ndarray] = None) -> np.ndarray:
        """Sample: from noise (txt2img), or img2img from init_pixels (an image [3, H, W] for the
        whole batch, or [B, 3, H, W]) or from init_latents [B, 4, h, w] (scaled, as sampled).
        `gen` continues a generator (hires fix); by default one is seeded from p.seed."""
        from .engine import sampling
        from .engine.vae import split_moments

        gen = gen if gen is not None else sampling.Generator(p.seed, rng)
        img2img = init_pixels is not None or init_latents is not None
        run_steps = min(int(p.steps * p.strength), p.steps) if img2img else p.steps
        try:
            cond, uncond = self.conditioner.encode_schedules(p.prompt, p.negative_prompt, p.clip_skip, max(1, run_steps))
        finally:
            self._release_text_encoders()
        sigmas = sampling.sigmas(p.scheduler, p.steps, family="sdxl" if self.family == "sdxl" else "sd1")
        h, w = p.height // 8, p.width // 8
        shape = (p.batch_size, 4, h, w)

        if init_pixels is None and init_latents is None:
            noise = latents if latents is not None else gen.randn(shape)
            x = noise.astype(np.float32) * np.float32(_initial_noise_scale(p.sampler, float(sigmas[0])))
        else:
            if init_latents is not None:   # diffusers img2img handed latents: used as they are
                init = np.asarray(init_latents, dtype=np.float32)
            else:
                # diffusers img2img: encode (sampling the posterior with the generator), scale,
                # then start at the strength's point of the schedule with fresh noise.
                px = init_pixels if init_pixels.ndim == 4 else np.repeat(init_pixels[None], p.batch_size, axis=0)
                if self._tiny_vae:
                    init = self._c["vae"].encode(px * 2 - 1)
                else:
                    moments = self._vae_run(True, px * 2 - 1, p.vae_tiling)
                    mean, logvar = split_moments(moments)
                    std = np.exp(0.5 * logvar)
                    init = (mean + std * gen.randn(mean.shape)) * self.vae_scale
            t_start = p.steps - min(int(p.steps * p.strength), p.steps)
            sigmas = sigmas[t_start:]
            if len(sigmas) < 2:
                return init.astype(np.float32)
            x = (init + gen.randn(shape) * sigmas[0]).astype(np.float32)

        clock = _StepClock()
        total = len(sigmas) - 1
        denoise = self._denoiser(cond, uncond, p, clock=clock, control=self._control_runner(p, total))
        bar = phases(progress).bar("sample", total, "step")

        def on_step(step: int, _total: int, x_now: np.ndarray) -> bool:
            clock.step = step + 1
            bar.update(1)
            self._send_preview(p, clock, step, total)
            if callback is not None and callback(step, total, x_now) is False:
                return False
            return True

        try:
            return sampling.sample(p.sampler, denoise, x, sigmas, gen, callback=on_step)
        except KeyboardInterrupt:
            raise errors.Cancelled("generation interrupted (Ctrl-C); the model is still usable") from None
        finally:
            bar.close()

    def _run_inpaint(self, p: GenerationParams, pixels: np.ndarray, mask: np.ndarray, callback, rng,
                     progress) -> np.ndarray:
        """diffusers' inpainting loop (generator draws in its order: image latents when needed,
        the noise, the masked image's latents)."""
        from .engine import sampling
        from .engine.vae import split_moments
        from .hires import resize_latents

        gen = sampling.Generator(p.seed, rng)
        run_steps = min(int(p.steps * p.strength), p.steps)
        try:
            cond, uncond = self.conditioner.encode_schedules(p.prompt, p.negative_prompt, p.clip_skip, run_steps)
        finally:
            self._release_text_encoders()
        sigmas = sampling.sigmas(p.scheduler, p.steps, family="sdxl" if self.family == "sdxl" else "sd1")
        sigmas = sigmas[p.steps - min(int(p.steps * p.strength), p.steps):]
        b, h, w = p.batch_size, p.height // 8, p.width // 8
        nine = self.info.inpainting
        strength_max = p.strength == 1.0
        image = (pixels[None] * 2 - 1).astype(np.float32)          # [1, 3, H, W]

        def encode_sampled(x: np.ndarray) -> np.ndarray:             # one image's latents, posterior sampled
            if self._tiny_vae:
                return self._c["vae"].encode(x)
            mean, logvar = split_moments(self._vae_run(True, x, p.vae_tiling))
            return ((mean + np.exp(0.5 * logvar) * gen.randn(mean.shape)) * self.vae_scale).astype(np.float32)

        image_latents = None
        if not nine or not strength_max:
            image_latents = np.repeat(encode_sampled(image), b, axis=0)
        noise = gen.randn((b, 4, h, w)).astype(np.float32)
        if strength_max:
            x = noise * np.float32(_initial_noise_scale(p.sampler, float(sigmas[0])))
        else:
            x = (image_latents + noise * sigmas[0]).astype(np.float32)
        masked = image * (mask < 0.5)
        mask_lat = resize_latents(mask, h, w, "nearest")           # [1, 1, h, w]
        extra = None
        if nine:
            extra = np.concatenate([np.repeat(mask_lat, b, axis=0), np.repeat(encode_sampled(masked), b, axis=0)], axis=1)
        else:
            gen.randn((1, 4, h, w))      # diffusers samples the masked image's posterior here too (unused)

        clock = _StepClock()
        total = len(sigmas) - 1
        denoise = self._denoiser(cond, uncond, p, extra=extra, clock=clock, control=self._control_runner(p, total))
        bar = phases(progress).bar("sample", total, "step")

        def on_step(step: int, _total: int, x_now: np.ndarray):
            clock.step = step + 1
            bar.update(1)
            self._send_preview(p, clock, step, total)
            if not nine:  # the known region, noised to the next level (clean after the last step)
                known = image_latents if step == total - 1 else image_latents + noise * np.float32(sigmas[step + 1])
                x_now = ((1 - mask_lat) * known + mask_lat * x_now).astype(np.float32)
            if callback is not None and callback(step, total, x_now) is False:
                return False
            return x_now

        try:
            return sampling.sample(p.sampler, denoise, x, sigmas, gen, callback=on_step)
        except KeyboardInterrupt:
            raise errors.Cancelled("generation interrupted (Ctrl-C); the model is still usable") from None
        finally:
            bar.close()

    def _control_runner(self, p: GenerationParams, total: int):
        """The call's ControlNets (sdcpp.controlnet), None without any."""
        if not p.control:
            return None
        from .controlnet import ControlRunner

        self._control = ControlRunner(p.control, self, p.batch_size, p.cfg_scale != 1.0, total)
        return self._control

    def _denoiser(self, cond: list, uncond: list, p: GenerationParams, extra: Optional[np.ndarray] = None,
                  clock: Optional["_StepClock"] = None, control=None) -> Callable[[np.ndarray, float], np.ndarray]:
        """x, sigma -> the x0 estimate. cond / uncond: [(end_step, Conditioning)] schedules
        (prompt editing), the entry for `clock.step` is used. `extra` [B, C, h, w]: unscaled
        channels appended to the U-Net input (a 9-channel inpainting model's mask and
        masked-image latents)."""
        from .engine import sampling
        from .tokenizer.schedule import text_at

        unet = self._c["unet"]
        use_cfg = p.cfg_scale != 1.0
        b = p.batch_size
        clock = clock or _StepClock()
        cached: dict = {}

        def conditioning(step: int):
            """(context, pooled) of the schedules' entries at `step`, built once per pair."""
            key = (text_at(cond, step), text_at(uncond, step) if use_cfg else -1)
            if key not in cached:
                parts = [uncond[key[1]][1], cond[key[0]][1]] if use_cfg else [cond[key[0]][1]]
                ctx = np.concatenate([np.repeat(c.context, b, axis=0) for c in parts])
                pool = np.concatenate([np.repeat(c.pooled, b, axis=0) for c in parts]) if self.family == "sdxl" else None
                cached[key] = (ctx, pool)
            return cached[key]

        n_parts = 2 if use_cfg else 1
        context, _ = conditioning(0)
        # One shape's buffers at a time (memory != "fast"): a new latent/context shape drops the
        # graphs and buffers sized for the previous one before they would grow to both.
        shape = (len(context), p.height // 8, p.width // 8, context.shape[1])
        if self.memory.fit_unet_to_shape and self._unet_shape not in (None, shape):
            unet.clear()
        self._unet_shape = shape
        time_ids = None
        if self.family == "sdxl":
            ids = np.array([p.height, p.width, 0, 0, p.height, p.width], dtype=np.float32)
            time_ids = np.repeat(ids[None], len(context), axis=0)
        v_pred = self.prediction_type == "v_prediction"
        g = np.float32(p.cfg_scale)

        def denoise(x: np.ndarray, sigma: float) -> np.ndarray:
            sigma = float(sigma)
            c_in = np.float32(1.0 / np.sqrt(sigma * sigma + 1.0))
            ctx, pooled = conditioning(clock.step)
            t = np.full(len(ctx), sampling.sigma_to_t(sigma), dtype=np.float32)
            x_in = np.concatenate([x] * n_parts) * c_in
            if extra is not None:
                x_in = np.concatenate([x_in, np.concatenate([extra] * n_parts)], axis=1)
            res = control.residuals(x_in, t, ctx, pooled, time_ids, clock.step) if control is not None else None
            out = unet(x_in, t, ctx, text_embeds=pooled, time_ids=time_ids, residuals=res)
            if use_cfg:
                out_u, out_c = out[:b], out[b:]
                out = out_u + g * (out_c - out_u)
            if v_pred:
                c_skip = 1.0 / (sigma * sigma + 1.0)
                c_out = -sigma / np.sqrt(sigma * sigma + 1.0)
                clock.x0 = (c_skip * x + c_out * out).astype(np.float32)
                return clock.x0
            clock.x0 = (x - sigma * out).astype(np.float32)
            return clock.x0

        return denoise

    def _hires_pass(self, first: np.ndarray, p1: GenerationParams, p2: GenerationParams, spec, callback, rng,
                    progress, gen) -> np.ndarray:
        """The hires fix's second pass: img2img at p2's size from the upscaled first pass."""
        from .hires import lanczos, resize_latents

        p2.preview = p1.preview
        if spec.upscaler == "lanczos":
            pixels = lanczos(self._decode(first, p1, progress), p2.height, p2.width)
            return self._run(p2, None, pixels, callback, rng, progress, gen=gen)
        mode = "nearest" if spec.upscaler == "latent-nearest" else "bilinear"
        up = resize_latents(first, p2.height // 8, p2.width // 8, mode)
        return self._run(p2, None, None, callback, rng, progress, gen=gen, init_latents=up)

    def _check_preview(self, preview, every) -> Optional[tuple]:
        """(callable, every) for live previews; they need a tiny autoencoder (load(vae= or
        preview_vae=<TAESD>)) so the main VAE is never touched mid-run."""
        if preview is None:
            return None
        if not callable(preview):
            raise errors.InvalidArgumentError("preview must be callable (step, image)")
        if not isinstance(every, (int, np.integer)) or every < 1:
            raise errors.InvalidArgumentError(f"preview_every must be an integer >= 1, got {every!r}")
        if self._preview_vae() is None:
            raise errors.InvalidArgumentError(
                "live previews need a tiny autoencoder: sdcpp.load(..., preview_vae='taesd folder or file')")
        return preview, int(every)

    def _preview_vae(self):
        return self._c.get("preview") or (self._c["vae"] if self._tiny_vae else None)

    def _send_preview(self, p: GenerationParams, clock, step: int, total: int) -> None:
        """Every n steps (and after the last), the current x0 estimate decoded by the tiny
        autoencoder, as a PIL image (the first of the batch), to the preview callable."""
        if p.preview is None or clock.x0 is None:
            return
        fn, every = p.preview
        if (step + 1) % every and step + 1 != total:
            return
        from .outputs import to_pil

        img = self._preview_vae().decode(clock.x0[:1])[0]
        fn(step, to_pil(np.clip(img / 2 + 0.5, 0, 1).transpose(1, 2, 0).astype(np.float32), ""))

    def _decode(self, final: np.ndarray, p: GenerationParams, progress: bool) -> np.ndarray:
        """Latents (as sampled) -> float32 images [B, 3, H, W] in [0, 1]."""
        if self.memory.free_unet_before_decode:
            from .memory import release_unet

            release_unet(self._c["unet"], (self._c.get("stores") or {}).get("unet"))
            self._unet_shape = None
            if self._control is not None:
                self._control.clear()
                self._control = None
        bar = phases(progress).bar("decode", final.shape[0], "image")   # the VAE's phase, shown while it runs
        try:
            if self._tiny_vae:
                images = self._c["vae"].decode(final)
            else:
                images = self._vae_run(False, final / np.float32(self.vae_scale), p.vae_tiling)
            bar.update(final.shape[0])
        finally:
            bar.close()
        return np.clip(images / 2 + 0.5, 0.0, 1.0).astype(np.float32)

    def _outputs(self, final: np.ndarray, p: GenerationParams, output_type: str, progress: bool = False,
                 info: Optional[GenerationParams] = None) -> list:
        """The call's result; `info` gives the PNG "parameters" (the first pass of a hires run)."""
        if output_type == "latent":
            return [final[i] for i in range(final.shape[0])]
        images = self._decode(final, p, progress).transpose(0, 2, 3, 1)
        if output_type == "np":
            return [images[i] for i in range(images.shape[0])]
        from .outputs import to_pil

        return [to_pil(images[i], self._parameters_text(info or p, i)) for i in range(images.shape[0])]

    def _parameters_text(self, p: GenerationParams, index: int) -> str:
        from .outputs import a1111_parameters

        return a1111_parameters(p, seed=p.seed, index=index, model_name=self.source.stem,
                                model_hash=self.model_hash)




class _StepClock:
    """The sampling step the next model call belongs to (0-based), advanced by the step
    callback: every model call of a multi-call step sees the same step."""

    def __init__(self):
        self.step = 0
        self.x0 = None     # the last x0 estimate (live previews decode it)


def _parse_control(control, width: int, height: int) -> list:
    if control is None:
        return []
    from .controlnet import parse_control

    return parse_control(control, int(width), int(height))


def _image_to_array(image, resize: bool) -> np.ndarray:
    """A PIL image or an array in [0, 1] -> float32 [3, H, W] in [0, 1], H and W multiples of 8."""
    from PIL import Image

    if isinstance(image, Image.Image):
        img = image.convert("RGB")
        w, h = img.size
        if (w % 8 or h % 8) and resize:
            img = img.resize((max(8, w // 8 * 8), max(8, h // 8 * 8)), Image.LANCZOS)
        arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
    else:
        arr = np.asarray(image, dtype=np.float32)
        if arr.ndim != 3:
            raise errors.InvalidArgumentError(f"image must be a PIL image or an HxWx3 / 3xHxW array, got shape {arr.shape}")
        if arr.shape[-1] == 3 and arr.shape[0] != 3:
            arr = arr.transpose(2, 0, 1)
        if arr.shape[0] != 3:
            raise errors.InvalidArgumentError(f"image must have 3 channels, got shape {arr.shape}")
    h, w = arr.shape[1:]
    if h % 8 or w % 8:
        raise errors.InvalidArgumentError(
            f"image size {w}x{h} is not a multiple of 8; resize it or pass resize=True")
    return np.ascontiguousarray(arr)


def _available_memory() -> Optional[int]:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _check_memory(model: Model, batch: int, height: int, width: int, cfg: bool,
                  vae_tile: Optional[int] = None) -> None:
    """Refuse sizes whose compute buffers cannot fit, before any work starts. The U-Net's buffers
    (batch x 2 with CFG) and the VAE decoder's (one image, or one tile, at a time) are planned by
    ggml's allocator for these shapes (UNet.measure / VAE.measure: nothing computed, no memory
    touched); what the model holds already is not counted twice."""
    from .memory import LazyComponent

    dev = model.device.info
    avail = dev["memory_free"] if dev["type"] != "cpu" else _available_memory()
    if not avail:
        return
    n = batch * (2 if cfg else 1)
    unet = model._c["unet"]

    def too_large(what: str) -> errors.InvalidArgumentError:
        return errors.InvalidArgumentError(
            f"{width}x{height} with batch {batch} needs more working memory for the {what} than "
            f"{dev['name']} can allocate; use a smaller size or batch")
    # A floor first: two f32 maps of the first level's width at full latent size. Sizes far past
    # it are refused without asking ggml to plan (and reserve) buffers of hundreds of GB.
    first = int((model.info.unet.get("block_out_channels") or [320])[0])
    if n * first * (height // 8) * (width // 8) * 4 * 2 > avail:
        raise too_large("U-Net")
    try:
        unet_need = max(0, unet.measure(n, height // 8, width // 8, 77) - unet.compute_buffer_size)
    except errors.BackendError:       # the plan itself could not be allocated (even virtually)
        raise too_large("U-Net") from None
    vae = model._c.get("vae")
    vh, vw = (min(height, vae_tile), min(width, vae_tile)) if vae_tile else (height, width)
    from .engine.taesd import TinyVAE

    if vae is None or isinstance(vae, TinyVAE):     # a tiny autoencoder's buffers are a few MB per tile
        vae_need = 0
    elif isinstance(vae, LazyComponent) and not vae.resident.resident:
        # memory="low": measuring would load the VAE now; its decoder keeps about twelve
        # 128-channel f32 maps of one image (tile) live at its widest level.
        vae_need = vh * vw * 128 * 4 * 12
    else:
        try:
            vae_need = max(0, vae.measure(True, vh // 8, vw // 8) - vae.compute_buffer_size)
        except errors.BackendError:
            raise too_large("VAE") from None
    need = max(unet_need, vae_need) if model.memory.free_unet_before_decode else unet_need + vae_need
    if need > avail:
        raise errors.InvalidArgumentError(
            f"{width}x{height} with batch {batch} needs about {need / 2**30:.1f} GiB of working memory "
            f"(compute buffers: U-Net {unet_need / 2**30:.1f} GiB, VAE {vae_need / 2**30:.1f} GiB), more than the "
            f"{avail / 2**30:.1f} GiB available on {dev['name']}; use a smaller size or batch, "
            f"vae_tiling=True or memory=\"low\"")


# ---------------------------------------------------------------------- load
def load(source: PathLike, *, vae: Optional[PathLike] = None, device: str = "auto",
         weight_type: Optional[str] = None, threads: Optional[int] = None,
         prediction_type: Optional[str] = None, loras: Optional[Sequence] = None,
         lora_dir: Optional[PathLike] = None, variant: Optional[str] = None,
         revision: Optional[str] = None, memory: Optional[str] = None,
         embeddings: Optional[Sequence[PathLike]] = None, progress: bool = False,
         preview_vae: Optional[PathLike] = None, compute: str = "f32") -> Model:
    """Load a checkpoint (file, diffusers folder or Hugging Face repo id) onto a device.

    weight_type: storage of the U-Net and text encoders, "f32" | "f16" | "bf16" | "q8_0" |
    "q5_0" | "q4_0"; default f16 (a bf16 checkpoint stays bf16); "f32" computes exactly. The
    quantized types cover linear and convolution weights (norms, biases, embeddings and the
    time embedding stay f32; weights whose reduction length is not a multiple of 32 take f16)
    and run ggml's integer dot products; a GGUF's q8_0/q5_0/q4_0 tensors load as they are.
    The VAE is never quantized and computes in f32 whatever its storage. variant: the diffusers weight variant ("fp16" ...); for a Hugging Face repo id
    the fp16 files are preferred when the repo has them (variant="" asks for the plain ones). revision: the Hub revision (branch,
    tag or commit).
    loras: ``[(path, scale), ...]`` merged at load (see :meth:`Model.set_loras`); lora_dir: the
    folder searched for the prompt's ``<lora:name:scale>`` tags.
    memory: "low" | "balanced" (default) | "fast": which weights and compute buffers stay
    between the phases of a call (sdcpp.memory, docs/generation.md "Memory"); results are the
    same in every mode, only memory and time differ.
    embeddings: textual-inversion files or folders (see :meth:`Model.load_embeddings`).
    progress: a progress bar (tqdm, stderr) while the weights load, as txt2img's progress=True
    shows the sampling and decoding phases.
    vae: also a tiny autoencoder (TAESD for sd1/sd2, TAESDXL for sdxl: an AutoencoderTiny folder,
    a file, the original taesd_decoder/_encoder files, a hub id) to decode and encode with it.
    preview_vae: a tiny autoencoder for live previews only (txt2img(preview=...)); the main VAE
    stays as it is.
    compute: the U-Net's arithmetic for f32/f16/bf16 weights: "f32" (exact, default) or "bf16"
    (opt-in; on CPUs with AMX-BF16 the products round both operands to bf16 and sum in f32, several
    times faster, about 1e-2 from f32 on the output; elsewhere the same as "f32"; see UNet.compute).
    The ControlNets used with the model follow it.
    """
    from .loader import load_model

    model = load_model(source, vae=vae, device=device, weight_type=weight_type, threads=threads,
                       prediction_type=prediction_type, variant=variant, revision=revision, memory=memory,
                       progress=progress, preview_vae=preview_vae, compute=compute)
    model.lora_dir = lora_dir
    if loras:
        model.set_loras(loras)
    if embeddings:
        model.load_embeddings(embeddings)
    return model
