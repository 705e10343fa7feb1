"""What this build of sdcpp can do on this machine: `sdcpp.system_info()` / `sdcpp info`."""
from __future__ import annotations

import platform
from typing import Any

from .engine.weights import native, physical_cores

# ggml's feature names -> the flag Linux prints in /proc/cpuinfo for it.
_CPUINFO_FLAG = {
    "sse3": "pni", "ssse3": "ssse3", "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c",
    "bmi2": "bmi2", "avx_vnni": "avx_vnni", "avx512": "avx512f", "avx512_vbmi": "avx512vbmi",
    "avx512_vnni": "avx512_vnni", "avx512_bf16": "avx512_bf16", "amx_int8": "amx_int8",
}


def host_cpu_flags() -> set[str] | None:
    """The CPU's feature flags (Linux only; None where they cannot be read)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def system_info() -> dict[str, Any]:
    """ggml version, backends and devices, CPU features compiled vs present, default threads.

    `warnings` lists CPU features the CPU has but ggml's CPU backend was compiled without
    (a portable or prebuilt ggml): such a build runs, but slower than it could.
    """
    from . import __version__

    core = native()
    devices = core.list_devices()
    compiled = dict(core.compiled_cpu_features())
    flags = host_cpu_flags()
    host = {name: (flag in flags) for name, flag in _CPUINFO_FLAG.items()} if flags is not None else {}
    missing = sorted(name for name, has in host.items() if has and not compiled.get(name, False))
    warnings = []
    if missing:
        warnings.append(
            "ggml's CPU backend was built without CPU features this machine has: " + ", ".join(missing)
            + " (rebuild from source with the default SD_NATIVE=ON for full speed; see docs/build.md)")
    if not compiled.get("llamafile", False):
        warnings.append("ggml was built without GGML_LLAMAFILE (the fast sgemm path)")
    return {
        "sdcpp_version": __version__,
        "ggml_version": core.ggml_version(),
        "ggml_commit": core.ggml_commit(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "backends": sorted({d["backend"] for d in devices}),
        "devices": devices,
        "cpu_features_compiled": {k: v for k, v in compiled.items() if v},
        "cpu_features_host": {k: v for k, v in host.items() if v},
        "default_threads": physical_cores(),
        # sdcpp's own CPU kernels, chosen at run time (SDCPP_CPU_LEVEL caps the level)
        "cpu_kernels": dict(core.cpu_kernels()),
        # graph nodes ggml's scheduler ran on the CPU instead of a model's non-CPU device (an op
        # that device lacks), summed over this process; Model.placement() says where parts run
        "ops_off_device": int(core.off_device_nodes()),
        "warnings": warnings,
    }


def format_system_info(info: dict[str, Any]) -> str:
    lines = [
        f"sdcpp {info['sdcpp_version']}  (ggml {info['ggml_version']}, python {info['python']}, {info['machine']})",
        f"backends: {', '.join(info['backends'])}",
        "devices:",
    ]
    for d in info["devices"]:
        mem = f", {d['memory_total'] / 2**30:.1f} GiB" if d["memory_total"] else ""
        lines.append(f"  {d['name']:<10} {d['type']:<5} {d['description']}{mem}")
    lines.append("CPU features compiled: " + " ".join(sorted(info["cpu_features_compiled"])))
    if info["cpu_features_host"]:
        lines.append("CPU features present:  " + " ".join(sorted(info["cpu_features_host"])))
    k = info["cpu_kernels"]
    lines.append(f"sdcpp CPU kernels: level {k['level']} (detected {k['detected']}); element-wise {k['elementwise']}, "
                 f"attention f32 {k['attention_f32']}, bf16 {k['attention_bf16']}, int8 {k['attention_int8']}")
    lines.append(f"default threads: {info['default_threads']}")
    for w in info["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)
