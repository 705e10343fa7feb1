"""Small U-Nets with the REAL topologies of the supported models, for parity tests.

`diffusers_config(name)` shrinks a reference config (widths, groups, heads, context width,
add-embedding width) but keeps its topology: block types, layers per block, transformer
depths (nested / asymmetric lists included) and mid block type. `native_config(dc)` is the
small diffusers-config -> native-config conversion (docs/internals.md §4) the tests use; the
project's real one is ModelInfo.unet_native_config() in sdcpp.arch.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

# The published reference configs, copied into the repository (tests/fixtures/configs/README.md).
CONFIG_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "configs"

# name -> (reference file, overrides applied on top of it)
TOPOLOGIES = {
    # SD1.x: 4 levels, 2 layers, conv proj_in, cross-attn mid, 8 heads.
    "sd1": ("sd15_reference.json", {}),
    # SD2.x: SD1 topology, linear projections, head dim fixed (heads per level differ).
    "sd2": ("sd15_reference.json", {"use_linear_projection": True, "attention_head_dim": [2, 4, 4, 4]}),
    # SDXL: Down, XA, XA; depths [1, 2, 10] shrunk to [1, 2, 3]; text_time add-embedding.
    "sdxl": ("sdxl_base_reference.json", {"transformer_layers_per_block": [1, 2, 3]}),
    # SSD-1B: down [1, 2, 4], nested asymmetric reverse list (10 shrunk to 5), resnet-only mid.
    "ssd1b": ("ssd-1b.json", {"reverse_transformer_layers_per_block": [[4, 4, 5], [2, 1, 1], 1]}),
    # Segmind Vega: [1, 1, 2], resnet-only mid.
    "vega": ("segmind-vega.json", {}),
    # BK-SDM: 1 layer per down block; tiny = 3 levels all cross-attn, no mid; small = 4 levels
    # no mid; base = small + the SD1 cross-attn mid.
    "bk_tiny": ("bk-sdm-tiny.json", {}),
    "bk_small": ("bk-sdm-small.json", {}),
    "bk_base": ("bk-sdm-base.json", {}),
}


def load_reference(name: str) -> dict:
    return json.loads((CONFIG_DIR / name).read_text())


def diffusers_config(name: str, *, widths=None, groups: int = 8, cross_dim: int = 32,
                     pooled_dim: int = 24, add_time_dim: int = 8) -> dict:
    """A diffusers UNet2DConditionModel config with `name`'s topology at small widths."""
    ref_file, overrides = TOPOLOGIES[name]
    cfg = {k: copy.deepcopy(v) for k, v in load_reference(ref_file).items() if not k.startswith("_")}
    cfg.update(copy.deepcopy(overrides))
    n = len(cfg["block_out_channels"])
    if widths is None:
        widths = (32, 64, 64, 64)[:n] if n == 4 else (32, 64, 64)
    cfg["block_out_channels"] = list(widths)
    cfg["norm_num_groups"] = groups
    cfg["cross_attention_dim"] = cross_dim
    heads = cfg.get("attention_head_dim", 8)
    if isinstance(heads, list) and "attention_head_dim" not in overrides:
        # SD2/SDXL family: fixed head dim 64 -> heads = C / 64; keep >= 2 heads at small widths.
        cfg["attention_head_dim"] = [max(2, c // 16) for c in widths]
    elif not isinstance(heads, list):
        cfg["attention_head_dim"] = 2  # SD1 family: 8 heads everywhere -> 2 heads at small widths
    if cfg.get("addition_embed_type") == "text_time":
        cfg["addition_time_embed_dim"] = add_time_dim
        cfg["projection_class_embeddings_input_dim"] = pooled_dim + 6 * add_time_dim
    return cfg


def _per_block(value, n):
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def native_config(dc: dict) -> dict:
    """diffusers UNet2DConditionModel config -> the native config dict (docs/internals.md §4)."""
    boc = list(dc["block_out_channels"])
    n = len(boc)
    layers = _per_block(dc.get("layers_per_block", 2), n)
    heads = dc.get("num_attention_heads") or dc.get("attention_head_dim", 8)
    heads = _per_block(heads, n)
    depth = _per_block(dc.get("transformer_layers_per_block", 1), n)
    reverse = dc.get("reverse_transformer_layers_per_block")
    if reverse is None:
        reverse = list(reversed(depth))

    down = []
    for i, t in enumerate(dc["down_block_types"]):
        d = _per_block(depth[i], layers[i])
        attn = t.startswith("CrossAttn")
        down.append({"resnets": layers[i], "depths": [int(x) for x in d] if attn else [0] * layers[i],
                     "heads": int(heads[i]), "downsample": i < n - 1})
    up = []
    r_layers, r_heads = list(reversed(layers)), list(reversed(heads))
    for i, t in enumerate(dc["up_block_types"]):
        nl = r_layers[i] + 1
        d = _per_block(reverse[i], nl)
        attn = t.startswith("CrossAttn")
        up.append({"resnets": nl, "depths": [int(x) for x in d] if attn else [0] * nl,
                   "heads": int(r_heads[i]), "upsample": i < n - 1})
    mt = dc.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mt == "UNetMidBlock2DCrossAttn":
        md = depth[-1]
        mid = {"type": "cross_attn", "depth": int(md if isinstance(md, int) else md[0]), "heads": int(heads[-1])}
    elif mt == "UNetMidBlock2D":
        mid = {"type": "resnet"}
    elif mt is None:
        mid = {"type": "none"}
    else:
        raise ValueError(f"unsupported mid block {mt}")
    add = None
    if dc.get("addition_embed_type") == "text_time":
        add = {"type": "text_time", "time_embed_dim": int(dc["addition_time_embed_dim"]),
               "in_dim": int(dc["projection_class_embeddings_input_dim"])}
    elif dc.get("addition_embed_type") is not None:
        raise ValueError(f"unsupported addition_embed_type {dc['addition_embed_type']}")
    return {
        "in_channels": int(dc.get("in_channels", 4)), "out_channels": int(dc.get("out_channels", 4)),
        "block_out_channels": boc, "norm_groups": int(dc.get("norm_num_groups", 32)),
        "norm_eps": float(dc.get("norm_eps", 1e-5)),
        "time_proj_dim": boc[0], "time_embed_dim": int(dc.get("time_embedding_dim") or boc[0] * 4),
        "flip_sin_to_cos": bool(dc.get("flip_sin_to_cos", True)), "freq_shift": float(dc.get("freq_shift", 0)),
        "cross_attention_dim": int(dc["cross_attention_dim"]),
        "use_linear_projection": bool(dc.get("use_linear_projection", False)),
        "down": down, "mid": mid, "up": up, "addition_embed": add,
    }


def build_diffusers_unet(dc: dict, seed: int = 0):
    """A float32 diffusers UNet2DConditionModel with every parameter randomized (norms and
    biases too, with noticeable noise), in eval mode."""
    import torch
    from diffusers import UNet2DConditionModel

    from fixtures.random_init import randomize_strongly_

    torch.manual_seed(seed)
    model = UNet2DConditionModel(**dc).eval().float()
    randomize_strongly_(model, torch.Generator().manual_seed(seed + 1))
    return model


def canonical_tensors(model) -> dict:
    return {"unet." + k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
