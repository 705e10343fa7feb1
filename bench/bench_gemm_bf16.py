#!/usr/bin/env python
"""GFLOP/s of the opt-in bf16 product (kernels/cpu/gemm_bf16.h: AMX-BF16 where the CPU has it)
against the exact f32 packed product (kernels/cpu/gemm.h) at the best level, on U-Net-like shapes
(A f32 [M, K] activations, B [N, K] weights of --btype; K = 9 C for the 3x3 convolutions as
im2col products).

    PYTHONPATH=python python bench/bench_gemm_bf16.py --threads 1
    PYTHONPATH=python python bench/bench_gemm_bf16.py --btype f32 --shapes 2048x2880x320

Each figure is the best of --reps runs, in wall time and in CPU time of the process (the latter
less sensitive to other load on a shared machine). Includes rounding A and packing B, as in the graphs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sdcpp  # noqa: E402
from bench_gemm_q8 import SHAPES, best, cpu_name  # noqa: E402


def main() -> None:
    core = sdcpp.engine.weights.native()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--shapes", default=SHAPES, help="comma-separated MxKxN")
    ap.add_argument("--btype", default="f16", choices=["f32", "f16", "bf16"])
    args = ap.parse_args()
    level = core.cpu_levels()[-1]
    rng = np.random.default_rng(0)
    bf16_level = core.cpu_kernels()["gemm_bf16"]
    print(f"CPU: {cpu_name()}; {args.threads} thread(s); B {args.btype}; best of {args.reps}; GFLOP/s wall | CPU time")
    cols = [f"f32 ({level})", f"bf16 ({bf16_level})"]
    print(f"{'M x K x N':<18}" + "".join(f"{c:>20}" for c in cols) + f"{'ratio':>8}")
    for s in args.shapes.split(","):
        M, K, N = (int(v) for v in s.split("x"))
        a = rng.standard_normal((M, K)).astype(np.float32)
        b = rng.standard_normal((N, K)).astype(np.float32)
        if args.btype == "f16":
            b = b.astype(np.float16).view(np.uint16)
        elif args.btype == "bf16":
            b = (b.view(np.uint32) >> 16).astype(np.uint16)
        flops = 2 * M * K * N / 1e9
        row, cpus = f"{s:<18}", []
        for fn in (lambda: core.cpu_kernel_gemm(a, b, args.btype, level, args.threads),
                   lambda: core.cpu_kernel_gemm_bf16(a, b, args.btype, level, args.threads)):
            fn()  # warm up: scratch buffers, pages
            wall, cpu = best(fn, args.reps)
            cpus.append(cpu)
            row += f"{flops / wall:>12.1f} |{flops / max(cpu, 1e-9):>6.1f}"
        print(row + f"{cpus[0] / max(cpus[1], 1e-9):>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
