#!/usr/bin/env python
"""Where a U-Net step's time goes: UNet.profile's per-node times (one thread: the node times are
then the calling thread's CPU time), summed per op kind, largest first.

    SDCPP_CPU_LEVEL=avx2 PYTHONPATH=python python bench/profile_unet.py --model bk-sdm-tiny --weights q8_0

Random weights as bench_unet.py; zero inputs (the graph's cost does not depend on the values).
"""
from __future__ import annotations

import argparse
import collections
import re

import bench_unet as bu


def is_conv3x3(r: dict) -> bool:
    """A node of a 3x3 convolution, told by its shapes: the im2col, the kernel transform (reads a
    [3, 3, C, OC] kernel) and the Winograd operands' products / output transform (their last
    dimension is F(2,3)'s 16 or F(4,3)'s 36 transformed values; the input transform writes them)."""
    def winograd(shape: str) -> bool:
        return re.search(r",(16|36)\]$", shape) is not None

    return (r["op"] == "IM2COL" or r["src0"].startswith(("f16[3,3,", "f32[3,3,", "bf16[3,3,")) or winograd(r["src0"])
            or winograd(r["src1"]) or (r["op"].startswith("CUSTOM") and winograd(r["shape"])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bk-sdm-tiny")
    ap.add_argument("--weights", default="q8_0", help="f32, f16, bf16, q8_0, q5_0, q4_0")
    ap.add_argument("--compute", default="f32", help="f32 (exact) or bf16 (AMX / AVX512-BF16 products)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--no-repack", action="store_true", help="keep q4_0 out of ggml's repacked layout (sdcpp's product)")
    args = ap.parse_args()

    import numpy as np

    from sdcpp.engine import weights
    from sdcpp.engine.unet import UNet

    spec = bu.make_spec(argparse.Namespace(model=args.model))
    rng = np.random.default_rng(0)
    tensors = {"unet." + k: bu._RandomTensor(k, s, rng) for k, s in spec["shapes"].items()}
    store = weights.build_store(weights.open_device("cpu", 1), tensors, args.weights,
                                **({"repack": False} if args.no_repack else {}))
    unet = UNet(store, spec["native"])
    unet.compute = args.compute
    unet.profile(args.batch, args.latent, args.latent)  # warm-up: scratch buffers, packed weights
    rows = unet.profile(args.batch, args.latent, args.latent)
    total = sum(r["cpu_us"] for r in rows)
    per = collections.defaultdict(lambda: [0.0, 0])
    for r in rows:
        # custom ops (sdcpp's kernels) have generated names: told apart by their operands' shapes
        key = r["op"] if not r["op"].startswith("CUSTOM") else f"CUSTOM {r['src0']} x {r['src1']}"
        per[key][0] += r["cpu_us"]
        per[key][1] += 1
    print(f"{args.model} {args.weights} compute {args.compute}, batch {args.batch}, latent {args.latent}: {total / 1e6:.2f} s CPU, 1 thread")
    conv = sum(r["cpu_us"] for r in rows if is_conv3x3(r))
    print(f"3x3 convolutions (im2col, Winograd transforms and products): {conv / 1e6:.2f} s, {100 * conv / total:.0f} %")
    for k, (us, n) in sorted(per.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"{k:<60}{n:>6}{us / 1e6:>9.3f} s{100 * us / total:>7.1f} %")


if __name__ == "__main__":
    main()
