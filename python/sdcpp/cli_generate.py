"""`sdcpp txt2img` and `sdcpp img2img`, with stable-diffusion.cpp's familiar flags."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import errors
from .engine.weights import WEIGHT_TYPES
from .pipeline import SAMPLERS, SCHEDULERS


def _lora_arg(text: str) -> tuple[str, float]:
    """PATH[:SCALE] (a Windows drive colon is left alone)."""
    path, sep, scale = text.rpartition(":")
    if sep and path and not (len(path) == 1 and path.isalpha()):
        try:
            return path, float(scale)
        except ValueError:
            pass
    return text, 1.0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", required=True, help="checkpoint file, diffusers folder or Hugging Face repo id")
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument("-n", "--negative-prompt", default="")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg-scale", type=float, default=7.0)
    p.add_argument("--sampler", "--sampling-method", dest="sampler", default="euler_a", choices=SAMPLERS)
    p.add_argument("--scheduler", "--schedule", dest="scheduler", default="discrete", choices=SCHEDULERS)
    p.add_argument("-s", "--seed", type=int, default=None, help="64-bit seed (random when omitted)")
    p.add_argument("-b", "--batch", "--batch-count", dest="batch", type=int, default=1)
    p.add_argument("--clip-skip", type=int, default=None)
    p.add_argument("-o", "--output", default="output.png",
                   help="PNG path; with a batch, _1, _2 ... are appended before the suffix")
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, vulkan, metal")
    p.add_argument("--type", "--weight-type", dest="weight_type", default=None, choices=WEIGHT_TYPES,
                   help="U-Net and text-encoder storage (default f16; q8_0/q5_0/q4_0: quantized, integer products)")
    p.add_argument("--vae", default=None, help="a separate VAE file or folder")
    p.add_argument("--variant", default=None, help="diffusers weight variant (e.g. fp16); hub repos default to fp16 when present")
    p.add_argument("--revision", default=None, help="Hugging Face Hub revision (branch, tag or commit)")
    p.add_argument("--lora", action="append", default=[], type=_lora_arg, metavar="PATH[:SCALE]",
                   help="apply a LoRA (repeatable)")
    p.add_argument("--lora-dir", "--lora-model-dir", dest="lora_dir", default=None,
                   help="folder searched for <lora:name:scale> tags in the prompt")
    p.add_argument("--embd-dir", "--embedding", dest="embeddings", action="append", default=[], metavar="PATH",
                   help="textual-inversion embeddings: a file or a folder of them (repeatable); "
                        "use one by writing its file name (without suffix) in the prompt")
    p.add_argument("--rng", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--memory", default="balanced", choices=("low", "balanced", "fast"),
                   help="low: text encoders and VAE weights only while used (re-built per prompt); "
                        "fast: keep every weight and buffer (docs/generation.md)")
    p.add_argument("--compute", default="f32", choices=("f32", "bf16"),
                   help="U-Net and ControlNet arithmetic: bf16 = operands rounded to bf16 (AMX CPUs: several "
                        "times faster products, about 1e-2 from f32); f32 = exact")
    p.add_argument("--vae-tiling", default="auto", choices=("auto", "on", "off"),
                   help="VAE in overlapping 512-pixel tiles: auto = above 1024x1024 pixels")
    p.add_argument("--vae-tile-size", type=int, default=512, help="VAE tile size in pixels (multiple of 32)")
    p.add_argument("--control-net", dest="control_net", action="append", default=[], metavar="PATH",
                   help="a ControlNet (diffusers folder or file, control_*.pth/.safetensors, hub id); repeatable, "
                        "each with its own --control-image")
    p.add_argument("--control-image", dest="control_image", action="append", default=[], metavar="IMAGE",
                   help="the control image of each --control-net (resized to the output size)")
    p.add_argument("--control-scale", "--control-strength", dest="control_scale", action="append", type=float,
                   default=[], metavar="S", help="conditioning scale of each --control-net (default 1.0)")
    p.add_argument("--canny", action="store_true",
                   help="turn the control image(s) into Canny edge maps first (sdcpp.preprocess.canny, 100/200)")
    p.add_argument("--no-progress", action="store_true")


def _outputs(path: str, n: int) -> list[Path]:
    out = Path(path)
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i + 1}{out.suffix or '.png'}") for i in range(n)]


def _open_image(path: str, what: str):
    from PIL import Image

    try:
        img = Image.open(path)
        img.load()
        return img
    except OSError as exc:
        raise errors.InvalidArgumentError(f"cannot read the {what} {path!r}: {exc}") from None


def _control(args: argparse.Namespace):
    """control= from the --control-* flags (None without any)."""
    nets, images, scales = args.control_net, args.control_image, args.control_scale
    if not nets and not images:
        return None
    if len(images) != len(nets):
        raise errors.InvalidArgumentError(f"{len(nets)} --control-net but {len(images)} --control-image: "
                                          "give one image per ControlNet")
    if len(scales) > len(nets):
        raise errors.InvalidArgumentError(f"{len(scales)} --control-scale for {len(nets)} --control-net")
    scales = scales + [1.0] * (len(nets) - len(scales))
    from .controlnet import load_controlnet
    from .preprocess import canny

    out = []
    for net, image, scale in zip(nets, images, scales):
        img = _open_image(image, "control image")
        out.append((load_controlnet(net), canny(img) if args.canny else img, scale))
    return out


def _run(args: argparse.Namespace, mode: str) -> int:
    from .outputs import save_png
    from .pipeline import load

    model = load(args.model, vae=args.vae, device=args.device, weight_type=args.weight_type,
                 threads=args.threads, loras=args.lora or None, variant=args.variant, revision=args.revision,
                 embeddings=args.embeddings or None, memory=args.memory, progress=not args.no_progress,
                 compute=args.compute)
    model.vae_tile_size = args.vae_tile_size
    if args.lora_dir and hasattr(model, "lora_dir"):
        model.lora_dir = args.lora_dir
    for r in getattr(model.info, "loras", []):
        print(f"lora: {r.summary()}", file=sys.stderr)
    common = dict(steps=args.steps, cfg_scale=args.cfg_scale, sampler=args.sampler, scheduler=args.scheduler,
                  control=_control(args), seed=args.seed, batch_size=args.batch, clip_skip=args.clip_skip, rng=args.rng,
                  progress=not args.no_progress,
                  vae_tiling={"auto": None, "on": True, "off": False}[args.vae_tiling])
    if mode == "txt2img":
        hires = None
        if args.hires_scale is not None:
            hires = dict(scale=args.hires_scale, steps=args.hires_steps, denoise=args.hires_denoise,
                         upscaler=args.hires_upscaler)
        images = model.txt2img(args.prompt, args.negative_prompt, width=args.width, height=args.height,
                               hires=hires, **common)
    else:
        init = _open_image(args.init_img, "init image")
        if mode == "inpaint":
            images = model.inpaint(init, _open_image(args.mask, "mask"), args.prompt, args.negative_prompt,
                                   strength=args.strength, resize=args.resize, **common)
        else:
            images = model.img2img(init, args.prompt, args.negative_prompt, strength=args.strength,
                                   resize=args.resize, **common)
    for img, path in zip(images, _outputs(args.output, len(images))):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(img, str(path))
        print(path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("txt2img", help="generate images from a prompt")
    _add_common(p)
    p.add_argument("-W", "--width", type=int, default=None)
    p.add_argument("-H", "--height", type=int, default=None)
    p.add_argument("--hires-scale", type=float, default=None,
                   help="hires fix: upscale the first pass by this factor and refine it (A1111)")
    p.add_argument("--hires-steps", type=int, default=None, help="hires fix: second-pass steps (default --steps)")
    p.add_argument("--hires-denoise", type=float, default=0.5, help="hires fix: second-pass strength")
    p.add_argument("--hires-upscaler", default="latent", choices=("latent", "latent-nearest", "lanczos"))
    p.set_defaults(func=lambda a: _run(a, "txt2img"))

    p = sub.add_parser("img2img", help="transform an image guided by a prompt")
    _add_common(p)
    p.add_argument("-i", "--init-img", required=True)
    p.add_argument("--strength", type=float, default=0.75)
    p.add_argument("--resize", action="store_true", help="resize the init image down to a multiple of 8")
    p.set_defaults(func=lambda a: _run(a, "img2img"))

    p = sub.add_parser("inpaint", help="repaint the white part of a mask in an image")
    _add_common(p)
    p.add_argument("-i", "--init-img", required=True)
    p.add_argument("--mask", required=True, help="white = repaint (resized to the image when it differs)")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--resize", action="store_true", help="resize the init image down to a multiple of 8")
    p.set_defaults(func=lambda a: _run(a, "inpaint"))
