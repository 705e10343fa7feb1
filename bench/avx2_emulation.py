"""Run both engines as they would run on an AVX2-only CPU (no AVX-512, VNNI or AMX), on a machine
that has more: issue 8's main targets are for such a CPU, and this is how they are measured here.

- sdcpp: SDCPP_CPU_LEVEL=avx2 caps its own kernels; ggml's CPU code is fixed when ggml is built, so
  the extension must be built against an AVX2-only ggml (GGML_NATIVE=OFF, GGML_AVX2=ON,
  GGML_AVX512*=OFF; bench/README.md has the commands). check_sdcpp() refuses a ggml with AVX-512.
- torch (diffusers): ATEN_CPU_CAPABILITY=avx2 picks ATen's AVX2 kernels, ONEDNN_MAX_CPU_ISA=AVX2
  caps oneDNN's JIT (convolutions, matmuls), MKL_ENABLE_INSTRUCTIONS=AVX2 caps MKL's.

All three are read when the libraries load, so they go into the environment of the child
processes, never set after torch is imported.
"""
from __future__ import annotations

ENV = {
    "SDCPP_CPU_LEVEL": "avx2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}

HELP = ("emulate an AVX2-only CPU for both engines (sdcpp at SDCPP_CPU_LEVEL=avx2 with an AVX2-only ggml; "
        "torch with ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2)")


def check_sdcpp() -> str:
    """In a child: the sdcpp side of the emulation, or SystemExit when it would not be AVX2-only."""
    import sdcpp
    from sdcpp.engine import weights

    info = sdcpp.system_info()
    wide = sorted(f for f in info["cpu_features_compiled"] if f.startswith("avx512") or f.startswith("amx"))
    if wide:
        raise SystemExit("--emulate-avx2: this extension's ggml was built with " + ", ".join(wide)
                         + "; build it against an AVX2-only ggml (bench/README.md)")
    level = weights.native().cpu_level()
    if level != "avx2":
        raise SystemExit(f"--emulate-avx2: sdcpp's kernels run at {level}, not avx2")
    return f"sdcpp kernels {level}, ggml compiled with " + " ".join(sorted(info["cpu_features_compiled"]))


def check_torch() -> str:
    """In a child, after importing torch: the torch side of the emulation, or SystemExit."""
    import torch

    cap = torch.backends.cpu.get_cpu_capability()
    if cap.lower() != "avx2":
        raise SystemExit(f"--emulate-avx2: torch's CPU capability is {cap}, not AVX2")
    return f"torch CPU capability {cap}"
