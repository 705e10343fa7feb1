#!/usr/bin/env python
"""Final-latent fidelity of quantized weights at real size: a U-Net with diffusers' default
initialisation (no trained weights here), 4 Euler steps with classifier-free guidance, sdcpp
(f16 / q8_0 with and without the f16 role table, engine.weights.KEEP_F16) vs diffusers fp32.

The denoising loop is the Euler discrete sampler of the tests (tests/engine/euler_loop.py), so
both sides see the same sigmas; the conditioning is a random context pair (cond / uncond) in place of CLIP's output.

    PYTHONPATH=python python bench/q8_fidelity_real.py --model bk-sdm-tiny --latent 64 --threads 2
    PYTHONPATH=python python bench/q8_fidelity_real.py --latent 64 --configs q8_0+exact q8_0+int8attn   # int8 attention

--qk-scale s1 s2 ... repeats the measurement with every attention's to_q / to_k weights times s
(logits times s^2: sharper softmax rows, as a trained checkpoint has; bench/attn_sharpness.py),
printing the diffusers model's self-attention sharpness per s next to the errors.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "engine"))
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "bench"))


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def variant_store(tensors, wt, variant):
    """(tensors, weight_type, type_of) of a --configs entry."""
    import re

    sys.path.insert(0, str(ROOT / "tests"))           # q8_sensitivity's fixture helpers
    from q8_sensitivity import CLASSES, q8_round
    from sdcpp.engine import weights

    def no_policy(name, shape, w):
        return weights.storage_type(name, shape, w, keep_f16=False)

    if variant == "all":
        return tensors, wt, no_policy
    if variant.startswith("keep:"):
        # another f16 role set (bench/q8_sensitivity.py's classes) in place of KEEP_F16
        keep = [re.compile(CLASSES[c]) for c in variant[5:].split(",") if c]

        def keep_some(name, shape, w):
            t = no_policy(name, shape, w)
            return "f16" if t in weights.QUANT_TYPES and any(p.search(name) for p in keep) else t
        return tensors, wt, keep_some
    if variant.startswith("only:"):
        # one class quantized (its sensitivity), every other weight f16
        only = re.compile(CLASSES[variant[5:]])

        def only_one(name, shape, w):
            t = no_policy(name, shape, w)
            return t if t not in weights.QUANT_TYPES or only.search(name) else "f16"
        return tensors, wt, only_one
    if variant == "wonly":
        # the q8_0 rounding of the weights alone: the rounded values stored f32, so their
        # products are float ones (no activation quantization)
        rounded = {n for n, v in tensors.items() if weights.storage_type(n, v.shape, wt) == wt
                   and int(np.prod(v.shape[1:])) % 32 == 0}

        def f32_rounded(name, shape, w):
            return "f32" if name in rounded else weights.storage_type(name, shape, w)
        return {n: q8_round(v) if n in rounded else v for n, v in tensors.items()}, "f16", f32_rounded
    return tensors, wt, weights.storage_type


def clip_check(args):
    """CLIP-L at real size (transformers' default init), one encode of random token ids: the last
    hidden state (what the U-Net's cross-attention reads) vs transformers fp32."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdcpp.engine import weights
    from sdcpp.engine.text import TextEncoder, config_from_transformers

    torch.manual_seed(0)
    cfg = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
    model = CLIPTextModel(cfg).eval()
    tensors = {}
    for k, v in model.state_dict().items():
        if not k.endswith("position_ids"):
            tensors["text_encoder." + (k if k.startswith("text_model.") else "text_model." + k)] = v.numpy()
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size - 2, (2, 77)).astype(np.int32)
    ids[:, -1] = cfg.vocab_size - 1
    with torch.no_grad():
        ref = model(torch.from_numpy(ids).long()).last_hidden_state.numpy()
    dev = weights.open_device("cpu", args.threads)
    for config in args.configs:
        wt, _, variant = config.partition("-")
        stored, wt, type_of = variant_store(tensors, wt, variant)
        store = weights.build_store(dev, stored, wt, type_of)
        enc = TextEncoder(store, "text_encoder.", config_from_transformers(cfg.to_dict(), with_projection=False))
        hidden, _ = enc.encode(ids, pooled_index=np.full(2, 76))
        print(f"CLIP-L {config}: last hidden state rel L2 {rel(hidden, ref):.3e} (weights {store.nbytes / 2**20:.1f} MiB)",
              flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="bk-sdm-tiny")
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", nargs="+", default=["f16", "q8_0", "q8_0-all"],
                    help="sdcpp weight types; '-all' quantizes the roles KEEP_F16 keeps f16 too; "
                         "'q8_0-keep:shortcut,proj_in' keeps those q8_sensitivity classes f16 instead; "
                         "'q8_0-only:conv1' quantizes that class alone; 'q8_0-wonly' stores the q8_0-rounded weights as f32 (weight rounding only); "
                         "a '+int8attn' suffix runs the U-Net with UNet.attention = 'int8', '+exact' with 'flash' "
                         "(no suffix: 'auto', the default)")
    ap.add_argument("--qk-scale", type=float, nargs="+", default=[1.0],
                    help="to_q / to_k weights of every attention times s (one run per s): a sharpness proxy")
    ap.add_argument("--clip", action="store_true", help="CLIP-L text encoder instead (one encode)")
    args = ap.parse_args()
    if args.clip:
        return clip_check(args)

    import torch
    from diffusers import UNet2DConditionModel

    from attn_sharpness import scale_qk
    from bench_unet import load_config

    torch.set_num_threads(args.threads)
    dc = load_config(args.model)
    for s in args.qk_scale:
        torch.manual_seed(0)
        model = UNet2DConditionModel(**dc).eval().float()     # diffusers' own default init
        if s != 1.0:
            scale_qk(model, s)
        run_one(args, dc, model, s)


def run_one(args, dc, model, s):
    import torch

    import unet_models as um
    from attn_sharpness import Sharpness
    from euler_loop import euler
    from sdcpp.engine import weights
    from sdcpp.engine.unet import UNet

    tensors = um.canonical_tensors(model)
    nc = um.native_config(dc)
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((1, 4, args.latent, args.latent)).astype(np.float32)
    ctx = rng.standard_normal((2, 77, dc["cross_attention_dim"])).astype(np.float32)   # uncond, cond
    kw = {}
    if nc.get("addition_embed"):
        add = nc["addition_embed"]
        kw["text_embeds"] = rng.standard_normal((2, add["in_dim"] - 6 * add["time_embed_dim"])).astype(np.float32)
        size = 8 * args.latent
        kw["time_ids"] = np.tile(np.array([[size, size, 0, 0, size, size]], np.float32), (2, 1))

    def torch_eps(x, t):
        extra = {"added_cond_kwargs": {k: torch.from_numpy(v) for k, v in kw.items()}} if kw else {}
        with torch.inference_mode():
            out = model(torch.from_numpy(x), torch.full((2,), t), torch.from_numpy(ctx), **extra).sample.numpy()
        return out[:1], out[1:]

    sharp = Sharpness(model)        # recorded over the reference run's U-Net calls
    t0 = time.perf_counter()
    ref = euler(torch_eps, latents, args.steps, args.cfg)
    tag = f"{args.model} latent {args.latent}" + (f" qk-scale {s:g}" if len(args.qk_scale) > 1 or s != 1.0 else "")
    print(f"{tag}: diffusers fp32 {time.perf_counter() - t0:.1f} s; self-attention sharpness: {sharp.describe()}",
          flush=True)
    dev = weights.open_device("cpu", args.threads)
    for config in args.configs:
        base, _, option = config.partition("+")
        wt, _, variant = base.partition("-")
        stored, wt, type_of = variant_store(tensors, wt, variant)
        store = weights.build_store(dev, stored, wt, type_of)
        types = store.types()
        nbytes = store.nbytes
        unet = UNet(store, nc)
        if option == "int8attn":
            unet.attention = "int8"
        elif option == "exact":
            unet.attention = "flash"
        elif option:
            raise SystemExit(f"unknown config option '+{option}'")

        def eps(x, t):
            out = unet(x, t, ctx, **kw)
            return out[:1], out[1:]

        t0 = time.perf_counter()
        err = rel(euler(eps, latents, args.steps, args.cfg), ref)
        kept = sum(int(np.prod(tensors[n].shape)) for n, t in types.items() if t == "f16" and wt != "f16")
        print(f"{tag} {config} (attention {unet.resolved_attention}): final latents rel L2 {err:.3e} "
              f"(weights {nbytes / 2**20:.1f} MiB, {kept / 1e6:.2f} M values f16; {time.perf_counter() - t0:.1f} s)",
              flush=True)


if __name__ == "__main__":
    main()
