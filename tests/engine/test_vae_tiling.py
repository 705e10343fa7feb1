"""Tiled VAE decode / encode against diffusers' AutoencoderKL with ``enable_tiling()`` (tile sizes
forced small so that a small random VAE tiles), and the compute buffer of a tiled run.

Reference: ``AutoencoderKL.decode(z)`` and ``AutoencoderKL.encode(x)`` with ``use_tiling`` on,
tile_sample_min_size / tile_latent_min_size set as our tile. Tolerance: relative L2 1e-4 (the
untiled f32 VAE is ~2e-6 from diffusers; tiling adds only the blend arithmetic, done the same way).
The tiled result differs from the untiled one (per-tile attention and norms): the tests also
check that it does, so a tiling that silently ran untiled would fail.
"""
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from sdcpp import errors
from sdcpp.engine import vae as V
from sdcpp.engine.vae_tiling import check_tile
from sdcpp.engine.weights import open_device
from fixtures.devices import TEST_DEVICE, tol as device_tol  # noqa: E402

pytestmark = pytest.mark.device  # part of the device suite (SDCPP_TEST_DEVICE, tools/ci_vulkan.sh)

SMALL = dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1, norm_num_groups=8, latent_channels=4,
             in_channels=3, out_channels=3, sample_size=64,
             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
TOL = device_tol(1e-4)


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(np.asarray(b, np.float64)))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    m = AutoencoderKL(**SMALL)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in m.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 1:
                p.copy_((1.0 if "norm" in name and name.endswith("weight") else 0.0) + 0.2 * noise)
            else:
                p.add_(0.3 * p.std() * noise)
    return m.eval()


@pytest.fixture(scope="module")
def vae(small):
    tensors = {f"vae.{k}": v.detach().numpy().copy() for k, v in small.state_dict().items()}
    return V.VAE.from_tensors(open_device(TEST_DEVICE, threads=2), tensors, V.native_config(small.config), weight_type="f32")


def tiled_reference(model, tile_px, overlap=0.25):
    model.enable_tiling()
    model.tile_sample_min_size = tile_px
    model.tile_latent_min_size = tile_px // 8
    model.tile_overlap_factor = overlap
    return model


@pytest.mark.parametrize("shape,tile", [((1, 4, 14, 20), 8), ((2, 4, 17, 9), 8), ((1, 4, 24, 16), 12)])
def test_tiled_decode_matches_diffusers_enable_tiling(vae, small, shape, tile):
    z = np.random.default_rng(11).standard_normal(shape).astype(np.float32)
    ref_model = tiled_reference(small, tile * 8)
    with torch.no_grad():
        ref = ref_model.decode(torch.from_numpy(z)).sample.numpy()
        small.disable_tiling()
        untiled = small.decode(torch.from_numpy(z)).sample.numpy()
    out = vae.decode_tiled(z, tile=tile, overlap=0.25)
    assert out.shape == ref.shape == (shape[0], 3, shape[2] * 8, shape[3] * 8)
    err, vs_untiled = rel(out, ref), rel(out, untiled)
    print(f"tiled decode {shape} tile {tile}: rel L2 vs diffusers tiled {err:.2e}, vs untiled {vs_untiled:.2e}")
    assert err <= TOL
    assert vs_untiled > 100 * TOL, "the tiles must change the result for this test to mean anything"


@pytest.mark.parametrize("shape,tile", [((1, 3, 112, 160), 64), ((2, 3, 136, 72), 64), ((1, 3, 96, 200), 32)])
def test_tiled_encode_matches_diffusers_enable_tiling(vae, small, shape, tile):
    x = np.random.default_rng(12).uniform(-1, 1, shape).astype(np.float32)
    ref_model = tiled_reference(small, tile)
    with torch.no_grad():
        ref = ref_model.encode(torch.from_numpy(x)).latent_dist.parameters.numpy()
        small.disable_tiling()
        untiled = small.encode(torch.from_numpy(x)).latent_dist.parameters.numpy()
    out = vae.encode_tiled(x, tile=tile, overlap=0.25)
    assert out.shape == ref.shape == (shape[0], 8, shape[2] // 8, shape[3] // 8)
    err, vs_untiled = rel(out, ref), rel(out, untiled)
    print(f"tiled encode {shape} tile {tile}: rel L2 vs diffusers tiled {err:.2e}, vs untiled {vs_untiled:.2e}")
    assert err <= TOL
    assert vs_untiled > 100 * TOL


def test_tiled_decode_compute_buffer_is_one_tiles(vae):
    """The compute buffers after a tiled decode of a large latent are exactly those of one tile."""
    tile = 8
    one = np.random.default_rng(1).standard_normal((1, 4, tile, tile)).astype(np.float32)
    large = np.random.default_rng(2).standard_normal((1, 4, 60, 44)).astype(np.float32)
    vae.free_compute_memory()
    vae.decode(one)
    one_tile = vae.compute_buffer_size
    vae.free_compute_memory()
    vae.decode_tiled(large, tile=tile)
    tiled = vae.compute_buffer_size
    vae.free_compute_memory()
    vae.decode(large)
    whole = vae.compute_buffer_size
    print(f"compute buffer: one tile {one_tile}, tiled {tiled}, untiled {whole}")
    assert tiled == one_tile
    assert whole > 10 * one_tile


def test_tiled_encode_compute_buffer_is_one_tiles(vae):
    x_tile = np.random.default_rng(1).uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)
    x_large = np.random.default_rng(2).uniform(-1, 1, (1, 3, 256, 320)).astype(np.float32)
    vae.free_compute_memory()
    vae.encode(x_tile)
    one_tile = vae.compute_buffer_size
    vae.free_compute_memory()
    vae.encode_tiled(x_large, tile=64)
    assert vae.compute_buffer_size == one_tile


def test_bad_tiles(vae):
    z = np.zeros((1, 4, 16, 16), np.float32)
    with pytest.raises(errors.InvalidArgumentError):
        vae.decode_tiled(z, tile=0)
    with pytest.raises(errors.InvalidArgumentError):
        vae.decode_tiled(z, tile=8, overlap=1.0)
    with pytest.raises(errors.InvalidArgumentError):
        vae.encode_tiled(np.zeros((1, 3, 64, 64), np.float32), tile=60)   # not a multiple of 8
    with pytest.raises(errors.InvalidArgumentError):
        check_tile(40, 0.25, 8)                                            # stride 30 px


def test_shapes_share_one_set_of_compute_buffers(vae):
    """Small, large, small: the runner holds one set of buffers sized for the largest graph, not
    one per shape (csrc/runtime/graph.h), and more shapes than the graph cache holds still give
    the same results."""
    rng = np.random.default_rng(5)
    small = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    large = rng.standard_normal((1, 4, 24, 20)).astype(np.float32)
    vae.free_compute_memory()
    vae.decode(large)
    large_only = vae.compute_buffer_size
    vae.free_compute_memory()
    first = vae.decode(small)
    vae.decode(large)
    again = vae.decode(small)
    assert vae.compute_buffer_size == large_only
    assert np.array_equal(first, again)
    for h in range(3, 14):                                       # > kMaxGraphs shapes: LRU eviction
        vae.decode(rng.standard_normal((1, 4, h, 5)).astype(np.float32))
    assert np.array_equal(vae.decode(small), first)
    assert vae.compute_buffer_size == large_only
