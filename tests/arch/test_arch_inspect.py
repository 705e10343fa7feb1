"""sdcpp.arch.inspect against the diffusers/transformers models the fixtures were built from."""
from __future__ import annotations

import types

import pytest
import torch

import sdcpp
from fixtures import FAMILIES, FORMATS, custom_spec
from fixtures.specs import DOWN, MID_XA, UP, XA_DOWN, XA_UP
from sdcpp.arch import inspect, normalize_unet_config
from sdcpp.errors import MissingTensorError, UnknownArchitectureError
from sdcpp.io import read_tensors

CUSTOM = {
    # 2 levels, 1 layer per block, mid block kept: none of the named layouts
    "custom-2lvl": dict(block_out_channels=(32, 64), down_block_types=(XA_DOWN, DOWN), up_block_types=(UP, XA_UP),
                        layers_per_block=1, mid_block_type=MID_XA),
    # per-block layer counts (diffusers accepts a list): up blocks get reversed counts + 1
    "custom-lpb": dict(layers_per_block=[2, 1, 1, 2], mid_block_type=None),
}


def _diffusers_structure(unet) -> dict:
    """The native-config view of a live diffusers U-Net (read from its modules, not its config)."""
    def block(b, sampler):
        attns = getattr(b, "attentions", None)
        return {"resnets": len(b.resnets),
                "depths": [len(a.transformer_blocks) for a in attns] if attns else [0] * len(b.resnets),
                "heads": attns[0].transformer_blocks[0].attn1.heads if attns else None,
                sampler: getattr(b, sampler + "rs") is not None}
    mid = unet.mid_block
    if mid is None:
        mid_d = {"type": "none"}
    elif type(mid).__name__ == "UNetMidBlock2DCrossAttn":
        mid_d = {"type": "cross_attn", "depth": len(mid.attentions[0].transformer_blocks),
                 "heads": mid.attentions[0].transformer_blocks[0].attn1.heads}
    else:
        assert len(mid.resnets) == 1
        mid_d = {"type": "resnet"}
    add = None
    if unet.config.addition_embed_type == "text_time":
        add = {"type": "text_time", "time_embed_dim": unet.config.addition_time_embed_dim,
               "in_dim": unet.add_embedding.linear_1.in_features}
    return {"down": [block(b, "downsample") for b in unet.down_blocks], "up": [block(b, "upsample") for b in unet.up_blocks],
            "mid": mid_d, "addition_embed": add, "norm_groups": unet.conv_norm_out.num_groups,
            "norm_eps": unet.conv_norm_out.eps, "time_proj_dim": unet.time_embedding.linear_1.in_features,
            "time_embed_dim": unet.time_embedding.linear_1.out_features,
            "cross_attention_dim": unet.config.cross_attention_dim,
            "use_linear_projection": unet.config.use_linear_projection,
            "block_out_channels": list(unet.config.block_out_channels),
            "in_channels": unet.conv_in.in_channels, "out_channels": unet.conv_out.out_channels}


def _native_view(native: dict) -> dict:
    out = {k: native[k] for k in ("norm_groups", "norm_eps", "time_proj_dim", "time_embed_dim", "cross_attention_dim",
                                  "use_linear_projection", "block_out_channels", "in_channels", "out_channels",
                                  "addition_embed")}
    out["down"] = [dict(b, heads=b["heads"] if any(b["depths"]) else None) for b in native["down"]]
    out["up"] = [dict(b, heads=b["heads"] if any(b["depths"]) else None) for b in native["up"]]
    m = native["mid"]
    out["mid"] = {"type": m["type"]} if m["type"] != "cross_attn" else dict(m)
    return out


def check_against_models(info, fx) -> None:
    spec = fx.spec
    assert info.family == spec.family
    assert info.variant == spec.variant
    assert normalize_unet_config(info.unet) == normalize_unet_config(dict(fx.unet.config))
    assert info.unet["sample_size"] == fx.unet.config.sample_size
    # the dict is a valid UNet2DConditionModel config that rebuilds the same tensors
    from diffusers import UNet2DConditionModel
    with torch.device("meta"):
        rebuilt = UNet2DConditionModel(**info.unet)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in fx.unet.state_dict().items()}
    assert _native_view(info.unet_native_config()) == _diffusers_structure(fx.unet)

    assert len(info.text_encoders) == len(fx.text_encoders)
    kinds = ["clip-l"] if spec.family == "sd1" else ["openclip-h"] if spec.family == "sd2" else ["clip-l", "openclip-bigg"]
    for meta, native, te in zip(info.text_encoders, info.text_encoder_native_configs(), fx.text_encoders):
        c = te.config
        assert meta["kind"] == kinds.pop(0)
        assert meta["pad_id"] == c.pad_token_id
        assert native == {"hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
                          "num_heads": c.num_attention_heads, "num_layers": c.num_hidden_layers,
                          "vocab_size": c.vocab_size, "max_positions": c.max_position_embeddings,
                          "act": c.hidden_act, "eps": c.layer_norm_eps,
                          "projection_dim": getattr(c, "projection_dim", 0) if hasattr(te, "text_projection") else 0}

    v = fx.vae.config
    assert info.vae["scaling_factor"] == v.scaling_factor
    assert info.vae_native_config() == {
        "block_out_channels": list(v.block_out_channels), "layers_per_block": v.layers_per_block,
        "latent_channels": v.latent_channels, "in_channels": v.in_channels, "out_channels": v.out_channels,
        "norm_groups": v.norm_num_groups, "norm_eps": fx.vae.encoder.conv_norm_out.eps,
        "mid_attention": v.mid_block_add_attention, "use_quant_conv": v.use_quant_conv,
        "use_post_quant_conv": v.use_post_quant_conv}
    assert info.unknown == []
    assert info.notes == []
    assert set(info.tensors) == set(fx.reference)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fmt", ["diffusers", "ldm"])
def test_inspect_matches_diffusers_config(model_fixtures, family, fmt):
    fx = model_fixtures.get(family)
    check_against_models(inspect(fx.path(fmt)), fx)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_and_variant_in_every_format(model_fixtures, family):
    fx = model_fixtures.get(family)
    for fmt in FORMATS:
        info = sdcpp.inspect(str(fx.path(fmt)))
        assert (info.family, info.variant, info.unknown) == (fx.spec.family, fx.spec.variant, []), fmt
        assert info.layout == ("diffusers" if fmt.startswith("diffusers") else "single_file")


@pytest.mark.parametrize("name", sorted(CUSTOM))
def test_custom_layouts(model_fixtures, name):
    fx = model_fixtures.get(name, custom_spec(name, CUSTOM[name]))
    for fmt in ("diffusers", "ldm"):
        check_against_models(inspect(fx.path(fmt)), fx)


def test_reference_config_forms():
    """SSD-1B's published config form normalises to the per-layer depths it implies."""
    cfg = {"block_out_channels": [320, 640, 1280], "down_block_types": [DOWN, XA_DOWN, XA_DOWN],
           "up_block_types": [XA_UP, XA_UP, UP], "layers_per_block": 2, "transformer_layers_per_block": [1, 2, 4],
           "reverse_transformer_layers_per_block": [[4, 4, 10], [2, 1, 1], 1], "attention_head_dim": [5, 10, 20]}
    n = normalize_unet_config(cfg)
    assert n["transformer_layers_per_block"] == [None, [2, 2], [4, 4]]
    assert n["reverse_transformer_layers_per_block"] == [[4, 4, 10], [2, 1, 1], None]
    assert n["heads"] == [5, 10, 20]


def test_ssd1b_and_vega_depth_forms(model_fixtures):
    ssd = inspect(model_fixtures.get("ssd-1b").path("ldm")).unet
    assert ssd["transformer_layers_per_block"] == [1, 2, 2]
    assert ssd["reverse_transformer_layers_per_block"] == [[2, 2, 3], [2, 1, 1], 1]
    assert ssd["mid_block_type"] == "UNetMidBlock2D"
    vega = inspect(model_fixtures.get("vega").path("ldm")).unet
    assert vega["transformer_layers_per_block"] == [1, 1, 2]
    assert vega["reverse_transformer_layers_per_block"] is None


def test_prediction_type(model_fixtures):
    assert inspect(model_fixtures.get("sd1").path("ldm")).prediction_type == "epsilon"
    assert inspect(model_fixtures.get("sd2").path("ldm")).prediction_type is None        # undecidable
    assert inspect(model_fixtures.get("sd2").path("diffusers")).prediction_type == "epsilon"   # scheduler config
    fx = model_fixtures.get("sdxl")
    recs = read_tensors(fx.path("ldm"))
    recs["v_pred"] = recs["alphas_cumprod"]
    info = inspect(types.SimpleNamespace(path=fx.path("ldm"), layout="single_file", components={"": recs}, configs={}))
    assert info.prediction_type == "v_prediction" and "v_pred" in info.ignored


def test_unet_only_file(model_fixtures):
    fx = model_fixtures.get("sdxl")
    info = inspect(fx.path("diffusers") / "unet" / "diffusion_pytorch_model.safetensors")
    assert (info.family, info.variant, info.text_encoders, info.vae) == ("sdxl", "standard", [], None)
    assert info.unet["addition_time_embed_dim"] is None and info.notes


# ------------------------------------------------------------------------------- errors
def _save(tmp_path, sd, name):
    from safetensors.torch import save_file
    p = tmp_path / name
    save_file(sd, str(p))
    return p


def test_no_unet_is_unknown_architecture(model_fixtures, tmp_path):
    sd = {k: v for k, v in model_fixtures.get("sd1").ldm_state_dict(junk=False).items() if k.startswith("first_stage_model.")}
    p = _save(tmp_path, sd, "vae_only.safetensors")
    with pytest.raises(UnknownArchitectureError) as e:
        inspect(p)
    assert str(p) in str(e.value) and e.value.file == str(p) and e.value.tensor


@pytest.mark.parametrize("drop, canonical", [
    ("model.diffusion_model.input_blocks.1.0.in_layers.2.weight", "unet.down_blocks.0.resnets.0.conv1.weight"),
    ("model.diffusion_model.output_blocks.8.2.conv.bias", "unet.up_blocks.2.upsamplers.0.conv.bias"),
    ("first_stage_model.encoder.mid.attn_1.q.weight", "vae.encoder.mid_block.attentions.0.to_q.weight"),
    ("cond_stage_model.transformer.text_model.final_layer_norm.weight", "text_encoder.text_model.final_layer_norm.weight"),
])
def test_missing_tensor(model_fixtures, tmp_path, drop, canonical):
    sd = model_fixtures.get("sd1").ldm_state_dict(junk=False)
    del sd[drop]
    p = _save(tmp_path, sd, "broken.safetensors")
    with pytest.raises(MissingTensorError) as e:
        inspect(p)
    assert e.value.tensor == canonical and str(p) in str(e.value)


def _source_without(fx, fmt, edit):
    recs = dict(read_tensors(fx.path(fmt)))
    edit(recs)
    return types.SimpleNamespace(path=fx.path(fmt), layout="single_file", components={"": recs}, configs={})


@pytest.mark.parametrize("edit", [
    # an attention without its layer's partner (down block 0 keeps resnets 0,1 but only attention 0)
    lambda r: [r.pop(k) for k in [k for k in r if k.startswith("model.diffusion_model.input_blocks.2.1.")]],
    # up block with one resnet fewer than its mirrored down block + 1
    lambda r: [r.pop(k) for k in [k for k in r if k.startswith("model.diffusion_model.output_blocks.11.")]],
    # a resnet whose conv1 input width does not fit the skip-connection bookkeeping
    lambda r: r.__setitem__("model.diffusion_model.output_blocks.4.0.in_layers.2.weight",
                            r["model.diffusion_model.output_blocks.5.0.in_layers.2.weight"].renamed("x")
                            if r["model.diffusion_model.output_blocks.5.0.in_layers.2.weight"].shape
                            != r["model.diffusion_model.output_blocks.4.0.in_layers.2.weight"].shape
                            else r["model.diffusion_model.input_blocks.4.0.in_layers.2.weight"]),
    # a downsampler on the innermost level
    lambda r: r.__setitem__("model.diffusion_model.input_blocks.12.0.op.weight",
                            r["model.diffusion_model.input_blocks.9.0.op.weight"]),
], ids=["unpaired-attention", "short-up-block", "bad-width", "extra-downsampler"])
def test_inconsistent_layouts_are_unknown(model_fixtures, edit):
    src = _source_without(model_fixtures.get("sd1"), "ldm", edit)
    with pytest.raises(UnknownArchitectureError) as e:
        inspect(src)
    assert e.value.tensor and str(src.path) in str(e.value)


def test_summary_and_describe(model_fixtures):
    import json
    info = inspect(model_fixtures.get("ssd-1b").path("ldm"))
    s = json.loads(json.dumps(info.summary()))
    assert s["variant"] == "ssd-1b" and s["family"] == "sdxl"
    assert "ssd-1b" in info.describe()


def test_embedding_and_lora_files_passed_as_models_say_what_they_are(tmp_path):
    """A textual-inversion embedding or a LoRA handed to inspect/load is named as such, with
    where it goes instead, not reported as an unknown architecture."""
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    vec = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.zeros(2, 768)}, "name": "x", "step": 1},
               tmp_path / "a1111.pt")
    save_file({"emb_params": vec(3, 768)}, str(tmp_path / "civitai.safetensors"))
    save_file({"clip_l": vec(2, 768), "clip_g": vec(2, 1280)}, str(tmp_path / "sdxl.safetensors"))
    save_file({"<cat-toy>": vec(768)}, str(tmp_path / "learned_embeds.safetensors"))
    lora = {}
    for i in range(3):
        base = f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q{i}"
        lora[base + ".lora_down.weight"] = vec(4, 320)
        lora[base + ".lora_up.weight"] = vec(320, 4)
        lora[base + ".alpha"] = np.array(4.0, np.float32)
    save_file(lora, str(tmp_path / "kohya.safetensors"))
    for name in ("a1111.pt", "civitai.safetensors", "sdxl.safetensors", "learned_embeds.safetensors"):
        with pytest.raises(sdcpp.errors.UnknownArchitectureError, match="textual-inversion embedding.*load_embeddings") as e:
            sdcpp.inspect(str(tmp_path / name))
        assert name in str(e.value)
    with pytest.raises(sdcpp.errors.UnknownArchitectureError, match="this is a LoRA.*set_loras") as e:
        sdcpp.inspect(str(tmp_path / "kohya.safetensors"))
    assert "kohya.safetensors" in str(e.value)
    with pytest.raises(sdcpp.errors.UnknownArchitectureError, match="this is a LoRA"):
        sdcpp.load(str(tmp_path / "kohya.safetensors"))
