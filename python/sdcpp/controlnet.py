"""ControlNet: ``sdcpp.load_controlnet(source)`` and the ``control=`` argument of txt2img /
img2img / inpaint, with diffusers' StableDiffusion(XL)ControlNetPipeline semantics.

    cn = sdcpp.load_controlnet("control_v11p_sd15_canny.pth")     # file, diffusers folder, hub id
    model.txt2img("a house", control=[(cn, edges, 0.8)])
    model.txt2img("a house", control=[ControlSpec(cn, edges, scale=0.8, start=0.0, end=0.6), (cn2, depth, 0.5)])

The architecture is read from the tensors (the U-Net encoder's blocks, the conditioning
embedding's widths); what tensors cannot say (attention heads, GroupNorm groups, the SDXL time-id
width) comes from the folder's config.json, else from the model the ControlNet is used with (a
ControlNet is a copy of its base U-Net's encoder), else from the family's published values.
The native weights are built on first use, on the model's device and in its weight type, and
compute with the model's arithmetic (``sdcpp.load(compute=)``), unless ``load_controlnet(device=,
weight_type=, compute=)`` said otherwise.
"""
from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from . import errors
from .naming.controlnet import PREFIX, canonicalize_controlnet, looks_like_controlnet

PathLike = Union[str, os.PathLike]

_RE_LAYER = re.compile(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.")
_RE_DEPTH = re.compile(r"down_blocks\.(\d+)\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.")
_RE_DOWN = re.compile(r"down_blocks\.(\d+)\.downsamplers\.0\.")
_RE_MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.")
_RE_MID_DEPTH = re.compile(r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\.")
_RE_EMB = re.compile(r"controlnet_cond_embedding\.blocks\.(\d+)\.weight")


@dataclass
class ControlSpec:
    """One ControlNet of a call: its control image (PIL or HxWx3 / 3xHxW array in [0, 1]),
    conditioning scale and the fraction of the steps it acts in (diffusers'
    control_guidance_start / control_guidance_end)."""
    net: "ControlNet"
    image: Any
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    guess_mode: bool = False     # diffusers' guess_mode (forced for global_pool_conditions nets)


class ControlNet:
    """A ControlNet read from a file or folder (see :func:`load_controlnet`)."""

    def __init__(self, path: Optional[Path], tensors: dict, origin: dict, config: dict, device=None,
                 weight_type: Optional[str] = None, compute: Optional[str] = None):
        self.path = path
        self.tensors = tensors          # canonical "controlnet.*" -> records
        self.origin = origin
        self.config = config            # the folder's config.json ({} for a single file)
        self.layout = _layout(tensors, path)
        self._device = device
        self._weight_type = weight_type
        self._compute = compute
        self._engines: dict = {}

    @property
    def family(self) -> str:
        """"sdxl" (text_time addition embedding) or "sd1"-style (also SD2: a 1024-wide context)."""
        return "sdxl" if self.layout["add_in_dim"] else ("sd2" if self.layout["cross_attention_dim"] == 1024 else "sd1")

    def __repr__(self) -> str:
        return f"ControlNet({str(self.path)!r}, family={self.family!r}, blocks={self.layout['channels']})"

    # ------------------------------------------------------------------ native
    def native_config(self, base: Optional[dict] = None) -> dict:
        """The native config; `base`: the native U-Net config of the model it is used with."""
        from .engine.controlnet import controlnet_native_config

        lay, cfg = self.layout, self.config
        n = len(lay["channels"])

        def pick(cfg_keys, base_value, default):
            for k in cfg_keys:
                if cfg.get(k) is not None:
                    return cfg[k]
            return base_value if base_value is not None else default

        heads = pick(("num_attention_heads", "attention_head_dim"),
                     [b["heads"] for b in base["down"]] if base else None,
                     8 if self.family == "sd1" else [max(1, c // 64) for c in lay["channels"]])
        heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * n
        add = None
        if lay["add_in_dim"]:
            tdim = pick(("addition_time_embed_dim",),
                        (base.get("addition_embed") or {}).get("time_embed_dim") if base else None, 256)
            add = {"type": "text_time", "time_embed_dim": int(tdim), "in_dim": lay["add_in_dim"]}
        mid = {"type": lay["mid_type"], "depth": lay["mid_depth"], "heads": int(heads[-1])}
        unet = {
            "in_channels": lay["in_channels"], "out_channels": lay["in_channels"],
            "block_out_channels": list(lay["channels"]),
            "norm_groups": int(pick(("norm_num_groups",), base["norm_groups"] if base else None, 32)),
            "norm_eps": float(pick(("norm_eps",), base["norm_eps"] if base else None, 1e-5)),
            "time_proj_dim": lay["time_proj_dim"], "time_embed_dim": lay["time_embed_dim"],
            "flip_sin_to_cos": bool(cfg.get("flip_sin_to_cos", True)), "freq_shift": float(cfg.get("freq_shift", 0)),
            "cross_attention_dim": lay["cross_attention_dim"] or (base or {}).get("cross_attention_dim") or 768,
            "use_linear_projection": lay["use_linear_projection"],
            "down": [{"resnets": r, "depths": list(d), "heads": int(h), "downsample": i < n - 1}
                     for i, (r, d, h) in enumerate(zip(lay["resnets"], lay["depths"], heads))],
            "mid": mid, "addition_embed": add,
        }
        return controlnet_native_config(unet, lay["cond_channels"], lay["embedding_channels"])

    def engine(self, device, weight_type: str, base: Optional[dict] = None, compute: str = "f32"):
        """The native ControlNet (engine.controlnet.ControlNet) on `device`, built once per
        (device, weight type, config), computing with `compute` (the model's: a bf16 U-Net gets
        bf16 residuals, an exact one exact residuals). Switching it keeps the weights (the native
        graph cache keys on it)."""
        from .engine.controlnet import ControlNet as Engine
        from .engine.weights import build_store

        device = self._device or device
        wt = self._weight_type or weight_type
        cfg = self.native_config(base)
        key = (id(device), wt, repr(cfg))
        if key not in self._engines:
            try:
                store = build_store(device, self.tensors, wt)
                self._engines = {key: (Engine(store, cfg), device)}     # one at a time: weights are large
            except (errors.InvalidArgumentError, errors.BackendError) as exc:
                m = re.search(r"'(controlnet\.[^']+)'", str(exc))
                tensor = self.origin.get(m.group(1), m.group(1)) if m else None
                raise errors.CheckpointError(f"the ControlNet cannot be built from this file: {exc}",
                                             file=self.path, tensor=tensor) from None
        eng = self._engines[key][0]
        eng.compute = self._compute or compute
        return eng

    def close(self) -> None:
        """Free the native weights (rebuilt on the next use)."""
        self._engines = {}


def _layout(t: dict, path) -> dict:
    """The ControlNet's architecture from its canonical tensors (names without the prefix)."""
    u = {k[len(PREFIX):]: v for k, v in t.items() if k.startswith(PREFIX)}

    def shape(name):
        if name not in u:
            raise errors.MissingTensorError("tensor required by the ControlNet layout is missing", file=path,
                                            tensor=PREFIX + name)
        return tuple(u[name].shape)

    resnets, attns, depth = defaultdict(set), defaultdict(set), defaultdict(set)
    downs, mid, mid_depth = set(), defaultdict(set), set()
    for name in u:
        if m := _RE_LAYER.match(name):
            (resnets if m.group(2) == "resnets" else attns)[int(m.group(1))].add(int(m.group(3)))
            if d := _RE_DEPTH.match(name):
                depth[(int(d.group(1)), int(d.group(2)))].add(int(d.group(3)))
        elif m := _RE_DOWN.match(name):
            downs.add(int(m.group(1)))
        elif m := _RE_MID.match(name):
            mid[m.group(1)].add(int(m.group(2)))
            if d := _RE_MID_DEPTH.match(name):
                mid_depth.add(int(d.group(1)))
    n = len(resnets)
    if n == 0 or set(resnets) != set(range(n)):
        raise errors.UnknownArchitectureError(f"ControlNet down blocks {sorted(resnets)} are not 0..n-1", file=path,
                                              tensor=PREFIX + "down_blocks")
    channels, counts, depths = [], [], []
    for i in range(n):
        channels.append(shape(f"down_blocks.{i}.resnets.0.conv1.weight")[0])
        counts.append(len(resnets[i]))
        depths.append([len(depth[(i, j)]) if j in attns[i] else 0 for j in range(len(resnets[i]))])
        if (i in downs) != (i < n - 1):
            raise errors.UnknownArchitectureError(f"ControlNet down block {i} downsampler placement is not the "
                                                  f"U-Net's", file=path, tensor=PREFIX + f"down_blocks.{i}")
    if mid["resnets"] == {0, 1} and mid["attentions"] == {0}:
        mid_type = "cross_attn"
    elif mid["resnets"] == {0} and not mid["attentions"]:
        mid_type = "resnet"
    elif not mid["resnets"] and not mid["attentions"]:
        mid_type = "none"
    else:
        raise errors.UnknownArchitectureError("ControlNet mid block of an unknown kind", file=path,
                                              tensor=PREFIX + "mid_block")
    te = shape("time_embedding.linear_1.weight")
    emb_in = shape("controlnet_cond_embedding.conv_in.weight")
    blocks = sorted(int(m.group(1)) for k in u if (m := _RE_EMB.fullmatch(k)))
    if blocks != list(range(len(blocks))) or len(blocks) % 2:
        raise errors.UnknownArchitectureError(f"ControlNet conditioning embedding blocks {blocks} are not pairs",
                                              file=path, tensor=PREFIX + "controlnet_cond_embedding.blocks")
    emb = [emb_in[0]] + [shape(f"controlnet_cond_embedding.blocks.{2 * i + 1}.weight")[0]
                         for i in range(len(blocks) // 2)]
    k_name = next((k for k in sorted(u) if k.endswith("attn2.to_k.weight")), None)
    p_name = next((k for k in sorted(u) if k.endswith(".proj_in.weight")), None)
    add = u.get("add_embedding.linear_1.weight")
    return {"channels": channels, "resnets": counts, "depths": depths, "mid_type": mid_type,
            "mid_depth": len(mid_depth), "in_channels": shape("conv_in.weight")[1],
            "time_proj_dim": te[1], "time_embed_dim": te[0],
            "cross_attention_dim": u[k_name].shape[1] if k_name else None,
            "use_linear_projection": bool(p_name) and len(u[p_name].shape) == 2,
            "add_in_dim": add.shape[1] if add is not None else None,
            "cond_channels": emb_in[1], "embedding_channels": emb}


def load_controlnet(source: PathLike, *, device: Optional[str] = None, weight_type: Optional[str] = None,
                    threads: Optional[int] = None, variant: Optional[str] = None,
                    revision: Optional[str] = None, compute: Optional[str] = None) -> ControlNet:
    """Read a ControlNet: a diffusers ControlNetModel folder (or its weights file), an
    lllyasviel/A1111 file (``control_*.pth`` / ``.safetensors``, read without running pickle code)
    or a Hugging Face repo id. Nothing is computed here; the native weights are built on the
    first generation that uses it, on that model's device (``device=`` builds them on this one)
    and in its weight type unless ``weight_type=`` is given, computing as that model does
    (``sdcpp.load(compute=)``: "f32" exact, "bf16" AMX-BF16 products) unless ``compute=`` is given."""
    from .engine.unet import check_compute
    from .engine.weights import WEIGHT_TYPES, open_device
    from .io import open_source

    if weight_type is not None and weight_type not in WEIGHT_TYPES:
        raise errors.InvalidArgumentError(f"weight_type must be one of {WEIGHT_TYPES}, got {weight_type!r}")
    if compute is not None:
        check_compute(compute)
    src = open_source(source, variant=variant, revision=revision)
    if len(src.components) != 1:
        raise errors.UnknownArchitectureError("a ControlNet is one set of weights; this source holds the "
                                              f"components {sorted(src.components)} (a whole model?)", file=src.path)
    (comp, raw), = src.components.items()
    if not looks_like_controlnet(raw):
        raise errors.UnknownArchitectureError("not a ControlNet: no controlnet_cond_embedding / input_hint_block / "
                                              "zero_convs tensors", file=src.path)
    tensors, origin, _ignored, unknown = canonicalize_controlnet(raw)
    if unknown:
        raise errors.UnknownArchitectureError(f"{len(unknown)} tensors of no ControlNet module", file=src.path,
                                              tensor=unknown[0])
    config = dict(src.configs.get(comp) or {})
    dev = open_device(device, threads) if device is not None else None
    return ControlNet(Path(src.path), tensors, origin, config, dev, weight_type, compute)


# ---------------------------------------------------------------------- generation
def parse_control(control, width: int, height: int) -> list[ControlSpec]:
    """``control=``: a ControlSpec, a (net, image[, scale[, start, end]]) tuple, or a list of
    them -> ControlSpecs with the image as float32 [3, height, width] in [0, 1] (diffusers'
    control image processing: RGB, resized to the output size with Lanczos, no normalisation)."""
    if control is None:
        return []
    if isinstance(control, (ControlSpec, tuple)):
        control = [control]
    if not isinstance(control, Sequence) or isinstance(control, (str, bytes)):
        raise errors.InvalidArgumentError("control must be a list of (controlnet, image, scale) or ControlSpec")
    out = []
    for i, c in enumerate(control):
        if isinstance(c, tuple):
            if not 2 <= len(c) <= 5 or len(c) == 4:
                raise errors.InvalidArgumentError(f"control[{i}] must be (controlnet, image[, scale[, start, end]])")
            c = ControlSpec(*c)
        if not isinstance(c, ControlSpec):
            raise errors.InvalidArgumentError(f"control[{i}] must be a tuple or ControlSpec, got {type(c).__name__}")
        if not isinstance(c.net, ControlNet):
            raise errors.InvalidArgumentError(f"control[{i}]: {type(c.net).__name__} is not a ControlNet "
                                              "(sdcpp.load_controlnet)")
        for what, v in (("scale", c.scale), ("start", c.start), ("end", c.end)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise errors.InvalidArgumentError(f"control[{i}] {what} must be a finite number, got {v!r}")
        if not isinstance(c.guess_mode, bool):
            raise errors.InvalidArgumentError(f"control[{i}] guess_mode must be True or False, got {c.guess_mode!r}")
        if not 0.0 <= c.start < c.end <= 1.0:
            raise errors.InvalidArgumentError(f"control[{i}]: need 0 <= start < end <= 1, got {c.start}, {c.end}")
        out.append(ControlSpec(c.net, control_image(c.image, width, height), float(c.scale), float(c.start),
                               float(c.end), c.guess_mode))
    return out


def control_image(image, width: int, height: int) -> np.ndarray:
    from PIL import Image

    if isinstance(image, Image.Image):
        img = image.convert("RGB")
        if img.size != (width, height):
            img = img.resize((width, height), Image.LANCZOS)
        return np.ascontiguousarray(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0)
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 2:
        arr = np.repeat(arr[None], 3, axis=0)
    if arr.ndim == 3 and arr.shape[-1] in (1, 3) and arr.shape[0] not in (1, 3):
        arr = arr.transpose(2, 0, 1)
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise errors.InvalidArgumentError(f"control image must be a PIL image or an HxW(x3) array, got shape {arr.shape}")
    if arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    if arr.shape[1:] != (height, width):
        img = Image.fromarray((np.clip(arr, 0, 1).transpose(1, 2, 0) * 255).round().astype(np.uint8), "RGB")
        return control_image(img, width, height)
    return np.ascontiguousarray(arr)


class ControlRunner:
    """The residuals of a call's ControlNets for each U-Net evaluation, summed as diffusers'
    MultiControlNet; a net acts in the steps i of `total` with not (i / total < start or
    (i + 1) / total > end) (diffusers' controlnet_keep), outside them it is not run.

    Rows are the U-Net batch: [uncond (batch), cond (batch)] with classifier-free guidance. In
    guess mode the net sees only the cond rows (the uncond rows get no residual) and its residuals
    are scaled by logspace(-1, 0) from the first skip to the mid block, as diffusers does; a
    ``global_pool_conditions`` net (shuffle) is always in guess mode and its residuals are
    averaged over the image."""

    def __init__(self, specs: list[ControlSpec], model, batch: int, cfg: bool, total: int):
        self.total = max(1, total)
        self.batch, self.cfg = batch, cfg
        self.items = []
        base = model.info.unet_native_config()
        rows = batch * (2 if cfg else 1)
        for s in specs:
            name = s.net.path.name if s.net.path else "ControlNet"
            if s.net.layout["channels"] != list(base["block_out_channels"]):
                raise errors.InvalidArgumentError(
                    f"ControlNet {name} (blocks {s.net.layout['channels']}) does not fit this model's U-Net "
                    f"(blocks {list(base['block_out_channels'])})")
            if bool(s.net.layout["add_in_dim"]) != bool(base.get("addition_embed")):
                raise errors.InvalidArgumentError(f"ControlNet {name} is a {s.net.family} ControlNet, the model is "
                                                  f"{model.family}")
            eng = s.net.engine(model.device, model.weight_type, base, model.compute)
            f = eng.cond_factor
            if s.image.shape[1] % f or s.image.shape[2] % f:
                raise errors.InvalidArgumentError(f"control image size must be a multiple of {f}")
            pool = bool(s.net.config.get("global_pool_conditions", False))
            guess = s.guess_mode or pool
            n = batch if guess and cfg else rows
            self.items.append((s, eng, np.ascontiguousarray(np.repeat(s.image[None], n, axis=0)), guess, pool))

    def residuals(self, x_in, t, ctx, pooled, time_ids, step: int) -> Optional[list]:
        total = None
        i = min(step, self.total - 1)
        for s, eng, cond, guess, pool in self.items:
            keep = not (i / self.total < s.start or (i + 1) / self.total > s.end)
            if not keep or s.scale == 0.0:
                continue
            rows = slice(self.batch, None) if guess and self.cfg else slice(None)
            res = eng(x_in[rows, :eng.config["in_channels"]], t[rows], ctx[rows], cond,
                      text_embeds=None if pooled is None else pooled[rows],
                      time_ids=None if time_ids is None else time_ids[rows], scale=1.0 if guess else s.scale)
            if guess:
                scales = np.logspace(-1, 0, len(res), dtype=np.float32) * np.float32(s.scale)
                res = [r * k for r, k in zip(res, scales)]
            if pool:
                res = [np.broadcast_to(r.mean(axis=(2, 3), keepdims=True), r.shape) for r in res]
            if guess and self.cfg:
                res = [np.concatenate([np.zeros_like(r), r]) for r in res]
            total = res if total is None else [a + b for a, b in zip(total, res)]
        return None if total is None else [np.ascontiguousarray(r, dtype=np.float32) for r in total]

    def clear(self) -> None:
        """Drop the nets' compute buffers (memory modes that free the U-Net's before decoding)."""
        for _, eng, *_ in self.items:
            eng.clear()


__all__ = ["ControlNet", "ControlSpec", "load_controlnet", "parse_control", "ControlRunner"]
