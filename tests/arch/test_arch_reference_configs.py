"""Real-size architectures: the published/derived configs of SD1.5, SDXL, SSD-1B, Vega, BK-SDM and
segmind tiny/small are built on torch's meta device (shapes only), written with the fixture LDM
writer, and ``inspect`` must recover each config exactly, real head counts included (so the
heuristics are checked where the tiny fixtures cannot: 8 heads at 320..1280, C/64 = 5/10/20)."""
from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch

from fixtures import ldm
from fixtures.factory import _canonical_te_key
from sdcpp.arch import inspect, normalize_unet_config
from sdcpp.io import TensorRecord

CONFIGS = Path(__file__).resolve().parents[1] / "fixtures" / "configs"
TEXT_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
               "max_position_embeddings", "vocab_size", "hidden_act", "layer_norm_eps", "projection_dim")

# config file -> (family, expected variant)
CASES = {
    "sd15_reference": ("sd1", "standard"),
    "sdxl_base_reference": ("sdxl", "standard"),
    "ssd-1b": ("sdxl", "ssd-1b"),
    "segmind-vega": ("sdxl", "vega"),
    "bk-sdm-base": ("sd1", "bk-sdm-base"),
    "bk-sdm-small": ("sd1", "bk-sdm-small"),
    "bk-sdm-tiny": ("sd1", "bk-sdm-tiny"),
    "segmind-small-sd": ("sd1", "bk-sdm-small"),
    "segmind-tiny-sd": ("sd1", "bk-sdm-tiny"),
    "segmind-portrait-finetuned": ("sd1", "bk-sdm-tiny"),
    "clashsan-tinySDdistilled-ldm": ("sd1", "bk-sdm-tiny"),
}


def _load(name: str) -> dict:
    return {k: v for k, v in json.loads((CONFIGS / f"{name}.json").read_text()).items() if not k.startswith("_")}


def _records(sd: dict[str, torch.Tensor]) -> dict[str, TensorRecord]:
    out = {}
    for k, v in sd.items():
        strides, s = [], 1
        for d in reversed(v.shape):
            strides.insert(0, s)
            s *= d
        out[k] = TensorRecord(k, "F16", tuple(v.shape), tuple(strides), Path("/meta"), 0)
    return out


def _text(cfg_name: str, with_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    cfg = {k: v for k, v in _load(cfg_name).items() if k in TEXT_FIELDS}
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    with torch.device("meta"):
        m = cls(CLIPTextConfig(**cfg))
    return {_canonical_te_key("text_encoder", k): v for k, v in m.state_dict().items()}, cfg


@pytest.mark.parametrize("name", sorted(CASES))
def test_real_size_configs_are_recovered(name):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    family, variant = CASES[name]
    cfg = _load(name)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg)
        vae = AutoencoderKL(**{k: v for k, v in _load("vae_sdxl" if family == "sdxl" else "vae_sd1").items()
                               if k != "force_upcast"})
    tiny_up0 = cfg["up_block_types"][0].startswith("CrossAttn") and cfg["layers_per_block"] == 1
    sd = ldm.unet_to_ldm(unet.state_dict(), cfg, "sdxl" if family == "sdxl" else "sd", up0_attn_leftover=tiny_up0)
    sd.update(ldm.vae_to_ldm(vae.state_dict(), vae.config))
    te1, te1_cfg = _text("clip_l_text_encoder", False)
    texts = [te1_cfg]
    if family == "sdxl":
        te2, te2_cfg = _text("clip_g_text_encoder_2", True)
        sd.update(ldm.clip_to_ldm(te1, "conditioner.embedders.0.transformer."))
        sd.update(ldm.openclip_to_ldm(te2, "conditioner.embedders.1.model."))
        texts.append(te2_cfg)
    else:
        sd.update(ldm.clip_to_ldm(te1, "cond_stage_model.transformer."))

    src = types.SimpleNamespace(path=Path(f"/meta/{name}.safetensors"), layout="single_file",
                                components={"": _records(sd)}, configs={})
    info = inspect(src)
    assert (info.family, info.variant) == (family, variant)
    assert info.unknown == [] and info.notes == []
    assert normalize_unet_config(info.unet) == normalize_unet_config(cfg)
    assert info.unet["sample_size"] == cfg["sample_size"]
    with torch.device("meta"):
        rebuilt = UNet2DConditionModel(**info.unet)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in unet.state_dict().items()}
    if family == "sdxl":
        assert info.unet["addition_time_embed_dim"] == 256
        assert info.unet["projection_class_embeddings_input_dim"] == 2816
    for meta, native, want in zip(info.text_encoders, info.text_encoder_native_configs(), texts):
        assert native["num_heads"] == want["num_attention_heads"]
        assert native["hidden_size"] == want["hidden_size"] and native["num_layers"] == want["num_hidden_layers"]
        assert native["act"] == want["hidden_act"]
        assert native["projection_dim"] == (want["projection_dim"] if meta["name"] == "text_encoder_2" else 0)
    assert info.vae["scaling_factor"] == (0.13025 if family == "sdxl" else 0.18215)
    assert info.vae_native_config()["block_out_channels"] == [128, 256, 512, 512]
