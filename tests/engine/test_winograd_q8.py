"""Winograd F(2x2, 3x3) / F(4x4, 3x3) with int8 products for quantized 3x3 kernels (nn/winograd_q8.h).

Checked at every level where the integer product runs against a float64 reference of the same
quantized numerics, written here from the definition: the dequantized kernel and the input
transformed in float32 in the kernels' order of operations (additions and exact halvings, so
numpy's float32 gives the same bits), each tile position's 32 values along C quantized as
ggml's x86 quantize_row_q8_0 (test_gemm_q8.quantize_rows), the products and the output
transform in float64. F(2x2, 3x3) is also bounded against the exact convolution of the
dequantized kernel, relative to the direct quantized convolution's error (Winograd rounds both
transformed operands to int8: about 2.5x the direct op's error here, where the direct op rounds
only the activations). F(4x4, 3x3) is checked for its numerics only: it is off in the models,
its int8 error being far larger (nn/winograd_q8.h).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_conv_q8 import weights  # noqa: E402
from test_gemm_q8 import quantize_rows  # noqa: E402

import sdcpp  # noqa: E402

core = sdcpp.engine.weights.native()
FAST = [lv for lv in core.cpu_levels() if lv != "portable"]
SMOOTH = os.environ.get("SDCPP_WINOGRAD_Q8_SMOOTH", "").startswith("1")  # as the extension reads it

F32 = np.float32


def kernel_transform(g):
    """U = G g G^T in float32, winograd_f23_body.h's order: g [..., 3, 3] -> [..., 16]."""
    half = F32(0.5)
    k = [g[..., i // 3, i % 3] for i in range(9)]
    t = [[None] * 3 for _ in range(4)]
    for j in range(3):
        t[0][j] = k[j]
        t[1][j] = half * ((k[j] + k[3 + j]) + k[6 + j])
        t[2][j] = half * ((k[j] - k[3 + j]) + k[6 + j])
        t[3][j] = k[6 + j]
    u = []
    for i in range(4):
        u += [t[i][0], half * ((t[i][0] + t[i][1]) + t[i][2]), half * ((t[i][0] - t[i][1]) + t[i][2]), t[i][2]]
    return np.stack(u, -1)


def input_transform(x):
    """V = B^T d B in float32 per 2x2 output tile: x [N, C, H, W] (the upsampled image) ->
    [16, N * TH * TW, C] (tiles in image, row, column order), zero padding."""
    N, C, H, W = x.shape
    TH, TW = (H + 1) // 2, (W + 1) // 2
    xp = np.zeros((N, C, 2 * TH + 2, 2 * TW + 2), F32)
    xp[:, :, 1:1 + H, 1:1 + W] = x
    d = np.stack([np.stack([xp[:, :, i:i + 2 * TH:2, j:j + 2 * TW:2] for j in range(4)], -1) for i in range(4)], -2)
    # d [N, C, TH, TW, 4 (row i), 4 (column j)]
    t = [[None] * 4 for _ in range(4)]
    for j in range(4):
        d0, d1, d2, d3 = (d[..., i, j] for i in range(4))
        t[0][j], t[1][j], t[2][j], t[3][j] = d0 - d2, d1 + d2, d2 - d1, d1 - d3
    v = []
    for i in range(4):
        v += [t[i][0] - t[i][2], t[i][1] + t[i][2], t[i][2] - t[i][1], t[i][1] - t[i][3]]
    v = np.stack(v, 0)  # [16, N, C, TH, TW]
    return v.transpose(0, 1, 3, 4, 2).reshape(16, N * TH * TW, C), TH, TW


def bt6(d0, d1, d2, d3, d4, d5):
    """B^T of F(4x4, 3x3) on one column of six values, winograd_f43_body.h's order."""
    f4, f2 = F32(4), F32(2)
    a, b = d4 - d2, d3 - d1
    return [a + (d0 - d2) * f4, (d3 + d4) - (d1 + d2) * f4, (d4 - d3) + (d1 - d2) * f4, a + b * f2, a - b * f2,
            (d5 - d3) + (d1 - d3) * f4]


def gp3(k0, k1, k2):
    """G' of F(4x4, 3x3) (G = D G') on one column of three values, winograd_f43_body.h's order."""
    a, b, c = k0 + k2, k0 + k2 * F32(4), k1 * F32(2)
    return [k0, a + k1, a - k1, b + c, b - c, k2]


D43 = [1.0 / 4, -1.0 / 6, -1.0 / 6, 1.0 / 24, 1.0 / 24, 1.0]


def kernel_transform43(g):
    """U = D (G' g G'^T) D in float32: g [..., 3, 3] -> [..., 36]."""
    t = [gp3(g[..., 0, j], g[..., 1, j], g[..., 2, j]) for j in range(3)]  # t[j][i]
    u = []
    for i in range(6):
        r = gp3(t[0][i], t[1][i], t[2][i])
        u += [r[j] * F32(D43[i] * D43[j]) for j in range(6)]
    return np.stack(u, -1)


def input_transform43(x):
    """V = B^T d B in float32 per 4x4 output tile -> [36, N * TH * TW, C]."""
    N, C, H, W = x.shape
    TH, TW = (H + 3) // 4, (W + 3) // 4
    xp = np.zeros((N, C, 4 * TH + 2, 4 * TW + 2), F32)
    xp[:, :, 1:1 + H, 1:1 + W] = x
    d = [[xp[:, :, i:i + 4 * TH:4, j:j + 4 * TW:4] for j in range(6)] for i in range(6)]  # d[row][col]
    cols = [bt6(*(d[i][j] for i in range(6))) for j in range(6)]  # cols[j][i] = t[i][j]
    v = []
    for i in range(6):
        v += bt6(*(cols[j][i] for j in range(6)))
    v = np.stack(v, 0)  # [36, N, C, TH, TW]
    return v.transpose(0, 1, 3, 4, 2).reshape(36, N * TH * TW, C), TH, TW


AT = {2: np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64),
      4: np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)}


def smoothing_scales(x, d_b, q_b, btype):
    """nn/winograd_q8.cpp's per-channel powers of two s_c ~ sqrt(amax |w_c| / amax |x_c|) (q8_0
    kernels; 1 for the others), from the exponents of the two maxima."""
    C = x.shape[1]
    s = np.ones(C, F32)
    if not SMOOTH or btype != "q8_0":
        return s
    ax = np.abs(x).max(axis=(0, 2, 3)).astype(F32)
    aw = (np.abs(d_b.astype(F32))[:, :, None] * np.abs(q_b).astype(F32)).reshape(q_b.shape[0], C, 9).max(axis=(0, 2))
    for c in range(C):
        if ax[c] > 0 and aw[c] > 0:
            e = int((np.frexp(aw[c])[1] - np.frexp(ax[c])[1]) / 2)  # towards zero, as C++
            s[c] = np.ldexp(F32(1), max(-24, min(24, e)))
    return s


def reference(x, d_b, q_b, b, up, f=2, btype="q8_0"):
    """float64 of the same quantized numerics, F(f x f, 3x3) -> [N, OC, H up, W up]."""
    s = smoothing_scales(x, d_b, q_b, btype)
    x = x * s[None, :, None, None]  # powers of two: exact
    if up == 2:
        x = x.repeat(2, axis=2).repeat(2, axis=3)
    N, C, H, W = x.shape
    OC = q_b.shape[0]
    g = (d_b[:, :, None] * q_b).astype(F32).reshape(OC, C, 3, 3)  # exact: f16 times int8
    g = g / s[None, :, None, None]
    a = f + 2
    P = a * a
    u = (kernel_transform(g) if f == 2 else kernel_transform43(g)).transpose(2, 0, 1)  # [P, OC, C]
    qu, du = quantize_rows(u.reshape(P * OC, C))
    v, TH, TW = input_transform(x) if f == 2 else input_transform43(x)
    T = v.shape[1]
    qv, dv = quantize_rows(v.reshape(P * T, C))
    qu, du = qu.reshape(P, OC, -1, 32), du.reshape(P, OC, -1)
    qv, dv = qv.reshape(P, T, -1, 32), dv.reshape(P, T, -1)
    dots = np.einsum("ptkb,pokb->ptok", qv, qu)
    m = np.einsum("ptok,ptk,pok->pto", dots, dv, du).reshape(a, a, N, TH, TW, OC)
    y = np.einsum("ri,ijntho,kj->nothrk", AT[f], m, AT[f])  # [N, OC, TH, TW, f, f]
    y = y.transpose(0, 1, 2, 4, 3, 5).reshape(N, OC, f * TH, f * TW)[:, :, :H, :W]
    return y + (0.0 if b is None else b.astype(np.float64)[None, :, None, None])


def exact(x, d_b, q_b, b, up):
    """The convolution of the dequantized kernel, float64."""
    if up == 2:
        x = x.repeat(2, axis=2).repeat(2, axis=3)
    N, C, H, W = x.shape
    OC = q_b.shape[0]
    g = (d_b[:, :, None] * q_b).reshape(OC, C, 3, 3)
    xp = np.zeros((N, C, H + 2, W + 2))
    xp[:, :, 1:1 + H, 1:1 + W] = x
    y = sum(np.einsum("nchw,oc->nohw", xp[:, :, i:i + H, j:j + W], g[:, :, i, j]) for i in range(3) for j in range(3))
    return y + (0.0 if b is None else b.astype(np.float64)[None, :, None, None])


# (N, C, H, W, OC, up): odd sizes (partial tiles at both edges), > 240 tiles (several row blocks
# of the product), > 256 output channels, a batch of 2, the 2x upsampling read through.
CASES = [
    (2, 32, 9, 11, 45, 1),
    (1, 64, 5, 7, 300, 1),
    (2, 32, 6, 5, 33, 2),
    (1, 96, 34, 31, 40, 1),
]


@pytest.mark.parametrize("level", FAST)
@pytest.mark.parametrize("btype", ["q8_0", "q5_0", "q4_0"])
@pytest.mark.parametrize("f", [2, 4])
def test_winograd_q8_matches_reference(level, btype, f):
    rng = np.random.default_rng(8)
    via = "winograd" if f == 2 else "winograd_f43"
    for N, C, H, W, OC, up in CASES:
        x = rng.standard_normal((N, C, H, W)).astype(F32)
        x[0, :, :3, :3] = 0.0  # all-zero blocks (d = 0) at the corner
        if C == 96:  # channels of unequal ranges, as in the models (what the smoothing scales are for)
            x *= np.exp(rng.uniform(-3, 2, (1, C, 1, 1))).astype(F32)
        w, d_b, q_b = weights(rng, btype, OC, 9 * C)
        b = rng.standard_normal(OC).astype(F32)
        got = core.cpu_conv2d_q8(x, w, b, None, 3, 1, 1, up, btype, via, level, 2)
        ref = reference(x, d_b, q_b, b, up, f, btype)
        case = (level, btype, f, N, C, H, W, OC, up)
        assert got.shape == ref.shape, case
        scale = np.abs(ref).max()
        # f32 sums of the block products and of the output transform against float64
        assert np.abs(got - ref).max() <= 2e-5 * scale, case
        # and the quantization error against the exact convolution, beside the direct op's
        ex = exact(x, d_b, q_b, b, up)
        direct = core.cpu_conv2d_q8(x, w, b, None, 3, 1, 1, up, btype, "direct", level, 2)
        err_w = np.abs(got - ex).max() / np.abs(ex).max()
        err_d = np.abs(direct - ex).max() / np.abs(ex).max()
        print(case, f"vs exact: winograd {err_w:.2e}, direct {err_d:.2e}")
        if f == 2:  # F(4x4, 3x3) in int8 is far off (nn/winograd_q8.h): not used by the models
            assert err_w < 3e-2 and err_w < 4 * err_d + 1e-3, (case, err_w, err_d)


@pytest.mark.parametrize("level", FAST)
@pytest.mark.parametrize("via", ["winograd", "winograd_f43"])
def test_winograd_q8_levels_agree(level, via):
    # every level's transforms and integer product compute the same chain: the same bits
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 64, 10, 13)).astype(F32)
    w, _, _ = weights(rng, "q8_0", 70, 9 * 64)
    ref = core.cpu_conv2d_q8(x, w, None, None, 3, 1, 1, 1, "q8_0", via, FAST[0], 1)
    got = core.cpu_conv2d_q8(x, w, None, None, 3, 1, 1, 1, "q8_0", via, level, 2)
    np.testing.assert_array_equal(got, ref)


def test_winograd_q8_rejects_what_it_does_not_take():
    rng = np.random.default_rng(3)
    if not FAST:
        pytest.skip("the integer product runs at no level here")
    x = rng.standard_normal((1, 32, 6, 6)).astype(F32)
    w, _, _ = weights(rng, "q8_0", 16, 9 * 32)  # fewer than 32 output channels
    with pytest.raises(ValueError, match="Winograd"):
        core.cpu_conv2d_q8(x, w, None, None, 3, 1, 1, 1, "q8_0", "winograd", FAST[0], 1)
    w, _, _ = weights(rng, "q8_0", 40, 9 * 32)
    with pytest.raises(ValueError, match="Winograd"):  # stride 2
        core.cpu_conv2d_q8(x, w, None, None, 3, 2, 1, 1, "q8_0", "winograd", FAST[0], 1)


@pytest.mark.parametrize("name", ["sd1", "bk_tiny"])
def test_unet_winograd_q8_vs_diffusers(name):
    """A whole U-Net with q8_0 weights, every eligible 3x3 conv by Winograd int8 (conv="winograd"),
    against diffusers fp32: within the quantized U-Net bound of test_quant, and not the direct
    op's output (the path was taken)."""
    pytest.importorskip("diffusers")
    import test_quant as tq

    model, tensors, nc = tq._unet_model(name)
    x, ctx, kw = tq._unet_inputs(nc)
    ref = tq._unet_reference(model, x, ctx, kw)
    store = tq.weights.build_store(tq.weights.open_device("cpu", 2), tensors, "q8_0")
    unet = tq.UNet(store, nc)
    unet.conv = "im2col"  # quantized kernels: the direct int8 op
    direct = unet(x, 500.0, ctx, **kw)
    unet.conv = "winograd"
    wino = unet(x, 500.0, ctx, **kw)
    err_d, err_w = tq.rel(direct, ref), tq.rel(wino, ref)
    print(f"{name} q8_0 U-Net vs fp32: direct {err_d:.3e}, winograd int8 {err_w:.3e}")
    assert not np.array_equal(wino, direct)
    assert err_w <= tq.UNET_TOL["q8_0"], (name, err_w, err_d)
