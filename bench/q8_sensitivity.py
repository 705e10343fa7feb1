"""Where q8_0's error comes from: final latents (4 Euler steps, CFG 7, the test fixtures) vs
diffusers fp32 with one class of weights quantized at a time (the rest f16), every class but one,
and with the q8_0 rounding applied to the weights only (stored f32: no activation quantization).

    SDCPP_FIXTURE_CACHE=... PYTHONPATH=python:tests python bench/q8_sensitivity.py --families sd1 sdxl
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import sdcpp  # noqa: E402
from sdcpp import loader  # noqa: E402
from sdcpp.engine import weights  # noqa: E402

# role classes (canonical names); a weight matching none is "other"
CLASSES = {
    "attn_qkv": r"\.attn[12]\.to_[qkv]\.weight$",
    "attn_out": r"\.attn[12]\.to_out\.0\.weight$",
    "proj_in": r"\.proj_in\.weight$",
    "proj_out": r"\.proj_out\.weight$",
    "ff_in": r"\.ff\.net\.0\.proj\.weight$",
    "ff_out": r"\.ff\.net\.2\.weight$",
    "conv1": r"resnets\.\d+\.conv1\.weight$",
    "conv2": r"resnets\.\d+\.conv2\.weight$",
    "shortcut": r"conv_shortcut\.weight$",
    "time_emb_proj": r"time_emb_proj\.weight$",
    "downsample": r"downsamplers\.0\.conv\.weight$",
    "upsample": r"upsamplers\.0\.conv\.weight$",
    "clip_qkv": r"self_attn\.[qkv]_proj\.weight$",
    "clip_out": r"self_attn\.out_proj\.weight$",
    "clip_mlp": r"mlp\.fc[12]\.weight$",
    "clip_proj": r"text_projection\.weight$",
}


def role(name: str) -> str:
    for cls, pat in CLASSES.items():
        if re.search(pat, name):
            return cls
    return "other"


def q8_round(arr: np.ndarray) -> np.ndarray:
    """ggml's q8_0 (quantize_row_q8_0_ref) then dequantized: per 32 consecutive values of a row,
    d = amax/127, q = round(x/d), value = q * f16(d)."""
    a = np.asarray(arr, np.float32)
    blocks = a.reshape(-1, 32).astype(np.float32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    inv = np.where(d > 0, 1 / np.where(d > 0, d, 1), 0).astype(np.float32)
    q = np.sign(blocks * inv) * np.floor(np.abs(blocks * inv) + 0.5)     # roundf: ties away
    return (q * d.astype(np.float16).astype(np.float32)).reshape(a.shape).astype(np.float32)


class Policy:
    """Which weights are quantized: mode 'only' (class quantized, rest f16), 'but' (every class
    quantized but this one), 'all'; weights_only stores the q8-rounded values as f32."""

    def __init__(self, mode="all", cls=None, weights_only=False):
        self.mode, self.cls, self.weights_only = mode, cls, weights_only
        self.quantized = {}    # name -> elements

    def pick(self, name):
        r = role(name)
        if self.mode == "only":
            return r == self.cls
        if self.mode == "but":
            return r != self.cls
        return True


ORIG_STORAGE = weights.storage_type
ORIG_BUILD = weights.build_store
POLICY = Policy()


def patched_storage(name, shape, wt):
    if POLICY.mode == "policy":      # the engine's own KEEP_F16 table
        return ORIG_STORAGE(name, shape, wt)
    t = ORIG_STORAGE(name, shape, wt, keep_f16=False)
    if t in weights.QUANT_TYPES:
        k = int(np.prod(shape[1:]))
        if k % 32 or not POLICY.pick(name):
            return "f16"
        POLICY.quantized[name] = int(np.prod(shape))
        if POLICY.weights_only:
            return "f32"
    return t


def patched_build(dev, tensors, wt, type_of=weights.storage_type, **kw):
    if POLICY.weights_only and wt in weights.QUANT_TYPES:
        tensors = dict(tensors)
        for name, v in list(tensors.items()):
            shape = tuple(int(d) for d in v.shape)
            if type_of(name, shape, wt) == "f32" and name in POLICY.quantized:
                arr = v if isinstance(v, np.ndarray) else v.numpy()
                tensors[name] = q8_round(np.asarray(arr, np.float32))
    return ORIG_BUILD(dev, tensors, wt, type_of, **kw)


CFG = 7.0


def run(fx, latents, wt="q8_0", threads=2):
    from fixtures.e2e import NEGATIVE, PROMPT, SIZE
    m = sdcpp.load(str(fx.path("ldm")), device="cpu", weight_type=wt, threads=threads)
    return m.txt2img(PROMPT, NEGATIVE, width=SIZE, height=SIZE, steps=4, cfg_scale=CFG, sampler="euler",
                     scheduler="discrete", latents=latents, output_type="latent")[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", nargs="+", default=["sd1", "sdxl", "ssd-1b", "bk-sdm-tiny"])
    ap.add_argument("--classes", nargs="*", default=None)
    ap.add_argument("--modes", nargs="+", default=["all", "wonly", "only", "but"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--noise", type=float, default=None,
                    help="the fixtures' parameter noise (tests use 0.05 on diffusers' init); built under a separate cache")
    args = ap.parse_args()
    loader.storage_type = patched_storage      # the policy under test, for the loader only
    loader.build_store = patched_build
    from fixtures import FixtureFactory, factory as fxfactory, fixture_version
    from fixtures.e2e import SIZE, rel, run_diffusers, unit_latents

    global CFG
    CFG = args.cfg
    root = Path(os.environ["SDCPP_FIXTURE_CACHE"]).resolve() / fixture_version()
    if args.noise is not None:
        fxfactory.NOISE = args.noise
        root = root.parent / f"{root.name}-noise{args.noise:g}"
    root.mkdir(parents=True, exist_ok=True)
    factory = FixtureFactory(root)
    global POLICY
    for fam in args.families:
        fx = factory.get(fam)
        latents = unit_latents(7)
        ref = run_diffusers(fx, "ldm", latents=latents, height=SIZE, width=SIZE, cfg=CFG)[0]
        POLICY = Policy()
        e16 = rel(run(fx, latents, "f16", args.threads), ref)
        print(f"{fam} f16: {e16:.3e}", flush=True)
        if "all" in args.modes:
            POLICY = Policy()
            print(f"{fam} q8_0 all: {rel(run(fx, latents, 'q8_0', args.threads), ref):.3e}", flush=True)
        if "policy" in args.modes:
            POLICY = Policy("policy")
            print(f"{fam} q8_0 with KEEP_F16: {rel(run(fx, latents, 'q8_0', args.threads), ref):.3e}", flush=True)
        if "wonly" in args.modes:
            POLICY = Policy(weights_only=True)
            print(f"{fam} q8_0 weights only (f32 products): {rel(run(fx, latents, 'q8_0', args.threads), ref):.3e}",
                  flush=True)
        classes = args.classes or list(CLASSES)
        for cls in classes:
            if "wonly-only" in args.modes:
                POLICY = Policy("only", cls, weights_only=True)
                out = run(fx, latents, "q8_0", args.threads)
                print(f"{fam} only {cls:14s} weights only (f32 products): {rel(out, ref):.3e}", flush=True)
            for mode in ("only", "but"):
                if mode not in args.modes:
                    continue
                POLICY = Policy(mode, cls)
                out = run(fx, latents, "q8_0", args.threads)
                n = sum(POLICY.quantized.values())
                if mode == "only" and n == 0:
                    continue
                print(f"{fam} {mode:4s} {cls:14s} quantized {n / 1e6:7.3f} M: {rel(out, ref):.3e}", flush=True)


if __name__ == "__main__":
    main()
