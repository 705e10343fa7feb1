"""LoRA pieces without diffusers in the loop: key formats, the module index over every fixture
family (checked against the fixtures' independent LDM converter), delta math against torch's
own convolution composition, family guess, tag resolution, argument checks."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sdcpp
from sdcpp.arch import inspect
from sdcpp.lora import (LoraError, LoraFormatError, LoraUnmatchedError, LoraWarning, ModuleIndex, guess_family,
                        normalize_specs, parse_lora, read_lora, resolve_lora_name)
from sdcpp.lora.delta import check, weight_delta
from sdcpp.lora.index import Target

import lora_helpers as H

INDEX_FAMILIES = ["sd1", "sd2", "sdxl", "ssd-1b", "vega", "bk-sdm-base", "bk-sdm-small", "bk-sdm-tiny"]


def _write(tmp_path, sd: dict, name="l.safetensors", metadata=None):
    from safetensors.torch import save_file
    p = tmp_path / name
    save_file({k: v.contiguous() for k, v in sd.items()}, str(p), metadata=metadata)
    return p


def _r(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- key formats
def test_formats_group_into_modules(tmp_path):
    sd = {
        # kohya, with alpha and a Tucker core
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": _r(2, 8, 1, 1),
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_mid.weight": _r(2, 2, 3, 3),
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": _r(8, 2, 1, 1),
        "lora_unet_down_blocks_0_resnets_0_conv1.alpha": torch.tensor(1.0, dtype=torch.float16),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": _r(2, 8),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": _r(8, 2),
        # diffusers old processors (U-Net and text encoder)
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.down.weight": _r(2, 8),
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.up.weight": _r(8, 2),
        "text_encoder.text_model.encoder.layers.1.self_attn.to_q_lora.down.weight": _r(2, 8),
        "text_encoder.text_model.encoder.layers.1.self_attn.to_q_lora.up.weight": _r(8, 2),
        # diffusers 0.21 and PEFT (named adapter), PEFT bias
        "unet.conv_in.lora.down.weight": _r(2, 4, 3, 3),
        "unet.conv_in.lora.up.weight": _r(8, 2, 1, 1),
        "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj.lora_linear_layer.down.weight": _r(2, 8),
        "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj.lora_linear_layer.up.weight": _r(8, 2),
        "unet.time_embedding.linear_1.lora_A.default.weight": _r(2, 8),
        "unet.time_embedding.linear_1.lora_B.default.weight": _r(8, 2),
        "unet.time_embedding.linear_1.lora_B.default.bias": _r(8),
        # unsupported kinds and junk
        "lora_unet_conv_out.hada_w1_a": _r(8, 2),
        "lora_unet_conv_out.hada_w1_b": _r(2, 8),
        "lora_unet_up_blocks_0_resnets_0_conv2.dora_scale": _r(8),
        "something_else": _r(3),
    }
    lf = read_lora(_write(tmp_path, sd))
    mods = {m.key: m for m in lf.modules}
    tucker = mods["lora_unet_down_blocks_0_resnets_0_conv1"]
    assert tucker.components == ("unet",) and tucker.kohya and tucker.mid is not None
    assert tucker.alpha == 1.0 and tucker.strength() == 0.5
    assert mods["lora_te_text_model_encoder_layers_0_mlp_fc1"].components == ("text_encoder",)
    old = mods["unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0"]
    assert old.path == "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0"
    te_old = mods["text_encoder.text_model.encoder.layers.1.self_attn.q_proj"]
    assert te_old.components == ("text_encoder",) and te_old.down is not None and te_old.up is not None
    assert mods["text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj"].components == ("text_encoder_2",)
    peft = mods["unet.time_embedding.linear_1"]
    assert peft.bias is not None and peft.strength() == 1.0
    assert mods["lora_unet_conv_out"].unsupported == "LoHa"
    assert mods["lora_unet_up_blocks_0_resnets_0_conv2"].unsupported == "DoRA"
    assert lf.unknown == ["something_else"]
    assert lf.format == "diffusers+diffusers-old+kohya+peft"


def test_peft_config_and_diffusers_metadata_give_alphas(tmp_path):
    # diffusers' lora_adapter_metadata: lora_alpha, alpha_pattern, rslora
    meta = {"unet.r": 4, "unet.lora_alpha": 8, "unet.alpha_pattern": {"down_blocks.0.attentions.0.proj_in": 2},
            "unet.use_rslora": False, "text_encoder.r": 4, "text_encoder.lora_alpha": 16, "text_encoder.use_rslora": True}
    sd = {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": _r(4, 8),
          "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": _r(8, 4),
          "unet.down_blocks.0.attentions.0.proj_out.lora_A.weight": _r(4, 8),
          "unet.down_blocks.0.attentions.0.proj_out.lora_B.weight": _r(8, 4),
          "text_encoder.text_model.encoder.layers.0.mlp.fc2.lora_A.weight": _r(4, 8),
          "text_encoder.text_model.encoder.layers.0.mlp.fc2.lora_B.weight": _r(8, 4)}
    lf = read_lora(_write(tmp_path, sd, metadata={"format": "pt", "lora_adapter_metadata": json.dumps(meta)}))
    s = {m.path: m.strength() for m in lf.modules}
    assert s["down_blocks.0.attentions.0.proj_in"] == 0.5
    assert s["down_blocks.0.attentions.0.proj_out"] == 2.0
    assert s["text_model.encoder.layers.0.mlp.fc2"] == 16 / math.sqrt(4)
    # PEFT folder: adapter_model.safetensors + adapter_config.json
    folder = tmp_path / "peft"
    folder.mkdir()
    _write(folder, {"base_model.model." + k[len("unet."):]: v for k, v in sd.items() if k.startswith("unet.")},
           "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 12}))
    lf = read_lora(folder)
    assert {m.strength() for m in lf.modules} == {3.0} and {m.components for m in lf.modules} == {("unet",)}
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LOHA", "r": 4, "alpha": 4}))
    assert all(m.unsupported == "PEFT LOHA" for m in read_lora(folder).modules)


def test_bad_lora_files(tmp_path):
    with pytest.raises(LoraFormatError, match="no LoRA tensors"):
        read_lora(_write(tmp_path, {"model.diffusion_model.conv_in.weight": _r(4, 4)}, "notlora.safetensors"))
    with pytest.raises(LoraFormatError, match="several PEFT adapters"):
        read_lora(_write(tmp_path, {"unet.conv_in.lora_A.a.weight": _r(2, 4), "unet.conv_in.lora_A.b.weight": _r(2, 4)},
                         "two.safetensors"))
    with pytest.raises(LoraFormatError, match="two down"):
        read_lora(_write(tmp_path, {"unet.conv_in.lora_A.weight": _r(2, 4), "unet.conv_in.lora.down.weight": _r(2, 4)},
                         "dup.safetensors"))
    with pytest.raises(LoraFormatError, match="scalar"):
        read_lora(_write(tmp_path, {"lora_unet_conv_in.alpha": _r(2), "lora_unet_conv_in.lora_down.weight": _r(2, 4)},
                         "alpha.safetensors"))


# --------------------------------------------------------------------------- module index
@pytest.fixture(scope="module")
def infos(model_fixtures):
    cache = {}

    def get(family, fmt="ldm"):
        if (family, fmt) not in cache:
            cache[(family, fmt)] = inspect(model_fixtures.get(family).path(fmt))
        return cache[(family, fmt)]
    return get


@pytest.mark.parametrize("family", INDEX_FAMILIES)
def test_index_finds_every_module_in_every_spelling(model_fixtures, infos, family):
    """Every real module, spelled as diffusers / kohya-diffusers / LDM (the fixtures' own
    converter) / kohya-LDM, resolves to itself, whether the model came from an LDM file or a
    diffusers folder."""
    fx = model_fixtures.get(family)
    for fmt in ("ldm", "diffusers"):
        info = infos(family, fmt)
        index = ModuleIndex(info.tensors, info.origin)
        unet = [t for t in index.targets.values() if t.component == "unet"]
        assert len(unet) > 20
        for t in unet:
            ldm = H.ldm_module_name(fx, t.module)
            for spelling in (t.module, t.module.replace(".", "_"), ldm, ldm.replace(".", "_")):
                assert index.lookup("unet", spelling) == t, (fmt, spelling, t.module)
        for t in index.targets.values():
            if t.component.startswith("text_encoder"):
                short = t.module[len("text_model."):] if t.module.startswith("text_model.") else t.module
                for spelling in (t.module, t.module.replace(".", "_"), short.replace(".", "_")):
                    assert index.lookup(t.component, spelling) == t, (fmt, spelling)
        assert not index.ambiguous["unet"]


def test_indices_missing_from_a_distilled_unet_are_not_found(infos):
    index = ModuleIndex(infos("ssd-1b").tensors, infos("ssd-1b").origin)
    assert index.lookup("unet", "input_blocks_7_1_transformer_blocks_1_attn1_to_q") is not None
    assert index.lookup("unet", "input_blocks_7_1_transformer_blocks_9_attn1_to_q") is None
    tiny = ModuleIndex(infos("bk-sdm-tiny").tensors, infos("bk-sdm-tiny").origin)
    assert tiny.lookup("unet", "input_blocks_2_1_proj_in") is None          # deleted by BK-SDM
    assert tiny.lookup("unet", "down_blocks_0_attentions_1_proj_in") is None


# --------------------------------------------------------------------------- delta math
def _mod(tmp_path, sd, name):
    lf = read_lora(_write(tmp_path, sd, name))
    (m,) = lf.modules
    return m


def test_locon_delta_equals_the_conv_composition(tmp_path):
    down, up = _r(3, 5, 3, 3, seed=1), _r(7, 3, 1, 1, seed=2)
    m = _mod(tmp_path, {"lora_unet_conv_in.lora_down.weight": down, "lora_unet_conv_in.lora_up.weight": up,
                        "lora_unet_conv_in.alpha": torch.tensor(6.0)}, "locon.safetensors")
    t = Target("unet", "conv_in", "unet.conv_in.weight", (7, 5, 3, 3), None)
    assert check(m, t) is None
    x = _r(2, 5, 9, 9, seed=3)
    want = F.conv2d(F.conv2d(x, down, padding=1), up) * 2.0
    got = F.conv2d(x, torch.from_numpy(weight_delta(m, t)), padding=1)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_tucker_delta_equals_the_conv_composition(tmp_path):
    down, mid, up = _r(3, 5, 1, 1, seed=1), _r(3, 3, 3, 3, seed=4), _r(7, 3, 1, 1, seed=2)
    m = _mod(tmp_path, {"lora_unet_conv_in.lora_down.weight": down, "lora_unet_conv_in.lora_mid.weight": mid,
                        "lora_unet_conv_in.lora_up.weight": up}, "tucker.safetensors")
    t = Target("unet", "conv_in", "unet.conv_in.weight", (7, 5, 3, 3), None)
    x = _r(2, 5, 9, 9, seed=3)
    want = F.conv2d(F.conv2d(F.conv2d(x, down), mid, padding=1), up)
    got = F.conv2d(x, torch.from_numpy(weight_delta(m, t)), padding=1)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_linear_lora_on_a_1x1_conv_and_back(tmp_path):
    down, up = _r(2, 6), _r(4, 2)
    m = _mod(tmp_path, {"unet.x.lora_A.weight": down, "unet.x.lora_B.weight": up}, "lin.safetensors")
    conv = Target("unet", "x", "unet.x.weight", (4, 6, 1, 1), None)
    assert np.allclose(weight_delta(m, conv)[:, :, 0, 0], (up @ down).numpy(), atol=1e-6)
    assert check(m, Target("unet", "x", "unet.x.weight", (4, 7), None)) is not None
    assert check(m, Target("unet", "x", "unet.x.weight", (5, 6), None)) is not None


# --------------------------------------------------------------------------- family guess, names, args
def test_guess_family(tmp_path):
    def fam(keys):
        sd = {k + ".lora_down.weight": _r(1, 2) for k in keys}
        return guess_family(parse_lora({k: v for k, v in _records(tmp_path, sd).items()}))[0]
    assert fam(["lora_unet_down_blocks_0_attentions_0_proj_in"]) == "sd1/sd2"
    assert fam(["lora_unet_output_blocks_11_1_proj_in"]) == "sd1/sd2"
    assert fam(["lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q"]) == "sdxl"
    assert fam(["lora_te2_text_model_encoder_layers_0_mlp_fc1"]) == "sdxl"
    assert fam(["lora_unet_mid_block_resnets_0_conv1"]) is None


def _records(tmp_path, sd):
    from sdcpp.io import read_tensors
    return read_tensors(_write(tmp_path, sd, "g.safetensors"))


def test_resolve_lora_name(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.safetensors").write_bytes(b"x")
    (tmp_path / "sub" / "b.pt").write_bytes(b"x")
    (tmp_path / "c.bin").write_bytes(b"x")
    assert resolve_lora_name("a", tmp_path) == tmp_path / "a.safetensors"
    assert resolve_lora_name("sub/b", tmp_path) == tmp_path / "sub" / "b.pt"
    assert resolve_lora_name("c.bin", tmp_path) == tmp_path / "c.bin"
    for bad, msg in (("zzz", "no zzz"), ("../a", "outside")):
        with pytest.raises(LoraError, match=msg):
            resolve_lora_name(bad, tmp_path)
    with pytest.raises(LoraError, match="no LoRA folder"):
        resolve_lora_name("a", None)


def test_lora_argument_checks(tmp_path):
    p = tmp_path / "a.safetensors"
    p.write_bytes(b"x")
    assert normalize_specs([str(p), (p, 0.5)]) == [(p, 1.0), (p, 0.5)]
    for bad in (str(p), (str(p), 0.5), [(p, float("nan"))], [(p, "1")], [(p, 1, 2)], [(3, 1.0)],
                [(tmp_path / "missing.safetensors", 1.0)]):
        with pytest.raises(LoraError):
            normalize_specs(bad)
    assert normalize_specs(None) == normalize_specs([]) == normalize_specs(()) == []


def test_unsupported_kinds_are_listed_and_skipped_with_strict_false(model_fixtures, tmp_path):
    fx = model_fixtures.get("sd1")
    model = sdcpp.load(str(fx.path("ldm")), device="cpu", weight_type="f32", threads=1)
    sd = {"lora_unet_conv_in.hada_w1_a": _r(32, 2), "lora_unet_conv_in.hada_w1_b": _r(2, 36),
          "lora_unet_conv_out.lora_down.weight": _r(2, 32, 3, 3), "lora_unet_conv_out.lora_up.weight": _r(4, 2, 1, 1),
          "lora_unet_conv_in.lora_up.weight": _r(32, 2, 1, 1)}
    path = _write(tmp_path, sd, "loha.safetensors")
    with pytest.raises(LoraUnmatchedError, match="LoHa is not supported") as exc:
        model.set_loras([(path, 1.0)])
    assert {k for k, _ in exc.value.unsupported} == {k for k in sd if "conv_in" in k}
    with pytest.warns(LoraWarning):
        report = model.set_loras([(path, 1.0)], strict=False)
    assert report.loras[0].targets == {"lora_unet_conv_out": "unet.conv_out.weight"}
    model.set_loras([])
