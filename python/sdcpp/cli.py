"""The `sdcpp` command. Exit codes: 0 success, 1 user error (one-line message), 2 usage."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Optional, Sequence

from . import errors


def _cmd_info(args: argparse.Namespace) -> int:
    from .system import format_system_info, system_info

    info = system_info()
    print(json.dumps(info, indent=2) if args.json else format_system_info(info))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .arch import inspect

    info = inspect(args.model)
    print(json.dumps(info.summary(), indent=2) if args.json else info.describe())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdcpp", description="Stable Diffusion on a native ggml engine")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="ggml version, backends, devices and CPU features")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("inspect", help="the architecture a checkpoint holds (no weights loaded)")
    p.add_argument("model", help="a checkpoint file, a diffusers folder or a Hugging Face repo id")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_inspect)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Generation commands (txt2img, img2img) register themselves here from their modules.
def _generation_commands(sub: argparse._SubParsersAction) -> None:
    from .cli_generate import register

    register(sub)


def _serve_command(sub: argparse._SubParsersAction) -> None:
    from .server.cli import register

    register(sub)


_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_generation_commands, _serve_command]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except errors.SdcppError as exc:
        print(f"sdcpp: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sdcpp: interrupted", file=sys.stderr)
        return 1


def console_main() -> int:
    """The `sdcpp` executable: a process of our own, so it may tune the OpenMP runtime.

    ggml's CPU backend meets its OpenMP threads at a barrier after every graph node; with
    OpenMP's default active waiting, one descheduled thread on a busy machine stalls each
    barrier (measured: a 2-thread U-Net step 1.2 s vs 0.07 s on a loaded 2-core machine), while
    passive waiting costs microseconds per barrier on an idle one. libgomp reads the variable
    when it loads, so it is set before the extension is imported; a value the user set wins.
    The library (`import sdcpp`) never changes its host process's environment: see
    docs/build.md, "Threads".
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return main()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console_main())
