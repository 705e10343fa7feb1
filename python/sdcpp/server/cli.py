"""`sdcpp serve`: registered into the `sdcpp` command by sdcpp/cli.py."""
from __future__ import annotations

import argparse
import sys

from .. import errors


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the A1111 and OpenAI image APIs over HTTP (needs sdcpp[server])",
                       description="Serve one model over the AUTOMATIC1111 (/sdapi/v1) and OpenAI (/v1/images) "
                                   "HTTP APIs. See docs/server.md.")
    p.add_argument("-m", "--model", required=True, help="checkpoint file, diffusers folder or Hugging Face repo id")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--models-dir", default=None, help="folder of checkpoints clients may switch to")
    p.add_argument("--lora-dir", "--lora-model-dir", dest="lora_dir", default=None,
                   help="folder searched for <lora:name:scale> tags in prompts")
    p.add_argument("--max-queue", type=int, default=16, help="jobs that may wait behind the running one (then 429)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route but /health "
                        "(or set SDCPP_API_KEY)")
    p.add_argument("--max-size", type=int, default=2048, help="largest width or height accepted")
    p.add_argument("--max-steps", type=int, default=150, help="most sampling steps accepted")
    p.add_argument("--max-images", type=int, default=16, help="most images per request")
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, vulkan, metal")
    p.add_argument("--type", "--weight-type", dest="weight_type", default=None, choices=("f32", "f16", "bf16"))
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    import os

    try:
        import uvicorn
    except ImportError:
        raise errors.SdcppError("`sdcpp serve` needs the server extra: pip install \"sdcpp[server]\"") from None
    from ..pipeline import load
    from . import Limits, ServerConfig, create_app

    if args.max_queue < 0:
        raise errors.InvalidArgumentError(f"--max-queue must be >= 0, got {args.max_queue}")
    for name in ("max_size", "max_steps", "max_images"):
        if getattr(args, name) < 1:
            raise errors.InvalidArgumentError(f"--{name.replace('_', '-')} must be >= 1")
    limits = Limits(max_width=args.max_size, max_height=args.max_size, max_steps=args.max_steps,
                    max_images=args.max_images)
    config = ServerConfig(model=args.model, models_dir=args.models_dir, lora_dir=args.lora_dir,
                          max_queue=args.max_queue, api_key=args.api_key or os.environ.get("SDCPP_API_KEY"),
                          device=args.device, threads=args.threads, weight_type=args.weight_type, limits=limits)
    # Load before binding: a bad model path is a one-line error and exit 1, not a half-up server.
    model = load(args.model, device=args.device, threads=args.threads, weight_type=args.weight_type,
                 lora_dir=args.lora_dir)
    app = create_app(config, model=model)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        print(f"sdcpp serve: warning: listening on {args.host} without --api-key: anyone who can reach "
              f"this port can use it", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
