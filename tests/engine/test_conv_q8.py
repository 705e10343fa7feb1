"""The quantized convolution as one op (kernels/cpu/conv_q8.h): receptive fields gathered and
quantized straight into the integer product's layout, output written in [OW, OH, OC, N].

It must equal the im2col + integer GEMM path bit for bit (same rows of A in ggml's im2col order,
same product loops), at every level where it runs, for q8_0 / q5_0 / q4_0 kernels, strides 1 and
2, 3x3 and 1x1 kernels, odd sizes, a batch of 2, the 2x upsampling read through, bias and
residual folded in. Both are also checked against float64 of the same quantized operands (A
quantized as ggml's x86 quantize_row_q8_0, test_gemm_q8.reference) and against ggml's own
products (no custom ops), so a wrong gather order cannot pass as "equal to itself".
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_gemm_q8 import q4_q5_bytes, q8_bytes, reference  # noqa: E402

import sdcpp  # noqa: E402

core = sdcpp.engine.weights.native()
LEVELS = core.cpu_levels()
FAST = [lv for lv in LEVELS if lv != "portable"]  # the op runs where the integer product does


def im2col(x, k, stride, pad, up):
    """[N, C, H, W] -> rows [N * OH * OW, C * k * k] in ggml_im2col's order (c, ky, kx), of the
    nearest 2x upsampling of x when up = 2, zero outside."""
    if up == 2:
        x = x.repeat(2, axis=2).repeat(2, axis=3)
    N, C, H, W = x.shape
    OH, OW = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
    xp = np.zeros((N, C, H + 2 * pad, W + 2 * pad), x.dtype)
    xp[:, :, pad:pad + H, pad:pad + W] = x
    cols = np.empty((N, OH, OW, C, k, k), x.dtype)
    for ky in range(k):
        for kx in range(k):
            patch = xp[:, :, ky:ky + stride * (OH - 1) + 1:stride, kx:kx + stride * (OW - 1) + 1:stride]
            cols[:, :, :, :, ky, kx] = patch.transpose(0, 2, 3, 1)
    return cols.reshape(N * OH * OW, C * k * k), OH, OW


def weights(rng, btype, OC, K):
    if btype == "q8_0":
        return q8_bytes(rng, OC, K, lo=-127)  # ggml's sign trick (the "ggml" comparison) needs > -128
    return q4_q5_bytes(rng, OC, K, btype)


# (N, C, H, W, OC, k, stride, pad, up): odd sizes, partial register tiles, > 240 output pixels
# (several row blocks, a block crossing the two images), > 256 output channels (two column
# blocks), few pixels against many channels (the column split), K of 17+ blocks.
CASES = [
    (2, 32, 9, 11, 45, 3, 1, 1, 1),
    (2, 32, 9, 11, 40, 3, 2, 1, 1),
    (1, 64, 5, 7, 300, 3, 1, 1, 1),
    (2, 96, 13, 10, 37, 1, 1, 0, 1),
    (2, 64, 7, 9, 20, 1, 2, 0, 1),
    (2, 32, 6, 5, 33, 3, 1, 1, 2),
    (1, 64, 17, 19, 70, 3, 2, 1, 1),
]


@pytest.mark.parametrize("level", FAST)
@pytest.mark.parametrize("btype", ["q8_0", "q5_0", "q4_0"])
def test_direct_equals_im2col_path(level, btype):
    rng = np.random.default_rng(21)
    for N, C, H, W, OC, k, stride, pad, up in CASES:
        K = C * k * k
        x = rng.standard_normal((N, C, H, W)).astype(np.float32)
        x[0, :, :2, :2] = 0.0  # all-zero blocks (d = 0) at the corner
        w, d_b, q_b = weights(rng, btype, OC, K)
        cols, OH, OW = im2col(x, k, stride, pad, up)
        ref = reference(cols, d_b, q_b).reshape(N, OH, OW, OC).transpose(0, 3, 1, 2)
        scale = np.abs(ref).max()
        case = (btype, N, C, H, W, OC, k, stride, pad, up)
        im2col_path = core.cpu_conv2d_q8(x, w, None, None, k, stride, pad, up, btype, "im2col", level, 2)
        assert im2col_path.shape == (N, OC, OH, OW)
        assert np.abs(im2col_path - ref).max() <= 2e-6 * scale, case
        for threads in (1, 2, 3):
            direct = core.cpu_conv2d_q8(x, w, None, None, k, stride, pad, up, btype, "direct", level, threads)
            assert np.array_equal(direct, im2col_path), (case, level, threads)


@pytest.mark.parametrize("level", FAST)
def test_direct_folds_bias_and_residual(level):
    """Bias and residual added in the op as nn::conv2d's ggml_adds do: (y + b) + r, bit for bit;
    and both paths within ggml's rounding of ggml's own im2col + q8_0 products."""
    rng = np.random.default_rng(22)
    for N, C, H, W, OC, k, stride, pad, up in [(2, 32, 9, 11, 45, 3, 1, 1, 1), (2, 32, 6, 5, 33, 3, 1, 1, 2),
                                                (2, 64, 7, 9, 20, 1, 2, 0, 1)]:
        K = C * k * k
        x = rng.standard_normal((N, C, H, W)).astype(np.float32)
        w, _, _ = q8_bytes(rng, OC, K, lo=-127)
        OH, OW = (H * up + 2 * pad - k) // stride + 1, (W * up + 2 * pad - k) // stride + 1
        b = rng.standard_normal(OC).astype(np.float32)
        r = rng.standard_normal((N, OC, OH, OW)).astype(np.float32)
        for bias, res in [(b, None), (None, r), (b, r)]:
            old = core.cpu_conv2d_q8(x, w, bias, res, k, stride, pad, up, "q8_0", "im2col", level, 2)
            new = core.cpu_conv2d_q8(x, w, bias, res, k, stride, pad, up, "q8_0", "direct", level, 2)
            assert np.array_equal(new, old), (level, bias is None, res is None)
            ggml = core.cpu_conv2d_q8(x, w, bias, res, k, stride, pad, up, "q8_0", "ggml", level, 2)
            assert np.abs(new - ggml).max() <= 1e-5 * np.abs(ggml).max()


def test_direct_refuses_where_it_does_not_apply():
    x = np.zeros((1, 32, 4, 4), np.float32)
    w, _, _ = q8_bytes(np.random.default_rng(0), 8, 32 * 9)
    if "portable" in LEVELS:
        with pytest.raises(ValueError, match="does not apply"):
            core.cpu_conv2d_q8(x, w, None, None, 3, 1, 1, 1, "q8_0", "direct", "portable", 1)
    with pytest.raises(ValueError, match="via must be"):
        core.cpu_conv2d_q8(x, w, None, None, 3, 1, 1, 1, "q8_0", "fft", LEVELS[-1], 1)
    with pytest.raises(ValueError, match="multiple of 32"):
        core.cpu_conv2d_q8(x[:, :3], w, None, None, 3, 1, 1, 1, "q8_0", "direct", LEVELS[-1], 1)
