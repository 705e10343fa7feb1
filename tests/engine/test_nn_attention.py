"""The layer library's one attention (csrc/nn/attention.h) against PyTorch's
scaled_dot_product_attention in float64: the mul_mat kernel with queries in chunks (the VAE's
bounded score matrix) for one head (no permutes) and several, causal (CLIP) with and without
chunks, and every kernel with the budget set (flash and the fused kernel ignore it)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _reference(q, k, v, heads, causal):
    N, Lq, D = q.shape
    d = D // heads
    split = lambda x: torch.from_numpy(x).double().reshape(N, -1, heads, d).transpose(1, 2)  # noqa: E731
    o = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=causal)
    return o.transpose(1, 2).reshape(N, Lq, D).numpy()


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# (N, Lq, Lk, D, heads): one head of a multiple of 16 (the VAE's path without permutes), one
# head of 40 (padded), several heads, a CLIP-like causal shape.
SHAPES = [(1, 96, 96, 64, 1), (2, 50, 50, 40, 1), (2, 70, 33, 96, 3), (2, 77, 77, 64, 4)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
# score-matrix budget in query rows: unlimited, one row per chunk, uneven chunks
@pytest.mark.parametrize("rows", [0, 1, 7])
def test_mul_mat_chunks_and_causal(shape, causal, rows):
    from sdcpp import _core

    N, Lq, Lk, D, H = shape
    if causal and Lq != Lk:
        pytest.skip("causal attention is self-attention")
    rng = np.random.default_rng(3)
    q = rng.standard_normal((N, Lq, D)).astype(np.float32) * 2
    k = rng.standard_normal((N, Lk, D)).astype(np.float32)
    v = rng.standard_normal((N, Lk, D)).astype(np.float32)
    budget = rows * Lk * H * N * 4
    ours = _core.unet_attention(q, k, v, H, "mul_mat", "f32", causal=causal, max_score_bytes=budget)
    err = _rel(ours, _reference(q, k, v, H, causal))
    print(f"mul_mat {shape} causal={causal} rows={rows}: rel L2 {err:.2e}")
    assert err <= 1e-5


@pytest.mark.parametrize("kernel", ["mul_mat", "flash", "fused"])
def test_budget_does_not_change_results(kernel):
    from sdcpp import _core

    rng = np.random.default_rng(5)
    N, Lq, Lk, D, H = 2, 64, 77, 80, 2
    q = rng.standard_normal((N, Lq, D)).astype(np.float32)
    k = rng.standard_normal((N, Lk, D)).astype(np.float32)
    v = rng.standard_normal((N, Lk, D)).astype(np.float32)
    if kernel == "fused" and _core.cpu_kernels()["attention_f32"] == "ggml_flash":
        pytest.skip("no fused f32 attention at this CPU level")
    ours = _core.unet_attention(q, k, v, H, kernel, "f32", max_score_bytes=5 * Lk * H * N * 4)
    assert _rel(ours, _reference(q, k, v, H, False)) <= 1e-5


def test_causal_rejects_cross_attention():
    from sdcpp import _core

    x = np.zeros((1, 4, 16), np.float32)
    y = np.zeros((1, 5, 16), np.float32)
    with pytest.raises(ValueError, match="causal"):
        _core.unet_attention(x, y, y, 1, "mul_mat", "f32", causal=True)
