"""The integer product for q8_0 (and q5_0 / q4_0) weights (kernels/cpu/gemm_q8.h): every level this machine has against the
portable reference (bit for bit: all variants compute the same fma chain over exact int32 block
dot products), against a float64 product of the dequantized operands (A quantized here as ggml's
x86 quantize_row_q8_0 does), and against ggml's own q8_0 mul_mat on the same bytes.

Tolerances: <= 2e-6 of max |C| against float64 of the same quantized values (f32 accumulation
over at most 17 blocks); <= 1e-5 of max |C| against ggml (same integers, its lanes summed in
another order: measured ~2e-7). One activation quantized differently from ggml would move C by
~1e-3 of max |C|, so both bounds also check the quantization.
"""
from __future__ import annotations

import numpy as np
import pytest

import sdcpp
from sdcpp.system import host_cpu_flags

core = sdcpp.engine.weights.native()
LEVELS = core.cpu_levels()


def q8_bytes(rng, N, K, lo=-128):
    """Random q8_0 rows [N, K / 32 * 34]: f16 scales of both signs, int8 values in [lo, 127]
    (-128 included by default: valid bytes ggml's own quantizer never writes)."""
    kb = K // 32
    d = (rng.uniform(0.002, 0.02, (N, kb)) * rng.choice([-1.0, 1.0], (N, kb))).astype(np.float16)
    q = rng.integers(lo, 128, (N, kb, 32)).astype(np.int8)
    out = np.zeros((N, kb, 34), np.uint8)
    out[:, :, :2] = d.view(np.uint8).reshape(N, kb, 2)
    out[:, :, 2:] = q.view(np.uint8)
    return out.reshape(N, kb * 34), d.astype(np.float64), q.astype(np.float64)


def q4_q5_bytes(rng, N, K, btype):
    """Random q5_0 / q4_0 rows [N, K / 32 * (22 | 18)] and their decoded integers (ggml's layout:
    value t < 16 the low nibble of byte t, t >= 16 the high nibble of byte t - 16; q5_0's fifth
    bit t in the 32-bit qh after d; values q - 16 / q - 8)."""
    kb = K // 32
    d = (rng.uniform(0.002, 0.02, (N, kb)) * rng.choice([-1.0, 1.0], (N, kb))).astype(np.float16)
    qs = rng.integers(0, 256, (N, kb, 16)).astype(np.uint8)
    nib = np.concatenate([qs & 15, qs >> 4], -1).astype(np.int64)
    parts = [d.view(np.uint8).reshape(N, kb, 2)]
    if btype == "q5_0":
        qh = rng.integers(0, 2**32, (N, kb), dtype=np.uint64).astype(np.uint32)
        bits = (qh[..., None] >> np.arange(32, dtype=np.uint32)) & 1
        q = (nib | (bits.astype(np.int64) << 4)) - 16
        parts.append(qh.astype("<u4").view(np.uint8).reshape(N, kb, 4))
    else:
        q = nib - 8
    parts.append(qs)
    out = np.concatenate(parts, -1)
    return out.reshape(N, -1), d.astype(np.float64), q.astype(np.float64)


def quantize_rows(a):
    """ggml's x86 quantize_row_q8_0 in numpy: d = f16(amax / 127), q = rint(x * (127 / amax))
    in float32 (round half to even) -> (q [M, KB, 32], d [M, KB]) as float64."""
    M, K = a.shape
    blocks = a.reshape(M, K // 32, 32)
    amax = np.abs(blocks).max(-1)
    d = (amax / np.float32(127)).astype(np.float16).astype(np.float64)
    inv = np.divide(np.float32(127), amax, out=np.zeros_like(amax), where=amax != 0).astype(np.float32)
    q = np.rint(blocks * inv[..., None])
    return q.astype(np.float64), d


def reference(a, d_b, q_b):
    """float64 sum over blocks of d_a d_b (q_a . q_b), A quantized as ggml does."""
    q_a, d_a = quantize_rows(a)
    dots = np.einsum("mbk,nbk->mnb", q_a, q_b)
    return np.einsum("mnb,mb,nb->mn", dots, d_a, d_b)


@pytest.mark.parametrize("level", LEVELS)
def test_q8_gemm_at_each_level(level):
    """Shapes that leave partial register tiles on both sides, two cache blocks along K (17
    blocks), along N (> 256 columns) and along M (> 240 quantized rows), threads 1 and 3 (rows or
    columns split unevenly): bit-identical to the portable variant, within 2e-6 of float64."""
    rng = np.random.default_rng(8)
    # (32, 32, 32): exactly one AMX tile set; (33, 1056, 65) one row / column past it and 33 blocks
    # (AMX quantizes A 16 blocks at a time); (64, 288, 1024): C rows 4 KiB apart
    for M, K, N in [(1, 32, 1), (13, 64, 45), (37, 320, 70), (100, 544, 33), (25, 64, 530), (250, 96, 40),
                    (32, 32, 32), (33, 1056, 65), (64, 288, 1024)]:
        a = rng.standard_normal((M, K)).astype(np.float32)
        a[0, :32] = 0.0  # an all-zero block (d = 0)
        b, d_b, q_b = q8_bytes(rng, N, K)
        ref = reference(a, d_b, q_b)
        portable = core.cpu_kernel_gemm_q8(a, b, "portable", 1)
        assert np.abs(portable - ref).max() <= 2e-6 * np.abs(ref).max(), (M, K, N)
        for threads in (1, 3):
            ours = core.cpu_kernel_gemm_q8(a, b, level, threads)
            assert ours.shape == (M, N)
            assert np.array_equal(ours, portable), (level, (M, K, N), threads)
        # and the quantized product is the float one within q8_0's error
        exact = a.astype(np.float64) @ (q_b * d_b[..., None]).reshape(N, K).T
        assert np.linalg.norm(ours - exact) <= 1e-2 * np.linalg.norm(exact)


@pytest.mark.parametrize("level", LEVELS)
def test_q8_gemm_activation_scales(level):
    """Rows of A from 1e-7 to 1e3 (block scales d = f16(amax / 127) down in f16's subnormal range, where
    the vectorized f16 rounding must still match the scalar one): bit-identical to portable."""
    rng = np.random.default_rng(11)
    M, K, N = 40, 1056, 37
    a = (rng.standard_normal((M, K)) * np.geomspace(1e-7, 1e3, M)[:, None]).astype(np.float32)
    b, d_b, q_b = q8_bytes(rng, N, K)
    portable = core.cpu_kernel_gemm_q8(a, b, "portable", 1)
    ref = reference(a, d_b, q_b)
    assert np.all(np.abs(portable - ref) <= 2e-6 * np.abs(ref).max(axis=1, keepdims=True))
    assert np.array_equal(core.cpu_kernel_gemm_q8(a, b, level, 2), portable), level


@pytest.mark.parametrize("level", LEVELS)
def test_q8_gemm_non_finite_activations(level):
    """NaN / inf inside a block, an all-zero block and a tiny one: ggml's quantization skips a NaN in
    the block's amax and writes -128 for it (and for inf * 0); every level the same bits as portable."""
    rng = np.random.default_rng(12)
    M, K, N = 37, 256, 40
    a = rng.standard_normal((M, K)).astype(np.float32)
    a[3, 5], a[7, 40], a[9, 100] = np.nan, np.inf, -np.inf
    a[11, :32] = 0.0
    a[12, 64:96] = 1e-30
    b = q8_bytes(rng, N, K)[0]
    portable = core.cpu_kernel_gemm_q8(a, b, "portable", 1)
    assert np.isfinite(portable[3]).all()  # the NaN was skipped in its block's scale
    assert np.array_equal(core.cpu_kernel_gemm_q8(a, b, level, 2), portable, equal_nan=True), level


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("btype", ["q5_0", "q4_0"])
def test_q4_q5_gemm_at_each_level(level, btype):
    """q5_0 / q4_0 weights, unpacked to int8 while packed: bit-identical to the portable variant,
    within 2e-6 of the float64 product of the decoded values (17 blocks: two cache blocks)."""
    rng = np.random.default_rng(10)
    for M, K, N in [(13, 64, 45), (37, 544, 70), (33, 96, 33)]:
        a = rng.standard_normal((M, K)).astype(np.float32)
        b, d_b, q_b = q4_q5_bytes(rng, N, K, btype)
        ref = reference(a, d_b, q_b)
        portable = core.cpu_kernel_gemm_q8(a, b, "portable", 1, btype)
        assert np.abs(portable - ref).max() <= 2e-6 * np.abs(ref).max(), (btype, (M, K, N))
        for threads in (1, 3):
            assert np.array_equal(core.cpu_kernel_gemm_q8(a, b, level, threads, btype), portable), (level, btype, threads)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("btype", ["q5_0", "q4_0"])
def test_q4_q5_mul_mat_matches_ggml(level, btype):
    rng = np.random.default_rng(12)
    M, K, N = 70, 320, 48
    x = rng.standard_normal((2, M, K)).astype(np.float32)
    w, d_b, q_b = q4_q5_bytes(rng, N, K, btype)
    ref = np.stack([reference(x[i], d_b, q_b) for i in range(2)])
    scale = np.abs(ref).max()
    ggml = core.cpu_mul_mat_q8(x, w, "ggml", level, 2, btype)
    assert np.abs(ggml - ref).max() <= 1e-5 * scale
    if level == "portable":
        return
    ours = core.cpu_mul_mat_q8(x, w, "sdcpp", level, 3, btype)
    assert np.abs(ours - ggml).max() <= 1e-5 * scale
    assert np.abs(ours - ref).max() <= 2e-6 * scale


def test_q8_gemm_rejects_bad_operands():
    a = np.zeros((2, 64), np.float32)
    b, _, _ = q8_bytes(np.random.default_rng(0), 3, 64)
    with pytest.raises(ValueError, match="multiple of 32"):
        core.cpu_kernel_gemm_q8(a, b[:, :-1].copy(), "portable", 1)
    with pytest.raises(ValueError, match="multiple of 32"):
        core.cpu_kernel_gemm_q8(np.zeros((2, 40), np.float32), b, "portable", 1)
    with pytest.raises(ValueError, match="threads"):
        core.cpu_kernel_gemm_q8(a, b, "portable", 0)
    with pytest.raises(ValueError, match="btype must be"):
        core.cpu_kernel_gemm_q8(a, b, "portable", 1, "q4_1")
    with pytest.raises(ValueError, match="18 bytes"):
        core.cpu_kernel_gemm_q8(a, b, "portable", 1, "q4_0")


@pytest.mark.parametrize("level", LEVELS)
def test_q8_mul_mat_matches_ggml(level):
    """The graph op nn::linear and the quantized convolutions use, against ggml's q8_0 mul_mat on
    the same bytes (weights in [-127, 127], as ggml's quantizer writes them: its sign trick needs
    that), a batch of 2 sharing the weights, 1 and 3 threads; also against float64."""
    rng = np.random.default_rng(9)
    for M, K, N in [(70, 320, 48), (3, 96, 130), (300, 64, 20)]:
        x = rng.standard_normal((2, M, K)).astype(np.float32)
        w, d_b, q_b = q8_bytes(rng, N, K, lo=-127)
        ggml = core.cpu_mul_mat_q8(x, w, "ggml", level, 2)
        ref = np.stack([reference(x[i], d_b, q_b) for i in range(2)])
        scale = np.abs(ref).max()
        assert np.abs(ggml - ref).max() <= 1e-5 * scale  # the reference is ggml's numerics
        if level == "portable":  # the graphs keep ggml's products there (the reference loops are slow)
            with pytest.raises(ValueError, match="does not apply"):
                core.cpu_mul_mat_q8(x, w, "sdcpp", level, 1)
            continue
        for threads in (1, 3):
            ours = core.cpu_mul_mat_q8(x, w, "sdcpp", level, threads)
            assert np.abs(ours - ggml).max() <= 1e-5 * scale, (level, (M, K, N), threads)
            assert np.abs(ours - ref).max() <= 2e-6 * scale, (level, (M, K, N), threads)


def test_amx_level_where_the_cpu_has_it():
    """A CPU (and Linux) with AMX tiles runs the q8_0 product at the level amx, unless capped."""
    flags = host_cpu_flags() or set()
    if not {"amx_tile", "amx_int8", "avx512_bf16", "avx512_vnni"} <= flags:
        assert "amx" not in LEVELS or {"amx_tile", "amx_int8"} <= flags
        pytest.skip("no AMX-INT8 on this CPU")
    assert "amx" in LEVELS
    info = core.cpu_kernels()
    assert info["features"]["amx_int8"] and info["features"]["amx_tile"]
    if info["cap"] == "amx":
        assert info["gemm_q8_0"] == "amx"


def test_q8_kernel_is_reported():
    assert sdcpp.system_info()["cpu_kernels"]["gemm_q8_0"] in LEVELS
