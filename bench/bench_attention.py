#!/usr/bin/env python
"""The U-Net's attention alone: sdcpp's exact fused f32 kernel vs the int8 one (UNet.attention =
"int8", csrc/kernels/cpu/attention_int8.h) at the SD1 / BK-SDM shapes, per CPU level, through the
same graph op the U-Net builds (nn::attention, ggml threads). CPU time of this process (all
threads), best of --reps; GFLOP/s = 4 Lq Lk D per image over CPU seconds.

    PYTHONPATH=python python bench/bench_attention.py --levels avx2,avx512_bf16
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np

# (label, N, Lq, Lk, D, heads): BK-SDM / SD1 self-attention at a 64x64 latent, per level, and
# the first level's cross-attention (77 tokens of context)
SHAPES = [("self 4096 x 320 (d 40)", 2, 4096, 4096, 320, 8), ("self 1024 x 640 (d 80)", 2, 1024, 1024, 640, 8),
          ("self 256 x 1280 (d 160)", 2, 256, 256, 1280, 8), ("cross 4096 x 77 (d 40)", 2, 4096, 77, 320, 8)]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="avx2", help="comma list of CPU levels (sdcpp.system_info()['cpu_kernels'])")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--shapes", default="all", help="'all' or comma list of indices into SHAPES")
    args = ap.parse_args()

    import sdcpp

    core = sdcpp.engine.weights.native()
    shapes = SHAPES if args.shapes == "all" else [SHAPES[int(i)] for i in args.shapes.split(",")]
    rng = np.random.default_rng(0)
    print(f"CPU: {sdcpp.system_info()['cpu_kernels']['detected']} detected; ggml threads 2 (unet_attention)")
    for level in args.levels.split(","):
        core.set_cpu_level(level)
        k = sdcpp.system_info()["cpu_kernels"]
        print(f"level {level}: attention f32 {k['attention_f32']}, int8 {k['attention_int8']}")
        for label, N, Lq, Lk, D, H in shapes:
            q = rng.standard_normal((N, Lq, D)).astype(np.float32)
            kk = rng.standard_normal((N, Lk, D)).astype(np.float32)
            v = rng.standard_normal((N, Lk, D)).astype(np.float32)
            flops = 4.0 * N * Lq * Lk * D
            row = []
            for name, kernel, typ in (("f32", "fused", "f32"), ("int8", "int8", "f32")):
                if kernel == "fused" and k["attention_f32"] == "ggml_flash":
                    kernel = "flash"
                best_cpu, best_wall = 1e9, 1e9
                for _ in range(args.reps):
                    c0, w0 = cpu_seconds(), time.perf_counter()
                    core.unet_attention(q, kk, v, H, kernel, typ)
                    best_cpu = min(best_cpu, cpu_seconds() - c0)
                    best_wall = min(best_wall, time.perf_counter() - w0)
                row.append((name, best_cpu, best_wall))
            (_, cf, wf), (_, ci, wi) = row
            print(f"  {label:<24} f32 {cf * 1e3:7.1f} ms CPU ({flops / cf / 1e9:5.1f} GFLOP/s)  "
                  f"int8 {ci * 1e3:7.1f} ms CPU ({flops / ci / 1e9:5.1f} GFLOP/s)  f32/int8 {cf / ci:.2f} "
                  f"(wall {wf * 1e3:.0f} / {wi * 1e3:.0f} ms)", flush=True)


if __name__ == "__main__":
    main()
