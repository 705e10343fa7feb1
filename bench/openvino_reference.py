"""OpenVINO as a second reference for the benchmarks (the engine FastSD CPU users pick).

optimum-intel's OVStableDiffusionPipeline needs a transformers release that our test stack
does not pin, so the same random-weight diffusers modules are converted directly with
``openvino.convert_model`` (what optimum-intel does underneath) and compiled for the CPU with
the benchmark's thread count. Precision: "f32" forces f32 inference; "auto" leaves OpenVINO's
default, which is bf16 on CPUs with AVX512-BF16 or AMX and f32 elsewhere.

    pip install openvino            # optional; the benchmarks skip these rows without it
"""
from __future__ import annotations

from typing import Any, Callable


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def compile_module(module, example: dict[str, Any], threads: int, precision: str = "f32") -> Callable:
    """Convert a torch module (called with the keyword inputs in `example`) and compile it.
    Returns f(**inputs as numpy) -> first output as numpy."""
    import openvino as ov
    import torch

    with torch.no_grad():
        model = ov.convert_model(module, example_input=example)
    config = {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY"}
    if precision == "f32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    names = [p.get_any_name() for p in compiled.inputs]

    def run(**inputs):
        feed = {name: inputs[name] for name in names}
        return request.infer(feed)[compiled.outputs[0]]

    return run


class UNetForExport:
    """diffusers' UNet2DConditionModel with flat tensor inputs (what convert_model traces)."""

    def __new__(cls, unet, with_added: bool):
        import torch

        class _Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.unet = unet

            def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
                added = {"text_embeds": text_embeds, "time_ids": time_ids} if with_added else None
                return self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=added,
                                 return_dict=False)[0]

        return _Wrapped().eval()
