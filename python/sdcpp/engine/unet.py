"""The config-driven U-Net (diffusers UNet2DConditionModel semantics) on the native engine.

One class runs SD1, SD2, SDXL, SSD-1B, Segmind Vega and BK-SDM: they differ only in the
native config dict (docs/internals.md §4). Weights come from a WeightStore holding the
canonical ``unet.<diffusers state_dict key>`` tensors, in any of weights.WEIGHT_TYPES
(quantized convolutions run as sdcpp's integer products on the CPU: 3x3 stride-1 ones by
Winograd F(2x2,3x3) with int8 products where `conv` takes Winograd, the others as one direct op;
im2col + integer-dot-product matrix products elsewhere).

    store = weights.build_store(device, {"unet." + k: v for k, v in sd.items()}, "f16")   # or "q8_0" ...
    unet = UNet(store, config)
    eps = unet(latent, timestep, context)                       # SD1 / SD2
    eps = unet(latent, t, context, text_embeds=pooled, time_ids=ids)   # SDXL family
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .. import errors
from .native_call import call_native
from .weights import native

ATTENTION_KERNELS = ("auto", "mul_mat", "flash", "int8")
CONV_IMPLS = ("auto", "im2col", "winograd", "winograd_f43")
COMPUTE_KINDS = ("f32", "bf16")


def check_compute(kind: Any) -> str:
    """`kind` if it is one of COMPUTE_KINDS (UNet / ControlNet .compute, sdcpp.load(compute=),
    load_controlnet(compute=)), else InvalidArgumentError naming the value."""
    if kind not in COMPUTE_KINDS:
        raise errors.InvalidArgumentError(f"compute must be one of {COMPUTE_KINDS}, got {kind!r}")
    return kind


def float_array(value: Any, name: str) -> np.ndarray:
    """`value` as a contiguous float32 array; InvalidArgumentError naming `name` if it is not real-valued."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise errors.InvalidArgumentError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


class UNet:
    """``UNet(store, config)``; call it as ``unet(latent, timestep, context, *, text_embeds, time_ids)``.

    latent [B, in_channels, H, W] (any size; multiples of ``spatial_multiple`` need no resizing), timestep a scalar
    or [B], context [B, L, cross_attention_dim]; text_embeds [B, pooled] and time_ids [B, 6]
    only for models with the SDXL text_time embedding. Returns the prediction
    [B, out_channels, H, W] float32. Classifier-free guidance batches cond + uncond rows in
    one call (B = 2). The graph is built once per (B, H, W, L) and reused.
    """

    def __init__(self, store, config: Mapping[str, Any]):
        if not isinstance(config, Mapping):
            raise errors.InvalidArgumentError("config must be a dict (docs/internals.md §4)")
        self.config = dict(config)
        self._native = call_native(native().UNet, store, self.config)
        self.store = store

    # --- properties ---------------------------------------------------------------------
    @property
    def spatial_multiple(self) -> int:
        """2 ** number of downsamplers. Any latent size works; multiples of this need no resizing
        inside the network (the up blocks upsample to each skip's size otherwise, as diffusers does)."""
        return int(self._native.spatial_multiple)

    @property
    def in_channels(self) -> int:
        return int(self.config["in_channels"])

    @property
    def out_channels(self) -> int:
        return int(self.config["out_channels"])

    @property
    def cross_attention_dim(self) -> int:
        return int(self.config["cross_attention_dim"])

    @property
    def pooled_dim(self) -> int:
        """Width of text_embeds (0 when the model takes none)."""
        return int(self._native.pooled_dim)

    @property
    def attention(self) -> str:
        """"auto" (the default), "mul_mat", "flash" or "int8".

        "int8": on the CPU backend the attentions of 512+ keys (SD1's 4096- and 1024-token
        self-attentions) as int16-pair integer products of int8-quantized q, k, v (Q15
        probabilities; kernels/cpu/attention_int8.h), the others exact as "flash"; not exact (up
        to ~1.5e-2 from f32 on one sharp attention's output); elsewhere as "flash".
        "auto": on the CPU "int8" when the U-Net's attention weights are q8_0 / q5_0 / q4_0 (its
        error is small next to what their integer products already cost: bench/README.md "Int8
        attention by default"), else "flash"; "mul_mat" on other backends. "flash" / "mul_mat"
        force an exact kernel. `resolved_attention` says what "auto" chose."""
        return self._native.attention

    @attention.setter
    def attention(self, kernel: str) -> None:
        if kernel not in ATTENTION_KERNELS:
            raise errors.InvalidArgumentError(f"attention must be one of {ATTENTION_KERNELS}, got {kernel!r}")
        self._native.attention = kernel

    @property
    def resolved_attention(self) -> str:
        """The kernel `attention` runs as here ("auto" resolved for this device and weight type)."""
        return self._native.resolved_attention

    @property
    def conv(self) -> str:
        """3x3 convolutions: "auto" (on the CPU backend Winograd F(4x4,3x3) for batches of
        2048+ output pixels, i.e. the 64x64 and 32x32 latents of a cond + uncond pair, F(2x2,3x3)
        from 256 pixels, im2col + GEMM below; elsewhere im2col + GEMM), "im2col", "winograd"
        (F(2x2,3x3) on every eligible conv) or "winograd_f43" (F(4x4,3x3) on every eligible conv,
        F(2x2,3x3) under compute="bf16"). Quantized 3x3 kernels run the direct int8 convolution,
        except under "winograd" / "winograd_f43", where they take Winograd F(2x2,3x3) with int8
        products (about 5 % faster on AVX2, less accurate: see bench/README.md; F(4x4,3x3) is too
        inaccurate in int8). SDCPP_WINOGRAD_Q8=1 opts "auto" in for the 64x64 latent level,
        =<n> from n output pixels, =0 never."""
        return self._native.conv

    @conv.setter
    def conv(self, impl: str) -> None:
        if impl not in CONV_IMPLS:
            raise errors.InvalidArgumentError(f"conv must be one of {CONV_IMPLS}, got {impl!r}")
        self._native.conv = impl

    @property
    def fused(self) -> bool:
        """CPU backend: fused GroupNorm(+SiLU) / LayerNorm / GEGLU kernels (default True)."""
        return bool(self._native.fused)

    @fused.setter
    def fused(self, on: bool) -> None:
        self._native.fused = bool(on)

    @property
    def compute(self) -> str:
        """Arithmetic of the linear layers, convolutions and attention with f32 / f16 / bf16
        weights: "f32" (default: exact f32 products) or "bf16" (opt-in: on CPUs with AMX-BF16 both
        operands are rounded to bf16 and summed in f32, the attention's too, several times faster;
        about 1e-2 from f32 on the output; elsewhere the same as "f32"). Quantized weights are
        unaffected."""
        return self._native.compute

    @compute.setter
    def compute(self, kind: str) -> None:
        self._native.compute = check_compute(kind)

    @property
    def max_attention_mb(self) -> float | None:
        """mul_mat attention: queries in chunks whose score matrix stays within this many MiB
        (None, the default: whole matrices; a device also caps them at its largest tensor,
        Device.max_tensor_bytes). Same results; for tests of the chunked path."""
        return self._native.max_attention_mb

    @max_attention_mb.setter
    def max_attention_mb(self, mb: float | None) -> None:
        if mb is not None and (isinstance(mb, bool) or not isinstance(mb, (int, float)) or not 0 < mb < 1e9):
            raise errors.InvalidArgumentError(f"max_attention_mb must be a positive number of MiB or None, got {mb!r}")
        self._native.max_attention_mb = mb

    @property
    def stream_weights(self) -> bool:
        """CPU, weights mapped from the checkpoint: give each module's file pages back as soon as
        its part of the graph has run (memory="low"), so about one module's weights are resident
        at a time; every step reads them back from the page cache. Same results; other weights
        (converted copies) are unaffected."""
        return bool(self._native.stream_weights)

    @stream_weights.setter
    def stream_weights(self, on: bool) -> None:
        self._native.stream_weights = bool(on)

    def profile(self, batch: int, height: int, width: int, context_length: int = 77) -> list[dict]:
        """Per-node timing of one forward pass with zero inputs (profiling only: the graph is
        stopped after every node). Rows: op, name, shape, src0, src1, wall_us, cpu_us."""
        rows = call_native(self._native.profile, int(batch), int(height), int(width), int(context_length))
        keys = ("op", "name", "shape", "src0", "src1", "wall_us", "cpu_us")
        return [dict(zip(keys, r)) for r in rows]

    @property
    def unused_weights(self) -> list[str]:
        """``unet.`` tensors of the store this config does not use (empty when config and
        checkpoint agree; LCM's ``time_embedding.cond_proj`` is never listed)."""
        return list(self._native.unused_weights)

    @property
    def compute_buffer_size(self) -> int:
        return int(self._native.compute_buffer_size)

    def measure(self, batch: int, height: int, width: int, context_length: int = 77) -> int:
        """Bytes of compute buffers a forward pass of these shapes needs (latent height x width),
        planned by ggml's allocator without computing or touching memory."""
        return int(call_native(self._native.measure, int(batch), int(height), int(width), int(context_length)))

    def clear(self) -> None:
        """Drop the cached graphs and compute buffers."""
        self._native.clear()

    # --- forward ------------------------------------------------------------------------
    def __call__(self, latent, timestep, context, *, text_embeds=None, time_ids=None, residuals=None) -> np.ndarray:
        """``residuals``: ControlNet outputs added to the skip connections and the mid block
        (diffusers' down_block / mid_block_additional_residual), a list of float32 arrays in the
        skips' shapes then the mid block's (``ControlNet.__call__`` returns them so)."""
        latent = float_array(latent, "latent")
        if latent.ndim != 4:
            raise errors.InvalidArgumentError(f"latent must be [B, C, H, W], got shape {latent.shape}")
        B, C, H, W = latent.shape
        if B < 1:
            raise errors.InvalidArgumentError("latent has an empty batch")
        if C != self.in_channels:
            raise errors.InvalidArgumentError(
                f"latent has {C} channels, the U-Net takes {self.in_channels} (shape {latent.shape})")
        if H < 1 or W < 1:
            raise errors.InvalidArgumentError(f"latent height and width must be >= 1, got {H}x{W}")

        t = float_array(timestep, "timestep")
        if t.ndim == 0:
            t = np.full((B,), float(t), dtype=np.float32)
        elif t.ndim == 1 and t.shape[0] == 1 and B > 1:
            t = np.repeat(t, B)
        if t.shape != (B,):
            raise errors.InvalidArgumentError(f"timestep must be a scalar or [B={B}], got shape {t.shape}")
        if not np.all(np.isfinite(t)):
            raise errors.InvalidArgumentError("timestep must be finite")

        context = float_array(context, "context")
        if context.ndim != 3 or context.shape[0] != B or context.shape[1] < 1:
            raise errors.InvalidArgumentError(f"context must be [B={B}, L, D], got shape {context.shape}")
        if context.shape[2] != self.cross_attention_dim:
            raise errors.InvalidArgumentError(
                f"context width {context.shape[2]} does not match the U-Net's cross_attention_dim "
                f"{self.cross_attention_dim} (shape {context.shape})")

        pooled = self.pooled_dim
        if pooled:
            if text_embeds is None or time_ids is None:
                raise errors.InvalidArgumentError(
                    f"this U-Net (SDXL text_time embedding) needs text_embeds [B, {pooled}] and time_ids [B, 6]")
            text_embeds = float_array(text_embeds, "text_embeds")
            if text_embeds.shape != (B, pooled):
                raise errors.InvalidArgumentError(
                    f"text_embeds must be [B={B}, {pooled}], got shape {text_embeds.shape}")
            time_ids = float_array(time_ids, "time_ids")
            if time_ids.shape != (B, 6):
                raise errors.InvalidArgumentError(f"time_ids must be [B={B}, 6], got shape {time_ids.shape}")
        elif text_embeds is not None or time_ids is not None:
            raise errors.InvalidArgumentError("text_embeds / time_ids given but this U-Net has no addition embedding")

        if residuals is not None:
            residuals = [float_array(r, f"residuals[{i}]") for i, r in enumerate(residuals)]
        return call_native(self._native.forward, latent, t, context, text_embeds, time_ids, residuals)


def timestep_embedding(timesteps, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0) -> np.ndarray:
    """The native sinusoidal timestep embedding (diffusers' get_timestep_embedding formula)."""
    t = float_array(timesteps, "timesteps").reshape(-1)
    return call_native(native().unet_timestep_embedding, t, int(dim), bool(flip_sin_to_cos), float(freq_shift))


__all__ = ["UNet", "timestep_embedding", "ATTENTION_KERNELS", "CONV_IMPLS"]
