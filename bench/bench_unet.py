#!/usr/bin/env python
"""U-Net seconds per step: sdcpp (f32 / f16 / bf16 / q8_0 / q5_0 / q4_0 weights) vs diffusers (float32 / bfloat16).

Every configuration runs in its own subprocess (so peak RSS is its own), with the same thread
count (ggml threads / torch.set_num_threads), random weights, batch 2 (as under classifier-free
guidance), a 64x64 latent (512x512 image) and a 77-token context by default.

    PYTHONPATH=python python bench/bench_unet.py --model sd15 --threads 2
    PYTHONPATH=python python bench/bench_unet.py --model bk-sdm-tiny --configs sdcpp-f16,diffusers-bf16
    PYTHONPATH=python python bench/bench_unet.py --model sd15 --configs sdcpp-f16 --attention flash
    PYTHONPATH=python python bench/bench_unet.py --model bk-sdm-tiny --emulate-avx2   # an AVX2-only CPU

Models: the published reference configs in tests/fixtures/configs (sd15, sdxl, ssd-1b,
segmind-vega, bk-sdm-tiny, bk-sdm-small, bk-sdm-base) or a path to a diffusers config.json.
Needs torch + diffusers for the diffusers rows and for the tensor shapes (meta device, no
weights); the sdcpp child itself never imports torch.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "engine"))
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "bench"))

MODELS = {
    "sd15": "sd15_reference.json",
    "sdxl": "sdxl_base_reference.json",
    "ssd-1b": "ssd-1b.json",
    "segmind-vega": "segmind-vega.json",
    "bk-sdm-tiny": "bk-sdm-tiny.json",
    "bk-sdm-small": "bk-sdm-small.json",
    "bk-sdm-base": "bk-sdm-base.json",
}
ALL_CONFIGS = ("sdcpp-f32", "sdcpp-f16", "sdcpp-f32-f23", "sdcpp-f16-f23", "sdcpp-f16-bf16compute", "sdcpp-bf16", "sdcpp-q8_0", "sdcpp-q8_0-int8attn", "sdcpp-q8_0-exactattn", "sdcpp-q8_0-ggml",
               "sdcpp-q8_0-im2col", "sdcpp-q8_0-wino8", "sdcpp-q4_0-wino8", "sdcpp-q5_0", "sdcpp-q4_0", "diffusers-f32", "diffusers-bf16", "diffusers-f16",
               "openvino-f32", "openvino-auto")
# sdcpp-q8_0-ggml: q8_0 weights through ggml's integer products (SDCPP_INT8_GEMM=0), for A/B runs
# sdcpp-q8_0-im2col: quantized convolutions as im2col + sdcpp's integer GEMM (SDCPP_CONV_Q8=0)
#   instead of the one-op convolution (kernels/cpu/conv_q8.h), for A/B runs
# sdcpp-q8_0-wino8 / sdcpp-q4_0-wino8: quantized 3x3 convolutions of the 64x64 latent level by
#   Winograd F(2x2, 3x3) with int8 products (SDCPP_WINOGRAD_Q8=1, nn/winograd_q8.h; off by
#   default) instead of the direct one-op convolution, for A/B runs
# sdcpp-f32-f23 / sdcpp-f16-f23: the 3x3 convolutions by Winograd F(2x2, 3x3) only
#   (SDCPP_WINOGRAD_F43=0) instead of F(4x4, 3x3) on the larger latents, for A/B runs
# sdcpp-q8_0-int8attn: q8_0 weights, UNet.attention = "int8" (the int8 attention kernel; what
#   "auto" takes on the CPU for quantized weights since branch attn9, so sdcpp-q8_0 runs it too)
# sdcpp-q8_0-exactattn: q8_0 weights, UNet.attention = "flash" (the exact attention: what
#   sdcpp-q8_0 measured before int8 became the default for quantized weights)
# sdcpp-f16-bf16compute: f16 weights, UNet.compute = "bf16" (AMX-BF16 products where the CPU has them)


def load_config(model: str) -> dict:
    import unet_models as um

    path = Path(model)
    cfg = json.loads(path.read_text()) if path.exists() else um.load_reference(MODELS[model])
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> float:
    """CPU time of this process (all threads): less sensitive to other load than wall time."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --- children --------------------------------------------------------------------------------

class _RandomTensor:
    """A lazily generated random weight (shape + .numpy()), like a TensorRecord."""

    def __init__(self, name, shape, rng):
        self.name, self.shape, self._rng = name, tuple(shape), rng

    def numpy(self):
        import numpy as np

        if "norm" in self.name and self.name.endswith("weight"):
            return (1.0 + 0.1 * self._rng.standard_normal(self.shape)).astype(np.float32)
        fan_in = max(1, int(np.prod(self.shape[1:])))
        return (self._rng.standard_normal(self.shape, dtype=np.float32) / np.sqrt(fan_in)).astype(np.float32)


def child_sdcpp(args, spec) -> dict:
    import numpy as np

    from sdcpp.engine import weights
    from sdcpp.engine.unet import UNet

    if args.emulate_avx2:
        import avx2_emulation

        avx2_emulation.check_sdcpp()
    rng = np.random.default_rng(0)
    tensors = {"unet." + k: _RandomTensor(k, s, rng) for k, s in spec["shapes"].items()}
    dev = weights.open_device(args.device, args.threads)
    t0 = time.perf_counter()
    store = weights.build_store(dev, tensors, args.config.split("-")[1])
    load_s = time.perf_counter() - t0
    unet = UNet(store, spec["native"])
    unet.attention = ("int8" if args.config.endswith("-int8attn") else
                      "flash" if args.config.endswith("-exactattn") else args.attention)
    if args.config.endswith("-bf16compute"):
        unet.compute = "bf16"
    nc = spec["native"]
    B = args.batch
    x = rng.standard_normal((B, 4, args.latent, args.latent)).astype(np.float32)
    ctx = rng.standard_normal((B, args.context, nc["cross_attention_dim"])).astype(np.float32)
    kw = {}
    if nc.get("addition_embed"):
        kw["text_embeds"] = rng.standard_normal((B, unet.pooled_dim)).astype(np.float32)
        kw["time_ids"] = np.tile(np.array([[1024, 1024, 0, 0, 1024, 1024]], np.float32), (B, 1))
    times, cpu = [], []
    for i in range(args.warmup + args.steps):
        t0, c0 = time.perf_counter(), cpu_seconds()
        out = unet(x, 500.0, ctx, **kw)
        times.append(time.perf_counter() - t0)
        cpu.append(cpu_seconds() - c0)
    assert np.all(np.isfinite(out))
    return {"times": times[args.warmup:], "cpu": cpu[args.warmup:], "first": times[0], "load_s": load_s,
            "weights_mb": store.nbytes / 2**20, "compute_mb": unet.compute_buffer_size / 2**20,
            "attention": unet.resolved_attention}


def child_diffusers(args, spec) -> dict:
    import torch
    from diffusers import UNet2DConditionModel

    if args.emulate_avx2:
        import avx2_emulation

        avx2_emulation.check_torch()
    torch.set_num_threads(args.threads)
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16}.get(args.config.split("-")[1], torch.float32)
    # --device cuda: diffusers on the same GPU (torch's cuDNN/cuBLAS), timed to the end of the step
    dev = "cuda" if args.device.startswith("cuda") else "cpu"
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = UNet2DConditionModel(**spec["diffusers"]).eval().to(dev, dtype)
    sync()
    load_s = time.perf_counter() - t0
    B = args.batch
    x = torch.randn(B, 4, args.latent, args.latent, dtype=dtype, device=dev)
    ctx = torch.randn(B, args.context, spec["diffusers"]["cross_attention_dim"], dtype=dtype, device=dev)
    extra = {}
    if spec["native"].get("addition_embed"):
        add = spec["native"]["addition_embed"]
        pooled = add["in_dim"] - 6 * add["time_embed_dim"]
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(B, pooled, dtype=dtype, device=dev),
                                      "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]] * B, dtype=dtype,
                                                               device=dev)}
    t = torch.full((B,), 500.0, device=dev)
    times, cpu = [], []
    with torch.inference_mode():
        for i in range(args.warmup + args.steps):
            t0, c0 = time.perf_counter(), cpu_seconds()
            out = model(x, t, ctx, **extra).sample
            sync()
            times.append(time.perf_counter() - t0)
            cpu.append(cpu_seconds() - c0)
    assert torch.isfinite(out.float()).all()
    return {"times": times[args.warmup:], "cpu": cpu[args.warmup:], "first": times[0], "load_s": load_s}


def child_openvino(args, spec) -> dict:
    """The same random-weight diffusers U-Net, converted to OpenVINO (bench/openvino_reference.py)."""
    import numpy as np
    import torch
    from diffusers import UNet2DConditionModel

    import openvino_reference as ovr

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = UNet2DConditionModel(**spec["diffusers"]).eval()
    B = args.batch
    rng = np.random.default_rng(0)
    inputs = {"sample": rng.standard_normal((B, 4, args.latent, args.latent)).astype(np.float32),
              "timestep": np.full((B,), 500.0, np.float32),
              "encoder_hidden_states": rng.standard_normal(
                  (B, args.context, spec["diffusers"]["cross_attention_dim"])).astype(np.float32)}
    add = spec["native"].get("addition_embed")
    if add:
        inputs["text_embeds"] = rng.standard_normal((B, add["in_dim"] - 6 * add["time_embed_dim"])).astype(np.float32)
        inputs["time_ids"] = np.tile(np.array([[1024, 1024, 0, 0, 1024, 1024]], np.float32), (B, 1))
    run = ovr.compile_module(ovr.UNetForExport(model, bool(add)), {k: torch.from_numpy(v) for k, v in inputs.items()},
                             args.threads, args.config.split("-")[1])
    del model
    load_s = time.perf_counter() - t0
    times, cpu = [], []
    for i in range(args.warmup + args.steps):
        t0, c0 = time.perf_counter(), cpu_seconds()
        out = run(**inputs)
        times.append(time.perf_counter() - t0)
        cpu.append(cpu_seconds() - c0)
    assert np.all(np.isfinite(out))
    return {"times": times[args.warmup:], "cpu": cpu[args.warmup:], "first": times[0], "load_s": load_s}


def run_child(args) -> None:
    spec = json.loads(Path(args.spec).read_text())
    child = {"sdcpp": child_sdcpp, "diffusers": child_diffusers, "openvino": child_openvino}[args.config.split("-")[0]]
    res = child(args, spec)
    res["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(res), flush=True)


# --- parent ----------------------------------------------------------------------------------

def make_spec(args) -> dict:
    import torch
    from diffusers import UNet2DConditionModel

    import unet_models as um

    dc = load_config(args.model)
    with torch.device("meta"):
        model = UNet2DConditionModel(**dc)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    return {"diffusers": dc, "native": um.native_config(dc), "shapes": shapes}


def avx2_emulation_help() -> str:
    import avx2_emulation

    return avx2_emulation.HELP


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sd15", help=f"one of {sorted(MODELS)} or a config.json path")
    ap.add_argument("--configs", default=",".join(ALL_CONFIGS), help="comma list of " + ", ".join(ALL_CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu",
                    help="sdcpp's device (cpu, cuda, vulkan, metal); with cuda the diffusers rows run on the GPU too")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--latent", type=int, default=64, help="latent height = width (image / 8)")
    ap.add_argument("--context", type=int, default=77)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--attention", default="auto", choices=["auto", "mul_mat", "flash", "int8"])
    ap.add_argument("--cpu-level", default=None,
                    help="cap sdcpp's CPU kernels (portable, avx2, avx512, avx512_bf16, amx; SDCPP_CPU_LEVEL), e.g. to "
                         "measure an AVX2 CPU's path on an AVX-512 machine")
    ap.add_argument("--emulate-avx2", action="store_true", help="bench/avx2_emulation.py: " + avx2_emulation_help())
    ap.add_argument("--omp-wait-policy", default="passive", choices=["passive", "active", "inherit"],
                    help="OMP_WAIT_POLICY for every child, sdcpp and torch alike (inherit: leave the environment "
                         "as is; sdcpp then defaults to passive, torch to active)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the list of configurations this many times, interleaved, and keep each one's "
                         "fastest steps (robust to other load on a shared machine)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.emulate_avx2:
        if args.cpu_level not in (None, "avx2"):
            ap.error("--emulate-avx2 runs sdcpp at the level avx2")
        args.cpu_level = "avx2"
    if args.child:
        run_child(args)
        return

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for c in configs:
        if c not in ALL_CONFIGS:
            ap.error(f"unknown config {c!r}")
    if any(c.startswith("openvino") for c in configs):
        import openvino_reference

        if not openvino_reference.available():
            print("openvino is not installed (pip install openvino): its rows are skipped")
            configs = [c for c in configs if not c.startswith("openvino")]
    spec = make_spec(args)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        for rnd in range(args.rounds):
            for c in configs:
                cmd = [sys.executable, __file__, "--child", "--config", c, "--spec", str(spec_path),
                       "--model", args.model, "--threads", str(args.threads), "--batch", str(args.batch),
                       "--latent", str(args.latent), "--context", str(args.context), "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--attention", args.attention, "--device", args.device]
                cmd += ["--emulate-avx2"] if args.emulate_avx2 else []
                env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
                if args.omp_wait_policy != "inherit":
                    env["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
                env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "python"), env.get("PYTHONPATH", "")])
                if args.cpu_level:
                    env["SDCPP_CPU_LEVEL"] = args.cpu_level
                if args.emulate_avx2:
                    import avx2_emulation

                    env.update(avx2_emulation.ENV)
                if c.endswith("-ggml"):
                    env["SDCPP_INT8_GEMM"] = "0"
                if c.endswith("-im2col"):
                    env["SDCPP_CONV_Q8"] = "0"
                    env["SDCPP_WINOGRAD_Q8"] = "0"
                if c.endswith("-wino8"):
                    env["SDCPP_WINOGRAD_Q8"] = "1"
                if c.endswith("-f23"):
                    env["SDCPP_WINOGRAD_F43"] = "0"
                print(f"[{c}] round {rnd + 1}: running ... (load average {os.getloadavg()[0]:.1f})", flush=True)
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    print(f"[{c}] failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
                    continue
                r = json.loads(line[len("RESULT "):])
                if c in results:  # keep every round's steps and the largest peak RSS
                    prev = results[c]
                    r["times"] = prev["times"] + r["times"]
                    r["cpu"] = prev["cpu"] + r["cpu"]
                    r["peak_rss_mb"] = max(prev["peak_rss_mb"], r["peak_rss_mb"])
                    r["first"] = min(prev["first"], r["first"])
                r["mean"] = sum(r["times"]) / len(r["times"])
                r["min"] = min(r["times"])
                r["cpu_mean"] = sum(r["cpu"]) / len(r["cpu"])
                r["cpu_min"] = min(r["cpu"])
                results[c] = r
                extra = f", attention {r['attention']}, compute buffer {r['compute_mb']:.0f} MiB" if "attention" in r else ""
                print(f"[{c}] {r['mean']:.3f} s/step (min {r['min']:.3f}, CPU {r['cpu_mean']:.2f} s, "
                      f"first call {r['first']:.2f} s), peak RSS {r['peak_rss_mb']:.0f} MiB{extra}", flush=True)

    print(f"\nU-Net {args.model} on {args.device}: batch {args.batch}, latent {args.latent}x{args.latent}, context {args.context}, "
          f"{args.threads} threads, {args.steps} timed steps after {args.warmup} warm-up, "
          f"OMP_WAIT_POLICY {args.omp_wait_policy}, {args.rounds} round(s), sdcpp CPU level "
          f"{args.cpu_level or 'detected'}" + (", emulated AVX2-only CPU (both engines)" if args.emulate_avx2 else ""))
    base = [b for b in ("diffusers-f32", "diffusers-bf16", "diffusers-f16", "openvino-f32", "openvino-auto")
            if b in results]
    print(f"{'config':<16}{'mean s':>9}{'min s':>9}{'min CPU s':>11}{'peak RSS MiB':>14}" +
          "".join(f"{'vs ' + b + ' (wall|CPU)':>32}" for b in base))
    for c, r in results.items():
        ratios = "".join(f"{results[b]['min'] / r['min']:>24.2f}x|{results[b]['cpu_min'] / r['cpu_min']:.2f}x" for b in base)
        print(f"{c:<16}{r['mean']:>9.3f}{r['min']:>9.3f}{r['cpu_min']:>11.2f}{r['peak_rss_mb']:>14.0f}{ratios}")
    print("(ratios = baseline / this, on the fastest step's wall time | CPU time; > 1 means faster than the")
    print(" baseline. CPU time = all threads of the process: on a loaded machine a descheduled thread stalls")
    print(" every barrier and wall times of threaded runs suffer; CPU time much less so.)")
    if os.getloadavg()[0] > os.cpu_count() * 0.5:
        print(f"WARNING: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: other work competes with this run")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
