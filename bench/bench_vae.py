"""VAE decode benchmark: sdcpp (f32 / f16 / bf16 weights) vs diffusers (float32 / bfloat16).

Real SD VAE topology (docs/reference/configs/vae_sd1.json), random weights (diffusers' default
init, shared by every configuration through one safetensors file), one 1x4x64x64 latent
(512x512 image). Each configuration runs in its own subprocess so its peak RSS is its own;
all use the same thread count.

    PYTHONPATH=python python bench/bench_vae.py [--threads 2] [--size 64] [--repeat 1]
        [--configs sdcpp-f32,sdcpp-f16,sdcpp-bf16,diffusers-fp32,diffusers-bf16]

Extra configurations: sdcpp-<weights>[-<option>...] with options winograd (the CPU default:
Winograd F(4x4, 3x3) strips), direct (ggml_conv_2d_direct), im2col (whole-image im2col, no
strips), strips<N> (im2col strips, budget N MiB; the default before Winograd), cbf16 (bf16 compute),
e.g. sdcpp-bf16-cbf16.

--emulate-avx2 runs both engines as on an AVX2-only CPU (bench/avx2_emulation.py; sdcpp must be
built against an AVX2-only ggml, bench/README.md).
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

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = "sdcpp-f32,sdcpp-f16,sdcpp-bf16,diffusers-fp32,diffusers-bf16"


def _vae_config() -> dict:
    p = ROOT / "tests" / "fixtures" / "configs" / "vae_sd1.json"
    return {k: v for k, v in json.loads(p.read_text()).items() if not k.startswith("_")}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def make_weights(path: Path) -> None:
    import torch
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    torch.manual_seed(0)
    vae = AutoencoderKL(**{k: v for k, v in _vae_config().items() if k not in ("scaling_factor", "force_upcast")})
    with torch.no_grad():  # noticeable noise on norms/biases too, as in the tests
        for name, p in vae.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn_like(p))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(path))


def run_child(config: str, weights: str, threads: int, size: int, repeat: int, emulate_avx2: bool = False) -> dict:
    import numpy as np

    sys.path.insert(0, str(ROOT / "bench"))
    import avx2_emulation

    rng = np.random.RandomState(0)
    latent = rng.randn(1, 4, size, size).astype(np.float32)
    out: dict = {"config": config}
    if config.startswith("diffusers"):
        import torch
        from diffusers import AutoencoderKL
        from safetensors.torch import load_file

        if emulate_avx2:
            out["emulation"] = avx2_emulation.check_torch()
        torch.set_num_threads(threads)
        cfg = {k: v for k, v in _vae_config().items() if k not in ("scaling_factor", "force_upcast")}
        vae = AutoencoderKL(**cfg)
        vae.load_state_dict(load_file(weights))
        vae.eval()
        dtype = torch.bfloat16 if config.endswith("bf16") else torch.float32
        vae.to(dtype)
        z = torch.from_numpy(latent).to(dtype)
        out["rss_loaded_mb"] = _current_rss_mb()
        times, cpu = [], []
        with torch.no_grad():
            for _ in range(repeat):
                t, c = time.perf_counter(), time.process_time()
                img = vae.decode(z).sample
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
        img = img.float().numpy()
    else:
        sys.path.insert(0, str(ROOT / "python"))
        from safetensors import safe_open
        from sdcpp.engine import vae as V
        from sdcpp.engine.weights import open_device

        if emulate_avx2:
            out["emulation"] = avx2_emulation.check_sdcpp()
        parts = config.split("-")
        weight_type = parts[1]
        fh = safe_open(weights, framework="np")

        class Lazy:  # one tensor read at a time from the file
            def __init__(self, name):
                self.name = name
                self.shape = tuple(fh.get_slice(name).get_shape())

            def numpy(self):
                return fh.get_tensor(self.name)

        tensors = {"vae." + k: Lazy(k) for k in fh.keys() if not k.startswith("encoder.") and k != "quant_conv.weight"
                   and k != "quant_conv.bias"}
        device = open_device("cpu", threads)
        vae = V.VAE.from_tensors(device, tensors, V.native_config(_vae_config()), weight_type=weight_type)
        for mode in parts[2:]:
            if mode.startswith("strips"):
                vae.set_options(conv="strips", max_im2col_mb=float(mode[6:] or 128))
            elif mode.startswith("c"):
                vae.set_options(compute=mode[1:])
            else:
                vae.set_options(conv=mode)
        out["options"] = vae.options()
        out["rss_loaded_mb"] = _current_rss_mb()
        times, cpu = [], []
        for _ in range(repeat):
            t, c = time.perf_counter(), time.process_time()
            img = vae.decode(latent)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        out["compute_buffer_mb"] = vae.compute_buffer_size / 2**20
    out["seconds"] = times
    out["cpu_seconds"] = cpu
    out["peak_rss_mb"] = _rss_mb()
    out["finite"] = bool(np.isfinite(img).all())
    out["image_std"] = float(img.std())
    np.save(os.environ["VAE_BENCH_OUT"], img)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=64, help="latent side (64 -> 512x512 image)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--configs", default=DEFAULT_CONFIGS)
    ap.add_argument("--emulate-avx2", action="store_true", help="see bench/avx2_emulation.py")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        print(json.dumps(run_child(args.child, args.weights, args.threads, args.size, args.repeat, args.emulate_avx2)))
        return

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        wpath = Path(tmp) / "vae.safetensors"
        make_weights(wpath)
        results = []
        images = {}
        for cfg in args.configs.split(","):
            env = dict(os.environ, VAE_BENCH_OUT=str(Path(tmp) / f"{cfg}.npy"),
                       OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
            if args.emulate_avx2:
                sys.path.insert(0, str(ROOT / "bench"))
                import avx2_emulation

                env.update(avx2_emulation.ENV)
            cmd = [sys.executable, __file__, "--child", cfg, "--weights", str(wpath), "--threads", str(args.threads),
                   "--size", str(args.size), "--repeat", str(args.repeat)] + (["--emulate-avx2"] if args.emulate_avx2 else [])
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if p.returncode != 0:
                print(f"{cfg}: FAILED\n{p.stderr[-2000:]}")
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            results.append(r)
            images[cfg] = np.load(env["VAE_BENCH_OUT"])
            extra = f", compute buffer {r['compute_buffer_mb']:.0f} MB" if "compute_buffer_mb" in r else ""
            print(f"{cfg:22s} {min(r['seconds']):7.2f} s (CPU {min(r['cpu_seconds']):6.2f} s)  peak RSS "
                  f"{r['peak_rss_mb']:6.0f} MB (after load {r['rss_loaded_mb']:5.0f} MB{extra})  finite={r['finite']}",
                  flush=True)

    ref = images.get("diffusers-fp32")
    print(f"\nVAE decode {args.size}x{args.size} latent -> {8 * args.size}x{8 * args.size}, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.2f}"
          + (", emulated AVX2-only CPU (both engines)" if args.emulate_avx2 else ""))
    print("(wall seconds and process CPU seconds, best of --repeat; ratios > 1 mean sdcpp is faster; on a busy "
          "machine compare CPU seconds)")
    base = {r["config"]: (min(r["seconds"]), min(r["cpu_seconds"])) for r in results}
    print(f"{'config':22s} {'wall s':>7s} {'CPU s':>7s} {'peak RSS MB':>12s} {'fp32/this wall|CPU':>19s} "
          f"{'bf16/this wall|CPU':>19s} {'rel L2 vs fp32':>15s}")

    def ratio(key, s, c):
        if key not in base:
            return "-"
        return f"{base[key][0] / s:.2f} | {base[key][1] / c:.2f}"

    for r in results:
        s, c = min(r["seconds"]), min(r["cpu_seconds"])
        err = ""
        if ref is not None:
            img = images[r["config"]]
            err = f"{np.linalg.norm(img - ref) / np.linalg.norm(ref):.2e}"
        print(f"{r['config']:22s} {s:7.2f} {c:7.2f} {r['peak_rss_mb']:12.0f} {ratio('diffusers-fp32', s, c):>19s} "
              f"{ratio('diffusers-bf16', s, c):>19s} {err:>15s}")

if __name__ == "__main__":
    main()
