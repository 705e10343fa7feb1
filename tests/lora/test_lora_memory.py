"""LoRAs with memory="low": the text encoders are rebuilt from the checkpoint for every prompt,
and the merged LoRA tensors must be written into the rebuilt stores again. Same pipeline in
both modes, so "low" must equal "fast" bit for bit; one check against diffusers fusing the same
LoRA keeps the comparison anchored to the reference.
"""
import numpy as np
import pytest

import sdcpp
from fixtures.e2e import NEGATIVE, PROMPT, SIZE, rel, unit_latents

import lora_helpers as H

LATENT_TOL = 1e-3


@pytest.fixture(scope="module")
def lora(model_fixtures, tmp_path_factory):
    fx = model_fixtures.get("sd1")
    lo = H.make_lora(fx, seed=12, unet_targets=H.ATTN_TARGETS, text_targets=["q_proj", "fc2"], rank=2, alpha=4)
    d = tmp_path_factory.mktemp("lora-memory")
    return fx, H.write_diffusers(fx, lo, d / "ref"), H.write_kohya(fx, lo, d / "b.safetensors", te_prefix="lora_te_")


def latent_run(model, latents, prompt=PROMPT):
    return model.txt2img(prompt, NEGATIVE, width=SIZE, height=SIZE, steps=3, sampler="euler", latents=latents,
                         output_type="latent")[0]


def test_text_encoder_lora_survives_rebuilds(lora):
    fx, ref_dir, kohya = lora
    path = str(fx.path("ldm"))
    fast = sdcpp.load(path, device="cpu", weight_type="f32", threads=2, memory="fast", loras=[(kohya, 0.8)])
    low = sdcpp.load(path, device="cpu", weight_type="f32", threads=2, memory="low", loras=[(kohya, 0.8)])
    latents = unit_latents(5)
    want = latent_run(fast, latents)
    for _ in range(2):                                   # built at load, then rebuilt
        assert np.array_equal(latent_run(low, latents), want)
    assert low._c["text_encoders"][0].resident.builds >= 2
    # a LoRA change while the text encoder is out, then back to none: still equal to "fast"
    for loras in ([(kohya, 0.3)], []):
        fast.set_loras(loras)
        low.set_loras(loras)
        assert np.array_equal(latent_run(low, latents), latent_run(fast, latents))


def test_low_mode_lora_matches_diffusers(lora):
    fx, ref_dir, kohya = lora
    low = sdcpp.load(str(fx.path("ldm")), device="cpu", weight_type="f32", threads=2, memory="low",
                     loras=[(kohya, 1.0)])
    latents = unit_latents(6)
    pipe = H.reference_pipeline(fx, [(ref_dir, 1.0)])
    ref = H.run_reference(pipe, latents=latents, steps=3)
    latent_run(low, latents)                             # first call: encoders then rebuilt
    ours = latent_run(low, latents)
    err = rel(ours, ref[0])
    assert err <= LATENT_TOL, err


@pytest.mark.parametrize("weight_type,spill", [("f32", True), ("q8_0", True), ("q8_0", False)])
def test_unet_lora_survives_the_release_before_decode(lora, weight_type, spill, monkeypatch, tmp_path):
    """memory="low" takes the U-Net's weights out of RSS before each decode (and streams them
    while sampling): f32 (the fixture's own type, mapped) drops the mapped file pages
    (WeightStore.release_mapped_pages), and pages a LoRA merge wrote must stay; q8_0 (a converted
    copy) lives in a spill file whose pages may all go (the file keeps the merge), or, without a
    spill file, is freed and rebuilt, and the merged tensors must be written into the rebuilt
    store. Either way the next call samples with the merged U-Net: latents equal to "fast" after
    decodes, and after a LoRA change (the restore writes originals too)."""
    monkeypatch.setenv("SDCPP_SPILL_DIR", str(tmp_path if spill else tmp_path / "missing"))
    fx, ref_dir, kohya = lora
    path = str(fx.path("ldm"))
    fast = sdcpp.load(path, device="cpu", weight_type=weight_type, threads=2, memory="fast", loras=[(kohya, 0.8)])
    low = sdcpp.load(path, device="cpu", weight_type=weight_type, threads=2, memory="low", loras=[(kohya, 0.8)])
    latents = unit_latents(8)

    def image(model):
        return model.txt2img(PROMPT, NEGATIVE, width=SIZE, height=SIZE, steps=2, sampler="euler",
                             latents=latents, output_type="np")[0]

    for loras in ([(kohya, 0.8)], [(kohya, 0.3)], []):
        fast.set_loras(loras)
        low.set_loras(loras)
        assert np.array_equal(image(low), image(fast))        # decodes: pages released
        assert np.array_equal(latent_run(low, latents), latent_run(fast, latents))   # sampled after it
    res = low._c["unet"].resident
    assert res.builds == (1 if spill else 4)   # q8_0 without a spill file: rebuilt after each decode
