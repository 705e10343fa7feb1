"""txt2img end to end against the matching diffusers pipeline: every family x every format.

Same weights (as read from each format), prompt, negative prompt, initial latents, sampler and
steps. Spec: final latents relative L2 <= 1e-3 with f32 weights; decoded images max abs <= 1e-2.
"""
import numpy as np
import pytest

import sdcpp
from fixtures import FAMILIES, FORMATS
from fixtures.devices import TEST_DEVICE, RecentModels

pytestmark = pytest.mark.device  # part of the device suite (SDCPP_TEST_DEVICE, tools/ci_vulkan.sh)

from fixtures.e2e import NEGATIVE, PROMPT, SIZE, rel, run_diffusers, unit_latents

LATENT_TOL = 1e-3
IMAGE_TOL = 1e-2


@pytest.fixture(scope="module")
def loaded():
    models = RecentModels(lambda fx, fmt: sdcpp.load(str(fx.path(fmt)), device=TEST_DEVICE, weight_type="f32",
                                                     threads=2))
    return lambda fx, fmt: models((fx.name, fmt), fx, fmt)


@pytest.fixture(scope="module")
def reference_latents():
    cache = {}

    def get(fx, fmt, latents):
        key = (fx.name, fmt if fmt in ("ldm-fp16", "ldm-bf16", "ldm-fp8") else "f32")
        if key not in cache:
            cache[key] = run_diffusers(fx, fmt, latents=latents, height=SIZE, width=SIZE)
        return cache[key]
    return get


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("family", FAMILIES)
def test_txt2img_latents_match_diffusers(model_fixtures, loaded, reference_latents, family, fmt):
    fx = model_fixtures.get(family)
    latents = unit_latents(7)
    ref = reference_latents(fx, fmt, latents)
    model = loaded(fx, fmt)
    ours = model.txt2img(PROMPT, NEGATIVE, width=SIZE, height=SIZE, steps=4, cfg_scale=7.0, sampler="euler",
                         scheduler="discrete", latents=latents, output_type="latent")
    assert len(ours) == 1
    err = rel(ours[0], ref[0])
    assert err <= LATENT_TOL, f"{family}/{fmt}: latents rel L2 {err:.2e}"


@pytest.mark.parametrize("family", FAMILIES)
def test_txt2img_images_match_diffusers(model_fixtures, loaded, family):
    fx = model_fixtures.get(family)
    latents = unit_latents(11)
    ref = run_diffusers(fx, "ldm", latents=latents, output_type="np", height=SIZE, width=SIZE)
    model = loaded(fx, "ldm")
    ours = np.stack(model.txt2img(PROMPT, NEGATIVE, width=SIZE, height=SIZE, steps=4, sampler="euler",
                                  latents=latents, output_type="np"))
    assert ours.shape == ref.shape == (1, SIZE, SIZE, 3)
    assert np.abs(ours - ref).max() <= IMAGE_TOL


@pytest.mark.parametrize("family", ["sdxl", "ssd-1b"])
def test_empty_negative_prompt_is_zero_conditioning_on_sdxl(model_fixtures, loaded, family):
    fx = model_fixtures.get(family)
    latents = unit_latents(3)
    ref = run_diffusers(fx, "ldm", latents=latents, negative=None, height=SIZE, width=SIZE)
    ours = loaded(fx, "ldm").txt2img(PROMPT, "", width=SIZE, height=SIZE, steps=4, sampler="euler",
                                     latents=latents, output_type="latent")[0]
    assert rel(ours, ref[0]) <= LATENT_TOL


@pytest.mark.parametrize("sampler", [("euler_a", "discrete"), ("heun", "discrete"), ("dpm++2m", "karras"),
                                     ("ddim_trailing", "trailing")])
def test_samplers_match_diffusers_end_to_end(model_fixtures, loaded, sampler):
    """Stochastic samplers: same seed -> same initial noise and the same noise stream as torch."""
    fx = model_fixtures.get("sd1")
    ref = run_diffusers(fx, "ldm", sampler=sampler, seed=1234, height=SIZE, width=SIZE, steps=5)
    ours = loaded(fx, "ldm").txt2img(PROMPT, NEGATIVE, width=SIZE, height=SIZE, steps=5, sampler=sampler[0],
                                     scheduler=sampler[1], seed=1234, output_type="latent")[0]
    assert rel(ours, ref[0]) <= LATENT_TOL, sampler


def test_batch_of_two_from_one_seed_matches_diffusers(model_fixtures, loaded):
    fx = model_fixtures.get("bk-sdm-tiny")
    ref = run_diffusers(fx, "ldm", seed=99, height=SIZE, width=SIZE, num_images_per_prompt=2)
    ours = loaded(fx, "ldm").txt2img(PROMPT, NEGATIVE, width=SIZE, height=SIZE, steps=4, sampler="euler",
                                     seed=99, batch_size=2, output_type="latent")
    assert len(ours) == 2
    assert rel(np.stack(ours), ref) <= LATENT_TOL
