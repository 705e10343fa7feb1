"""Architecture inference: which model a checkpoint holds, from tensor names and shapes alone.

``inspect(source) -> ModelInfo``. No weight is read: only the canonical names
(``sdcpp.naming``) and record shapes. What tensors cannot tell comes from family defaults,
which a diffusers folder's configs may replace (they cannot contradict the tensors):

* attention heads: SD1 U-Nets use 8 heads; SD2/SDXL U-Nets and all CLIP text towers use head
  dim 64, so heads = max(1, C // 64);
* GroupNorm groups (32) and eps (1e-5 U-Net, 1e-6 VAE), text LayerNorm eps (1e-5);
* text activation (CLIP-L quick_gelu, OpenCLIP gelu) and pad id (CLIP-L 49407, OpenCLIP 0);
* VAE scaling factor (0.18215 SD1/SD2, 0.13025 SDXL family), sample size (64 / 128);
* prediction type: a ``v_pred`` marker key -> "v_prediction"; else a diffusers scheduler
  config; else "epsilon" for SD1/SDXL and None (undecidable: SD2 base is epsilon, SD2 768 is
  v-prediction) for SD2.

Everything tensors do tell (levels, channels, resnets per block, per-layer transformer
depths, mid block kind, add-embedding sizes, projection kind, text tower sizes) is inferred and
checked for consistency; any block-removal layout that fits the naming is accepted (variant
"custom" if it is none of the named ones). A diffusers config that disagrees with the tensors
is reported in ``ModelInfo.notes`` and ignored.
"""
from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from .errors import MissingTensorError, UnknownArchitectureError
from .io.records import TensorRecord
from .naming import canonicalize, diffusers_unet_to_ldm

XA_DOWN, DOWN, XA_UP, UP = "CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"
MID_XA, MID_RES = "UNetMidBlock2DCrossAttn", "UNetMidBlock2D"

NORM_GROUPS = 32
UNET_NORM_EPS = 1e-5
VAE_NORM_EPS = 1e-6
TEXT_EPS = 1e-5
HEAD_DIM = 64
SD1_HEADS = 8
SCALING = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}
SAMPLE_SIZE = {"sd1": 64, "sd2": 64, "sdxl": 128}
TEXT_KINDS = {"clip-l": ("quick_gelu", 49407), "openclip-h": ("gelu", 0), "openclip-bigg": ("gelu", 0)}


# ============================================================================ U-Net layout
@dataclass
class Block:
    """One U-Net level as sdcpp's native config describes it."""
    channels: int
    resnets: int
    depths: list[int]            # transformer layers after resnet j (0 = no attention)
    resample: bool               # downsampler (down blocks) / upsampler (up blocks)

    @property
    def has_attention(self) -> bool:
        return any(self.depths)


@dataclass
class UnetLayout:
    down: list[Block]
    up: list[Block]
    mid_type: Optional[str]      # MID_XA | MID_RES | None
    mid_depth: int
    in_channels: int
    out_channels: int
    time_proj_dim: int
    time_embed_dim: int
    cross_attention_dim: Optional[int]
    use_linear_projection: bool
    add_in_dim: Optional[int]    # add_embedding input (pooled + 6 * time dim), None without


_I = r"(\d+)"
_RE_LAYER = re.compile(rf"(down|up)_blocks\.{_I}\.(resnets|attentions)\.{_I}\.")
_RE_SAMPLER = re.compile(rf"(down|up)_blocks\.{_I}\.(downsamplers|upsamplers)\.0\.")
_RE_DEPTH = re.compile(rf"(down|up)_blocks\.{_I}\.attentions\.{_I}\.transformer_blocks\.{_I}\.")
_RE_MID = re.compile(rf"mid_block\.(resnets|attentions)\.{_I}\.")
_RE_MID_DEPTH = re.compile(rf"mid_block\.attentions\.0\.transformer_blocks\.{_I}\.")


class _Ctx:
    """Error helpers that name the file and the tensor (canonical + original spelling)."""

    def __init__(self, path: Optional[Path], origin: dict[str, str]):
        self.path, self.origin = path, origin

    def shown(self, canonical: str) -> str:
        o = self.origin.get(canonical)
        return f"{canonical} (stored as {o})" if o and o != canonical else canonical

    def unknown(self, msg: str, canonical: Optional[str] = None) -> UnknownArchitectureError:
        return UnknownArchitectureError(msg, file=self.path, tensor=self.shown(canonical) if canonical else None)

    def missing(self, canonical: str, msg: str = "tensor required by the inferred layout is missing") -> MissingTensorError:
        return MissingTensorError(msg, file=self.path, tensor=canonical)


def _consecutive(ids: set[int]) -> bool:
    return ids == set(range(len(ids)))


def _shape(t: dict[str, TensorRecord], name: str, ctx: _Ctx, prefix: str) -> tuple[int, ...]:
    if name not in t:
        raise ctx.missing(prefix + name)
    return tuple(t[name].shape)


def _first_name(t: dict[str, TensorRecord], start: str) -> Optional[str]:
    return next((k for k in sorted(t) if k.startswith(start)), None)


def _unet_layout(u: dict[str, TensorRecord], ctx: _Ctx) -> UnetLayout:
    P = "unet."
    resnets: dict[tuple[str, int], set[int]] = defaultdict(set)
    attns: dict[tuple[str, int], set[int]] = defaultdict(set)
    samplers: set[tuple[str, int]] = set()
    depth: dict[tuple[str, int, int], set[int]] = defaultdict(set)
    mid: dict[str, set[int]] = defaultdict(set)
    mid_depth: set[int] = set()
    for name in u:
        if m := _RE_LAYER.match(name):
            side, i, what, j = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
            (resnets if what == "resnets" else attns)[(side, i)].add(j)
            if d := _RE_DEPTH.match(name):
                depth[(side, i, j)].add(int(d.group(4)))
        elif m := _RE_SAMPLER.match(name):
            samplers.add((m.group(1), int(m.group(2))))
        elif m := _RE_MID.match(name):
            mid[m.group(1)].add(int(m.group(2)))
            if d := _RE_MID_DEPTH.match(name):
                mid_depth.add(int(d.group(1)))

    levels = {s: {i for (side, i) in list(resnets) + list(attns) + list(samplers) if side == s} for s in ("down", "up")}
    n = len(levels["down"])
    if n == 0:
        raise ctx.unknown("U-Net has no down blocks", P + (_first_name(u, "") or "conv_in.weight"))
    for s in ("down", "up"):
        if not _consecutive(levels[s]) or len(levels[s]) != n:
            bad = _first_name(u, f"{s}_blocks.{max(levels[s] or {0})}.")
            raise ctx.unknown(f"U-Net {s} blocks {sorted(levels[s])} do not match {n} levels", P + (bad or ""))

    c0 = _shape(u, "conv_in.weight", ctx, P)
    in_ch, out_ch = c0[1], _shape(u, "conv_out.weight", ctx, P)[0]

    def blocks(side: str) -> list[Block]:
        out = []
        for i in range(n):
            r, a = resnets[(side, i)], attns[(side, i)]
            where = P + (_first_name(u, f"{side}_blocks.{i}.") or f"{side}_blocks.{i}")
            if not r or not _consecutive(r):
                raise ctx.unknown(f"U-Net {side} block {i} has resnets {sorted(r)}", where)
            if a and a != r:
                raise ctx.unknown(f"U-Net {side} block {i}: attentions {sorted(a)} do not pair with resnets {sorted(r)}", where)
            depths = []
            for j in range(len(r)):
                d = depth[(side, i, j)]
                if j in a and (not d or not _consecutive(d)):
                    raise ctx.unknown(f"U-Net {side} block {i} attention {j} has transformer blocks {sorted(d)}",
                                      P + (_first_name(u, f"{side}_blocks.{i}.attentions.{j}.") or ""))
                depths.append(len(d) if j in a else 0)
            ch = _shape(u, f"{side}_blocks.{i}.resnets.0.conv1.weight", ctx, P)[0]
            out.append(Block(ch, len(r), depths, (side, i) in samplers))
        return out

    down, up = blocks("down"), blocks("up")
    for i in range(n):
        if down[i].resample != (i < n - 1):
            raise ctx.unknown(f"U-Net down block {i} {'has' if down[i].resample else 'lacks'} a downsampler",
                              P + (_first_name(u, f"down_blocks.{i}.") or ""))
        if up[i].resample != (i < n - 1):
            raise ctx.unknown(f"U-Net up block {i} {'has' if up[i].resample else 'lacks'} an upsampler",
                              P + (_first_name(u, f"up_blocks.{i}.") or ""))
        if up[i].resnets != down[n - 1 - i].resnets + 1:
            raise ctx.unknown(f"U-Net up block {i} has {up[i].resnets} resnets, expected "
                              f"{down[n - 1 - i].resnets + 1} (down block {n - 1 - i} has {down[n - 1 - i].resnets})",
                              P + f"up_blocks.{i}.resnets.0.conv1.weight")
        if up[i].channels != down[n - 1 - i].channels:
            raise ctx.unknown(f"U-Net up block {i} has {up[i].channels} channels, down block {n - 1 - i} "
                              f"{down[n - 1 - i].channels}", P + f"up_blocks.{i}.resnets.0.conv1.weight")
    if c0[0] != down[0].channels:
        raise ctx.unknown(f"conv_in gives {c0[0]} channels, down block 0 has {down[0].channels}", P + "conv_in.weight")

    nr, na = len(mid["resnets"]), len(mid["attentions"])
    if (nr, na) == (2, 1) and _consecutive(mid["resnets"]) and mid["attentions"] == {0}:
        mid_type = MID_XA
        if not mid_depth or not _consecutive(mid_depth):
            raise ctx.unknown(f"U-Net mid attention has transformer blocks {sorted(mid_depth)}",
                              P + (_first_name(u, "mid_block.attentions.0.") or ""))
    elif (nr, na) == (1, 0) and mid["resnets"] == {0}:
        mid_type = MID_RES
    elif (nr, na) == (0, 0):
        mid_type = None
    else:
        raise ctx.unknown(f"U-Net mid block with resnets {sorted(mid['resnets'])} and attentions "
                          f"{sorted(mid['attentions'])} is not a known kind", P + (_first_name(u, "mid_block.") or ""))

    k_name = next((k for k in sorted(u) if k.endswith("attn2.to_k.weight")), None)
    p_name = next((k for k in sorted(u) if k.endswith(".proj_in.weight")), None)
    te = _shape(u, "time_embedding.linear_1.weight", ctx, P)
    add = u.get("add_embedding.linear_1.weight")
    return UnetLayout(down=down, up=up, mid_type=mid_type, mid_depth=len(mid_depth) if mid_type == MID_XA else 0,
                      in_channels=in_ch, out_channels=out_ch, time_proj_dim=te[1], time_embed_dim=te[0],
                      cross_attention_dim=u[k_name].shape[1] if k_name else None,
                      use_linear_projection=bool(p_name) and len(u[p_name].shape) == 2,
                      add_in_dim=add.shape[1] if add is not None else None)


# ---------------------------------------------------------------------------- expected names
def _pw(base: str, *mods: str) -> list[str]:
    """weight and bias names of modules under ``base`` ("" = top level)."""
    pre = base + "." if base else ""
    return [f"{pre}{m}.{p}" for m in mods for p in ("weight", "bias")]


def _resnet_names(base: str, shortcut: bool) -> list[str]:
    return _pw(base, "norm1", "conv1", "time_emb_proj", "norm2", "conv2") + (_pw(base, "conv_shortcut") if shortcut else [])


def _attention_names(base: str, depth: int) -> list[str]:
    out = _pw(base, "norm", "proj_in", "proj_out")
    for k in range(depth):
        tb = f"{base}.transformer_blocks.{k}"
        out += _pw(tb, "norm1", "norm2", "norm3", "attn1.to_out.0", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
        out += [f"{tb}.{a}.{w}.weight" for a in ("attn1", "attn2") for w in ("to_q", "to_k", "to_v")]
    return out


def expected_unet_names(lay: UnetLayout) -> dict[str, Optional[int]]:
    """Every canonical U-Net tensor of a layout -> expected input channels of resnet conv1
    weights (None for other tensors). Channel bookkeeping as diffusers builds the blocks."""
    names: dict[str, Optional[int]] = {}

    def add(items: list[str]) -> None:
        names.update(dict.fromkeys(items))

    def add_resnet(base: str, cin: int, cout: int) -> None:
        add(_resnet_names(base, cin != cout))
        names[base + ".conv1.weight"] = cin

    add(_pw("", "conv_in", "time_embedding.linear_1", "time_embedding.linear_2", "conv_norm_out", "conv_out"))
    if lay.add_in_dim is not None:
        add(_pw("add_embedding", "linear_1", "linear_2"))
    n = len(lay.down)
    ch_out = lay.down[0].channels
    for i, b in enumerate(lay.down):
        ch_in, ch_out = ch_out, b.channels
        for j in range(b.resnets):
            add_resnet(f"down_blocks.{i}.resnets.{j}", ch_in if j == 0 else ch_out, ch_out)
            if b.depths[j]:
                add(_attention_names(f"down_blocks.{i}.attentions.{j}", b.depths[j]))
        if b.resample:
            add(_pw(f"down_blocks.{i}.downsamplers.0", "conv"))
    c_mid = lay.down[-1].channels
    if lay.mid_type is not None:
        add_resnet("mid_block.resnets.0", c_mid, c_mid)
    if lay.mid_type == MID_XA:
        add(_attention_names("mid_block.attentions.0", lay.mid_depth))
        add_resnet("mid_block.resnets.1", c_mid, c_mid)
    rev = [b.channels for b in reversed(lay.down)]
    prev = rev[0]
    for i, b in enumerate(lay.up):
        out_c, skip_in = rev[i], rev[min(i + 1, n - 1)]
        for j in range(b.resnets):
            res_in = prev if j == 0 else out_c
            skip = skip_in if j == b.resnets - 1 else out_c
            add_resnet(f"up_blocks.{i}.resnets.{j}", res_in + skip, out_c)
            if b.depths[j]:
                add(_attention_names(f"up_blocks.{i}.attentions.{j}", b.depths[j]))
        if b.resample:
            add(_pw(f"up_blocks.{i}.upsamplers.0", "conv"))
        prev = out_c
    return names


def _vae_layout(v: dict[str, TensorRecord], ctx: _Ctx) -> dict:
    P = "vae."
    levels: dict[int, set[int]] = defaultdict(set)
    for name in v:
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", name):
            levels[int(m.group(1))].add(int(m.group(2)))
    if not levels or not _consecutive(set(levels)):
        raise ctx.unknown(f"VAE encoder levels {sorted(levels)}", P + (_first_name(v, "") or "encoder.conv_in.weight"))
    n = len(levels)
    lpb = len(levels[0])
    for i, r in levels.items():
        if r != set(range(lpb)):
            raise ctx.unknown(f"VAE encoder block {i} has resnets {sorted(r)}", P + f"encoder.down_blocks.{i}.resnets.0.conv1.weight")
    channels = [_shape(v, f"encoder.down_blocks.{i}.resnets.0.conv1.weight", ctx, P)[0] for i in range(n)]
    return dict(block_out_channels=channels, layers_per_block=lpb,
                in_channels=_shape(v, "encoder.conv_in.weight", ctx, P)[1],
                out_channels=_shape(v, "decoder.conv_out.weight", ctx, P)[0],
                latent_channels=_shape(v, "decoder.conv_in.weight", ctx, P)[1],
                mid_attention=any(k.startswith("encoder.mid_block.attentions.0.") for k in v),
                use_quant_conv=any(k.startswith("quant_conv.") for k in v),
                use_post_quant_conv=any(k.startswith("post_quant_conv.") for k in v))


def expected_vae_names(cfg: dict) -> dict[str, Optional[int]]:
    names: list[str] = []
    ch = cfg["block_out_channels"]
    n, lpb = len(ch), cfg["layers_per_block"]
    names += _pw("encoder", "conv_in", "conv_norm_out", "conv_out") + _pw("decoder", "conv_in", "conv_norm_out", "conv_out")
    prev = ch[0]
    for i in range(n):
        for j in range(lpb):
            cin = prev if j == 0 else ch[i]
            b = f"encoder.down_blocks.{i}.resnets.{j}"
            names += _pw(b, "norm1", "conv1", "norm2", "conv2") + (_pw(b, "conv_shortcut") if cin != ch[i] else [])
        if i < n - 1:
            names += _pw(f"encoder.down_blocks.{i}.downsamplers.0", "conv")
        prev = ch[i]
    rev = ch[::-1]
    prev = rev[0]
    for i in range(n):
        for j in range(lpb + 1):
            cin = prev if j == 0 else rev[i]
            b = f"decoder.up_blocks.{i}.resnets.{j}"
            names += _pw(b, "norm1", "conv1", "norm2", "conv2") + (_pw(b, "conv_shortcut") if cin != rev[i] else [])
        if i < n - 1:
            names += _pw(f"decoder.up_blocks.{i}.upsamplers.0", "conv")
        prev = rev[i]
    for side in ("encoder", "decoder"):
        names += _pw(f"{side}.mid_block.resnets.0", "norm1", "conv1", "norm2", "conv2")
        names += _pw(f"{side}.mid_block.resnets.1", "norm1", "conv1", "norm2", "conv2")
        if cfg["mid_attention"]:
            names += _pw(f"{side}.mid_block.attentions.0", "group_norm", "to_q", "to_k", "to_v", "to_out.0")
    if cfg["use_quant_conv"]:
        names += _pw("", "quant_conv")
    if cfg["use_post_quant_conv"]:
        names += _pw("", "post_quant_conv")
    return dict.fromkeys(names)


def _text_layout(t: dict[str, TensorRecord], ctx: _Ctx, prefix: str) -> dict:
    layers = {int(m.group(1)) for k in t if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k))}
    if not layers or not _consecutive(layers):
        raise ctx.unknown(f"text encoder layers {sorted(layers)}", prefix + (_first_name(t, "") or ""))
    tok = _shape(t, "text_model.embeddings.token_embedding.weight", ctx, prefix)
    proj = t.get("text_projection.weight")
    return dict(layers=len(layers), width=tok[1], vocab_size=tok[0],
                max_positions=_shape(t, "text_model.embeddings.position_embedding.weight", ctx, prefix)[0],
                intermediate=_shape(t, "text_model.encoder.layers.0.mlp.fc1.weight", ctx, prefix)[0],
                projection_dim=proj.shape[0] if proj is not None else 0)


def expected_text_names(cfg: dict) -> dict[str, Optional[int]]:
    names = ["text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight"]
    names += _pw("text_model", "final_layer_norm")
    for i in range(cfg["layers"]):
        names += _pw(f"text_model.encoder.layers.{i}", "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2",
                     "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
    if cfg["projection_dim"]:
        names.append("text_projection.weight")
    return {k: None for k in names}


def _check_complete(tensors: dict[str, TensorRecord], prefix: str, expected: dict[str, Optional[int]],
                    ctx: _Ctx) -> list[str]:
    """Raise MissingTensorError for the first missing tensor; check resnet input widths;
    return the canonical names present but not expected (reported as unknown)."""
    missing = sorted(set(expected) - set(tensors))
    if missing:
        name = prefix + missing[0]
        ldm = diffusers_unet_to_ldm(missing[0]) if prefix == "unet." else []
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        hint = f"; LDM spelling {ldm[0]}" if ldm else ""
        raise ctx.missing(name, f"tensor required by the inferred layout is missing{hint}{more}")
    for name, cin in expected.items():
        if cin is not None and len(tensors[name].shape) == 4 and tensors[name].shape[1] != cin:
            raise ctx.unknown(f"expected {cin} input channels, found shape {list(tensors[name].shape)}", prefix + name)
    return sorted(set(tensors) - set(expected))


# ============================================================================ ModelInfo
@dataclass
class ModelInfo:
    """What a checkpoint holds. ``tensors`` are canonical names -> records (no bytes read)."""
    path: Optional[Path]
    layout: str                            # "single_file" | "diffusers"
    family: str                            # "sd1" | "sd2" | "sdxl"
    variant: str                           # "standard" | "ssd-1b" | "vega" | "bk-sdm-*" | "custom"
    unet: dict                             # diffusers UNet2DConditionModel config terms
    text_encoders: list[dict]
    vae: Optional[dict]
    prediction_type: Optional[str]
    tensors: dict[str, TensorRecord]
    ignored: list[str]
    unknown: list[str]
    origin: dict[str, str] = field(default_factory=dict)    # canonical -> stored key
    notes: list[str] = field(default_factory=list)          # config disagreements, defaults used
    layout_detail: Optional[UnetLayout] = None

    def with_vae(self, tensors: dict[str, TensorRecord]) -> "ModelInfo":
        """This ModelInfo over `tensors` (whose vae.* came from a separate VAE file), with the
        VAE description re-inferred from them."""
        import dataclasses

        notes: list[str] = []
        vae, _ = _vae(tensors, self.family, _Ctx(self.path, {k: k for k in tensors}), {}, notes)
        return dataclasses.replace(self, tensors=tensors, vae=vae, notes=self.notes + notes)

    # ------------------------------------------------------------------ native configs
    def unet_native_config(self) -> dict:
        """docs/internals.md §4 U-Net dict (everything explicit)."""
        lay, u = self.layout_detail, self.unet
        heads = _as_list(u["attention_head_dim"], len(lay.down))
        mid_kind = {MID_XA: "cross_attn", MID_RES: "resnet", None: "none"}[lay.mid_type]
        add = None
        if lay.add_in_dim is not None:
            add = {"type": "text_time", "time_embed_dim": u["addition_time_embed_dim"], "in_dim": lay.add_in_dim}
        n = len(lay.down)
        return {
            "in_channels": lay.in_channels, "out_channels": lay.out_channels,
            "block_out_channels": [b.channels for b in lay.down],
            "norm_groups": u["norm_num_groups"], "norm_eps": u["norm_eps"],
            "time_proj_dim": lay.time_proj_dim, "time_embed_dim": lay.time_embed_dim,
            "flip_sin_to_cos": True, "freq_shift": 0,
            "cross_attention_dim": lay.cross_attention_dim, "use_linear_projection": lay.use_linear_projection,
            "down": [{"resnets": b.resnets, "depths": list(b.depths), "heads": int(heads[i]), "downsample": b.resample}
                     for i, b in enumerate(lay.down)],
            "mid": {"type": mid_kind, "depth": lay.mid_depth, "heads": int(heads[-1])},
            "up": [{"resnets": b.resnets, "depths": list(b.depths), "heads": int(heads[n - 1 - i]), "upsample": b.resample}
                   for i, b in enumerate(lay.up)],
            "addition_embed": add,
        }

    def text_encoder_native_configs(self) -> list[dict]:
        return [{"hidden_size": t["width"], "intermediate_size": t["intermediate"], "num_heads": t["heads"],
                 "num_layers": t["layers"], "vocab_size": t["vocab_size"], "max_positions": t["max_positions"],
                 "act": t["act"], "eps": t["eps"], "projection_dim": t["projection_dim"]} for t in self.text_encoders]

    def vae_native_config(self) -> Optional[dict]:
        if self.vae is None:
            return None
        v = self.vae
        return {"block_out_channels": list(v["block_out_channels"]), "layers_per_block": v["layers_per_block"],
                "latent_channels": v["latent_channels"], "in_channels": v["in_channels"],
                "out_channels": v["out_channels"], "norm_groups": v["norm_num_groups"], "norm_eps": v["norm_eps"],
                "mid_attention": v["mid_attention"], "use_quant_conv": v["use_quant_conv"],
                "use_post_quant_conv": v["use_post_quant_conv"]}

    # ------------------------------------------------------------------ reporting
    def component(self, prefix: str) -> dict[str, TensorRecord]:
        p = prefix + "."
        return {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p)}

    @property
    def inpainting(self) -> bool:
        """A 9-channel inpainting U-Net (latent + mask + masked-image latent in conv_in)."""
        return int(self.unet.get("in_channels", 4)) == 9

    def summary(self) -> dict:
        """JSON-able description (no records)."""
        return {"path": str(self.path) if self.path else None, "layout": self.layout, "family": self.family,
                "variant": self.variant, "inpainting": self.inpainting, "prediction_type": self.prediction_type,
                "unet": self.unet,
                "text_encoders": self.text_encoders, "vae": self.vae, "tensors": len(self.tensors),
                "ignored": len(self.ignored), "unknown": list(self.unknown), "notes": list(self.notes)}

    def describe(self) -> str:
        u = self.unet
        lines = [f"{self.path}: {self.family} ({self.variant}{', inpainting' if self.inpainting else ''}), "
                 f"{self.layout}, {len(self.tensors)} tensors",
                 f"  unet: channels {u['block_out_channels']}, down {u['down_block_types']}, "
                 f"layers {u['layers_per_block']}, depth {u['transformer_layers_per_block']}"
                 + (f" / up {u['reverse_transformer_layers_per_block']}" if u["reverse_transformer_layers_per_block"] else "")
                 + f", mid {u['mid_block_type']}, cross {u['cross_attention_dim']}"]
        for t in self.text_encoders:
            lines.append(f"  {t['name']}: {t['kind']} {t['layers']} layers x {t['width']}, {t['heads']} heads"
                         + (f", projection {t['projection_dim']}" if t["projection_dim"] else ""))
        if self.vae:
            lines.append(f"  vae: channels {self.vae['block_out_channels']}, scaling {self.vae['scaling_factor']}")
        lines.append(f"  prediction: {self.prediction_type or 'unknown (pass prediction_type)'}")
        if self.unknown:
            lines.append(f"  unknown keys ({len(self.unknown)}): {', '.join(self.unknown[:5])}"
                         + (" ..." if len(self.unknown) > 5 else ""))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _as_list(v: Any, n: int) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v] * n


def _compact(entries: list) -> Union[int, list]:
    """[1, 1, 1] -> 1; per-layer lists whose values agree -> int (diffusers' accepted forms)."""
    if all(isinstance(e, int) for e in entries) and len(set(entries)) == 1:
        return entries[0]
    return entries


def _uniform(depths: list[int]) -> Union[int, list[int]]:
    return depths[0] if len(set(depths)) == 1 else list(depths)


# ============================================================================ inference
def _family(lay: UnetLayout, comps: set[str]) -> str:
    if lay.add_in_dim is not None or "text_encoder_2" in comps:
        return "sdxl"
    return "sd2" if lay.use_linear_projection else "sd1"


def _variant(family: str, lay: UnetLayout, reverse_needed: bool) -> str:
    n = len(lay.down)
    down_xa = [b.has_attention for b in lay.down]
    up_xa = [b.has_attention for b in lay.up]
    lpb = {b.resnets for b in lay.down}
    all_depth1 = all(d in (0, 1) for b in lay.down + lay.up for d in b.depths) and lay.mid_depth in (0, 1)
    uniform_attn = all(len({d for d in b.depths}) == 1 for b in lay.down + lay.up)
    if family in ("sd1", "sd2"):
        sd_shape = n == 4 and down_xa == [True, True, True, False] and up_xa == [False, True, True, True]
        if sd_shape and all_depth1 and uniform_attn:
            if lpb == {2} and lay.mid_type == MID_XA:
                return "standard"
            if lpb == {1} and lay.mid_type == MID_XA:
                return "bk-sdm-base"
            if lpb == {1} and lay.mid_type is None:
                return "bk-sdm-small"
        if (n == 3 and all(down_xa) and all(up_xa) and lpb == {1} and lay.mid_type is None
                and all_depth1 and uniform_attn):
            return "bk-sdm-tiny"
        return "custom"
    xl_shape = n == 3 and down_xa == [False, True, True] and up_xa == [True, True, False] and lpb == {2}
    if not xl_shape:
        return "custom"
    down_uniform = all(len(set(b.depths)) == 1 for b in lay.down)
    if lay.mid_type == MID_XA and down_uniform and not reverse_needed and lay.mid_depth == lay.down[-1].depths[0]:
        return "standard"
    if lay.mid_type == MID_RES and down_uniform:
        return "ssd-1b" if reverse_needed else "vega"
    return "custom"


def _unet_config(lay: UnetLayout, family: str, te2_proj: Optional[int], notes: list[str]) -> dict:
    n = len(lay.down)
    # transformer_layers_per_block: entry per down block; blocks without attention get the
    # value diffusers would need there (the mid depth for the last block, else 1).
    down_entries = []
    for i, b in enumerate(lay.down):
        if b.has_attention:
            down_entries.append(_uniform(b.depths))
        else:
            down_entries.append(lay.mid_depth if (i == n - 1 and lay.mid_type == MID_XA) else 1)
    if lay.mid_type == MID_XA and isinstance(down_entries[-1], int) and down_entries[-1] != lay.mid_depth:
        notes.append(f"mid-block depth {lay.mid_depth} differs from the last down block's "
                     f"{down_entries[-1]}: not expressible in a diffusers config (the native config is exact)")
    up_entries = [(_uniform(b.depths) if b.has_attention else 1) for b in lay.up]
    mirrored = list(reversed(down_entries))
    reverse_needed = any(isinstance(e, list) for e in down_entries) or any(
        lay.up[i].has_attention and up_entries[i] != mirrored[i] for i in range(n))
    heads = [SD1_HEADS] * n if family == "sd1" else [max(1, b.channels // HEAD_DIM) for b in lay.down]
    lpb = [b.resnets for b in lay.down]
    time_dim = None
    if lay.add_in_dim is not None:
        pooled = te2_proj
        if pooled is None and lay.add_in_dim == 2816:
            pooled = 1280                                      # unet-only SDXL file
        if pooled is not None and (lay.add_in_dim - pooled) % 6 == 0 and lay.add_in_dim > pooled:
            time_dim = (lay.add_in_dim - pooled) // 6
        else:
            notes.append(f"addition_time_embed_dim not determinable (add-embedding input {lay.add_in_dim})")
    return {
        "in_channels": lay.in_channels, "out_channels": lay.out_channels,
        "block_out_channels": [b.channels for b in lay.down],
        "down_block_types": [XA_DOWN if b.has_attention else DOWN for b in lay.down],
        "up_block_types": [XA_UP if b.has_attention else UP for b in lay.up],
        "layers_per_block": lpb[0] if len(set(lpb)) == 1 else lpb,
        "transformer_layers_per_block": _compact(down_entries),
        "reverse_transformer_layers_per_block": up_entries if reverse_needed else None,
        "mid_block_type": lay.mid_type,
        "cross_attention_dim": lay.cross_attention_dim,
        "attention_head_dim": heads[0] if family == "sd1" else heads,
        "num_attention_heads": None,
        "use_linear_projection": lay.use_linear_projection,
        "addition_embed_type": "text_time" if lay.add_in_dim is not None else None,
        "addition_time_embed_dim": time_dim,
        "projection_class_embeddings_input_dim": lay.add_in_dim,
        "sample_size": SAMPLE_SIZE[family],
        "norm_num_groups": NORM_GROUPS, "norm_eps": UNET_NORM_EPS,
        "time_embedding_dim": lay.time_embed_dim,
    }, reverse_needed


def normalize_unet_config(cfg: dict) -> dict:
    """Diffusers' many accepted forms -> one comparable form (used to confirm configs; tests).

    * ``layers_per_block``: int -> per-block list;
    * ``transformer_layers_per_block``: int / per-block / nested -> per-down-block per-layer lists,
      only for cross-attention blocks (None elsewhere: diffusers ignores those entries);
    * ``reverse_transformer_layers_per_block``: None -> derived from the reversed down entries as
      diffusers does; expanded to per-up-block per-layer lists (cross-attention blocks only);
    * ``attention_head_dim`` / ``num_attention_heads``: the number of heads per block
      (``num_attention_heads or attention_head_dim``), int -> per-block list.
    """
    n = len(cfg["block_out_channels"])
    lpb = _as_list(cfg.get("layers_per_block", 2), n)
    down_t, up_t = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    tl = _as_list(cfg.get("transformer_layers_per_block", 1), n)
    rev = cfg.get("reverse_transformer_layers_per_block")
    rev = list(reversed(tl)) if rev is None else list(rev)
    rlpb = lpb[::-1]
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)

    def expand(entry, k):
        return list(entry) if isinstance(entry, (list, tuple)) else [entry] * k

    return {
        "block_out_channels": list(cfg["block_out_channels"]), "down_block_types": down_t, "up_block_types": up_t,
        "layers_per_block": lpb,
        "transformer_layers_per_block": [expand(tl[i], lpb[i]) if "CrossAttn" in down_t[i] else None for i in range(n)],
        "reverse_transformer_layers_per_block": [expand(rev[i], rlpb[i] + 1) if "CrossAttn" in up_t[i] else None
                                                 for i in range(n)],
        "mid_block_type": cfg.get("mid_block_type", MID_XA),
        "cross_attention_dim": cfg.get("cross_attention_dim"),
        "heads": _as_list(heads, n),
        "use_linear_projection": bool(cfg.get("use_linear_projection", False)),
        "addition_embed_type": cfg.get("addition_embed_type"),
        "addition_time_embed_dim": cfg.get("addition_time_embed_dim") if cfg.get("addition_embed_type") else None,
        "projection_class_embeddings_input_dim":
            cfg.get("projection_class_embeddings_input_dim") if cfg.get("addition_embed_type") else None,
        "in_channels": cfg.get("in_channels", 4), "out_channels": cfg.get("out_channels", 4),
    }


def _text_encoders(tensors: dict, family: str, ctx: _Ctx, configs: dict, notes: list[str]) -> tuple[list[dict], list[str]]:
    out, extra = [], []
    for comp in ("text_encoder", "text_encoder_2"):
        p = comp + "."
        t = {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}
        if not t:
            continue
        lay = _text_layout(t, ctx, p)
        kind = "openclip-bigg" if comp == "text_encoder_2" else ("openclip-h" if family == "sd2" else "clip-l")
        act, pad = TEXT_KINDS[kind]
        heads = max(1, lay["width"] // HEAD_DIM)
        cfg = configs.get(comp) or {}
        if cfg.get("num_attention_heads") and lay["width"] % int(cfg["num_attention_heads"]) == 0:
            if int(cfg["num_attention_heads"]) != heads:
                notes.append(f"{comp}: {cfg['num_attention_heads']} heads from config.json (default {heads})")
            heads = int(cfg["num_attention_heads"])
        act = cfg.get("hidden_act", act)
        eps = float(cfg.get("layer_norm_eps", TEXT_EPS))
        for key, val in (("hidden_size", lay["width"]), ("num_hidden_layers", lay["layers"]),
                         ("intermediate_size", lay["intermediate"])):
            if key in cfg and int(cfg[key]) != val:
                notes.append(f"{comp}: config {key}={cfg[key]} disagrees with the tensors ({val}); tensors used")
        out.append(dict(name=comp, kind=kind, act=act, heads=heads, pad_id=pad, eps=eps, **lay))
        extra += [p + k for k in _check_complete(t, p, expected_text_names(lay), ctx)]
    return out, extra


def _vae(tensors: dict, family: str, ctx: _Ctx, configs: dict, notes: list[str]) -> tuple[Optional[dict], list[str]]:
    v = {k[4:]: r for k, r in tensors.items() if k.startswith("vae.")}
    if not v:
        return None, []
    lay = _vae_layout(v, ctx)
    extra = ["vae." + k for k in _check_complete(v, "vae.", expected_vae_names(lay), ctx)]
    cfg = configs.get("vae") or {}
    lay["scaling_factor"] = float(cfg.get("scaling_factor", SCALING[family]))
    lay["norm_num_groups"] = int(cfg.get("norm_num_groups", NORM_GROUPS))
    lay["norm_eps"] = VAE_NORM_EPS
    if "block_out_channels" in cfg and list(cfg["block_out_channels"]) != lay["block_out_channels"]:
        notes.append(f"vae: config block_out_channels {cfg['block_out_channels']} disagree with the tensors")
    return lay, extra


def _confirm_unet(unet: dict, cfg: dict, notes: list[str]) -> None:
    if not cfg or "block_out_channels" not in cfg:
        return
    try:
        a, b = normalize_unet_config(unet), normalize_unet_config(cfg)
    except Exception as e:   # a malformed config only loses its confirmation
        notes.append(f"unet: config.json not understood ({e})")
        return
    for k in a:
        if k != "heads" and a[k] != b[k]:
            notes.append(f"unet: config {k}={b[k]} disagrees with the tensors ({a[k]}); tensors used")


def inspect(source: Union[str, os.PathLike, Any]) -> ModelInfo:
    """Infer the architecture of a checkpoint file, diffusers folder, Hub id or ``Source``."""
    if isinstance(source, (str, os.PathLike)):
        from .io import open_source
        source = open_source(source)
    path = Path(source.path) if getattr(source, "path", None) is not None else None
    configs = dict(getattr(source, "configs", {}) or {})
    from .naming.controlnet import looks_like_controlnet

    comps = getattr(source, "components", {}) or {}
    if len(comps) == 1 and looks_like_controlnet(next(iter(comps.values()))):
        raise UnknownArchitectureError("this is a ControlNet, not a model: load it with sdcpp.load_controlnet(...) "
                                       "and pass it to txt2img/img2img as control=[(controlnet, image, scale)]",
                                       file=path)
    names = canonicalize(source)
    ctx = _Ctx(path, names.origin)
    tensors = names.tensors
    unet_t = {k[5:]: v for k, v in tensors.items() if k.startswith("unet.")}
    if not unet_t:
        raise ctx.unknown("no U-Net tensors found (not an SD1/SD2/SDXL checkpoint, or an unsupported naming)",
                          names.unknown[0] if names.unknown else "unet.conv_in.weight")
    notes: list[str] = []
    lay = _unet_layout(unet_t, ctx)
    comps = {k.split(".", 1)[0] for k in tensors}
    family = _family(lay, comps)
    te2 = tensors.get("text_encoder_2.text_projection.weight")
    unet, reverse_needed = _unet_config(lay, family, te2.shape[0] if te2 is not None else None, notes)
    ucfg = configs.get("unet") or {}
    for key in ("sample_size", "norm_num_groups", "norm_eps"):
        if key in ucfg and ucfg[key] is not None:
            unet[key] = ucfg[key]
    heads_cfg = ucfg.get("num_attention_heads") or ucfg.get("attention_head_dim")
    if heads_cfg is not None:
        hc = _as_list(heads_cfg, len(lay.down))
        if len(hc) == len(lay.down) and all(int(h) > 0 and b.channels % int(h) == 0 for h, b in zip(hc, lay.down)):
            if hc != _as_list(unet["attention_head_dim"], len(lay.down)):
                notes.append(f"unet: heads {heads_cfg} from config.json (default {unet['attention_head_dim']})")
                unet["attention_head_dim"] = heads_cfg
    _confirm_unet(unet, ucfg, notes)
    extra = ["unet." + k for k in _check_complete(unet_t, "unet.", expected_unet_names(lay), ctx)]
    text_encoders, extra_t = _text_encoders(tensors, family, ctx, configs, notes)
    vae, extra_v = _vae(tensors, family, ctx, configs, notes)
    unknown = sorted(set(names.unknown) | {names.origin[k] for k in extra + extra_t + extra_v})
    variant = _variant(family, lay, reverse_needed)

    prediction = "epsilon" if family != "sd2" else None
    sched = configs.get("scheduler") or {}
    if sched.get("prediction_type"):
        prediction = sched["prediction_type"]
    if any(k in ("v_pred",) for k in names.ignored):
        prediction = "v_prediction"
    layout = getattr(source, "layout", "single_file")
    return ModelInfo(path=path, layout=layout, family=family, variant=variant, unet=unet,
                     text_encoders=text_encoders, vae=vae, prediction_type=prediction, tensors=tensors,
                     ignored=list(names.ignored), unknown=unknown, origin=names.origin, notes=notes,
                     layout_detail=lay)


__all__ = ["inspect", "ModelInfo", "UnetLayout", "Block", "normalize_unet_config", "expected_unet_names",
           "expected_vae_names", "expected_text_names"]
