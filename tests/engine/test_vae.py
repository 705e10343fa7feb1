"""The native VAE (AutoencoderKL decode / encode) against diffusers' AutoencoderKL, float32, CPU.

Reference: ``AutoencoderKL.decode(z).sample`` and ``quant_conv(encoder(x))`` (the raw moments),
``latent_dist.mean / .logvar``, and ``tiled_decode``. Every parameter (norms and biases included)
is randomized. Tolerances (relative L2): f32 weights 1e-4, f16 weights 5e-3.
"""
import copy
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

import sdcpp
from sdcpp import errors
from sdcpp.engine import vae as V
from sdcpp.engine.weights import build_store, open_device
from fixtures.devices import ON_CPU, TEST_DEVICE, tol as device_tol  # noqa: E402

pytestmark = pytest.mark.device  # part of the device suite (SDCPP_TEST_DEVICE, tools/ci_vulkan.sh)

F32_TOL = device_tol(1e-4)  # f32 weights; GPU backends: 1e-3 (fixtures/devices.py)

core = sdcpp.engine.weights.native()

SMALL = dict(block_out_channels=(32, 64, 64, 64), layers_per_block=2, norm_num_groups=8, latent_channels=4,
             in_channels=3, out_channels=3, sample_size=64,
             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
F16_MAX = 65504.0


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(np.asarray(b, np.float64)))


def randomize(model, seed):
    """Noticeable noise on every parameter (norm weights around 1, biases around 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 1:
                p.copy_((1.0 if "norm" in name and name.endswith("weight") else 0.0) + 0.2 * noise)
            else:
                p.add_(0.3 * p.std() * noise)
    return model.eval()


def canonical(model, prefix="vae"):
    return {f"{prefix}.{k}": v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def cpu():
    return open_device(TEST_DEVICE, threads=2)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return randomize(AutoencoderKL(**SMALL), seed=1)


@pytest.fixture(scope="module")
def small_tensors(small):
    return canonical(small)


@pytest.fixture(scope="module")
def small_cfg(small):
    return V.native_config(small.config)


@pytest.fixture(scope="module")
def vae_f32(cpu, small_tensors, small_cfg):
    return V.VAE.from_tensors(cpu, small_tensors, small_cfg, weight_type="f32")


@pytest.fixture(scope="module")
def vae_f16(cpu, small_tensors, small_cfg):
    return V.VAE.from_tensors(cpu, small_tensors, small_cfg, weight_type="f16")


@pytest.fixture(scope="module")
def refs(small):
    """One latent and one image with their diffusers results, shared by the variant tests."""
    z = latent((1, 4, 8, 12), seed=5)
    x = image((1, 3, 64, 96), seed=6)
    return z, ref_decode(small, z), x, ref_moments(small, x)


@pytest.fixture(scope="module")
def refs_large(small):
    """Large enough for strips and attention chunks (672 tokens: a 1 MiB score budget needs 2 chunks)."""
    z = latent((1, 4, 24, 28), seed=7)
    x = image((1, 3, 160, 128), seed=8)
    return z, ref_decode(small, z), x, ref_moments(small, x)


def ref_decode(model, z):
    with torch.no_grad():
        return model.decode(torch.from_numpy(z)).sample.numpy()


def ref_moments(model, x):
    with torch.no_grad():
        return model.quant_conv(model.encoder(torch.from_numpy(x))).numpy()


def latent(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def image(shape, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Parity with diffusers


@pytest.mark.parametrize("shape", [(1, 4, 8, 8), (2, 4, 8, 12), (1, 4, 5, 7)])
def test_decode_f32_matches_diffusers(vae_f32, small, shape):
    z = latent(shape)
    out = vae_f32.decode(z)
    ref = ref_decode(small, z)
    assert out.shape == ref.shape == (shape[0], 3, shape[2] * 8, shape[3] * 8)
    assert out.dtype == np.float32
    assert float(np.abs(ref).max()) > 1.0  # unclamped output, as diffusers returns it
    err = rel(out, ref)
    print(f"decode f32 {shape}: rel L2 {err:.2e}")
    assert err <= F32_TOL


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 3, 64, 96), (1, 3, 40, 56)])
def test_encode_f32_matches_diffusers(vae_f32, small, shape):
    x = image(shape, seed=1)
    moments = vae_f32.encode(x)
    ref = ref_moments(small, x)
    assert moments.shape == ref.shape == (shape[0], 8, shape[2] // 8, shape[3] // 8)
    err = rel(moments, ref)
    with torch.no_grad():
        dist = small.encode(torch.from_numpy(x)).latent_dist
    mean, logvar = V.split_moments(moments)
    err_mean, err_logvar = rel(mean, dist.mean.numpy()), rel(logvar, dist.logvar.numpy())
    print(f"encode f32 {shape}: moments {err:.2e} mean {err_mean:.2e} logvar {err_logvar:.2e}")
    assert err <= F32_TOL and err_mean <= F32_TOL and err_logvar <= F32_TOL


def test_f16_weights_within_5e3(vae_f16, refs):
    z, ref_z, x, ref_x = refs
    err_dec = rel(vae_f16.decode(z), ref_z)
    err_enc = rel(vae_f16.encode(x), ref_x)
    print(f"f16 weights: decode rel L2 {err_dec:.2e}, encode {err_enc:.2e}")
    assert err_dec <= 5e-3 and err_enc <= 5e-3
    assert vae_f16.store.type("vae.decoder.up_blocks.0.resnets.0.conv1.weight") == "f16"
    assert vae_f16.store.type("vae.decoder.conv_norm_out.weight") == "f32"


@pytest.mark.parametrize("weight_type,compute", [("bf16", "f32"), ("bf16", "bf16"), ("f32", "bf16"), ("f16", "bf16")])
def test_bf16_variants(cpu, small_tensors, small_cfg, refs, weight_type, compute):
    vae = V.VAE.from_tensors(cpu, small_tensors, small_cfg, weight_type=weight_type)
    vae.set_options(compute=compute)
    z, ref_z, x, ref_x = refs
    err_dec = rel(vae.decode(z), ref_z)
    err_enc = rel(vae.encode(x), ref_x)
    print(f"{weight_type} weights, {compute} compute: decode rel L2 {err_dec:.2e}, encode {err_enc:.2e}")
    assert err_dec <= 3e-2 and err_enc <= 3e-2


@pytest.mark.parametrize("conv,im2col_mb,attention_mb,portable", [
    ("winograd", 4, 1, False), ("strips", 4, 1, False), ("direct", 128, 256, False), ("im2col", 128, 1, False),
    ("strips", 4, 1, True), ("im2col", 128, 256, True)])
def test_execution_strategies_match(cpu, small_tensors, small_cfg, refs_large, conv, im2col_mb, attention_mb, portable):
    """Winograd F(4x4, 3x3) strips (the default; the 1x1 / stride-2 convolutions take the
    strips path; several strips per convolution are tested in test_winograd_conv_matches_torch),
    strips (a 4 MiB budget cuts the full-resolution convolutions into 6-15 strips),
    ggml_conv_2d_direct, a chunked attention, and the portable graph (stock ggml ops only, what
    GPUs run: ggml_im2col on row views with explicit padding, ggml_upscale) all give diffusers'
    result."""
    vae = V.VAE.from_tensors(cpu, small_tensors, small_cfg, weight_type="f32")
    vae.set_options(conv=conv, max_im2col_mb=im2col_mb, max_attention_mb=attention_mb, portable=portable)
    assert vae.options()["conv"] == conv and vae.options()["portable"] == portable
    z, ref_z, x, ref_x = refs_large
    err_dec = rel(vae.decode(z), ref_z)
    err_enc = rel(vae.encode(x), ref_x)
    print(f"{conv} (im2col {im2col_mb} MiB, attention {attention_mb} MiB, portable {portable}): "
          f"decode {err_dec:.2e}, encode {err_enc:.2e}")
    assert err_dec <= F32_TOL and err_enc <= F32_TOL


CONV_MODES = ["winograd", "strips", "im2col", "direct"]


@pytest.fixture
def restore_level():
    cap = core.cpu_kernels()["cap"]
    yield
    core.set_cpu_level(cap)


@pytest.mark.parametrize("level", core.cpu_levels())
@pytest.mark.parametrize("conv", CONV_MODES)
def test_conv_modes_at_each_cpu_level(cpu, small_tensors, small_cfg, refs, conv, level, restore_level):
    """Decode and encode in every conv mode with the CPU kernels (Winograd transforms, norms,
    attention) capped at every level this machine has."""
    assert core.set_cpu_level(level) == level
    if conv == "winograd":
        # Winograd's products are f32: levels above avx512 (avx512_bf16, amx) run its AVX-512 variant
        assert core.cpu_kernels()["winograd"] == ("avx512" if level in ("avx512_bf16", "amx") else level)
    vae = V.VAE.from_tensors(cpu, small_tensors, small_cfg, weight_type="f32")
    vae.set_options(conv=conv)
    z, ref_z, x, ref_x = refs
    err_dec, err_enc = rel(vae.decode(z), ref_z), rel(vae.encode(x), ref_x)
    print(f"{conv} at {level}: decode {err_dec:.2e}, encode {err_enc:.2e}")
    assert err_dec <= F32_TOL and err_enc <= F32_TOL


@pytest.mark.parametrize("level", core.cpu_levels())
@pytest.mark.parametrize("C,OC,H,W,up,residual,strip_kb", [
    (13, 7, 11, 9, 1, True, 4),        # one tile row per strip, partial tiles on both edges
    (5, 19, 6, 10, 2, False, 8192),    # nearest-2x upsampling read through, one strip
    (24, 40, 23, 70, 2, True, 64),     # 8 and 16 lane groups plus scalar tails, several strips
    (37, 9, 1, 3, 1, False, 8192),     # a single row
    (3, 5, 4, 4, 1, True, 1),          # exactly one tile
])
def test_winograd_conv_matches_torch(C, OC, H, W, up, residual, strip_kb, level):
    """The Winograd F(4x4, 3x3) strip convolution alone against torch's float64 conv2d (after
    nearest 2x upsampling when up = 2), with bias and residual, H/W not multiples of 4 and
    channel counts not multiples of 8, at each CPU level."""
    rng = np.random.default_rng(C * 1000 + H)
    x = rng.standard_normal((1, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((OC, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    b = rng.standard_normal(OC).astype(np.float32)
    res = rng.standard_normal((1, OC, H * up, W * up)).astype(np.float32) if residual else None
    xt = torch.from_numpy(x).double()
    if up == 2:
        xt = torch.nn.functional.interpolate(xt, scale_factor=2, mode="nearest")
    ref = torch.nn.functional.conv2d(xt, torch.from_numpy(w).double(), torch.from_numpy(b).double(), padding=1).numpy()
    if residual:
        ref = ref + res
    out = core.cpu_winograd_conv3x3(x, w, b, res, up, level, strip_kb, 2)
    assert out.shape == ref.shape
    err = rel(out, ref)
    scale = float(np.abs(ref).max())
    print(f"winograd {level} C={C} OC={OC} {H}x{W} up={up}: rel L2 {err:.2e}, max abs {np.abs(out - ref).max():.2e}")
    # F(4, 3) in f32: a few ulps of the result's magnitude (direct f32 convolution: ~1e-7).
    assert err <= 3e-6 and float(np.abs(out - ref).max()) <= 3e-6 * max(scale, 1.0) * 10


@pytest.mark.parametrize("level", core.cpu_levels())
@pytest.mark.parametrize("onto,C,OC,H,W,strip_kb", [
    ("residual", 13, 7, 11, 9, 4),     # one tile row per strip, partial tiles on both edges
    ("residual", 24, 40, 23, 70, 64),  # lane groups and scalar tails, several strips
    ("input", 13, 7, 11, 9, 4),        # fewer output channels; every strip's top row shared
    ("input", 40, 40, 23, 70, 64),     # as many channels, several strips, partial last tile row
    ("input", 8, 8, 5, 6, 8192),       # one strip
])
def test_winograd_conv_written_over_its_operand_is_bit_identical(onto, C, OC, H, W, strip_kb, level):
    """The memory-saving forms (the output written over the residual, or over the input's first
    planes with each strip's output held back until the next strip has read the rows they share)
    compute exactly the values of the convolution with an output of its own."""
    rng = np.random.default_rng(C * 100 + W)
    x = rng.standard_normal((1, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((OC, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    b = rng.standard_normal(OC).astype(np.float32)
    res = rng.standard_normal((1, OC, H, W)).astype(np.float32) if onto == "residual" else None
    plain = core.cpu_winograd_conv3x3(x, w, b, res, 1, level, strip_kb, 2)
    over = core.cpu_winograd_conv3x3(x, w, b, res, 1, level, strip_kb, 2, onto)
    assert over.shape == plain.shape
    assert np.array_equal(over, plain)


@pytest.mark.skipif(not ON_CPU, reason="the bounded plan uses the CPU's custom ops")
def test_untiled_1024_decode_compute_buffer_bound(cpu):
    """SD / SDXL VAE topology, 128x128 latent -> 1024x1024 without tiles: the GroupNorms written
    over their consumed inputs, conv1 over norm1's output and conv2 over its residual keep the
    1024x1024 stage to the upsampled 256-channel activation plus one 128-channel one (1.5 GiB
    live); with ggml-alloc's placement the buffers are 1855 MiB (2632 before). Planned only."""
    cfg_path = Path(__file__).resolve().parents[1] / "fixtures" / "configs" / "vae_sd1.json"
    cfg = {k: v for k, v in json.loads(cfg_path.read_text()).items() if not k.startswith("_") and k != "scaling_factor"}
    model = AutoencoderKL(**cfg)
    tensors = {f"vae.{k}": v.detach().numpy() for k, v in model.state_dict().items()
               if k.startswith(("decoder.", "post_quant_conv."))}
    vae = V.VAE.from_tensors(cpu, tensors, V.native_config(model.config))
    need = vae.measure(True, 128, 128) / 2**20
    print(f"1024x1024 decode compute buffers: {need:.0f} MiB")
    assert need <= 2000
    # The live set itself (ggml-alloc's placement aside): U + the shortcut + one 1x1 strip (1601 MiB).
    trace = vae._vae.memory_trace(True, 128, 128)
    live = float(trace.split("peak live ")[1].split(" MiB")[0])
    print(trace.splitlines()[0])
    assert live <= 1700, trace


def test_attention_weights_as_1x1_convs(cpu, small_tensors, small_cfg, refs):
    """Converted files may carry the mid-block attention projections as [C, C, 1, 1]."""
    t = dict(small_tensors)
    n4 = 0
    for k in list(t):
        if ".attentions.0.to_" in k and k.endswith(".weight"):
            t[k] = t[k].reshape(*t[k].shape, 1, 1)
            n4 += 1
    assert n4 == 8
    vae = V.VAE.from_tensors(cpu, t, small_cfg)
    z, ref_z, x, ref_x = refs
    assert rel(vae.decode(z), ref_z) <= F32_TOL
    assert rel(vae.encode(x), ref_x) <= F32_TOL


def test_tiled_decode_matches_diffusers_tiled_decode(vae_f32, small):
    small.tile_latent_min_size = 8
    small.tile_sample_min_size = 64
    small.tile_overlap_factor = 0.25
    z = latent((1, 4, 14, 20), seed=11)
    with torch.no_grad():
        ref = small.tiled_decode(torch.from_numpy(z)).sample.numpy()
    out = vae_f32.decode_tiled(z, tile=8, overlap=0.25)
    assert out.shape == ref.shape == (1, 3, 112, 160)
    err = rel(out, ref)
    print(f"tiled decode: rel L2 {err:.2e}")
    assert err <= F32_TOL


def test_large_activations_stay_finite_with_f16_weights(cpu, small):
    """Like the SDXL VAE: the residual stream exceeds f16's range (diffusers' fp16 decode gives
    inf/NaN); f16-stored weights must still give the f32 result because activations stay f32."""
    big = randomize(AutoencoderKL(**SMALL), seed=2)
    with torch.no_grad():
        for n in ("decoder.mid_block.resnets.1.conv2", "encoder.down_blocks.1.resnets.1.conv2"):
            conv = big.get_submodule(n)
            conv.weight.mul_(2e5)
            conv.bias.mul_(2e5)
    peak = {}
    hooks = [big.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: peak.__setitem__(n, float(o.abs().max())))
             for n in ("decoder.mid_block", "encoder.down_blocks.1")]
    z = latent((1, 4, 8, 8), seed=12)
    x = image((1, 3, 64, 64), seed=13)
    ref_img = ref_decode(big, z)
    ref_mom = ref_moments(big, x)
    for h in hooks:
        h.remove()
    assert min(peak.values()) > F16_MAX, peak
    with torch.no_grad():  # what a half-precision decode does with these activations
        half = copy.deepcopy(big).half().decode(torch.from_numpy(z).half()).sample
    assert not torch.isfinite(half).all()
    for weight_type, compute, tol in (("f16", "f32", 5e-3), ("bf16", "bf16", 3e-2)):
        vae = V.VAE.from_tensors(cpu, canonical(big), V.native_config(big.config), weight_type=weight_type)
        vae.set_options(compute=compute)
        img, mom = vae.decode(z), vae.encode(x)
        assert np.isfinite(img).all() and np.isfinite(mom).all()
        e_img, e_mom = rel(img, ref_img), rel(mom, ref_mom)
        print(f"large activations ({max(peak.values()):.3g}), {weight_type} weights / {compute} compute: "
              f"decode {e_img:.2e}, encode {e_mom:.2e}")
        assert e_img <= tol and e_mom <= tol


def test_real_size_sd_decoder_256(cpu):
    """The real SD VAE decoder topology (vae_sd1.json), random weights, 32x32 latent -> 256x256."""
    cfg_path = Path(__file__).resolve().parents[1] / "fixtures" / "configs" / "vae_sd1.json"
    if cfg_path.exists():
        cfg = {k: v for k, v in json.loads(cfg_path.read_text()).items() if not k.startswith("_")}
        cfg.pop("scaling_factor", None)
        cfg.pop("force_upcast", None)
    else:  # the standard SD1 VAE values
        cfg = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, latent_channels=4,
                   down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    torch.manual_seed(0)
    model = randomize(AutoencoderKL(**cfg), seed=3)
    tensors = {k: v for k, v in canonical(model).items() if not k.startswith(("vae.encoder.", "vae.quant_conv."))}
    vae = V.VAE.from_tensors(cpu, tensors, V.native_config(model.config))
    assert vae.has_decoder and not vae.has_encoder
    z = latent((1, 4, 32, 32), seed=14)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the same thread count as the native engine
    try:
        t0 = time.perf_counter()
        ref = ref_decode(model, z)
        t_ref = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    out = vae.decode(z)
    t_ours = time.perf_counter() - t0
    err = rel(out, ref)
    print(f"real-size SD decoder 32x32 -> 256x256: rel L2 {err:.2e}; sdcpp {t_ours:.2f} s, diffusers {t_ref:.2f} s "
          f"(2 threads)")
    assert out.shape == (1, 3, 256, 256)
    assert err <= F32_TOL
    with pytest.raises(errors.InvalidArgumentError, match="no encoder"):
        vae.encode(image((1, 3, 64, 64)))


# ------------------------------------------------------------------------------------------------
# Errors (raised before any ggml call)


def test_wrong_channels(vae_f32):
    with pytest.raises(ValueError, match="4 channels"):
        vae_f32.decode(latent((1, 3, 8, 8)))
    with pytest.raises(ValueError, match="3 channels"):
        vae_f32.encode(image((1, 4, 64, 64)))


@pytest.mark.parametrize("hw", [(60, 64), (64, 44), (4, 8)])
def test_encode_size_not_multiple_of_8(vae_f32, hw):
    with pytest.raises(ValueError, match="multiples of 8"):
        vae_f32.encode(image((1, 3) + hw))


@pytest.mark.parametrize("bad", [np.zeros((4, 8, 8), np.float32), np.zeros((1, 4, 0, 8), np.float32),
                                 np.zeros((0, 4, 8, 8), np.float32), np.array([["a"]])])
def test_bad_latent_arrays(vae_f32, bad):
    with pytest.raises(ValueError):
        vae_f32.decode(bad)


def test_missing_weight_is_a_value_error(cpu, small_tensors, small_cfg):
    t = dict(small_tensors)
    del t["vae.decoder.up_blocks.1.resnets.2.conv2.bias"]
    with pytest.raises(errors.InvalidArgumentError, match="up_blocks.1.resnets.2.conv2.bias"):
        V.VAE.from_tensors(cpu, t, small_cfg)
    t = dict(small_tensors)
    del t["vae.encoder.mid_block.attentions.0.to_k.weight"]
    with pytest.raises(ValueError, match="to_k.weight"):
        V.VAE.from_tensors(cpu, t, small_cfg)


def test_wrong_weight_shape_or_config(cpu, small_tensors, small_cfg):
    t = dict(small_tensors)
    t["vae.decoder.conv_in.weight"] = t["vae.decoder.conv_in.weight"][:, :, :2, :]
    with pytest.raises(ValueError, match="conv_in.weight"):
        V.VAE.from_tensors(cpu, t, small_cfg)
    bad = dict(small_cfg, norm_groups=7)
    with pytest.raises(ValueError, match="norm_groups"):
        V.VAE.from_tensors(cpu, small_tensors, bad)
    with pytest.raises(ValueError, match="block_out_channels"):
        V.VAE(build_store(cpu, {"vae.decoder.conv_in.weight": np.zeros((4, 4, 3, 3), np.float32)}),
              {k: v for k, v in small_cfg.items() if k != "block_out_channels"})
    # A config that does not fit the weights (one level more) names the first missing tensor.
    with pytest.raises(ValueError, match="missing weight"):
        V.VAE.from_tensors(cpu, small_tensors, dict(small_cfg, block_out_channels=[32, 64, 64, 64, 64]))


def test_bad_options(vae_f32):
    with pytest.raises(ValueError, match="winograd"):
        vae_f32.set_options(conv="fft")
    with pytest.raises(ValueError):
        vae_f32.set_options(compute="f16")
    with pytest.raises(ValueError):
        vae_f32.set_options(max_im2col_mb=0)
    with pytest.raises(ValueError):
        V.VAE.from_tensors(None, {}, {})
    assert vae_f32.options()["conv"] == "winograd"


def test_decoder_only_and_encoder_only_stores(cpu, small_tensors, small_cfg):
    enc = {k: v for k, v in small_tensors.items() if k.startswith(("vae.encoder.", "vae.quant_conv."))}
    vae = V.VAE.from_tensors(cpu, enc, small_cfg)
    assert vae.has_encoder and not vae.has_decoder
    with pytest.raises(ValueError, match="no decoder"):
        vae.decode(latent((1, 4, 8, 8)))
    assert vae.encode(image((1, 3, 32, 32))).shape == (1, 8, 4, 4)
