"""The CPU kernel seam: every variant this machine supports against the portable reference and
against PyTorch's float64 ops, the level cap (SDCPP_CPU_LEVEL and set_cpu_level), and the U-Net
against diffusers at each level.

Tolerances: GroupNorm/LayerNorm <= 1e-6 relative L2 (the variants differ only in summation
order and a vectorized exp for SiLU, relative error ~2e-7); GEGLU <= 2e-6 (vectorized erf,
|error| < 1.5e-7 absolute).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import sdcpp

core = sdcpp.engine.weights.native()
LEVELS = core.cpu_levels()


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-30))


@pytest.fixture
def restore_level():
    cap = core.cpu_kernels()["cap"]
    yield
    core.set_cpu_level(cap)


def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("silu", [False, True])
def test_group_norm_variants(level, silu):
    torch = _torch()
    rng = np.random.default_rng(1)
    # odd spatial sizes leave vector tails; large values and offsets test the statistics
    x = (rng.standard_normal((2, 64, 13, 11)) * 3 + 5).astype(np.float32)
    w = rng.standard_normal(64).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    ours = core.cpu_kernel_group_norm(x, w, b, 32, 1e-5, silu, level)
    ref = torch.nn.functional.group_norm(torch.from_numpy(x).double(), 32, torch.from_numpy(w).double(),
                                         torch.from_numpy(b).double(), 1e-5)
    if silu:
        ref = torch.nn.functional.silu(ref)
    ref = ref.numpy()
    portable = core.cpu_kernel_group_norm(x, w, b, 32, 1e-5, silu, "portable")
    assert rel(ours, ref) <= 1e-6, (level, rel(ours, ref))
    assert rel(ours, portable) <= 1e-6


@pytest.mark.parametrize("level", LEVELS)
def test_group_norm_in_place_is_bit_identical(level):
    """Written over its input (the VAE's consumed activations) the GroupNorm+SiLU gives exactly
    the values of the out-of-place op: each group's statistics are read before it is overwritten."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((1, 64, 13, 11)) * 3 + 5).astype(np.float32)
    w = rng.standard_normal(64).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    for silu in (False, True):
        plain = core.cpu_kernel_group_norm(x, w, b, 32, 1e-6, silu, level)
        over = core.cpu_kernel_group_norm(x, w, b, 32, 1e-6, silu, level, True)
        assert np.array_equal(plain, over)


@pytest.mark.parametrize("level", LEVELS)
def test_layer_norm_variants(level):
    torch = _torch()
    rng = np.random.default_rng(2)
    for C in (320, 77, 8):                   # vector widths, a tail, shorter than a vector
        x = (rng.standard_normal((37, C)) * 2 - 1).astype(np.float32)
        w = rng.standard_normal(C).astype(np.float32)
        b = rng.standard_normal(C).astype(np.float32)
        ours = core.cpu_kernel_layer_norm(x, w, b, 1e-5, level)
        ref = torch.nn.functional.layer_norm(torch.from_numpy(x).double(), (C,), torch.from_numpy(w).double(),
                                             torch.from_numpy(b).double(), 1e-5).numpy()
        assert rel(ours, ref) <= 1e-6, (level, C, rel(ours, ref))
        assert rel(ours, core.cpu_kernel_layer_norm(x, w, b, 1e-5, "portable")) <= 1e-6


@pytest.mark.parametrize("level", LEVELS)
def test_geglu_variants(level):
    torch = _torch()
    rng = np.random.default_rng(3)
    for F in (640, 37):
        x = (rng.standard_normal((19, 2 * F)) * 4).astype(np.float32)   # gates far into both tails
        x[0, F:F + 4] = [0.0, -12.0, 12.0, 1e-8]
        ours = core.cpu_kernel_geglu(x, level)
        xd = torch.from_numpy(x).double()
        ref = (xd[:, :F] * torch.nn.functional.gelu(xd[:, F:])).numpy()
        assert rel(ours, ref) <= 2e-6, (level, F, rel(ours, ref))
        assert np.abs(ours - core.cpu_kernel_geglu(x, "portable")).max() <= 2e-6 * np.abs(ref).max()


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_activation_variants(level, act):
    """The CLIP MLP activations (x * sigmoid(1.702 x) and erf GELU) against float64 PyTorch."""
    torch = _torch()
    rng = np.random.default_rng(4)
    for n in (3072, 37):
        x = (rng.standard_normal((7, n)) * 4).astype(np.float32)
        x[0, :4] = [0.0, -30.0, 30.0, 1e-8]
        ours = core.cpu_kernel_activation(x, act, level)
        xd = torch.from_numpy(x).double()
        ref = (xd * torch.sigmoid(1.702 * xd) if act == "quick_gelu" else torch.nn.functional.gelu(xd)).numpy()
        assert rel(ours, ref) <= 2e-6, (level, act, n, rel(ours, ref))
        assert np.abs(ours - core.cpu_kernel_activation(x, act, "portable")).max() <= 2e-6 * np.abs(ref).max()
    with pytest.raises(ValueError, match="activation must be"):
        core.cpu_kernel_activation(x, "relu", level)


@pytest.mark.parametrize("level", LEVELS)
def test_transpose_variants(level):
    """The tiled transposing copy (the U-Net's image <-> sequence layouts) is exact at every level:
    full 8 x 8 / 16 x 16 register blocks, edge blocks of every size, several work units."""
    rng = np.random.default_rng(5)
    for shape in ((2, 320, 64), (1, 17, 33), (3, 64, 1), (1, 1, 70), (2, 129, 200), (1, 8, 16)):
        x = rng.standard_normal(shape).astype(np.float32)
        for units in (1, 3):
            np.testing.assert_array_equal(core.cpu_kernel_transpose(x, level, units), x.transpose(0, 2, 1),
                                          err_msg=f"{level} {shape} {units}")


@pytest.mark.parametrize("level", [lv for lv in LEVELS if lv in ("avx2", "avx512", "avx512_bf16")])
def test_fused_attention_f32_at_each_level(level, restore_level):
    """The fused f32 attention variant of each x86 level (8-lane AVX2, 16-lane AVX-512) against a
    float64 softmax(q k^T / sqrt(d)) v, on head widths and key counts that are not multiples of
    the kernels' tiles."""
    core.set_cpu_level(level)
    variant = "avx2" if level == "avx2" else "avx512"
    assert sdcpp.system_info()["cpu_kernels"]["attention_f32"] == variant
    rng = np.random.default_rng(8)
    for N, Lq, Lk, D, H in [(2, 100, 77, 80, 2), (1, 64, 130, 128, 2), (2, 33, 64, 160, 1), (1, 70, 200, 66, 2),
                            (1, 5, 3, 40, 1), (1, 25, 33, 24, 3)]:
        q = rng.standard_normal((N, Lq, D)).astype(np.float32) * 2
        k = rng.standard_normal((N, Lk, D)).astype(np.float32)
        v = rng.standard_normal((N, Lk, D)).astype(np.float32)
        d = D // H
        qh = q.astype(np.float64).reshape(N, Lq, H, d).transpose(0, 2, 1, 3)
        kh = k.astype(np.float64).reshape(N, Lk, H, d).transpose(0, 2, 1, 3)
        vh = v.astype(np.float64).reshape(N, Lk, H, d).transpose(0, 2, 1, 3)
        s = qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        ref = ((s / s.sum(-1, keepdims=True)) @ vh).transpose(0, 2, 1, 3).reshape(N, Lq, D)
        ours = sdcpp._core.unet_attention(q, k, v, H, "fused", "f32")
        assert rel(ours, ref) <= 1e-5, (level, (N, Lq, Lk, D, H), rel(ours, ref))


def _bf16(x):
    """float32 -> bf16 (round to nearest even) -> float64, as the bf16 attention rounds its operands."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)).astype(np.float64)


# (N, Lq, Lk, D, heads): the real models' head widths 40 / 80 / 160 (SD1, BK-SDM) and 64 (SDXL,
# SSD-1B), an odd one (33), query and key counts off the kernels' tiles (32 queries, 32 / 64 /
# 128 keys), a context of 77, a single key.
BF16_ATTN_SHAPES = [(2, 100, 77, 80, 2), (1, 64, 130, 128, 2), (2, 33, 64, 160, 1), (1, 70, 200, 66, 2),
                    (1, 5, 3, 40, 1), (2, 97, 300, 320, 8), (1, 40, 1, 40, 1)]


@pytest.mark.parametrize("level", [lv for lv in LEVELS if lv in ("avx512_bf16", "amx")])
def test_fused_attention_bf16_at_each_level(level, restore_level):
    """The bf16 attention's variants (AVX512-BF16 dot products; AMX-BF16 tiles at the level amx):
    against a float64 softmax(q k^T / sqrt(d)) v of the operands as the kernels round them (q
    scaled by log2(e) / sqrt(d), q, k, v to bf16), which leaves the rounding of the probabilities
    to bf16 (relative 2^-9 each) and the f32 sums; and the AMX variant against the AVX512-BF16
    one, which defines its numerics (same rounding; another summation order, and its running
    max moves per 128 keys rather than 64)."""
    core.set_cpu_level(level)
    variant = sdcpp.system_info()["cpu_kernels"]["attention_bf16"]
    if level == "amx" and variant != "amx":
        pytest.skip("no AMX-BF16 on this CPU")
    assert variant == level
    rng = np.random.default_rng(9)
    for N, Lq, Lk, D, H in BF16_ATTN_SHAPES:
        q = rng.standard_normal((N, Lq, D)).astype(np.float32) * 2
        k = rng.standard_normal((N, Lk, D)).astype(np.float32)
        v = rng.standard_normal((N, Lk, D)).astype(np.float32)
        d = D // H
        heads = lambda x: x.reshape(N, -1, H, d).transpose(0, 2, 1, 3)  # noqa: E731
        qs = np.float32(1.4426950408889634 / np.sqrt(d))
        s = heads(_bf16(q * qs)) @ heads(_bf16(k)).transpose(0, 1, 3, 2)  # base-2 logits
        p = np.exp2(s - s.max(-1, keepdims=True))
        ref = ((p / p.sum(-1, keepdims=True)) @ heads(_bf16(v))).transpose(0, 2, 1, 3).reshape(N, Lq, D)
        ours = core.unet_attention(q, k, v, H, "fused", "bf16")
        print(level, (N, Lq, Lk, D, H), f"rel L2 {rel(ours, ref):.2e}")
        assert rel(ours, ref) <= 2e-3, (level, (N, Lq, Lk, D, H), rel(ours, ref))
        if level == "amx":
            core.set_cpu_level("avx512_bf16")
            dot = core.unet_attention(q, k, v, H, "fused", "bf16")
            core.set_cpu_level("amx")
            print(f"  amx vs avx512_bf16 {rel(ours, dot):.2e}")
            assert rel(ours, dot) <= 1e-3, ((N, Lq, Lk, D, H), rel(ours, dot))


def test_levels_are_detected_and_capped(restore_level):
    assert LEVELS[0] == "portable"
    info = sdcpp.system_info()["cpu_kernels"]
    assert info["level"] == LEVELS[-1] == info["detected"]
    assert info["elementwise"] in LEVELS
    for level in LEVELS:
        assert core.set_cpu_level(level) == level
        assert sdcpp.system_info()["cpu_kernels"]["elementwise"] in LEVELS[:LEVELS.index(level) + 1]
    assert core.set_cpu_level("portable") == "portable"
    assert sdcpp.system_info()["cpu_kernels"]["attention_f32"] == "ggml_flash"
    with pytest.raises(ValueError, match="unknown CPU level 'sse9'.*avx2"):
        core.set_cpu_level("sse9")
    with pytest.raises(ValueError, match="unknown CPU level"):
        core.cpu_kernel_geglu(np.zeros((1, 2), np.float32), "sse9")


def test_environment_caps_the_level():
    code = "import sdcpp; print(sdcpp.system_info()['cpu_kernels']['level'])"
    for cap in ("portable", LEVELS[min(1, len(LEVELS) - 1)]):
        env = dict(os.environ, SDCPP_CPU_LEVEL=cap)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == cap


@pytest.mark.parametrize("level", LEVELS)
def test_unet_matches_diffusers_at_each_level(level, restore_level):
    """The fused U-Net graph (norms, GEGLU, attention, Winograd) at a capped level against
    diffusers' float32 U-Net: the same 1e-4 bound as the engine parity tests."""
    torch = _torch()
    import unet_models as um

    from sdcpp.engine import weights
    from sdcpp.engine.unet import UNet

    dc = um.diffusers_config("sd1")
    model = um.build_diffusers_unet(dc, seed=5)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    ctx = rng.standard_normal((2, 7, dc["cross_attention_dim"])).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x), 500.0, torch.from_numpy(ctx)).sample.numpy()
    core.set_cpu_level(level)
    store = weights.build_store(weights.open_device("cpu", 2), um.canonical_tensors(model), "f32")
    unet = UNet(store, um.native_config(dc))
    unet.conv = "winograd"                      # every eligible conv through the Winograd custom ops
    out = unet(x, 500.0, ctx)
    err = rel(out, ref)
    print(f"[cpu kernels] U-Net at {level}: rel L2 {err:.2e}")
    assert err <= 1e-4


@pytest.mark.parametrize("level", LEVELS)
def test_packed_gemm_at_each_level(level):
    """The packed product C = A B^T of each level against float64, with B in f32, f16 and bf16
    (compared with the same rounded B), on shapes that leave partial register tiles and cache
    blocks on every side, with 1 and 3 threads (rows split unevenly)."""
    rng = np.random.default_rng(11)
    for M, K, N in [(1, 1, 1), (13, 7, 45), (37, 300, 70), (100, 513, 33), (25, 40, 530)]:
        a = rng.standard_normal((M, K)).astype(np.float32)
        b = rng.standard_normal((N, K)).astype(np.float32)
        u = b.view(np.uint32)
        bf16 = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
        for btype, bb, bref in [("f32", b, b), ("f16", b.astype(np.float16).view(np.uint16), b.astype(np.float16)),
                                ("bf16", bf16, (bf16.astype(np.uint32) << 16).view(np.float32))]:
            ref = a.astype(np.float64) @ bref.astype(np.float64).T
            for threads in (1, 3):
                ours = core.cpu_kernel_gemm(a, bb, btype, level, threads)
                assert ours.shape == (M, N)
                assert np.abs(ours - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max()), (level, btype, (M, K, N), threads)
    with pytest.raises(ValueError, match="btype must be"):
        core.cpu_kernel_gemm(a, b, "q8_0", level, 1)
    with pytest.raises(ValueError, match="same K"):
        core.cpu_kernel_gemm(a, b[:, :-1].copy(), "f32", level, 1)
    assert sdcpp.system_info()["cpu_kernels"]["gemm"] in LEVELS


_BT23 = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
_G23 = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)


def _f23_transforms(x, w):
    """float64 V = B^T d B per 2x2 output tile (tiles in image, row, column order) as [16, T, C]
    and U = G g G^T as [16, OC, C], from the definition."""
    N, C, H, W = x.shape
    TH, TW = (H + 1) // 2, (W + 1) // 2
    xp = np.zeros((N, C, 2 * TH + 2, 2 * TW + 2))
    xp[:, :, 1:H + 1, 1:W + 1] = x
    d = np.stack([np.stack([xp[:, :, 2 * ty:2 * ty + 4, 2 * tx:2 * tx + 4] for tx in range(TW)], 1)
                  for ty in range(TH)], 1)                          # [N, TH, TW, C, 4, 4]
    v = _BT23 @ d @ _BT23.T
    v = v.reshape(N * TH * TW, C, 16).transpose(2, 0, 1)
    u = (_G23 @ w.astype(np.float64) @ _G23.T).reshape(w.shape[0], C, 16).transpose(2, 0, 1)
    return v, u


def _rounded(w, wtype):
    if wtype == "f16":
        return w.astype(np.float16).astype(np.float32)
    if wtype == "bf16":
        u = w.view(np.uint32)
        return (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)
    return w


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("N,C,OC,H,W,wtype,bias", [
    (2, 13, 7, 11, 9, "f32", True),     # two images, partial tiles on both edges, scalar channel tails
    (1, 37, 19, 6, 70, "f16", True),    # two chunks of tiles per row, 4/8/16-lane groups plus tails
    (1, 24, 40, 1, 3, "bf16", False),   # a single row and a single partial column
    (2, 3, 5, 2, 2, "f32", False),      # exactly one tile per image
    (1, 64, 33, 5, 66, "f32", True),    # whole vectors only; 33 tiles per row (16-tile groups + tail)
    (1, 20, 12, 37, 40, "f16", True),   # 19 tile rows, an odd last row
])
def test_winograd_f23_at_each_level(level, N, C, OC, H, W, wtype, bias):
    """The U-Net's Winograd F(2x2, 3x3) convolution with the transforms of each level: the input and
    kernel transforms bit-identical to the portable reference (additions and halvings only, in the
    same order at every level) and within f32 rounding of the float64 definitions, the result
    against torch's float64 conv2d (kernel rounded to its storage type) with 1 and 3 threads."""
    torch = _torch()
    rng = np.random.default_rng(C * 100 + W)
    x = (rng.standard_normal((N, C, H, W)) * 2).astype(np.float32)
    w = (rng.standard_normal((OC, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    b = rng.standard_normal(OC).astype(np.float32) if bias else None
    wr = _rounded(w, wtype)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(wr).double(),
                                     torch.from_numpy(b).double() if bias else None, padding=1).numpy()
    v_ref, u_ref = _f23_transforms(x, wr)
    pv, pu, py = core.cpu_winograd_f23_conv3x3(x, w, b, wtype, "portable", 1)
    for threads in (1, 3):
        v, u, y = core.cpu_winograd_f23_conv3x3(x, w, b, wtype, level, threads)
        assert v.shape == v_ref.shape and u.shape == u_ref.shape and y.shape == ref.shape
        assert np.array_equal(v, pv) and np.array_equal(u, pu), (level, threads)
        assert np.abs(v - v_ref).max() <= 4e-7 * np.abs(v_ref).max()
        assert np.abs(u - u_ref).max() <= 4e-7 * np.abs(u_ref).max()
        err = rel(y, ref)
        assert err <= 2e-6 and np.abs(y - ref).max() <= 2e-6 * max(1.0, np.abs(ref).max()) * 10, (level, threads, err)
        assert rel(y, py) <= 2e-6
    with pytest.raises(ValueError, match="wtype must be"):
        core.cpu_winograd_f23_conv3x3(x, w, b, "q8_0", level, 1)


_G43 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                 [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)


@pytest.mark.parametrize("level", LEVELS)
def test_winograd_f43_kernel_at_each_level(level):
    """The F(4x4, 3x3) kernel transform (it runs every pass on all the U-Net's 3x3 weights, so it
    is vectorized): bit-identical to the portable reference at every level (powers of two and one
    final scale only, see winograd_f43_body.h) and within f32 rounding of float64 G g G^T, for
    channel counts with and without a scalar tail."""
    rng = np.random.default_rng(43)
    for OC, C in [(3, 37), (5, 16), (2, 3)]:
        w = rng.standard_normal((OC, C, 3, 3)).astype(np.float32)
        ref = (_G43 @ w.astype(np.float64) @ _G43.T).reshape(OC, C, 36).transpose(2, 0, 1)
        u = core.cpu_winograd_f43_kernel(w, level)
        assert u.shape == ref.shape
        assert np.array_equal(u, core.cpu_winograd_f43_kernel(w, "portable")), (level, C)
        assert np.abs(u - ref).max() <= 4e-7 * np.abs(ref).max() * 4, (level, C)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("N,C,OC,H,W,up,bias,residual,strip_kb", [
    (2, 33, 40, 16, 24, 1, True, True, 8192),    # the U-Net's cond + uncond pair, one strip
    (2, 19, 17, 7, 10, 2, False, False, 8192),   # upsampled, partial tiles, no bias
    (3, 24, 9, 9, 5, 1, True, False, 16),        # several strips, some spanning two images
])
def test_winograd_f43_batch_at_each_level(level, N, C, OC, H, W, up, bias, residual, strip_kb):
    """The Winograd F(4x4, 3x3) convolution over a batch (the U-Net's 3x3 convolutions): every
    image bit-identical to the same convolution of that image alone (tile rows numbered across
    the batch change no operation), and within F(4, 3)'s f32 rounding of torch's float64 conv2d."""
    torch = _torch()
    rng = np.random.default_rng(N * 1000 + C)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((OC, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    b = rng.standard_normal(OC).astype(np.float32) if bias else None
    res = rng.standard_normal((N, OC, H * up, W * up)).astype(np.float32) if residual else None
    xt = torch.from_numpy(x).double()
    if up == 2:
        xt = torch.nn.functional.interpolate(xt, scale_factor=2, mode="nearest")
    ref = torch.nn.functional.conv2d(xt, torch.from_numpy(w).double(), torch.from_numpy(b).double() if bias else None,
                                     padding=1).numpy()
    if residual:
        ref = ref + res
    out = core.cpu_winograd_conv3x3(x, w, b, res, up, level, strip_kb, 3)
    assert out.shape == ref.shape
    for n in range(N):
        one = core.cpu_winograd_conv3x3(x[n:n + 1].copy(), w, b, None if res is None else res[n:n + 1].copy(), up, level,
                                        8192, 1)
        assert np.array_equal(out[n:n + 1], one), (level, n)
    err = rel(out, ref)
    assert err <= 3e-6 and float(np.abs(out - ref).max()) <= 3e-5 * max(float(np.abs(ref).max()), 1.0), (level, err)


def test_winograd_f23_follows_the_cap(restore_level):
    for level in LEVELS:
        core.set_cpu_level(level)
        expected = "avx512" if level.startswith("avx512") or level == "amx" else "avx2" if level == "avx2" else "portable"
        assert sdcpp.system_info()["cpu_kernels"]["winograd_f23"] == expected
