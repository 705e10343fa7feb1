"""The public API's behaviour: outputs, seeds, callbacks, cancellation, threads, bad input."""
import threading

import numpy as np
import pytest
from PIL import Image

import sdcpp
from sdcpp import errors
from fixtures.e2e import PROMPT, SIZE


@pytest.fixture(scope="module")
def tiny(model_fixtures):
    fx = model_fixtures.get("bk-sdm-tiny")
    return sdcpp.load(str(fx.path("ldm")), device="cpu", threads=2)


def gen(model, **kw):
    args = dict(width=SIZE, height=SIZE, steps=2, sampler="euler_a", seed=42)
    args.update(kw)
    return model.txt2img(PROMPT, **args)


def test_pil_output_carries_a1111_parameters(tiny):
    (img,) = gen(tiny, negative_prompt="ugly")
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (SIZE, SIZE)
    text = img.info["parameters"]
    assert text.startswith(PROMPT + "\nNegative prompt: ugly\n")
    for field in ("Steps: 2", "Sampler: Euler a", "CFG scale: 7", "Seed: 42", f"Size: {SIZE}x{SIZE}", "Model: model",
                  "Model hash: "):
        assert field in text


def test_np_and_latent_outputs(tiny):
    (arr,) = gen(tiny, output_type="np")
    assert arr.dtype == np.float32 and arr.shape == (SIZE, SIZE, 3) and 0 <= arr.min() and arr.max() <= 1
    (lat,) = gen(tiny, output_type="latent")
    assert lat.dtype == np.float32 and lat.shape == (4, SIZE // 8, SIZE // 8)


def test_same_seed_same_image_other_seed_other_image(tiny):
    a, b, c = gen(tiny, output_type="latent")[0], gen(tiny, output_type="latent")[0], gen(tiny, seed=43, output_type="latent")[0]
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_seed_none_is_drawn_and_reported(tiny):
    (img,) = gen(tiny, seed=None)
    seed = int(img.info["parameters"].split("Seed: ")[1].split(",")[0])
    again = gen(tiny, seed=seed)[0]
    assert np.array_equal(np.asarray(img), np.asarray(again))


def test_seed_is_64_bit(tiny):
    big = 2**64 - 1
    (img,) = gen(tiny, seed=big)
    assert f"Seed: {big}" in img.info["parameters"]


def test_callback_sees_every_step_and_can_cancel(tiny):
    seen = []
    gen(tiny, steps=3, callback=lambda step, total, x: seen.append((step, total, x.shape)))
    assert seen == [(0, 3, (1, 4, SIZE // 8, SIZE // 8)), (1, 3, (1, 4, SIZE // 8, SIZE // 8)),
                    (2, 3, (1, 4, SIZE // 8, SIZE // 8))]  # 0-based index of the step just done
    with pytest.raises(errors.Cancelled):
        gen(tiny, steps=3, callback=lambda step, total, x: False)
    assert len(gen(tiny, output_type="latent")) == 1  # still usable


def test_two_threads_on_one_model_agree_with_serial_runs(tiny):
    expected = {s: gen(tiny, seed=s, output_type="latent")[0] for s in (1, 2)}
    results = {}

    def work(s):
        results[s] = gen(tiny, seed=s, output_type="latent")[0]

    threads = [threading.Thread(target=work, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in (1, 2):
        assert np.array_equal(results[s], expected[s])


@pytest.mark.parametrize("kwargs,match", [
    (dict(width=60), "width must be a positive multiple of 8"),
    (dict(height=0), "height must be a positive multiple of 8"),
    (dict(steps=0), "steps must be an integer >= 1"),
    (dict(cfg_scale=float("nan")), "cfg_scale must be a finite number"),
    (dict(sampler="plms"), "unknown sampler 'plms'; valid: euler, euler_a"),
    (dict(scheduler="cosine"), "unknown scheduler"),
    (dict(batch_size=0), "batch_size"),
    (dict(output_type="tensor"), "output_type"),
    (dict(seed=-1), "seed"),
    (dict(width=65536, height=65536), "working memory"),
])
def test_bad_arguments_raise_before_work(tiny, kwargs, match):
    calls = []
    with pytest.raises(errors.InvalidArgumentError, match=match):
        gen(tiny, callback=lambda *a: calls.append(a), **kwargs)
    assert calls == []


def test_prompt_must_be_a_string(tiny):
    with pytest.raises(errors.InvalidArgumentError, match="prompt must be a str"):
        tiny.txt2img(["a", "b"], width=SIZE, height=SIZE, steps=1)


def test_latents_set_the_batch(tiny):
    lat = np.random.default_rng(0).standard_normal((2, 4, SIZE // 8, SIZE // 8)).astype(np.float32)
    out = tiny.txt2img(PROMPT, steps=2, sampler="euler", latents=lat, output_type="latent")
    assert len(out) == 2


def test_placement_names_the_device_of_every_part(tiny):
    before = sdcpp.system_info()["ops_off_device"]
    tiny.txt2img("a lighthouse", width=64, height=64, steps=1, seed=1, output_type="latent")
    where = tiny.placement()
    name = tiny.device.info["name"]
    assert where["device"] == name
    assert {where["text_encoders"], where["unet"], where["vae"]} == {name}
    # on the CPU nothing can fall back, and the count is the process-wide one system_info reports
    assert where["ops_off_device"] == sdcpp.system_info()["ops_off_device"] == before


def test_info_is_the_inspect_result(tiny):
    assert tiny.info.family == "sd1" and tiny.info.variant == "bk-sdm-tiny"


def test_separate_vae_replaces_the_checkpoints(model_fixtures, tmp_path):
    """load(vae=folder): the model decodes with the separate VAE, as diffusers does with it."""
    import copy

    import torch

    fx = model_fixtures.get("bk-sdm-tiny")
    other = copy.deepcopy(fx.vae)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    other.save_pretrained(tmp_path / "vae")
    model = sdcpp.load(str(fx.path("ldm")), vae=str(tmp_path / "vae"), device="cpu", weight_type="f32", threads=2)
    z = np.random.default_rng(3).standard_normal((1, 4, SIZE // 8, SIZE // 8)).astype(np.float32)
    ours = model._c["vae"].decode(z)      # the engine VAE the pipeline decodes with
    with torch.no_grad():
        ref = other.decode(torch.from_numpy(z)).sample.numpy()
        own = fx.vae.decode(torch.from_numpy(z)).sample.numpy()
    err = np.abs(ours - ref).max()
    assert err <= 1e-4, err
    assert np.abs(own - ref).max() > 100 * 1e-4, "the two VAEs must differ for this test to mean anything"


def test_preflight_memory_check_uses_the_planned_buffers(model_fixtures, monkeypatch):
    """The pre-flight check plans the U-Net's and the VAE's compute buffers with ggml's allocator:
    the plan equals what a run then holds, and the check refuses exactly when it does not fit."""
    from sdcpp import pipeline

    fx = model_fixtures.get("bk-sdm-tiny")
    model = sdcpp.load(str(fx.path("ldm")), device="cpu", threads=2)
    unet, vae = model._c["unet"], model._c["vae"]
    need = unet.measure(2, SIZE // 8, SIZE // 8, 77) + vae.measure(True, SIZE // 8, SIZE // 8)
    assert unet.compute_buffer_size == 0 and vae.compute_buffer_size == 0      # planning holds nothing
    monkeypatch.setattr(pipeline, "_available_memory", lambda: need - 1)
    with pytest.raises(errors.InvalidArgumentError, match="working memory"):
        gen(model)
    monkeypatch.setattr(pipeline, "_available_memory", lambda: need + 1)
    gen(model, output_type="latent")
    assert unet.compute_buffer_size == unet.measure(2, SIZE // 8, SIZE // 8, 77)


def test_progress_shows_load_sample_and_decode_phases(model_fixtures, capsys, monkeypatch):
    pytest.importorskip("tqdm")
    import sys
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)     # bars are drawn on terminals only
    fx = model_fixtures.get("bk-sdm-tiny")
    model = sdcpp.load(str(fx.path("ldm")), device="cpu", threads=2, progress=True)
    assert "load" in capsys.readouterr().err
    gen(model, progress=True)
    err = capsys.readouterr().err
    assert "sample" in err and "decode" in err
    gen(model)                                   # progress=False stays silent
    assert capsys.readouterr().err == ""


def test_a_weight_of_the_wrong_shape_names_the_file_and_tensor(model_fixtures, tmp_path):
    """Shape mismatches found while building the native model name the file and the tensor as
    the checkpoint spells it (issue 11), like the readers' errors."""
    from safetensors.numpy import load_file, save_file

    fx = model_fixtures.get("bk-sdm-tiny")
    tensors = load_file(str(fx.path("ldm")))
    key = next(k for k in sorted(tensors) if k.endswith("emb_layers.1.bias"))
    tensors[key] = tensors[key][:-1].copy()
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad))
    with pytest.raises(errors.CheckpointError) as exc:
        sdcpp.load(str(bad), device="cpu", threads=2)
    assert exc.value.file == str(bad) and exc.value.tensor == key, str(exc.value)


def test_latents_that_disagree_with_the_size_or_batch_are_refused(tiny):
    lat = np.zeros((2, 4, SIZE // 8, SIZE // 8), np.float32)
    with pytest.raises(errors.InvalidArgumentError, match="width x height"):
        tiny.txt2img(PROMPT, width=SIZE * 2, height=SIZE, steps=1, latents=lat)
    with pytest.raises(errors.InvalidArgumentError, match="batch_size is 3"):
        tiny.txt2img(PROMPT, steps=1, latents=lat, batch_size=3)
    assert len(tiny.txt2img(PROMPT, width=SIZE, height=SIZE, steps=1, latents=lat, output_type="latent")) == 2


def test_load_compute_reaches_the_unet(model_fixtures):
    """load(compute=...) sets the U-Net's arithmetic (UNet.compute; its numerics are tested in
    tests/engine/test_unet.py::test_bf16_compute) in every memory mode, and a bad value is a typed error
    before anything loads."""
    path = str(model_fixtures.get("sd1").path("ldm"))
    for memory in ("balanced", "low"):
        m = sdcpp.load(path, device="cpu", weight_type="f16", threads=1, memory=memory, compute="bf16")
        assert m._c["unet"].compute == "bf16"
    assert sdcpp.load(path, device="cpu", threads=1)._c["unet"].compute == "f32"
    with pytest.raises(errors.InvalidArgumentError, match="compute"):
        sdcpp.load(path, device="cpu", compute="fp8")
