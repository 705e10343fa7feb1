"""Prompt editing end to end: diffusers' pipeline with its conditioning swapped at the scheduled
step (callback_on_step_end replacing prompt_embeds) against sdcpp's [from:to:when] and [a|b].
Spec: final latents rel L2 <= 1e-3 with f32 weights."""
import pytest
import torch

import sdcpp
from fixtures.e2e import SIZE, diffusers_scheduler, rel, unit_latents

LATENT_TOL = 1e-3


@pytest.mark.parametrize("prompt,texts", [
    ("a photo of [cat:dog:2]", lambda step: "a photo of cat" if step <= 2 else "a photo of dog"),
    ("a photo of [cat|dog]", lambda step: "a photo of cat" if step % 2 else "a photo of dog"),
])
def test_scheduled_prompt_matches_diffusers_with_swapped_embeddings(model_fixtures, prompt, texts):
    fx = model_fixtures.get("bk-sdm-tiny")
    pipe = fx.pipeline("ldm")
    pipe.scheduler = diffusers_scheduler(("euler", "discrete"), pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    latents = unit_latents(8)
    steps = 4
    with torch.no_grad():
        embeds = {}
        for s in range(1, steps + 1):
            if texts(s) not in embeds:
                embeds[texts(s)] = pipe.encode_prompt(texts(s), "cpu", 1, True, "blurry")
        neg = embeds[texts(1)][1]

        def swap(p, i, t, kw):       # after step i (0-based) comes 1-based step i + 2
            return {"prompt_embeds": torch.cat([neg, embeds[texts(min(i + 2, steps))][0]])}

        ref = pipe(prompt_embeds=embeds[texts(1)][0], negative_prompt_embeds=neg, num_inference_steps=steps,
                   guidance_scale=7.0, latents=torch.from_numpy(latents), output_type="latent", height=SIZE,
                   width=SIZE, callback_on_step_end=swap,
                   callback_on_step_end_tensor_inputs=["prompt_embeds"]).images.numpy()
    model = sdcpp.load(str(fx.path("ldm")), device="cpu", weight_type="f32", threads=2)
    ours = model.txt2img(prompt, "blurry", width=SIZE, height=SIZE, steps=steps, sampler="euler",
                         latents=latents, output_type="latent")[0]
    plain = model.txt2img("a photo of cat", "blurry", width=SIZE, height=SIZE, steps=steps, sampler="euler",
                          latents=latents, output_type="latent")[0]
    err = rel(ours, ref[0])
    print(f"[prompt editing] {prompt!r}: rel L2 vs diffusers {err:.2e}")
    assert err <= LATENT_TOL
    assert rel(plain, ref[0]) > 20 * err            # the switch matters (far beyond our error)
