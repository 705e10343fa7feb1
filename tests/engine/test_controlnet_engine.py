"""Parity of the native ControlNet with diffusers' ControlNetModel (float32, CPU), and of the
U-Net with ControlNet residuals added (down_block / mid_block_additional_residuals).

Small widths, real topologies (tests/engine/unet_models.py): SD1 and SDXL (text_time). The
ControlNet is ``ControlNetModel.from_unet`` of the random U-Net with every parameter random
(the zero convolutions too, else the residuals would be zero and prove nothing).
Tolerance (relative L2): f32 weights <= 1e-4 for every residual and for the U-Net output.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import unet_models as um  # noqa: E402

from sdcpp import errors  # noqa: E402
from sdcpp.engine import weights  # noqa: E402
from sdcpp.engine.controlnet import ControlNet, controlnet_native_config  # noqa: E402
from sdcpp.engine.unet import UNet  # noqa: E402
from fixtures.devices import TEST_DEVICE, tol as device_tol  # noqa: E402

pytestmark = pytest.mark.device  # part of the device suite (SDCPP_TEST_DEVICE, tools/ci_vulkan.sh)

torch.set_num_threads(1)

F32_TOL = device_tol(1e-4)
H, W, L = 8, 12, 7
EMBED = (8, 16, 16, 32)   # conditioning_embedding_out_channels, small (published: 16, 32, 96, 256)


def rel_l2(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def device():
    return weights.open_device(TEST_DEVICE, 1)


@functools.lru_cache(maxsize=None)
def _models(name: str):
    from diffusers import ControlNetModel

    from fixtures.random_init import randomize_strongly_

    dc = um.diffusers_config(name)
    unet = um.build_diffusers_unet(dc, seed=sum(map(ord, name)))
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=EMBED).eval().float()
    randomize_strongly_(cn, torch.Generator().manual_seed(7))
    nc = controlnet_native_config(um.native_config(dc), 3, EMBED)
    return dc, unet, cn, nc


def _inputs(nc, B, rng):
    x = rng.standard_normal((B, 4, H, W)).astype(np.float32)
    ctx = rng.standard_normal((B, L, nc["cross_attention_dim"])).astype(np.float32)
    cond = rng.random((B, 3, 8 * H, 8 * W)).astype(np.float32)
    kw = {}
    if nc["addition_embed"]:
        pooled = nc["addition_embed"]["in_dim"] - 6 * nc["addition_embed"]["time_embed_dim"]
        kw["text_embeds"] = rng.standard_normal((B, pooled)).astype(np.float32)
        kw["time_ids"] = np.tile(np.array([[64, 96, 0, 0, 64, 96]], np.float32), (B, 1))
    return x, ctx, cond, kw


def _torch_kw(kw):
    return {"added_cond_kwargs": {k: torch.from_numpy(v) for k, v in kw.items()}} if kw else {}


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_controlnet_residuals_and_unet_match_diffusers(device, name):
    dc, unet_t, cn_t, nc = _models(name)
    store = weights.build_store(device, {"controlnet." + k: v.numpy() for k, v in cn_t.state_dict().items()}, "f32")
    cn = ControlNet(store, nc)
    assert cn.unused_weights == []
    ustore = weights.build_store(device, um.canonical_tensors(unet_t), "f32")
    unet = UNet(ustore, um.native_config(dc))
    rng = np.random.default_rng(3)
    for B, t, scale in [(1, 999.0, 1.0), (2, 321.0, 0.6)]:
        x, ctx, cond, kw = _inputs(nc, B, rng)
        res = cn(x, t, ctx, cond, scale=scale, **kw)
        with torch.no_grad():
            down, mid = cn_t(torch.from_numpy(x), torch.full((B,), t), torch.from_numpy(ctx), torch.from_numpy(cond),
                             conditioning_scale=scale, return_dict=False, **_torch_kw(kw))
        ref = [d.numpy() for d in down] + [mid.numpy()]
        assert len(res) == len(ref) == cn.residual_count
        for i, (a, b) in enumerate(zip(res, ref)):
            assert a.shape == b.shape, (i, a.shape, b.shape)
            err = rel_l2(a, b)
            assert err <= F32_TOL, (name, B, i, err)
        # the U-Net with the residuals
        ours = unet(x, t, ctx, residuals=res, **kw)
        with torch.no_grad():
            want = unet_t(torch.from_numpy(x), torch.full((B,), t), torch.from_numpy(ctx),
                          down_block_additional_residuals=down, mid_block_additional_residual=mid,
                          **_torch_kw(kw)).sample.numpy()
            plain = unet_t(torch.from_numpy(x), torch.full((B,), t), torch.from_numpy(ctx), **_torch_kw(kw)).sample.numpy()
        err = rel_l2(ours, want)
        print(f"{name} B={B} scale={scale}: U-Net with residuals rel L2 {err:.2e}, "
              f"residual effect {rel_l2(want, plain):.2e}")
        assert err <= F32_TOL
        assert rel_l2(want, plain) > 100 * F32_TOL     # the residuals matter at this tolerance


def test_residual_errors(device):
    dc, unet_t, cn_t, nc = _models("sd1")
    unet = UNet(weights.build_store(device, um.canonical_tensors(unet_t), "f32"), um.native_config(dc))
    rng = np.random.default_rng(0)
    x, ctx, cond, _ = _inputs(nc, 1, rng)
    store = weights.build_store(device, {"controlnet." + k: v.numpy() for k, v in cn_t.state_dict().items()}, "f32")
    res = ControlNet(store, nc)(x, 10.0, ctx, cond)
    with pytest.raises(errors.InvalidArgumentError, match="arrays given"):
        unet(x, 10.0, ctx, residuals=res[:-1])
    bad = list(res)
    bad[2] = bad[2][:, :, :-1]
    with pytest.raises(errors.InvalidArgumentError, match=r"residuals\[2\]"):
        unet(x, 10.0, ctx, residuals=bad)
    with pytest.raises(errors.InvalidArgumentError, match="control image"):
        ControlNet(store, nc)(x, 10.0, ctx, cond[:, :, :-8])
    sd = {"controlnet." + k: v.numpy() for k, v in cn_t.state_dict().items()}
    del sd["controlnet.controlnet_mid_block.weight"]
    with pytest.raises(errors.InvalidArgumentError, match="controlnet_mid_block.weight"):
        ControlNet(weights.build_store(device, sd, "f32"), nc)
    # the U-Net's weight checks and unused-weight report, over the ControlNet's own list
    sd = {"controlnet." + k: v.numpy() for k, v in cn_t.state_dict().items()}
    name = "controlnet.down_blocks.1.resnets.0.conv1.weight"
    bad = dict(sd, **{name: sd[name][:, :-1]})
    with pytest.raises(errors.InvalidArgumentError, match=name.replace(".", r"\.") + "' has shape"):
        ControlNet(weights.build_store(device, bad, "f32"), nc)
    extra = dict(sd, **{"controlnet.up_blocks.0.resnets.0.norm1.weight": np.ones(4, np.float32)})
    assert ControlNet(weights.build_store(device, extra, "f32"), nc).unused_weights == [
        "controlnet.up_blocks.0.resnets.0.norm1.weight"]


@pytest.mark.parametrize("wt,tol", [("f16", 5e-3), ("q8_0", 5e-2)])   # the U-Net's tolerances (test_quant.py)
def test_reduced_precision_weights_and_odd_sizes(device, wt, tol):
    dc, unet_t, cn_t, nc = _models("sd1")
    store = weights.build_store(device, {"controlnet." + k: v.numpy() for k, v in cn_t.state_dict().items()}, wt)
    cn = ControlNet(store, nc)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 4, 9, 7)).astype(np.float32)        # odd latent: stride-2 convs round up
    ctx = rng.standard_normal((1, L, nc["cross_attention_dim"])).astype(np.float32)
    cond = rng.random((1, 3, 72, 56)).astype(np.float32)
    res = cn(x, 500.0, ctx, cond, scale=0.5)
    with torch.no_grad():
        down, mid = cn_t(torch.from_numpy(x), torch.full((1,), 500.0), torch.from_numpy(ctx), torch.from_numpy(cond),
                         conditioning_scale=0.5, return_dict=False)
    for i, (a, b) in enumerate(zip(res, [d.numpy() for d in down] + [mid.numpy()])):
        assert a.shape == b.shape
        assert rel_l2(a, b) <= tol, (wt, i, rel_l2(a, b))


# compute="bf16" as the U-Net's (tests/engine/test_unet.py::test_bf16_compute): the same bound,
# relative L2 against diffusers fp32, here on every residual.
BF16_COMPUTE_TOL = 2e-2


def _diffusers_residuals(cn_t, x, t, ctx, cond, scale, kw, autocast=False):
    """diffusers' ControlNetModel residuals (down..., mid) as float32 arrays; autocast: under
    torch.autocast(bfloat16) (oneDNN's bf16 products), the yardstick for the bf16 ones."""
    import contextlib

    B = x.shape[0]
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.no_grad(), amp:
        down, mid = cn_t(torch.from_numpy(x), torch.full((B,), float(t)), torch.from_numpy(ctx),
                         torch.from_numpy(cond), conditioning_scale=scale, return_dict=False, **_torch_kw(kw))
    return [r.float().numpy() for r in list(down) + [mid]]


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_bf16_compute(device, name):
    """ControlNet.compute = "bf16" (what the pipeline sets for sdcpp.load(compute="bf16")): where
    the CPU has AMX-BF16 the encoder's linear layers, convolutions and attention, the conditioning
    embedding and the zero convolutions round both operands to bf16 and sum in f32, as the U-Net's:
    every residual within 2e-2 of diffusers fp32 and no further from it than 1.25x PyTorch's bf16
    autocast of the same ControlNet (over all residuals together), f32 and f16 weights. Elsewhere
    the option changes nothing. Switching back gives the exact graph again (the graph cache keys it)."""
    from sdcpp.engine.weights import native

    dc, unet_t, cn_t, nc = _models(name)
    rng = np.random.default_rng(7)
    x, ctx, cond, kw = _inputs(nc, 2, rng)
    x[1] = x[0]                                # classifier-free guidance rows: one latent, two contexts
    ref = _diffusers_residuals(cn_t, x, 500.0, ctx, cond, 0.8, kw)
    flat = lambda rs: np.concatenate([r.ravel() for r in rs])  # noqa: E731
    torch_bf16 = rel_l2(flat(_diffusers_residuals(cn_t, x, 500.0, ctx, cond, 0.8, kw, autocast=True)), flat(ref))
    amx_bf16 = device.is_cpu and native().cpu_kernels()["gemm_bf16"] == "amx"
    sd = {"controlnet." + k: v.numpy() for k, v in cn_t.state_dict().items()}
    for wt, tol in (("f32", F32_TOL), ("f16", 5e-3)):
        cn = ControlNet(weights.build_store(device, sd, wt), nc)
        assert cn.compute == "f32"
        exact = cn(x, 500.0, ctx, cond, scale=0.8, **kw)
        assert max(rel_l2(a, b) for a, b in zip(exact, ref)) <= tol
        cn.compute = "bf16"
        ours = cn(x, 500.0, ctx, cond, scale=0.8, **kw)
        errs = [rel_l2(a, b) for a, b in zip(ours, ref)]
        err = rel_l2(flat(ours), flat(ref))
        print(f"{name} {wt} weights, bf16 compute (AMX-BF16 {amx_bf16}): residuals rel L2 {err:.2e} "
              f"(worst {max(errs):.2e}), torch autocast bf16 {torch_bf16:.2e}")
        assert max(errs) <= BF16_COMPUTE_TOL, (name, wt, errs)
        assert err <= 1.25 * torch_bf16, (name, wt, err, torch_bf16)
        if amx_bf16:
            assert rel_l2(flat(ours), flat(exact)) > 1e-5  # the bf16 products ran
        else:
            assert all(np.array_equal(a, b) for a, b in zip(ours, exact))
        cn.compute = "f32"
        assert all(np.array_equal(a, b) for a, b in zip(cn(x, 500.0, ctx, cond, scale=0.8, **kw), exact))
    with pytest.raises(errors.InvalidArgumentError, match="compute"):
        cn.compute = "f16"
