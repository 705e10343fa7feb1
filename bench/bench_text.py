"""Prompt-encoding benchmark: sdcpp's conditioner vs the text encoders as diffusers runs them.

Real text-encoder topologies with random weights (transformers' default init): SD1 = CLIP-L
(12 layers, 768 wide); SDXL = CLIP-L + OpenCLIP bigG (32 layers, 1280 wide, projection).
One "encode" = the prompt and the negative prompt, as every CFG image needs:
  diffusers: ``encode_prompt`` calls each text encoder once for the prompt and once for the
             negative prompt (batch 1, output_hidden_states=True); tokenisation is not timed.
  sdcpp:     ``Conditioner.encode_pair`` (tokenisation included), f32 and f16 weights.
Both use the same thread count; the median of --repeat runs after one warm-up is reported.

    PYTHONPATH=python python bench/bench_text.py [--family sd1|sdxl|both] [--threads 2] [--repeat 7]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

PROMPT = "a lighthouse at dusk, (dramatic sky:1.2), oil painting, highly detailed"
NEGATIVE = "blurry, low quality"

CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              hidden_act="quick_gelu", projection_dim=768)
BIG_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
             hidden_act="gelu", projection_dim=1280)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown CPU"
    model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in out.splitlines() if ln.startswith("Flags")), [])
    isa = [f for f in flags if f in ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16",
                                     "amx_int8", "asimd", "sve")]
    return f"{model} ({' '.join(isa)})"


def median_time(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def build_models(family: str):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    specs = [("L", CLIP_L)] if family == "sd1" else [("L", CLIP_L), ("G", BIG_G)]
    models = []
    for kind, dims in specs:
        cfg = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, layer_norm_eps=1e-5, bos_token_id=49406,
                             eos_token_id=49407, pad_token_id=1, **dims)
        cls = CLIPTextModelWithProjection if kind == "G" else CLIPTextModel
        models.append((kind, cls(cfg).eval()))
    return models


def canonical(model, prefix: str) -> dict:
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("position_ids"):
            continue
        if not k.startswith(("text_model.", "text_projection.")):
            k = "text_model." + k
        out[prefix + k] = v.detach().numpy()
    return out


def bench_diffusers(models, ids_pos, ids_neg, repeat: int) -> float:
    import torch

    def run():
        with torch.no_grad():
            for _, m in models:
                for ids in (ids_pos, ids_neg):
                    m(torch.from_numpy(ids), output_hidden_states=True)
    return median_time(run, repeat)


def bench_sdcpp(family: str, models, weight_type: str, threads: int, repeat: int) -> float:
    from sdcpp.conditioning import Conditioner, EncoderSlot
    from sdcpp.engine.text import TextEncoder, config_from_transformers
    from sdcpp.engine.weights import build_store, open_device

    device = open_device("cpu", threads)
    slots = []
    for i, (kind, m) in enumerate(models):
        prefix = "text_encoder_2." if i else "text_encoder."
        store = build_store(device, canonical(m, prefix), weight_type)
        enc = TextEncoder(store, prefix, config_from_transformers(m.config.to_dict(), with_projection=kind == "G"))
        n = m.config.num_hidden_layers
        slots.append(EncoderSlot(enc, n, 49407 if kind == "L" else 0, final_norm=family != "sdxl",
                                 default_skip=2 if family == "sdxl" else 1))
    cond = Conditioner(family, slots, zero_empty_negative=family == "sdxl")
    return median_time(lambda: cond.encode_pair(PROMPT, NEGATIVE, None), repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="both", choices=("sd1", "sdxl", "both"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()

    import numpy as np
    import torch

    from sdcpp.tokenizer import PAD_EOS, encode_prompt_chunks

    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()}; threads {args.threads}; median of {args.repeat}")
    families = ("sd1", "sdxl") if args.family == "both" else (args.family,)
    print("| family | diffusers fp32, s | sdcpp f32, s | sdcpp f16, s | diffusers / sdcpp f32 | diffusers / sdcpp f16 |")
    print("|---|---|---|---|---|---|")
    for family in families:
        models = build_models(family)
        ids_pos = np.asarray(encode_prompt_chunks(PROMPT, PAD_EOS).ids, dtype=np.int64)
        ids_neg = np.asarray(encode_prompt_chunks(NEGATIVE, PAD_EOS).ids, dtype=np.int64)
        ref = bench_diffusers(models, ids_pos, ids_neg, args.repeat)
        ours = {wt: bench_sdcpp(family, models, wt, args.threads, args.repeat) for wt in ("f32", "f16")}
        print(f"| {family} | {ref:.3f} | {ours['f32']:.3f} | {ours['f16']:.3f} | "
              f"{ref / ours['f32']:.2f}x | {ref / ours['f16']:.2f}x |", flush=True)
        del models


if __name__ == "__main__":
    main()
