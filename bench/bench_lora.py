"""``set_loras`` time on a real-size SSD-1B with a real-size rank-64 LoRA (random weights).

    PYTHONPATH=python python bench/bench_lora.py --cache /tmp/sdcpp-bench-lora           # f16 and f32 stores
    PYTHONPATH=python python bench/bench_lora.py --weight-types f16 --profile            # + cProfile of a merge
    PYTHONPATH=python python bench/bench_lora.py --merge numpy                           # the numpy fallback

The first run writes (then reuses, under ``--cache``) an SGM-layout SSD-1B single file in f16 with
random weights (U-Net, CLIP-L, OpenCLIP bigG, VAE; shapes from the reference configs in
tests/fixtures/configs built on torch's meta device, names through the fixtures' independent LDM
writer, no torch weights materialised) and two kohya-style rank-64 LoRAs in LDM spelling
(``lora_unet_input_blocks_4_1_...``), f16, alpha 32, touching what an SSD-1B LoRA such as
LCM-LoRA-SSD-1B touches: every attention projection, proj_in/out, the feed-forward layers, every
resnet's conv1/conv2/conv_shortcut/time_emb_proj and the down/up samplers' convs (3x3 convs as
LoCon: down [64, in, 3, 3], up [out, 64, 1, 1]); ``--text`` adds the text encoders' q/k/v/out/fc1/fc2.

Each weight type runs in its own process: load, then ``set_loras([A])``, switch to ``[B]``,
``[A, B]``, and clear (``set_loras([])``, the bit-exact restore), each timed in wall and CPU
seconds (all threads: the machine may be shared, CPU time is the steadier figure).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RANK = 64
ALPHA = 32.0
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown CPU"
    name = next((x.split(":", 1)[1].strip() for x in out.splitlines() if x.startswith("Model name")), "unknown CPU")
    flags = next((x.split(":", 1)[1].split() for x in out.splitlines() if x.startswith("Flags")), [])
    isa = [f for f in flags if f in ("avx2", "fma", "f16c") or f.startswith("avx512") or f.startswith("amx")]
    return f"{name} ({os.cpu_count()} CPUs; {' '.join(isa) or 'no AVX2'})"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------------------ files
def _config(name: str) -> dict:
    cfg = json.loads((ROOT / "tests" / "fixtures" / "configs" / name).read_text())
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _meta_models():
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(_config("ssd-1b.json"))
        vae = AutoencoderKL.from_config(_config("vae_sdxl.json"))
        te1 = CLIPTextModel(CLIPTextConfig(**_config("clip_l_text_encoder.json")))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**_config("clip_g_text_encoder_2.json")))
    return unet, vae, te1, te2


def _fixtures():
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures import ldm
    return ldm


def make_model(path: Path) -> None:
    # the same SGM single file bench_load.py --make --family ssd-1b writes (one writer for both)
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_load import make_file
    make_file(path, "ssd-1b")


def _targets(model, targets) -> list[tuple[str, tuple]]:
    """(module name, weight shape) of every Linear / Conv2d whose name ends with a target."""
    out = []
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if w is None or w.ndim < 2 or not any(name == t or name.endswith("." + t) for t in targets):
            continue
        out.append((name, tuple(w.shape)))
    return out


def make_lora(path: Path, seed: int, text: bool) -> None:
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    ldm = _fixtures()
    unet, _, te1, te2 = _meta_models()
    cfg = dict(unet.config)
    rng = np.random.default_rng(seed)
    parts = [("lora_unet_", unet, UNET_TARGETS)]
    if text:
        parts += [("lora_te1_", te1, TEXT_TARGETS), ("lora_te2_", te2, TEXT_TARGETS)]
    out = {}
    for prefix, model, targets in parts:
        for module, shape in _targets(model, targets):
            if prefix == "lora_unet_":
                (key,) = ldm.unet_to_ldm({module + ".weight": torch.zeros(1)}, cfg, "sdxl")
                module = key[len(ldm.UNET_PREFIX):-len(".weight")]
            base = prefix + re.sub(r"\.", "_", module)
            down_shape = (RANK,) + shape[1:]
            up_shape = (shape[0], RANK) + (1,) * (len(shape) - 2)
            fan = int(np.prod(shape[1:]))
            out[base + ".lora_down.weight"] = (rng.standard_normal(down_shape, dtype=np.float32)
                                               / np.sqrt(fan)).astype(np.float16)
            out[base + ".lora_up.weight"] = (rng.standard_normal(up_shape, dtype=np.float32)
                                             * 0.01).astype(np.float16)
            out[base + ".alpha"] = np.array(ALPHA, dtype=np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path))
    print(f"wrote {path}: {len(out) // 3} modules, {path.stat().st_size / 2**20:.0f} MiB")


# ------------------------------------------------------------------------------ child
def child(args) -> dict:
    import sdcpp

    if args.merge:
        os.environ["SDCPP_LORA_MERGE"] = args.merge
    t0 = time.perf_counter()
    model = sdcpp.load(str(args.model), device="cpu", weight_type=args.weight_type, threads=args.threads,
                       memory="balanced")
    res = {"weight_type": args.weight_type, "load_s": time.perf_counter() - t0, "steps": []}
    a, b = str(args.lora_a), str(args.lora_b)
    plan = [("set A", [(a, 1.0)]), ("switch to B", [(b, 1.0)]), ("A + B", [(a, 1.0), (b, 0.5)]),
            ("clear", []), ("set A again", [(a, 0.8)]), ("clear", [])]
    for i, (what, spec) in enumerate(plan):
        prof = cProfile.Profile() if args.profile and i == 0 else None
        c0, t0 = cpu_seconds(), time.perf_counter()
        if prof:
            prof.enable()
        report = model.set_loras(spec)
        if prof:
            prof.disable()
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        res["steps"].append({"what": what, "wall_s": wall, "cpu_s": cpu, "written": report.written,
                             "restored": report.restored})
        if prof:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(25)
            s.write("\n")
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(15)
            res["profile"] = s.getvalue()
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "sdcpp-bench-lora",
                    help="where the random model and LoRAs are written once and reused")
    ap.add_argument("--weight-types", default="f16,f32")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--text", action="store_true", help="the LoRAs also adapt both text encoders")
    ap.add_argument("--merge", choices=("native", "numpy"), help="force a merge path (SDCPP_LORA_MERGE)")
    ap.add_argument("--profile", action="store_true", help="cProfile the first set_loras")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--lora-a", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--lora-b", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--weight-type", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)))
        return
    model = args.cache / "ssd-1b-random-f16.safetensors"
    tag = "-text" if args.text else ""
    loras = [args.cache / f"lora-r{RANK}-{s}{tag}.safetensors" for s in ("a", "b")]
    if not model.exists():
        make_model(model)
    for seed, p in enumerate(loras):
        if not p.exists():
            make_lora(p, seed + 1, args.text)
    print(f"CPU: {cpu_name()}; {args.threads} threads; load average {os.getloadavg()[0]:.1f}")
    print(f"model {model} ({model.stat().st_size / 2**20:.0f} MiB), LoRAs {loras[0].stat().st_size / 2**20:.0f} MiB each "
          f"(rank {RANK}{', with text encoders' if args.text else ''})")
    results = []
    for wt in args.weight_types.split(","):
        cmd = [sys.executable, __file__, "--child", "--model", str(model), "--lora-a", str(loras[0]),
               "--lora-b", str(loras[1]), "--weight-type", wt, "--threads", str(args.threads)]
        if args.profile:
            cmd.append("--profile")
        if args.merge:
            cmd += ["--merge", args.merge]
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{wt}: failed\n{out.stderr[-3000:]}")
            continue
        r = json.loads(line[7:])
        results.append(r)
        print(f"{wt}: load {r['load_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MiB")
        for s in r["steps"]:
            print(f"  {s['what']:12s} wall {s['wall_s']:6.2f} s  CPU {s['cpu_s']:6.2f} s  "
                  f"({s['written']} merged, {s['restored']} restored)")
        if "profile" in r:
            print(r["profile"])
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
