"""Random LoRAs for the fixture models, written in every format, and the diffusers reference.

A LoRA is made the way trainers make them: PEFT adapters added to (copies of) the fixture's
U-Net / text encoders, then both A and B randomised (PEFT initialises B to zero, which would
make every test pass trivially). The same adapter weights are then written by

* diffusers' own ``save_lora_weights`` (PEFT ``lora_A`` / ``lora_B`` keys, ``unet.`` /
  ``text_encoder.`` prefixes, the LoraConfig in ``lora_adapter_metadata``): ``write_diffusers``;
* the diffusers 0.21 training scripts' path, ``convert_state_dict_to_diffusers`` then
  ``save_lora_weights`` (``.lora.down`` / ``lora_linear_layer``): ``write_diffusers_021``;
* PEFT's own ``PeftModel.save_pretrained`` (``base_model.model.`` keys + adapter_config.json):
  ``write_peft_raw``;
* kohya: diffusers' ``convert_state_dict_to_kohya`` (SD1, diffusers module spelling), or for
  SDXL-family files the kohya names written from the rules in LDM spelling, the LDM names
  coming from the fixtures' independent LDM converter (tests/fixtures/ldm.py): ``write_kohya``;
* diffusers <= 0.20 attention processors (``processor.to_q_lora.down.weight``), written from
  the stated rules: ``write_old_processor``.

The reference (``reference_pipeline``) is diffusers' ``load_lora_weights`` of the
``write_diffusers`` file + ``fuse_lora(lora_scale=s)`` (one LoRA after the other, unloading the
adapter after each fuse) on copies of the fixture modules.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from fixtures import ldm as fixture_ldm
from fixtures.e2e import NEGATIVE, PROMPT, SIZE, diffusers_scheduler

LCM_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
               "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]
ATTN_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
TEXT_COMPONENTS = ("text_encoder", "text_encoder_2")


@dataclass
class RandomLora:
    """PEFT state dicts (no component prefix) and their LoraConfigs, per component."""
    family: str
    state_dicts: dict[str, dict[str, torch.Tensor]]
    configs: dict[str, object]
    files: dict[str, Path] = field(default_factory=dict)

    def alpha(self, comp: str) -> float:
        return float(self.configs[comp].lora_alpha)


def make_lora(fx, *, seed: int, unet_targets: Sequence[str] = ATTN_TARGETS, text_targets: Sequence[str] = (),
              text2_targets: Optional[Sequence[str]] = None, rank: int = 4, alpha: Optional[float] = None,
              std: float = 0.15) -> RandomLora:
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    g = torch.Generator().manual_seed(seed)
    sds, cfgs = {}, {}
    parts = [("unet", fx.unet, list(unet_targets))]
    if text_targets:
        parts.append(("text_encoder", fx.text_encoders[0], list(text_targets)))
        if len(fx.text_encoders) > 1:
            parts.append(("text_encoder_2", fx.text_encoders[1], list(text2_targets or text_targets)))
    for comp, module, targets in parts:
        if not targets:
            continue
        cfg = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, target_modules=targets,
                         init_lora_weights="gaussian")
        m = inject_adapter_in_model(cfg, copy.deepcopy(module))
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * std)
        sds[comp] = {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(m).items()}
        cfgs[comp] = cfg
    return RandomLora(fx.spec.family, sds, cfgs)


def _pipeline_cls(fx):
    import diffusers
    return getattr(diffusers, fx.spec.pipeline)


def _layers_kwargs(lora: RandomLora, sds: dict, metadata: bool) -> dict:
    kw = {}
    names = {"unet": "unet", "text_encoder": "text_encoder", "text_encoder_2": "text_encoder_2"}
    for comp, sd in sds.items():
        kw[f"{names[comp]}_lora_layers"] = sd
        if metadata:
            kw[f"{names[comp]}_lora_adapter_metadata"] = lora.configs[comp].to_dict()
    return kw


def write_diffusers(fx, lora: RandomLora, folder: Path) -> Path:
    """diffusers' save_lora_weights: PEFT keys with component prefixes + adapter metadata."""
    _pipeline_cls(fx).save_lora_weights(str(folder), **_layers_kwargs(lora, lora.state_dicts, True))
    return folder / "pytorch_lora_weights.safetensors"


def write_diffusers_021(fx, lora: RandomLora, folder: Path) -> Path:
    """What the 0.21-era training scripts saved: convert_state_dict_to_diffusers (no alphas)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    assert all(c.lora_alpha == c.r for c in lora.configs.values()), "this format carries no alpha"
    sds = {c: convert_state_dict_to_diffusers(sd) for c, sd in lora.state_dicts.items()}
    _pipeline_cls(fx).save_lora_weights(str(folder), **_layers_kwargs(lora, sds, False))
    return folder / "pytorch_lora_weights.safetensors"


def write_peft_raw(fx, lora: RandomLora, comp: str, folder: Path) -> Path:
    """PEFT's own PeftModel.save_pretrained of one component (base_model.model. keys)."""
    from peft import get_peft_model
    module = {"unet": fx.unet, "text_encoder": fx.text_encoders[0]}[comp]
    pm = get_peft_model(copy.deepcopy(module), copy.deepcopy(lora.configs[comp]))
    sd = lora.state_dicts[comp]
    copied = set()
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                key = name[len("base_model.model."):].replace(".default.", ".")
                p.copy_(sd[key])
                copied.add(key)
    assert copied == set(sd), "PEFT model and LoRA state dict disagree"
    pm.save_pretrained(str(folder))
    return folder / "adapter_model.safetensors"


def _module_names(sd: dict) -> list[str]:
    return sorted({k.split(".lora_")[0] for k in sd})


def ldm_module_name(fx, module: str) -> str:
    """The LDM spelling of a diffusers U-Net module, by the fixtures' independent converter."""
    out = fixture_ldm.unet_to_ldm({module + ".weight": torch.zeros(1)}, fx.spec.unet, fx.spec.ldm_style,
                                  fx.spec.up0_attn_leftover)
    (key,) = out
    return key[len(fixture_ldm.UNET_PREFIX):-len(".weight")]


def kohya_state_dict(fx, lora: RandomLora, spelling: str = "diffusers", te_prefix: Optional[str] = None) -> dict:
    """kohya keys. spelling "diffusers": diffusers' convert_state_dict_to_kohya (U-Net modules in
    diffusers spelling); "ldm": kohya names written from the rules with LDM U-Net spelling.
    Alphas: the LoRA's lora_alpha (convert_state_dict_to_kohya writes rank)."""
    out = {}
    if spelling == "diffusers":
        from diffusers.utils import convert_state_dict_to_kohya
        prefixed = {f"{c}.{k}": v for c, sd in lora.state_dicts.items() for k, v in sd.items()}
        out = convert_state_dict_to_kohya(prefixed)
        for k in list(out):
            if k.endswith(".alpha"):
                comp = "unet" if k.startswith("lora_unet") else ("text_encoder_2" if k.startswith("lora_te2") else "text_encoder")
                a = lora.alpha(comp)
                out[k] = torch.tensor(int(a)) if a.is_integer() else torch.tensor(a)   # int64, as diffusers writes
    else:
        prefix = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
        for comp, sd in lora.state_dicts.items():
            for module in _module_names(sd):
                name = ldm_module_name(fx, module) if comp == "unet" else module
                key = prefix[comp] + name.replace(".", "_")
                out[key + ".lora_down.weight"] = sd[module + ".lora_A.weight"]
                out[key + ".lora_up.weight"] = sd[module + ".lora_B.weight"]
                out[key + ".alpha"] = torch.tensor(lora.alpha(comp), dtype=torch.float16)
    if te_prefix:
        out = {(te_prefix + k[len("lora_te1_"):] if k.startswith("lora_te1_") else k): v for k, v in out.items()}
    return out


def write_kohya(fx, lora: RandomLora, path: Path, spelling: str = "diffusers", te_prefix: Optional[str] = None,
                dtype: Optional[torch.dtype] = None, fmt: str = "safetensors") -> Path:
    sd = kohya_state_dict(fx, lora, spelling, te_prefix)
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    save_state_dict(sd, path, fmt)
    return path


def write_old_processor(fx, lora: RandomLora, path: Path) -> Path:
    """diffusers <= 0.20 attention-processor names (only attention q/k/v/out LoRAs)."""
    old_unet = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out.0": "to_out"}
    old_text = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "out_proj": "to_out"}
    out = {}
    for comp, sd in lora.state_dicts.items():
        for module in _module_names(sd):
            parent, _, leaf = module.rpartition(".")
            if module.endswith("to_out.0"):
                parent, leaf = module[:-len(".to_out.0")], "to_out.0"
            if comp == "unet":
                base = f"unet.{parent}.processor.{old_unet[leaf]}_lora"
            else:
                base = f"{comp}.{parent}.{old_text[leaf]}_lora"
            out[base + ".down.weight"] = sd[module + ".lora_A.weight"]
            out[base + ".up.weight"] = sd[module + ".lora_B.weight"]
    save_state_dict(out, path, "safetensors")
    return path


def save_state_dict(sd: dict, path: Path, fmt: str = "safetensors") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif fmt == "pt":
        torch.save(sd, str(path))
    elif fmt == "gguf":
        import gguf
        w = gguf.GGUFWriter(str(path), "lora")
        for k, v in sd.items():
            arr = v.detach().numpy()
            if arr.dtype not in (np.float32, np.float16):
                arr = arr.astype(np.float32)
            w.add_tensor(k, np.ascontiguousarray(arr).reshape(arr.shape or (1,)))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    else:
        raise ValueError(fmt)
    return path


# ------------------------------------------------------------------------------ reference
def reference_pipeline(fx, loras: Sequence[tuple[Path, float]], fmt: str = "ldm"):
    """The fixture's diffusers pipeline (copied modules) with each LoRA loaded by diffusers and
    fused at its scale, one after the other."""
    pipe = fx.pipeline(fmt)
    pipe.unet = copy.deepcopy(pipe.unet)
    pipe.text_encoder = copy.deepcopy(pipe.text_encoder)
    if getattr(pipe, "text_encoder_2", None) is not None:
        pipe.text_encoder_2 = copy.deepcopy(pipe.text_encoder_2)
    for i, (path, scale) in enumerate(loras):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=f"l{i}")
        pipe.fuse_lora(lora_scale=scale, adapter_names=[f"l{i}"])
        pipe.unload_lora_weights()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_reference(pipe, *, sampler=("euler", "discrete"), steps=4, cfg=7.0, latents=None, seed=None,
                  negative=NEGATIVE, output_type="latent", prompt=PROMPT) -> np.ndarray:
    pipe.scheduler = diffusers_scheduler(sampler, pipe.scheduler.config)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    with torch.no_grad():
        out = pipe(prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=cfg,
                   latents=None if latents is None else torch.from_numpy(latents), generator=gen,
                   output_type=output_type, height=SIZE, width=SIZE)
    imgs = out.images
    return imgs.numpy() if output_type == "latent" else np.asarray(imgs, dtype=np.float32)


def store_snapshot(model) -> dict[str, np.ndarray]:
    """Every tensor of the U-Net and text-encoder stores, read back through store.get."""
    out = {}
    for comp, store in model._c["stores"].items():
        if comp == "vae":
            continue
        for name in store.names():
            out[name] = store.get(name)
    return out


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj))
