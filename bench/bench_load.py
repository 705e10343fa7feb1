"""Load time and peak memory of the whole pipeline from an f16 SD1.5-size single file.

    PYTHONPATH=python python bench/bench_load.py --file /tmp/sd15-f16.safetensors --make   # write it once
    PYTHONPATH=python python bench/bench_load.py --file /tmp/sd15-f16.safetensors --memory low,balanced,fast

``--make`` writes an A1111-layout single file of SD1.5's real shapes (U-Net, CLIP-L, VAE) with
random f16 weights (shapes from diffusers/transformers models built on the meta device, names
through the test fixtures' independent LDM writer; no torch weights are materialised).

Each configuration runs in its own process: load (file in the page cache = warm; ``--cold``
evicts the file's pages first with posix_fadvise(DONTNEED), no root needed), then optionally
``--steps`` of txt2img at ``--size``. Reported: load seconds, RSS after load split into anonymous
memory (our weight copies, buffers) and file pages (the mapped checkpoint counted in RSS), the
weight bytes per component, then the peak RSS of the whole run and the compute buffers.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss() -> dict:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            for key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                if line.startswith(key + ":"):
                    out[key] = int(line.split()[1]) / 1024.0
    return out


def reset_peak() -> None:
    """Start a new VmHWM window (Linux 4.0+: writing 5 to clear_refs resets the peak RSS)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def watch_phases(model) -> dict:
    """Peak RSS per phase of a call (prompt encoding, sampling, decoding) and the RSS split at the
    start of the decode, by wrapping the model's own phase methods (nothing else changes)."""
    phases: dict = {}
    cond, decode, vae_run = model.conditioner.encode_schedules, model._decode, model._vae_run

    def encode_schedules(*a, **k):
        phases.setdefault("load_peak", rss()["VmHWM"])   # before the first reset: loading's peak
        reset_peak()
        try:
            return cond(*a, **k)
        finally:
            phases["encode_peak"] = rss()["VmHWM"]
            reset_peak()

    def _decode(*a, **k):
        phases["sample_peak"] = rss()["VmHWM"]
        phases["before_decode"] = rss()
        phases["unet_compute_mb"] = model._c["unet"].compute_buffer_size / 2**20
        return decode(*a, **k)

    def _vae_run(encode, *a, **k):
        # the decode's window opens here, after _decode released what the memory mode releases
        # (a window opened earlier could not fall below the RSS it opened at)
        if not encode:
            phases["decode_start"] = rss()
            reset_peak()
        try:
            return vae_run(encode, *a, **k)
        finally:
            if not encode:
                phases["decode_peak"] = rss()["VmHWM"]

    model.conditioner.encode_schedules = encode_schedules
    model._decode = _decode
    model._vae_run = _vae_run
    return phases


def make_file(path: Path, family: str = "sd15") -> None:
    import numpy as np
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.numpy import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures import ldm

    cfgs = ROOT / "tests" / "fixtures" / "configs"

    def config(name):
        return {k: v for k, v in json.loads((cfgs / name).read_text()).items() if not k.startswith("_")}

    xl = family == "ssd-1b"
    ucfg = config("ssd-1b.json" if xl else "sd15_reference.json")
    vcfg, tcfg = config("vae_sdxl.json" if xl else "vae_sd1.json"), config("clip_l_text_encoder.json")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(ucfg)
        vae = AutoencoderKL.from_config(vcfg)
        te = CLIPTextModel(CLIPTextConfig(**tcfg))
        if xl:
            from transformers import CLIPTextModelWithProjection
            te2 = CLIPTextModelWithProjection(CLIPTextConfig(**config("clip_g_text_encoder_2.json")))
    shapes = ldm.unet_to_ldm(unet.state_dict(), dict(unet.config), "sdxl" if xl else "sd")
    shapes.update(ldm.vae_to_ldm(vae.state_dict(), dict(vae.config)))
    if xl:  # SGM single file: CLIP-L as embedders.0, OpenCLIP bigG as embedders.1
        shapes.update(ldm.clip_to_ldm(te.state_dict(), "conditioner.embedders.0.transformer."))
        shapes.update(ldm.openclip_to_ldm(te2.state_dict(), "conditioner.embedders.1.model."))
    else:
        shapes.update(ldm.clip_to_ldm(te.state_dict(), "cond_stage_model.transformer."))
    rng = np.random.default_rng(0)
    arrays = {}
    for name, t in shapes.items():
        shape = tuple(t.shape)
        if "position_ids" in name:
            continue
        if name.endswith("weight") and ("norm" in name or len(shape) == 1):
            a = 1.0 + 0.05 * rng.standard_normal(shape, dtype=np.float32)
        else:
            fan_in = max(1, int(np.prod(shape[1:]))) if len(shape) > 1 else 1
            a = rng.standard_normal(shape, dtype=np.float32) * (0.5 / np.sqrt(fan_in))
        arrays[name] = a.astype(np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(arrays, str(path))
    n = sum(a.size for a in arrays.values())
    print(f"wrote {path}: {len(arrays)} tensors, {n / 1e6:.0f} M parameters, {path.stat().st_size / 2**20:.0f} MiB")


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path: Path) -> None:
    with open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass


def child(args) -> dict:
    import numpy as np

    import sdcpp

    t0 = time.perf_counter()
    model = sdcpp.load(args.file, device="cpu", weight_type=args.weight_type, threads=args.threads, memory=args.memory)
    load_s = time.perf_counter() - t0
    after_load = rss()
    def nbytes(store) -> float:            # a freed store (memory="low") counts 0; do not rebuild it
        res = getattr(store, "_resident", None)
        store = store if res is None else res.store
        return 0.0 if store is None else store.nbytes / 2**20

    stores = {k: nbytes(v) for k, v in model._c["stores"].items()}
    res = {"memory": args.memory, "load_s": load_s, "after_load": after_load, "weights_mb": stores}
    if args.steps:
        phases = watch_phases(model)
        if args.vae_tile:
            model.vae_tile_size = args.vae_tile
        t0 = time.perf_counter()
        img = model.txt2img("a lighthouse at dusk", width=args.size, height=args.size, steps=args.steps,
                            sampler="euler", seed=1, output_type="np", vae_tiling=bool(args.vae_tile) or None)[0]
        res["generate_s"] = time.perf_counter() - t0
        res["phases"] = dict(phases)
        assert np.all(np.isfinite(img))
        unet = model._c["unet"]
        freed = hasattr(unet, "resident") and not unet.resident.resident   # memory="low" freed it: no rebuild
        res["unet_compute_mb"] = 0.0 if freed else unet.compute_buffer_size / 2**20
        t0 = time.perf_counter()
        model.txt2img("a lighthouse at dusk", width=args.size, height=args.size, steps=1, sampler="euler",
                      seed=2, output_type="latent")
        res["second_prompt_1_step_s"] = time.perf_counter() - t0
        if hasattr(unet, "resident"):     # memory="low": a converted U-Net is rebuilt per call
            res["unet_builds"], res["unet_build_s"] = unet.resident.builds, unet.resident.build_seconds / unet.resident.builds
    # the pipeline's peak (before the rebuild timings below, which build a VAE beside a resident
    # U-Net as no call does); the phase windows reset the kernel's peak, so it is their maximum
    seen = [v for k, v in res.get("phases", {}).items() if k.endswith("_peak")]
    res["peak_rss_mb"] = max([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0] + seen)
    if args.memory == "low":
        # what "low" pays per prompt: rebuilding the text encoder (and per decode the VAE) from the
        # mapped file; three rounds, the median
        for key, comp in (("text_encoder_rebuild_s", model._c["text_encoders"][0]), ("vae_rebuild_s", model._c["vae"])):
            times = []
            for _ in range(3):
                comp.resident.release()
                t0 = time.perf_counter()
                comp.resident.get()
                times.append(time.perf_counter() - t0)
            comp.resident.release()
            res[key] = sorted(times)[1]
    res["end"] = rss()

    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", required=True, type=Path)
    ap.add_argument("--make", action="store_true", help="write the random f16 single file (--family) and exit")
    ap.add_argument("--family", default="sd15", choices=("sd15", "ssd-1b"), help="what --make writes")
    ap.add_argument("--memory", default="balanced", help="comma list of low, balanced, fast")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weight-type", default="f16", help="the U-Net's and text encoders' weight_type (f16, q8_0, ...)")
    ap.add_argument("--vae-tile", type=int, default=0, help="decode in tiles of this many pixels (0: the default rule)")
    ap.add_argument("--steps", type=int, default=0, help="txt2img steps after loading (0: load only)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--cold", action="store_true", help="evict the file from the page cache before each load")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make:
        make_file(args.file, args.family)
        return
    if args.child:
        print("RESULT " + json.dumps(child(args)))
        return
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        cpu = "unknown CPU"
    print(f"{cpu}, {args.threads} threads, {args.file} ({args.file.stat().st_size / 2**20:.0f} MiB) as "
          f"{args.weight_type}, {'cold' if args.cold else 'warm'} page cache"
          + (f", VAE tiles of {args.vae_tile} px" if args.vae_tile else ""))
    results = []
    for mode in args.memory.split(","):
        if args.cold:
            evict(args.file)
        else:
            warm(args.file)
        cmd = [sys.executable, __file__, "--child", "--file", str(args.file), "--memory", mode,
               "--threads", str(args.threads), "--steps", str(args.steps), "--size", str(args.size),
               "--weight-type", args.weight_type, "--vae-tile", str(args.vae_tile)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{mode}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(line[7:])
        results.append(r)
        a = r["after_load"]
        w = ", ".join(f"{k} {v:.0f}" for k, v in r["weights_mb"].items())
        print(f"{mode:9s} load {r['load_s']:.2f} s | after load RSS {a['VmRSS']:.0f} MiB "
              f"(anon {a['RssAnon']:.0f}, file pages {a['RssFile']:.0f}) | weights MiB: {w}")
        if args.steps:
            print(f"{'':9s} {args.size}x{args.size} {args.steps} steps {r['generate_s']:.1f} s, "
                  f"second prompt (1 step, latent) {r['second_prompt_1_step_s']:.1f} s, "
                  f"U-Net compute {r['unet_compute_mb']:.0f} MiB")
        if "phases" in r:
            ph = r["phases"]
            b = ph["before_decode"]
            print(f"{'':9s} peak RSS by phase: encode {ph['encode_peak']:.0f}, sampling {ph['sample_peak']:.0f}, "
                  f"decode {ph['decode_peak']:.0f} MiB; at the end of sampling RSS {b['VmRSS']:.0f} "
                  f"(anon {b['RssAnon']:.0f}, file pages {b['RssFile']:.0f}), U-Net compute {ph['unet_compute_mb']:.0f} MiB; "
                  f"decode starts at {ph['decode_start']['VmRSS']:.0f} (anon {ph['decode_start']['RssAnon']:.0f}, "
                  f"file {ph['decode_start']['RssFile']:.0f})")
        if r.get("unet_builds", 1) > 1:
            print(f"{'':9s} U-Net built {r['unet_builds']} times (load, then per call after a decode), "
                  f"{r['unet_build_s']:.2f} s each on average")
        if "text_encoder_rebuild_s" in r:
            print(f"{'':9s} rebuild from the mapped file: text encoder {r['text_encoder_rebuild_s']:.2f} s, "
                  f"VAE {r['vae_rebuild_s']:.2f} s")
        print(f"{'':9s} peak RSS {r['peak_rss_mb']:.0f} MiB; at the end RSS {r['end']['VmRSS']:.0f} "
              f"(anon {r['end']['RssAnon']:.0f}, file {r['end']['RssFile']:.0f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu, "results": results}, indent=1))


if __name__ == "__main__":
    main()
