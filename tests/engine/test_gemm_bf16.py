"""The opt-in bf16 product (kernels/cpu/gemm_bf16.h): A and B rounded to bf16 (round to nearest
even, denormals to zero: VCVTNE2PS2BF16's rule), products summed in f32. Every level this machine
has (below amx, or without AMX-BF16, the portable reference runs) against a float64 product of the
operands rounded here in numpy by the same rule.

Tolerance: <= 1e-5 of max |C| (f32 accumulation over up to 1100 k, in each variant's order:
measured 2e-7 to 5e-7). One operand rounded differently (one bf16 ulp, 2^-8 relative) moves C by far more
than that on the K = 1 products, which check the rounding bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest

import sdcpp

core = sdcpp.engine.weights.native()
LEVELS = core.cpu_levels()


def round_bf16(x):
    """float32 -> bf16 values as float64: nearest even, zero / denormal inputs to signed zero."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    r = ((u + np.uint32(0x7FFF) + ((u >> 16) & 1)) >> 16) << 16
    r = np.where((u & 0x7F800000) == 0, u & 0x80000000, r).astype(np.uint32)
    return r.view(np.float32).astype(np.float64)


def b_operand(rng, N, K, btype):
    """Random B of `btype` as the array the binding takes and its f32 values."""
    b = rng.standard_normal((N, K)).astype(np.float32)
    if btype == "f16":
        h = b.astype(np.float16)
        return h.view(np.uint16), h.astype(np.float32)
    if btype == "bf16":
        bits = (round_bf16(b).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        return bits, (bits.astype(np.uint32) << 16).view(np.float32)
    return b, b


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("btype", ["f32", "f16", "bf16"])
def test_bf16_gemm_at_each_level(level, btype):
    """Partial tiles on both sides, K not a multiple of 32 and past one K block (512), N past one
    column block (256), M past one block of rounded rows (256), threads 1 and 3."""
    rng = np.random.default_rng(21)
    for M, K, N in [(1, 1, 1), (13, 45, 70), (32, 32, 32), (33, 100, 33), (40, 1100, 37), (300, 64, 40),
                    (20, 96, 530), (64, 288, 1024)]:
        a = rng.standard_normal((M, K)).astype(np.float32)
        b, bf = b_operand(rng, N, K, btype)
        ref = round_bf16(a) @ round_bf16(bf).T
        scale = max(np.abs(ref).max(), 1e-30)
        for threads in (1, 3):
            ours = core.cpu_kernel_gemm_bf16(a, b, btype, level, threads)
            assert ours.shape == (M, N)
            assert np.abs(ours - ref).max() <= 1e-5 * scale, (level, btype, (M, K, N), threads)


@pytest.mark.parametrize("level", LEVELS)
def test_bf16_rounding_bit_for_bit(level):
    """K = 1 products against ones: C is the rounded operand itself (ties to even both ways,
    denormals to zero, rounding up to inf, f16 values with more bits than bf16 keeps)."""
    f32 = np.float32
    bits = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x3F80FFFF, 0xBF808000, 0x00400000, 0x80000001,
                     0x00800000, 0x7F7FFFFF, 0x7F7F7FFF, 0x80000000], np.uint32)
    rng = np.random.default_rng(22)
    vals = np.concatenate([bits.view(f32), rng.standard_normal(53).astype(f32) * f32(1e3)])
    ones = np.ones((1, 1), f32)
    c = core.cpu_kernel_gemm_bf16(vals[:, None].copy(), ones, "f32", level, 1)
    assert np.array_equal(c[:, 0], round_bf16(vals)), level
    c = core.cpu_kernel_gemm_bf16(ones, vals[:, None].copy(), "f32", level, 1)
    assert np.array_equal(c[0], round_bf16(vals)), level
    h = (rng.standard_normal(64) * 10).astype(np.float16)
    c = core.cpu_kernel_gemm_bf16(ones, h[:, None].view(np.uint16).copy(), "f16", level, 1)
    assert np.array_equal(c[0], round_bf16(h.astype(f32))), level


def test_bf16_gemm_rejects_bad_operands():
    a = np.zeros((2, 64), np.float32)
    with pytest.raises(ValueError, match="same K"):
        core.cpu_kernel_gemm_bf16(a, np.zeros((3, 32), np.float32), "f32", "portable", 1)
    with pytest.raises(ValueError, match="2-byte"):
        core.cpu_kernel_gemm_bf16(a, np.zeros((3, 64), np.float32), "f16", "portable", 1)
    with pytest.raises(ValueError, match="btype must be"):
        core.cpu_kernel_gemm_bf16(a, np.zeros((3, 64), np.uint16), "q8_0", "portable", 1)
    with pytest.raises(ValueError, match="threads"):
        core.cpu_kernel_gemm_bf16(a, np.zeros((3, 64), np.float32), "f32", "portable", 0)
