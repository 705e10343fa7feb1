"""Memory modes (load(memory=...)) and the tiled VAE in the pipeline.

The modes change what stays resident between the phases of a call, never the numbers: "low"
and "balanced" must give bit-identical results to "fast" (the same pipeline, so comparing our
own modes is the right check there), and "low" still matches diffusers within the parity
tolerance. vae_tiling=True must match diffusers' pipeline with ``vae.enable_tiling()`` (tile
sizes forced small so the 64x64 fixtures tile).
"""
import numpy as np
import pytest
import torch

import sdcpp
from sdcpp import errors
from sdcpp.memory import LazyComponent
from fixtures.e2e import NEGATIVE, PROMPT, SIZE, run_diffusers, unit_latents

IMAGE_TOL = 1e-2


@pytest.fixture(scope="module")
def models(model_fixtures):
    cache = {}

    def get(family, memory):
        key = (family, memory)
        if key not in cache:
            fx = model_fixtures.get(family)
            cache[key] = sdcpp.load(str(fx.path("ldm")), device="cpu", weight_type="f32", threads=2, memory=memory)
        return cache[key]
    return get


def run(model, **kw):
    args = dict(width=SIZE, height=SIZE, steps=3, sampler="euler", seed=5, output_type="np")
    args.update(kw)
    return np.stack(model.txt2img(PROMPT, NEGATIVE, **args))


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_modes_give_bit_identical_images(models, family):
    fast = models(family, "fast")
    ref = run(fast)
    for mode in ("low", "balanced"):
        m = models(family, mode)
        for _ in range(2):          # the second call runs on rebuilt text encoders / VAE in "low"
            assert np.array_equal(run(m), ref), mode
    # another prompt after the rebuild: still the same as fast
    assert np.array_equal(run(models(family, "low"), seed=9), run(fast, seed=9))


def test_low_mode_frees_text_encoders_and_vae_between_calls(models):
    m = models("sd1", "low")
    run(m)
    encs = m._c["text_encoders"]
    vae = m._c["vae"]
    assert all(isinstance(e, LazyComponent) for e in encs) and isinstance(vae, LazyComponent)
    assert not any(e.resident.resident for e in encs)
    assert not vae.resident.resident
    before = [e.resident.builds for e in encs], vae.resident.builds
    run(m)
    after = [e.resident.builds for e in encs], vae.resident.builds
    assert after[0] == [b + 1 for b in before[0]] and after[1] == before[1] + 1
    # a latent-only call decodes nothing: the VAE stays out
    m.txt2img(PROMPT, width=SIZE, height=SIZE, steps=1, seed=1, output_type="latent")
    assert m._c["vae"].resident.builds == after[1]


@pytest.mark.parametrize("spill", [True, False])
@pytest.mark.parametrize("weight_type", ["f32", "q8_0", "f16"])
def test_low_mode_unet_out_of_rss_while_decoding(model_fixtures, weight_type, spill, monkeypatch, tmp_path):
    """Before decoding, memory="low" takes the U-Net's weights out of RSS: the fixture's f32
    U-Net loaded as f32 is the mapped file (kept, its pages released: nothing to rebuild); a
    converted copy (q8_0, f16) lives in a spill file (kept, its pages released) or, where no
    spill file can be made, is freed and converted again for the next sampling. Images and
    latents stay equal to "fast" with the same weight_type, call after call."""
    monkeypatch.setenv("SDCPP_SPILL_DIR", str(tmp_path if spill else tmp_path / "missing"))
    path = str(model_fixtures.get("sd1").path("ldm"))
    low, fast = (sdcpp.load(path, device="cpu", weight_type=weight_type, threads=2, memory=m) for m in ("low", "fast"))
    res = low._c["unet"].resident
    converted = weight_type != "f32"
    assert (res.store.spilled_nbytes > 0) == (converted and spill)
    assert not list(tmp_path.iterdir())           # the spill file is unlinked at once
    kept = spill or not converted
    for seed in (5, 9):
        assert np.array_equal(run(low, seed=seed), run(fast, seed=seed))
        assert res.resident == kept
    assert res.builds == (1 if kept else 2)
    assert np.array_equal(run(low, output_type="latent"), run(fast, output_type="latent"))


def test_img2img_same_in_every_mode(models):
    rng = np.random.default_rng(4)
    init = rng.uniform(0, 1, (SIZE, SIZE, 3)).astype(np.float32)
    outs = {mode: np.stack(models("sd1", mode).img2img(init, PROMPT, steps=4, strength=0.6, seed=3,
                                                         sampler="euler", output_type="np"))
            for mode in ("fast", "balanced", "low")}
    assert np.array_equal(outs["low"], outs["fast"]) and np.array_equal(outs["balanced"], outs["fast"])


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_low_mode_matches_diffusers(model_fixtures, models, family):
    fx = model_fixtures.get(family)
    latents = unit_latents(11)
    ref = run_diffusers(fx, "ldm", latents=latents, output_type="np", height=SIZE, width=SIZE)
    m = models(family, "low")
    for _ in range(2):
        ours = run(m, steps=4, latents=latents)
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() <= IMAGE_TOL


def test_unet_buffers_follow_the_shape(models):
    """512 then 1024 then 512, scaled down: "balanced" holds the small shape's buffers again,
    "fast" keeps one set sized for the largest (never one per shape)."""
    small, big = SIZE, 2 * SIZE
    sizes = {}
    for mode in ("balanced", "fast"):
        m = models("sd1", mode)
        unet = m._c["unet"]
        seen = []
        for s in (small, big, small):
            m.txt2img(PROMPT, width=s, height=s, steps=1, seed=1, output_type="latent")
            seen.append(unet.compute_buffer_size)
        sizes[mode] = seen
    bal, fast = sizes["balanced"], sizes["fast"]
    print("U-Net compute buffers (small, big, small):", sizes)
    assert bal[1] > bal[0]
    assert bal[2] == bal[0]
    assert fast[2] == fast[1]          # the largest, once


def test_vae_buffers_freed_after_decode_unless_fast(models):
    for mode, kept in (("balanced", False), ("fast", True)):
        m = models("sd1", mode)
        run(m)
        assert (m._c["vae"].compute_buffer_size > 0) == kept, mode


def test_vae_tiling_matches_diffusers_enable_tiling(model_fixtures):
    """txt2img(vae_tiling=True) at 128x128 with 64-pixel tiles against diffusers' pipeline with
    vae.enable_tiling() and the same tile size."""
    fx = model_fixtures.get("sd1")
    size, tile = 2 * SIZE, SIZE
    latents = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(2)).numpy()
    m = sdcpp.load(str(fx.path("ldm")), device="cpu", weight_type="f32", threads=2, memory="low")
    m.vae_tile_size = tile
    final = m.txt2img(PROMPT, NEGATIVE, width=size, height=size, steps=3, sampler="euler", latents=latents,
                      output_type="latent")[0]
    ours = np.stack(m.txt2img(PROMPT, NEGATIVE, width=size, height=size, steps=3, sampler="euler",
                              latents=latents, output_type="np", vae_tiling=True))
    untiled = np.stack(m.txt2img(PROMPT, NEGATIVE, width=size, height=size, steps=3, sampler="euler",
                                 latents=latents, output_type="np", vae_tiling=False))
    pipe = fx.pipeline("ldm")
    vae = pipe.vae
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor = tile, tile // 8, 0.25
    with torch.no_grad():
        z = torch.from_numpy(final[None]) / vae.config.scaling_factor
        ref = vae.decode(z).sample.numpy()
    ref = np.clip(ref / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    diff, vs_untiled = np.abs(ours - ref).max(), np.abs(ours - untiled).max()
    print(f"pipeline tiled decode: max abs vs diffusers tiled {diff:.2e}, vs untiled {vs_untiled:.2e}")
    assert diff <= IMAGE_TOL
    assert vs_untiled > 10 * diff


def test_vae_tiling_auto_rule(models):
    m = models("sd1", "balanced")
    assert m._tiles(None, 1024, 1024) is False
    assert m._tiles(None, 1024, 1032) is True
    assert m._tiles(True, 512, 512) is False       # fits one tile: tiling would change nothing
    assert m._tiles(True, 512, 520) is True
    assert m._tiles(False, 4096, 4096) is False


def test_bad_memory_and_tiling_arguments(model_fixtures, models):
    with pytest.raises(errors.InvalidArgumentError, match="memory"):
        sdcpp.load(str(model_fixtures.get("sd1").path("ldm")), memory="tiny")
    m = models("sd1", "balanced")
    with pytest.raises(errors.InvalidArgumentError, match="vae_tiling"):
        m.txt2img(PROMPT, width=SIZE, height=SIZE, steps=1, vae_tiling="yes")
