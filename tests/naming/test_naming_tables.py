"""Naming tables on their own: spellings the fixture files do not carry, LDM<->diffusers
block mapping for the LoRA code, unknown/ignored reporting."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures import FAMILIES
from sdcpp.io import TensorRecord, read_tensors
from sdcpp.naming import canonicalize_components, diffusers_unet_to_ldm, ldm_unet_to_diffusers

LDM_UNET = "model.diffusion_model."


def _rec(name: str, shape: tuple[int, ...]) -> TensorRecord:
    strides, s = [], 1
    for d in reversed(shape):
        strides.insert(0, s)
        s *= d
    return TensorRecord(name, "F32", tuple(shape), tuple(strides), Path("/nonexistent"), 0)


@pytest.fixture(scope="module")
def sd1_ldm(model_fixtures):
    fx = model_fixtures.get("sd1")
    return fx, read_tensors(fx.path("ldm"))


@pytest.mark.parametrize("prefix", ["", "diffusion_model.", "unet."])
def test_unet_prefix_variants(sd1_ldm, prefix):
    """U-Net-only files: bare LDM names, sd.cpp's ``diffusion_model.``, ``unet.`` + LDM names."""
    fx, recs = sd1_ldm
    comp = {prefix + k[len(LDM_UNET):]: r for k, r in recs.items() if k.startswith(LDM_UNET)}
    res = canonicalize_components({"": comp})
    want = {k for k in fx.reference if k.startswith("unet.")}
    assert res.unknown == [] and set(res.tensors) == want


def test_bare_diffusers_unet_and_vae_files(model_fixtures):
    fx = model_fixtures.get("sdxl")
    folder = fx.path("diffusers")
    for comp in ("unet", "vae"):
        recs = read_tensors(folder / comp / "diffusion_pytorch_model.safetensors")
        res = canonicalize_components({"": recs})
        assert res.unknown == []
        assert set(res.tensors) == {k for k in fx.reference if k.startswith(comp + ".")}


def test_old_clip_without_text_model_level(sd1_ldm):
    fx, recs = sd1_ldm
    p = "cond_stage_model.transformer.text_model."
    comp = {"cond_stage_model.transformer." + k[len(p):]: r for k, r in recs.items() if k.startswith(p)}
    res = canonicalize_components({"": comp})
    assert set(res.tensors) == {k for k in fx.reference if k.startswith("text_encoder.")}


def test_to_out_without_index_and_leftover_diffusers_names():
    keys = {
        LDM_UNET + "input_blocks.1.1.transformer_blocks.0.attn1.to_out.weight": (8, 8),
        LDM_UNET + "input_blocks.1.1.transformer_blocks.0.attn1.to_out.bias": (8,),
        LDM_UNET + "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_out.weight": (8, 8),
        LDM_UNET + "output_blocks.2.1.conv.weight": (8, 8, 3, 3),
        LDM_UNET + "output_blocks.5.2.conv.bias": (8,),
    }
    res = canonicalize_components({"": {k: _rec(k, s) for k, s in keys.items()}})
    assert set(res.tensors) == {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.weight",
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.bias",
        "unet.up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_out.0.weight",
        "unet.up_blocks.0.upsamplers.0.conv.weight",
        "unet.up_blocks.1.upsamplers.0.conv.bias",
    }


def test_gapped_layers_are_renumbered_by_content():
    """BK-SDM-like: one layer per down level at 3i+1, resnet 0 and old resnet 2 kept upstairs."""
    m, unknown = ldm_unet_to_diffusers([
        "input_blocks.4.0.in_layers.2.weight", "input_blocks.4.1.proj_in.weight", "input_blocks.6.0.op.weight",
        "input_blocks.7.0.skip_connection.weight",
        "output_blocks.3.0.out_layers.3.weight", "output_blocks.5.0.emb_layers.1.bias",
        "output_blocks.5.1.norm.weight", "output_blocks.5.2.conv.weight",
        "middle_block.0.in_layers.0.weight", "middle_block.2.out_layers.0.bias", "middle_block.1.proj_out.bias",
    ])
    assert unknown == []
    assert m == {
        "input_blocks.4.0.in_layers.2.weight": "down_blocks.1.resnets.0.conv1.weight",
        "input_blocks.4.1.proj_in.weight": "down_blocks.1.attentions.0.proj_in.weight",
        "input_blocks.6.0.op.weight": "down_blocks.1.downsamplers.0.conv.weight",
        "input_blocks.7.0.skip_connection.weight": "down_blocks.2.resnets.0.conv_shortcut.weight",
        "output_blocks.3.0.out_layers.3.weight": "up_blocks.1.resnets.0.conv2.weight",
        "output_blocks.5.0.emb_layers.1.bias": "up_blocks.1.resnets.1.time_emb_proj.bias",
        "output_blocks.5.1.norm.weight": "up_blocks.1.attentions.1.norm.weight",
        "output_blocks.5.2.conv.weight": "up_blocks.1.upsamplers.0.conv.weight",
        "middle_block.0.in_layers.0.weight": "mid_block.resnets.0.norm1.weight",
        "middle_block.2.out_layers.0.bias": "mid_block.resnets.1.norm2.bias",
        "middle_block.1.proj_out.bias": "mid_block.attentions.0.proj_out.bias",
    }


def test_malformed_ldm_keys_are_unknown():
    m, unknown = ldm_unet_to_diffusers([
        "input_blocks.3.0.in_layers.0.weight",       # resnet in a resample slot
        "input_blocks.1.0.op.weight",                # downsampler in a layer slot
        "input_blocks.1.0.in_layers.1.weight",       # no such ResBlock sub-module
        "output_blocks.0.0.op.weight",               # downsampler in the decoder
        "middle_block.0.conv.weight",
        "somewhere.else",
    ])
    assert m == {} and len(unknown) == 6


def test_vae_old_diffusers_attention_names_and_conv_shapes():
    v = {f"vae.encoder.mid_block.attentions.0.{a}.weight": (16, 16, 1, 1) for a in ("query", "key", "value", "proj_attn")}
    v.update({f"vae.decoder.mid_block.attentions.0.{a}.bias": (16,) for a in ("query", "key", "value", "proj_attn")})
    res = canonicalize_components({"": {k: _rec(k, s) for k, s in v.items()}})
    assert res.unknown == []
    assert {k: r.shape for k, r in res.tensors.items()} == {
        **{f"vae.encoder.mid_block.attentions.0.{a}.weight": (16, 16) for a in ("to_q", "to_k", "to_v", "to_out.0")},
        **{f"vae.decoder.mid_block.attentions.0.{a}.bias": (16,) for a in ("to_q", "to_k", "to_v", "to_out.0")},
    }


def test_unknown_and_ignored_are_reported():
    keys = {
        "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.0.mystery.weight": (8,),
        "some_trainer_state.step": (1,),
        "model_ema.decay": (),
        "alphas_cumprod": (1000,),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": (1, 77),
        "conditioner.embedders.1.model.logit_scale": (),
        "lvlb_weights": (1000,),
    }
    res = canonicalize_components({"": {k: _rec(k, s) for k, s in keys.items()}})
    assert set(res.tensors) == {"unet.conv_in.weight"}
    assert res.unknown == ["model.diffusion_model.input_blocks.1.0.mystery.weight", "some_trainer_state.step"]
    assert len(res.ignored) == 5
    folder = canonicalize_components({"safety_checker": {"x.weight": _rec("x.weight", (2,))},
                                      "text_encoder": {"text_model.embeddings.position_ids": _rec("p", (1, 77))}})
    assert folder.unknown == ["safety_checker/x.weight"]
    assert folder.ignored == ["text_encoder/text_model.embeddings.position_ids"]


def test_fused_qkv_rows_and_projection_transpose():
    c, p = 8, 6
    keys = {"conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": (3 * c, c),
            "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_bias": (3 * c,),
            "conditioner.embedders.1.model.text_projection": (c, p),
            "cond_stage_model.model.text_projection": (c, c)}
    res = canonicalize_components({"": {k: _rec(k, s) for k, s in keys.items()}})
    t = res.tensors
    pre = "text_encoder_2.text_model.encoder.layers.0.self_attn."
    for i, q in enumerate("qkv"):
        assert t[pre + f"{q}_proj.weight"].shape == (c, c)
        assert t[pre + f"{q}_proj.weight"].offset == i * c * c * 4
        assert t[pre + f"{q}_proj.bias"].offset == i * c * 4
    proj = t["text_encoder_2.text_projection.weight"]
    assert proj.shape == (p, c) and proj.strides == (1, p)
    assert res.ignored == ["cond_stage_model.model.text_projection"]       # SD2 does not use it


@pytest.mark.parametrize("family", FAMILIES)
def test_diffusers_to_ldm_aliases_cover_real_ldm_names(model_fixtures, family):
    """For the LoRA code: every canonical U-Net name's LDM aliases contain the spelling the
    (independent) LDM writer used, unless the writer left it in diffusers spelling."""
    fx = model_fixtures.get(family)
    ldm = fx.ldm_state_dict(junk=False)
    names, _ = ldm_unet_to_diffusers([k[len(LDM_UNET):] for k in ldm if k.startswith(LDM_UNET)])
    for ldm_key, diff in names.items():
        aliases = diffusers_unet_to_ldm(diff)
        assert ldm_key in aliases or ldm_key == diff, (diff, ldm_key, aliases)
    # module paths work too (kohya LoRA keys name modules, not tensors)
    assert diffusers_unet_to_ldm("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q") == \
        ["input_blocks.4.1.transformer_blocks.0.attn1.to_q"]
    assert diffusers_unet_to_ldm("mid_block.resnets.1.time_emb_proj") == ["middle_block.2.emb_layers.1"]
    assert diffusers_unet_to_ldm("up_blocks.0.upsamplers.0.conv") == ["output_blocks.2.2.conv", "output_blocks.2.1.conv"]
    assert diffusers_unet_to_ldm("add_embedding.linear_1") == ["label_emb.0.0"]
    assert diffusers_unet_to_ldm("down_blocks.0.downsamplers.0.conv.weight") == ["input_blocks.3.0.op.weight"]


def test_values_survive_row_split_on_real_file(model_fixtures):
    fx = model_fixtures.get("sdxl")
    recs = read_tensors(fx.path("ldm"))
    fused = recs["conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight"].numpy()
    res = canonicalize_components({"": recs})
    c = fused.shape[1]
    k = res.tensors["text_encoder_2.text_model.encoder.layers.1.self_attn.k_proj.weight"].numpy()
    assert np.array_equal(k, fused[c:2 * c])
