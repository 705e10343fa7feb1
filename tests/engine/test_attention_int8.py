"""The int8 attention (csrc/kernels/cpu/attention_int8.h, UNet.attention = "int8").

Every variant this CPU has (portable reference, AVX2, AVX-512 with and without VNNI) agrees with
the portable one bit for bit: its sums are integers and its f32 steps elementwise and the same
in every variant. Against float64 attention of the operands as the kernel quantizes them
(q, k - mean(k) per row, v per channel per 64-key tile, rounded here as the kernel rounds them):
what is left is the Q15 rounding of the probabilities and f32 steps (measured <= 2.1e-4;
bound 5e-4). Against exact attention of the f32 operands (q ~ 2 N(0, 1), sharper than a
trained U-Net's): measured 3e-3 .. 1.6e-2, bound 2.5e-2.
"""
from __future__ import annotations

import numpy as np
import pytest

import sdcpp

core = sdcpp.engine.weights.native()
LEVELS = core.cpu_levels()

# (N, Lq, Lk, D, heads): SD1 / BK-SDM head widths 40 / 80 / 160, SDXL's 64, an odd one (33: a
# zero pad dim), key counts off the 64-key tile (a 77-token context, 1 key), query counts off the
# 32-row block.
SHAPES = [(2, 100, 77, 80, 2), (1, 64, 130, 128, 2), (2, 33, 64, 160, 1), (1, 70, 200, 66, 2),
          (1, 5, 3, 40, 1), (2, 97, 300, 320, 8), (1, 40, 1, 40, 1), (1, 300, 700, 40, 1)]


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-30))


def variants():
    """The int8 attention variants this CPU runs."""
    out = ["portable"]
    if "avx2" in LEVELS:
        out.append("avx2")
    if "avx512" in LEVELS:
        out.append("avx512")
        if core.cpu_kernels()["features"].get("avx512_vnni"):
            out.append("avx512_vnni")
    return out


def operands(rng, N, Lq, Lk, D):
    q = rng.standard_normal((N, Lq, D)).astype(np.float32) * 2
    k = rng.standard_normal((N, Lk, D)).astype(np.float32) + 0.5  # an offset the smoothing removes
    v = rng.standard_normal((N, Lk, D)).astype(np.float32)
    return q, k, v


def quant_rows(x):
    """int8 values (as floats) and f32 scales along the last axis, rounded as the kernel does:
    scale = max|x| / 127, value = nearest-even(x * (127 / max|x|)) in f32."""
    amax = np.abs(x).max(-1, keepdims=True).astype(np.float32)
    safe = np.where(amax > 0, amax, np.float32(1))
    inv = np.where(amax > 0, np.float32(127) / safe, np.float32(0)).astype(np.float32)
    return np.clip(np.rint((x * inv).astype(np.float32)), -127, 127), (amax / np.float32(127)).astype(np.float32)


def heads_of(x, H):
    N, L, D = x.shape
    return x.reshape(N, L, H, D // H).transpose(0, 2, 1, 3)


def reference_quantized(q, k, v, H):
    """float64 attention of the kernel's quantized operands (base-2 logits as the kernel's)."""
    N, Lq, D = q.shape
    Lk, d = k.shape[1], D // H
    qh, kh, vh = heads_of(q, H), heads_of(k, H), heads_of(v, H)
    qi, sq = quant_rows(qh)
    sq = (sq * np.float32(1.0 / np.sqrt(d) * 1.4426950408889634)).astype(np.float32)
    mean = (kh.astype(np.float64).sum(2, keepdims=True) / Lk).astype(np.float32)
    ki, sk = quant_rows((kh - mean).astype(np.float32))
    vq = np.empty(vh.shape, np.float64)
    for t0 in range(0, Lk, 64):  # per channel over each tile of 64 keys
        vi, vs = quant_rows(np.swapaxes(vh[:, :, t0:t0 + 64], 2, 3))
        vq[:, :, t0:t0 + 64] = np.swapaxes(vi * vs.astype(np.float64), 2, 3)
    s = (qi * sq.astype(np.float64)) @ np.swapaxes(ki * sk.astype(np.float64), 2, 3)
    p = np.exp2(s - s.max(-1, keepdims=True))
    return ((p / p.sum(-1, keepdims=True)) @ vq).transpose(0, 2, 1, 3).reshape(N, Lq, D)


def reference_exact(q, k, v, H):
    N, Lq, D = q.shape
    qh, kh, vh = (heads_of(x.astype(np.float64), H) for x in (q, k, v))
    s = qh @ np.swapaxes(kh, 2, 3) / np.sqrt(D // H)
    p = np.exp(s - s.max(-1, keepdims=True))
    return ((p / p.sum(-1, keepdims=True)) @ vh).transpose(0, 2, 1, 3).reshape(N, Lq, D)


def test_variants_agree_bit_for_bit():
    rng = np.random.default_rng(1)
    for N, Lq, Lk, D, H in SHAPES:
        q, k, v = operands(rng, N, Lq, Lk, D)
        ref = core.cpu_kernel_attention_int8(q, k, v, H, "portable", 1)
        for variant in variants()[1:]:
            ours = core.cpu_kernel_attention_int8(q, k, v, H, variant, 2)
            assert np.array_equal(ours, ref), (variant, (N, Lq, Lk, D, H), rel(ours, ref))


@pytest.mark.parametrize("variant", variants())
def test_against_float64(variant):
    rng = np.random.default_rng(2)
    for N, Lq, Lk, D, H in SHAPES:
        q, k, v = operands(rng, N, Lq, Lk, D)
        ours = core.cpu_kernel_attention_int8(q, k, v, H, variant, 1)
        eq, ee = rel(ours, reference_quantized(q, k, v, H)), rel(ours, reference_exact(q, k, v, H))
        print(f"{variant} {(N, Lq, Lk, D, H)}: vs quantized operands {eq:.2e}, vs exact {ee:.2e}")
        assert eq <= 5e-4, ((N, Lq, Lk, D, H), eq)
        assert ee <= 2.5e-2, ((N, Lq, Lk, D, H), ee)


@pytest.fixture
def restore_level():
    cap = core.cpu_kernels()["cap"]
    yield
    core.set_cpu_level(cap)


@pytest.mark.parametrize("level", LEVELS)
def test_graph_op_at_each_level(level, restore_level):
    """nn::attention's Int8 kernel (two custom ops, ggml's threads) runs the active level's
    variant: system_info names it and the result is that variant's, bit for bit."""
    core.set_cpu_level(level)
    name = sdcpp.system_info()["cpu_kernels"]["attention_int8"]
    expected = {"portable": "portable", "neon": "portable", "avx2": "avx2"}.get(level)
    if expected is None:  # the AVX-512 levels: with VNNI where the CPU has it
        expected = "avx512_vnni" if "avx512_vnni" in variants() else "avx512"
    assert name == expected
    rng = np.random.default_rng(3)
    for N, Lq, Lk, D, H in SHAPES[:4]:
        q, k, v = operands(rng, N, Lq, Lk, D)
        assert np.array_equal(core.unet_attention(q, k, v, H, "int8"), core.cpu_kernel_attention_int8(q, k, v, H, name, 1))


def test_bad_arguments_are_typed_errors():
    x = np.zeros((1, 4, 16), np.float32)
    with pytest.raises(ValueError, match="variant 'sse9'"):
        core.cpu_kernel_attention_int8(x, x, x, 1, "sse9")
    with pytest.raises(ValueError, match="shapes"):
        core.cpu_kernel_attention_int8(x, np.zeros((1, 4, 8), np.float32), x, 1, "portable")
    with pytest.raises(ValueError, match="heads"):
        core.cpu_kernel_attention_int8(x, x, x, 3, "portable")
    from sdcpp import errors
    from sdcpp.engine.unet import ATTENTION_KERNELS

    assert "int8" in ATTENTION_KERNELS
    with pytest.raises(ValueError, match="int8"):
        core.unet_attention(x, x, x, 1, "int4")
    assert issubclass(errors.InvalidArgumentError, ValueError)
