"""Parity of the native U-Net with diffusers' UNet2DConditionModel (float32, CPU).

Small widths, the REAL topologies (tests/engine/unet_models.py): SD1, SD2, SDXL, SSD-1B,
Segmind Vega, BK-SDM tiny/small/base. Every parameter is random (norms and biases too).
Tolerances (relative L2): f32 weights <= 1e-4, f16 weights <= 5e-3.
"""
from __future__ import annotations

import functools
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import unet_models as um  # noqa: E402

from sdcpp import errors as sdcpp_errors  # noqa: E402
from sdcpp.engine import weights  # noqa: E402
from sdcpp.engine.unet import UNet, timestep_embedding  # noqa: E402
from fixtures.devices import ON_CPU, TEST_DEVICE, tol as device_tol  # noqa: E402

pytestmark = pytest.mark.device  # part of the device suite (SDCPP_TEST_DEVICE, tools/ci_vulkan.sh)

torch.set_num_threads(1)  # the references are small; keeps the suite quick on a shared machine

F32_TOL = device_tol(1e-4)
F16_TOL = 5e-3
H, W, L = 16, 24, 7  # non-square latent; context length 7


def rel_l2(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def device():
    # One ggml thread: on a shared, oversubscribed machine every node's thread barrier can
    # wait a scheduler slice (seen: 30x slower with 2 threads). test_two_threads covers the
    # threaded partitioning of the kernels.
    return weights.open_device(TEST_DEVICE, 1)


@functools.lru_cache(maxsize=None)
def _model(name: str):
    dc = um.diffusers_config(name)
    model = um.build_diffusers_unet(dc, seed=sum(map(ord, name)))
    return dc, model, um.canonical_tensors(model), um.native_config(dc)


def _inputs(nc, B, rng, *, cfg_style=False):
    x = rng.standard_normal((B, nc["in_channels"], H, W)).astype(np.float32)
    if cfg_style:  # classifier-free guidance: the same latent twice, cond / uncond contexts
        x = np.repeat(x[:1], B, axis=0)
    ctx = rng.standard_normal((B, L, nc["cross_attention_dim"])).astype(np.float32)
    kw = {}
    if nc["addition_embed"]:
        pooled = nc["addition_embed"]["in_dim"] - 6 * nc["addition_embed"]["time_embed_dim"]
        kw["text_embeds"] = rng.standard_normal((B, pooled)).astype(np.float32)
        kw["time_ids"] = np.tile(np.array([[128, 192, 0, 0, 128, 192]], np.float32), (B, 1))
        kw["time_ids"][-1] = [96, 160, 8, 16, 128, 192]
    return x, ctx, kw


def _reference(model, x, t, ctx, kw):
    B = x.shape[0]
    tt = torch.full((B,), float(t)) if np.ndim(t) == 0 else torch.from_numpy(np.asarray(t, np.float32))
    extra = {}
    if kw:
        extra["added_cond_kwargs"] = {k: torch.from_numpy(v) for k, v in kw.items()}
    with torch.no_grad():
        return model(torch.from_numpy(x), tt, torch.from_numpy(ctx), **extra).sample.numpy()


# (batch, timestep, CFG-style rows)
CASES = [(1, 999.0, False), (2, 500.0, True), (2, 1.0, False)]


@pytest.mark.parametrize("name", list(um.TOPOLOGIES))
def test_parity_f32(device, name):
    dc, model, tensors, nc = _model(name)
    store = weights.build_store(device, tensors, "f32")
    unet = UNet(store, nc)
    assert unet.unused_weights == [], "the native config must use every tensor of the state dict"
    rng = np.random.default_rng(1)
    for B, t, cfg_style in CASES:
        x, ctx, kw = _inputs(nc, B, rng, cfg_style=cfg_style)
        ours = unet(x, t, ctx, **kw)
        ref = _reference(model, x, t, ctx, kw)
        assert ours.shape == ref.shape == (B, nc["out_channels"], H, W)
        err = rel_l2(ours, ref)
        print(f"{name} f32 B={B} t={t}: rel L2 {err:.2e}")
        assert err <= F32_TOL, (name, B, t, err)
        if cfg_style:  # rows differ only by their context: cross-attention must see each row's own
            assert rel_l2(ours[0], ours[1]) > 1e-3


@pytest.mark.parametrize("name", list(um.TOPOLOGIES))
def test_parity_f16_weights(device, name):
    dc, model, tensors, nc = _model(name)
    store = weights.build_store(device, tensors, "f16")
    assert store.type("unet.conv_in.weight") == "f16"
    unet = UNet(store, nc)
    rng = np.random.default_rng(2)
    x, ctx, kw = _inputs(nc, 2, rng, cfg_style=True)
    err = rel_l2(unet(x, 500.0, ctx, **kw), _reference(model, x, 500.0, ctx, kw))
    print(f"{name} f16 B=2 t=500: rel L2 {err:.2e}")
    assert err <= F16_TOL, (name, err)


def test_attention_query_chunks(device):
    """mul_mat attention in query chunks (what a device runs for SD's 4096-token self-attention,
    whose scores are past its largest tensor): a 0.5 MiB score budget cuts the 384-token
    self-attention of a batch of two (2 heads, 2.25 MiB of scores) into 5 chunks. Each chunk
    is a view of some query rows of every head; ggml-vulkan took such a product operand for a
    packed one (every head after the first read another head's queries), which put SD1.5's
    real-size U-Net 0.12 from diffusers on lavapipe (docs/build.md, "Vulkan")."""
    dc, model, tensors, nc = _model("sd1")
    unet = UNet(weights.build_store(device, tensors, "f32"), nc)
    unet.attention = "mul_mat"
    assert unet.max_attention_mb is None
    unet.max_attention_mb = 0.5
    assert unet.max_attention_mb == 0.5
    rng = np.random.default_rng(4)
    x, ctx, kw = _inputs(nc, 2, rng)
    err = rel_l2(unet(x, 500.0, ctx, **kw), _reference(model, x, 500.0, ctx, kw))
    print(f"sd1 mul_mat attention in query chunks, B=2: rel L2 {err:.2e}")
    assert err <= F32_TOL
    with pytest.raises(sdcpp_errors.InvalidArgumentError):
        unet.max_attention_mb = 0
    with pytest.raises(sdcpp_errors.InvalidArgumentError):
        unet.max_attention_mb = "1"


def test_per_row_timesteps_and_graph_reuse(device):
    dc, model, tensors, nc = _model("sd1")
    unet = UNet(weights.build_store(device, tensors, "f32"), nc)
    rng = np.random.default_rng(3)
    x, ctx, kw = _inputs(nc, 2, rng)
    t = np.array([999.0, 1.0], np.float32)
    first = unet(x, t, ctx)
    assert rel_l2(first, _reference(model, x, t, ctx, kw)) <= F32_TOL
    # a second call reuses the cached graph and gives the same numbers
    assert np.array_equal(unet(x, t, ctx), first)
    # another shape (batch 1, other size, other context length) builds another graph
    x1 = rng.standard_normal((1, 4, 8, 32)).astype(np.float32)
    c1 = rng.standard_normal((1, 3, nc["cross_attention_dim"])).astype(np.float32)
    assert rel_l2(unet(x1, 250, c1), _reference(model, x1, 250.0, c1, {})) <= F32_TOL


@pytest.mark.parametrize("name,wt,tol", [("sd1", "f32", F32_TOL), ("sdxl", "f16", F16_TOL), ("sd1", "bf16", 3e-2)])
def test_two_threads(name, wt, tol):
    """Every kernel split over 2 threads (custom ops partition rows / tiles / channels)."""
    dc, model, tensors, nc = _model(name)
    unet = UNet(weights.build_store(weights.open_device(TEST_DEVICE, 2), tensors, wt), nc)
    unet._native.conv = "winograd"
    rng = np.random.default_rng(8)
    x, ctx, kw = _inputs(nc, 2, rng, cfg_style=True)
    err = rel_l2(unet(x, 500.0, ctx, **kw), _reference(model, x, 500.0, ctx, kw))
    print(f"{name} {wt} 2 threads: rel L2 {err:.2e}")
    assert err <= tol


@pytest.mark.parametrize("kernel", ["mul_mat", "flash"])
def test_attention_kernels(device, kernel):
    dc, model, tensors, nc = _model("sd2")
    unet = UNet(weights.build_store(device, tensors, "f32"), nc)
    # "auto": flash on the CPU backend, mul_mat on others (nn::resolve_attention)
    assert unet.resolved_attention == ("flash" if ON_CPU else "mul_mat")
    unet.attention = kernel
    assert unet.resolved_attention == kernel
    rng = np.random.default_rng(4)
    x, ctx, kw = _inputs(nc, 2, rng, cfg_style=True)
    err = rel_l2(unet(x, 500.0, ctx), _reference(model, x, 500.0, ctx, kw))
    print(f"attention {kernel}: rel L2 {err:.2e}")
    assert err <= F32_TOL  # the tiled CPU flash attention runs in f32 with f32 K/V


@pytest.mark.parametrize("name", ["sd1", "bk_tiny"])  # (SDXL's 32x32 attentions: 256 tokens at most)
def test_int8_attention(device, name):
    """UNet.attention = "int8" (on the CPU backend the int8 attention kernel for attentions of
    512+ keys, here the first level's 1024-token self-attention of a 32x32 latent; the others
    run the exact kernel; ggml's flash attention on other backends) with f32 weights, one call
    vs diffusers fp32. Measured: sd1 1.2e-3, bk_tiny 1.5e-3 (f32 attention: ~1e-6; with the int8
    kernel on every attention of a 16x24 latent: sd1 4.4e-3, sdxl 2.6e-3, bk_tiny 5.2e-3); bound
    1.5e-2, and above 1e-5 on the CPU (the int8 kernel ran)."""
    dc, model, tensors, nc = _model(name)
    unet = UNet(weights.build_store(device, tensors, "f32"), nc)
    unet.attention = "int8"
    assert unet.attention == unet.resolved_attention == "int8"
    rng = np.random.default_rng(6)
    _, ctx, kw = _inputs(nc, 2, rng, cfg_style=True)
    x = np.repeat(rng.standard_normal((1, nc["in_channels"], 32, 32)).astype(np.float32), 2, axis=0)
    err = rel_l2(unet(x, 500.0, ctx, **kw), _reference(model, x, 500.0, ctx, kw))
    print(f"{name} attention int8: rel L2 {err:.2e}")
    assert err <= (1.5e-2 if ON_CPU else F32_TOL)
    if ON_CPU:
        assert err > 1e-5


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
@pytest.mark.parametrize("conv", ["im2col", "winograd", "winograd_f43"])
def test_conv_implementations(device, name, conv):
    """The 3x3 paths on every eligible convolution (forced; "auto" uses Winograd F(2x2, 3x3) on
    the CPU from 256 output pixels, F(4x4, 3x3) from 2048), including odd tile counts (24 / 8 = 3
    columns at the lowest level; F(4, 3): 3 x 2 outputs in the last tile)."""
    dc, model, tensors, nc = _model(name)
    rng = np.random.default_rng(5)
    x, ctx, kw = _inputs(nc, 2, rng)
    ref = _reference(model, x, 999.0, ctx, kw)
    for wt, tol in (("f32", F32_TOL), ("f16", F16_TOL)):
        unet = UNet(weights.build_store(device, tensors, wt), nc)
        unet._native.conv = conv
        assert unet._native.resolved_conv == conv
        err = rel_l2(unet(x, 999.0, ctx, **kw), ref)
        print(f"{name} conv {conv} {wt}: rel L2 {err:.2e}")
        assert err <= tol


def test_auto_conv_mixes_winograd_sizes(device):
    """"auto" on a 40x32 latent pair (2560 output pixels at the top level): F(4x4, 3x3) there,
    F(2x2, 3x3) / im2col below; f32 and f16 weights (f32 products) against diffusers fp32."""
    dc, model, tensors, nc = _model("sd1")
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, nc["in_channels"], 32, 40)).astype(np.float32)
    ctx = rng.standard_normal((2, L, nc["cross_attention_dim"])).astype(np.float32)
    ref = _reference(model, x, 700.0, ctx, {})
    for wt, tol in (("f32", F32_TOL), ("f16", F16_TOL)):
        unet = UNet(weights.build_store(device, tensors, wt), nc)
        err = rel_l2(unet(x, 700.0, ctx), ref)
        print(f"auto conv 32x40 {wt}: rel L2 {err:.2e}")
        assert err <= tol


@pytest.mark.skipif(not ON_CPU, reason="sdcpp's CPU convolutions (custom ops)")
def test_f16_convolutions_take_no_f16_im2col():
    """On the CPU an f16 U-Net's conv_in (4 -> C) and conv_out (C -> 4) run by Winograd like the
    other stride-1 3x3 convolutions, and the remaining im2col convolutions (stride-2
    downsamplers, small levels) by an f32 im2col times the f16 kernel in sdcpp's product: no f16
    im2col and no ggml f16 x f16 product is left (they took 27 + 86 ms of a BK-SDM-tiny pass at
    AVX2, now 15 + 8; bench/README.md). Numerics: test_parity_f16_weights and the conv tests."""
    dc, model, tensors, nc = _model("sd1")
    unet = UNet(weights.build_store(weights.open_device("cpu", 1), tensors, "f16"), nc)
    nodes = unet.profile(2, H, W, L)
    im2col = [r for r in nodes if r["op"] == "IM2COL"]
    assert im2col, "expected the downsamplers' im2col"
    assert all(r["shape"].startswith("f32[") for r in im2col), [r["shape"] for r in im2col]
    io = [r["src0"] for r in im2col if re.fullmatch(r"f16\[3,3,(4,\d+|\d+,4)\]", r["src0"])]
    assert not io, f"conv_in / conv_out still by im2col: {io}"
    f16_products = [r for r in nodes if r["op"] == "MUL_MAT" and r["src0"].startswith("f16[") and r["src1"].startswith("f16[")]
    assert not f16_products, f16_products


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_generic_ggml_path(device, name):
    """Only stock ggml ops (what non-CPU backends run): no fused / Winograd / bf16 custom ops."""
    dc, model, tensors, nc = _model(name)
    rng = np.random.default_rng(9)
    x, ctx, kw = _inputs(nc, 2, rng, cfg_style=True)
    ref = _reference(model, x, 500.0, ctx, kw)
    for wt, tol in (("f32", F32_TOL), ("f16", F16_TOL)):
        unet = UNet(weights.build_store(device, tensors, wt), nc)
        unet.fused = False
        unet.conv = "im2col"
        unet.attention = "mul_mat"
        err = rel_l2(unet(x, 500.0, ctx, **kw), ref)
        print(f"{name} generic ggml path {wt}: rel L2 {err:.2e}")
        assert err <= tol


def test_bf16_weights(device):
    """bf16 weights (and bf16 products): no project tolerance; the figure is reported."""
    dc, model, tensors, nc = _model("sd1")
    unet = UNet(weights.build_store(device, tensors, "bf16"), nc)
    rng = np.random.default_rng(6)
    x, ctx, kw = _inputs(nc, 2, rng, cfg_style=True)
    err = rel_l2(unet(x, 500.0, ctx), _reference(model, x, 500.0, ctx, kw))
    print(f"sd1 bf16 weights: rel L2 {err:.2e}")
    assert err <= 3e-2


# Relative L2 against diffusers fp32. The random test U-Nets (norms and biases random too) are
# harder than trained ones: PyTorch's own bf16 autocast of them is 1.3e-2 to 1.6e-2 from fp32.
BF16_COMPUTE_TOL = 2e-2


def _autocast_bf16(model, x, t, ctx, kw):
    """diffusers under torch.autocast(bfloat16) (oneDNN's bf16 products): the yardstick."""
    extra = {"added_cond_kwargs": {k: torch.from_numpy(v) for k, v in kw.items()}} if kw else {}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.from_numpy(x), torch.full((x.shape[0],), float(t)), torch.from_numpy(ctx), **extra).sample
    return out.float().numpy()


@pytest.mark.parametrize("name", ["sd1", "sdxl", "bk_tiny"])
def test_bf16_compute(device, name):
    """compute="bf16" (opt-in): where the CPU has AMX-BF16 the linear layers, convolutions and
    attention round both operands to bf16 and sum in f32 (kernels/cpu/gemm_bf16.h, the AMX
    variant of kernels/cpu/fused_attention.h): within 2e-2 of
    diffusers fp32 (measured 0.9e-2 to 1.2e-2), and no further from it than 1.25x PyTorch's bf16
    autocast of the same model (measured 0.7x to 0.75x), f32 and f16 weights. Elsewhere the option
    changes nothing. Switching back gives the exact graph again (the graph cache keys it)."""
    from sdcpp.engine.weights import native

    dc, model, tensors, nc = _model(name)
    rng = np.random.default_rng(7)
    x, ctx, kw = _inputs(nc, 2, rng, cfg_style=True)
    ref = _reference(model, x, 500.0, ctx, kw)
    torch_bf16 = rel_l2(_autocast_bf16(model, x, 500.0, ctx, kw), ref)
    # the bf16 products are CPU custom ops: on other devices the option changes nothing
    amx_bf16 = ON_CPU and native().cpu_kernels()["gemm_bf16"] == "amx"
    for wt, tol in (("f32", F32_TOL), ("f16", F16_TOL)):
        unet = UNet(weights.build_store(device, tensors, wt), nc)
        assert unet.compute == "f32"
        exact = unet(x, 500.0, ctx, **kw)
        assert rel_l2(exact, ref) <= tol
        unet.compute = "bf16"
        ours = unet(x, 500.0, ctx, **kw)
        err = rel_l2(ours, ref)
        print(f"{name} {wt} weights, bf16 compute (AMX-BF16 {amx_bf16}): rel L2 {err:.2e}, torch autocast bf16 {torch_bf16:.2e}")
        assert err <= BF16_COMPUTE_TOL, (name, wt, err)
        assert err <= 1.25 * torch_bf16, (name, wt, err, torch_bf16)
        if amx_bf16:
            assert rel_l2(ours, exact) > 1e-5  # the bf16 products ran
            # and the attention ran in bf16 (AMX-BF16): its K / V packing op, a 1-d bf16 node
            nodes = unet.profile(2, H, W, L)
            packs = [r for r in nodes if r["op"] == "CUSTOM" and re.fullmatch(r"bf16\[\d+\]", r["shape"])]
            assert packs, "compute bf16 kept the f32 attention"
        else:
            assert np.array_equal(ours, exact)
        unet.compute = "f32"
        assert np.array_equal(unet(x, 500.0, ctx, **kw), exact)


def test_bf16_compute_two_threads_and_bad_value():
    dc, model, tensors, nc = _model("bk_tiny")
    unet = UNet(weights.build_store(weights.open_device(TEST_DEVICE, 2), tensors, "f16"), nc)
    unet.compute = "bf16"
    rng = np.random.default_rng(8)
    x, ctx, kw = _inputs(nc, 2, rng)
    err = rel_l2(unet(x, 999.0, ctx, **kw), _reference(model, x, 999.0, ctx, kw))
    assert err <= BF16_COMPUTE_TOL
    from sdcpp import errors

    with pytest.raises(errors.InvalidArgumentError):
        unet.compute = "f16"


def _bf16_round(x):
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)


def _attention_ref(q, k, v, heads):
    N, Lq, D = q.shape
    d = D // heads
    split = lambda x: x.reshape(N, -1, heads, d).transpose(0, 2, 1, 3).astype(np.float64)  # noqa: E731
    s = split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(d)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    return (s @ split(v)).transpose(0, 2, 1, 3).reshape(N, Lq, D)


# (N, Lq, Lk, D, heads): SD1 head dims 40 / 80 / 160, SDXL's 64, an odd one (33), context
# lengths that are not multiples of the kernels' tiles (77, 130, 3).
ATTN_SHAPES = [(2, 100, 77, 80, 2), (1, 64, 130, 128, 2), (2, 33, 64, 160, 1), (1, 70, 200, 66, 2), (1, 5, 3, 40, 1)]


@pytest.mark.parametrize("kernel,dtype,tol", [("mul_mat", "f32", 1e-5), ("flash", "f32", 1e-5), ("fused", "f32", 1e-5),
                                              ("mul_mat", "f16", 2e-3), ("mul_mat", "bf16", 1e-2),
                                              ("fused", "bf16", 1e-2)])
def test_attention_kernel_numerics(kernel, dtype, tol):
    from sdcpp import _core

    # Which fused kernel runs follows the active CPU level (SDCPP_CPU_LEVEL caps it), not the
    # host's flags: ask the engine.
    if kernel == "fused" and _fused_attention_variant(dtype) == "ggml_flash":
        pytest.skip(f"no fused {dtype} attention at this CPU level")
    rng = np.random.default_rng(7)
    for N, Lq, Lk, D, H in ATTN_SHAPES:
        q = rng.standard_normal((N, Lq, D)).astype(np.float32) * 2
        k = rng.standard_normal((N, Lk, D)).astype(np.float32)
        v = rng.standard_normal((N, Lk, D)).astype(np.float32)
        err = rel_l2(_core.unet_attention(q, k, v, H, kernel, dtype), _attention_ref(q, k, v, H))
        print(f"attention {kernel} {dtype} {(N, Lq, Lk, D, H)}: rel L2 {err:.2e}")
        assert err <= tol


def _fused_attention_variant(dtype: str) -> str:
    import sdcpp

    return sdcpp.system_info()["cpu_kernels"]["attention_f32" if dtype == "f32" else "attention_bf16"]


def test_timestep_embedding_matches_diffusers():
    from diffusers.models.embeddings import get_timestep_embedding

    t = np.array([0, 1, 2.5, 250, 500, 999, 1000], np.float32)
    for dim, flip, shift in [(320, True, 0), (256, True, 0), (33, False, 1), (64, False, 1)]:
        ref = get_timestep_embedding(torch.from_numpy(t), dim, flip, shift).numpy()
        ours = timestep_embedding(t, dim, flip, shift)
        # |arg| reaches 1000: one ulp of torch's float32 exp there moves sin/cos by ~6e-5
        np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-4)


# --- errors ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sd1(device):
    dc, model, tensors, nc = _model("sd1")
    return UNet(weights.build_store(device, tensors, "f32"), nc), tensors, nc


@pytest.fixture(scope="module")
def sdxl(device):
    dc, model, tensors, nc = _model("sdxl")
    return UNet(weights.build_store(device, tensors, "f32"), nc), nc


def test_error_wrong_latent_channels(sd1):
    unet, _, nc = sd1
    with pytest.raises(ValueError, match="channels"):
        unet(np.zeros((1, 3, 16, 16), np.float32), 1.0, np.zeros((1, 7, 32), np.float32))


@pytest.mark.parametrize("name,size", [("sd1", (12, 20)), ("bk_tiny", (7, 9)), ("sdxl", (6, 10))])
def test_latent_sizes_not_divisible_by_the_downsampling_match_diffusers(device, name, size):
    """diffusers runs any latent size (stride-2 convs round up, upsampling matches the skips)."""
    dc, model, tensors, nc = _model(name)
    unet = UNet(weights.build_store(device, tensors, "f32"), nc)
    rng = np.random.default_rng(3)
    x, ctx, kw = _inputs(nc, 1, rng)
    x = rng.standard_normal((1, nc["in_channels"], *size)).astype(np.float32)
    assert size[0] % unet.spatial_multiple or size[1] % unet.spatial_multiple
    ours = unet(x, 500.0, ctx, **kw)
    ref = _reference(model, x, 500.0, ctx, kw)
    assert ours.shape == ref.shape == x.shape
    assert rel_l2(ours, ref) <= F32_TOL


def test_error_context_width(sd1):
    unet, _, nc = sd1
    with pytest.raises(ValueError, match="cross_attention_dim"):
        unet(np.zeros((1, 4, 16, 16), np.float32), 1.0, np.zeros((1, 7, 33), np.float32))


def test_error_shapes_and_dtypes(sd1):
    unet, _, nc = sd1
    x = np.zeros((2, 4, 16, 16), np.float32)
    c = np.zeros((2, 7, 32), np.float32)
    with pytest.raises(ValueError, match="context"):
        unet(x, 1.0, c[:1])
    with pytest.raises(ValueError, match="timestep"):
        unet(x, np.ones(3, np.float32), c)
    with pytest.raises(ValueError, match="dtype"):
        unet(x.astype(np.complex64), 1.0, c)
    with pytest.raises(ValueError, match="latent"):
        unet(x[0], 1.0, c)
    with pytest.raises(ValueError, match="addition embedding"):
        unet(x, 1.0, c, text_embeds=np.zeros((2, 8), np.float32), time_ids=np.zeros((2, 6), np.float32))
    # the native layer validates on its own too (never reaching a ggml assert)
    native = unet._native
    with pytest.raises(ValueError, match="float32"):
        native.forward(x.astype(np.float64), np.ones(2, np.float32), c, None, None)
    with pytest.raises(ValueError, match="context"):
        native.forward(x, np.ones(2, np.float32), np.zeros((2, 7, 31), np.float32), None, None)
    with pytest.raises(ValueError, match="timestep"):
        native.forward(x, np.ones(1, np.float32), c, None, None)


def test_error_sdxl_needs_add_inputs(sdxl):
    unet, nc = sdxl
    x = np.zeros((1, 4, 16, 16), np.float32)
    c = np.zeros((1, 7, 32), np.float32)
    with pytest.raises(ValueError, match="text_embeds"):
        unet(x, 1.0, c)
    with pytest.raises(ValueError, match="text_embeds"):
        unet(x, 1.0, c, text_embeds=np.zeros((1, 5), np.float32), time_ids=np.zeros((1, 6), np.float32))
    with pytest.raises(ValueError, match="time_ids"):
        unet(x, 1.0, c, text_embeds=np.zeros((1, unet.pooled_dim), np.float32), time_ids=np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match="text_embeds"):
        unet._native.forward(x, np.ones(1, np.float32), c, None, None)


def test_error_missing_weight(device, sd1):
    _, tensors, nc = sd1
    name = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    partial = {k: v for k, v in tensors.items() if k != name}
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        UNet(weights.build_store(device, partial, "f32"), nc)


def test_error_misshapen_weight(device, sd1):
    _, tensors, nc = sd1
    name = "unet.up_blocks.2.resnets.1.conv1.weight"
    bad = dict(tensors)
    bad[name] = tensors[name][:, :-1]
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        UNet(weights.build_store(device, bad, "f32"), nc)


def test_error_config_mismatch(device, sd1):
    _, tensors, nc = sd1
    store = weights.build_store(device, tensors, "f32")
    deeper = dict(nc, down=[dict(b) for b in nc["down"]])
    deeper["down"][0]["depths"] = [2, 1]  # asks for transformer_blocks.1, absent from the weights
    with pytest.raises(ValueError, match=r"down_blocks\.0\.attentions\.0\.transformer_blocks\.1"):
        UNet(store, deeper)
    shallower = dict(nc, mid={"type": "resnet"})
    assert any(n.startswith("unet.mid_block.attentions.0") for n in UNet(store, shallower).unused_weights)
    with pytest.raises(ValueError, match="mid.type"):
        UNet(store, dict(nc, mid={"type": "fancy"}))
    with pytest.raises(ValueError, match="heads"):
        UNet(store, dict(nc, down=[dict(b, heads=3) for b in nc["down"]]))
    with pytest.raises(ValueError, match="skip"):
        UNet(store, dict(nc, up=[dict(b) for b in nc["up"][:-1]] + [dict(nc["up"][-1], resnets=2, depths=[1, 1])]))
    with pytest.raises(ValueError, match="block_out_channels"):
        UNet(store, {k: v for k, v in nc.items() if k != "block_out_channels"})


# --- real size -------------------------------------------------------------------------

@pytest.mark.slow
def test_sd15_real_size_f32(device):
    """SD1.5 topology at full width (860M random parameters), 64x64 latent, batch 1."""
    dc = {k: v for k, v in um.load_reference("sd15_reference.json").items() if not k.startswith("_")}
    model = um.build_diffusers_unet(dc, seed=15)
    rng = np.random.default_rng(15)
    x = rng.standard_normal((1, 4, 64, 64)).astype(np.float32)
    ctx = rng.standard_normal((1, 77, 768)).astype(np.float32)
    t0 = time.perf_counter()
    ref = _reference(model, x, 500.0, ctx, {})
    t_ref = time.perf_counter() - t0
    store = weights.build_store(device, um.canonical_tensors(model), "f32")
    del model
    unet = UNet(store, um.native_config(dc))
    assert unet.unused_weights == []
    t0 = time.perf_counter()
    ours = unet(x, 500.0, ctx)
    t_ours = time.perf_counter() - t0
    err = rel_l2(ours, ref)
    print(f"SD1.5 real size f32: rel L2 {err:.2e}; diffusers {t_ref:.1f} s, sdcpp {t_ours:.1f} s (incl. graph build)")
    assert err <= F32_TOL
