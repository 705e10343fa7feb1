#!/usr/bin/env python
"""GMAC/s of the q8_0 integer product (kernels/cpu/gemm_q8.h) at each CPU level this machine has,
and of ggml's q8_0 mul_mat on the same bytes, for U-Net-like shapes (A f32 [M, K] activations,
B q8_0 [N, K] weights; K = 9 C for the 3x3 convolutions as im2col products).

    PYTHONPATH=python python bench/bench_gemm_q8.py --threads 1
    PYTHONPATH=python python bench/bench_gemm_q8.py --levels avx512,amx --shapes 2048x2880x320

Each figure is the best of --reps runs, in wall time and in CPU time of the process (the latter
less sensitive to other load on a shared machine). Includes quantizing A and packing B, as in the
graphs. The portable level (plain loops) runs only on the first shape: it is ~100x slower.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

import sdcpp  # noqa: E402

# M x K x N: a 3x3 convolution at 32x32 (C 320), one at 16x16 (C 640) and 8x8 (C 1280) as im2col
# products, a 1x1 / linear at 64x64 (C 320), the cross-attention's context projection.
SHAPES = "2048x2880x320,4096x2880x320,1024x5760x640,256x11520x1280,4096x320x320,77x768x320"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def q8_weights(rng, N, K):
    kb = K // 32
    d = rng.uniform(0.002, 0.02, (N, kb)).astype(np.float16)
    q = rng.integers(-127, 128, (N, kb, 32)).astype(np.int8)
    out = np.zeros((N, kb, 34), np.uint8)
    out[:, :, :2] = d.view(np.uint8).reshape(N, kb, 2)
    out[:, :, 2:] = q.view(np.uint8)
    return out.reshape(N, kb * 34)


def best(fn, reps):
    wall, cpu = [], []
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


def main() -> None:
    core = sdcpp.engine.weights.native()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--shapes", default=SHAPES, help="comma-separated MxKxN")
    ap.add_argument("--levels", default=",".join(core.cpu_levels()), help="comma-separated CPU levels")
    ap.add_argument("--no-ggml", action="store_true", help="skip ggml's q8_0 mul_mat")
    args = ap.parse_args()
    levels = [lv for lv in args.levels.split(",") if lv]
    rng = np.random.default_rng(0)
    print(f"CPU: {cpu_name()}; {args.threads} thread(s); best of {args.reps}; GMAC/s wall | CPU time")
    cols = levels + ([] if args.no_ggml else ["ggml"])
    print(f"{'M x K x N':<18}" + "".join(f"{c:>20}" for c in cols))
    for i, s in enumerate(args.shapes.split(",")):
        M, K, N = (int(v) for v in s.split("x"))
        a = rng.standard_normal((M, K)).astype(np.float32)
        b = q8_weights(rng, N, K)
        macs = M * K * N / 1e9
        row = f"{s:<18}"
        for lv in cols:
            if lv == "portable" and i > 0:
                row += f"{'-':>20}"
                continue
            reps = 1 if lv == "portable" else args.reps
            if lv == "ggml":
                x = a[None]
                fn = lambda: core.cpu_mul_mat_q8(x, b, "ggml", levels[-1], args.threads)  # noqa: E731
            else:
                fn = lambda lv=lv: core.cpu_kernel_gemm_q8(a, b, lv, args.threads)  # noqa: E731
            fn()  # warm up: scratch buffers, pages
            wall, cpu = best(fn, reps)
            row += f"{macs / wall:>12.1f} |{macs / max(cpu, 1e-9):>6.1f}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
