"""LoRAs end to end against diffusers ``load_lora_weights`` + ``fuse_lora(lora_scale=s)``.

Every LoRA is random (A and B both non-zero, see lora_helpers) and written by diffusers' / PEFT's
own savers or by kohya's rules; diffusers always loads the ``save_lora_weights`` file of the same
weights, sdcpp reads the format under test. Spec: final latents relative L2 <= 1e-3 with f32
weights (f16 weights: <= 5e-3). Each case also checks that the LoRA matters (the base model's
latents are far from the LoRA's), so a LoRA that silently did nothing would fail.
"""
from __future__ import annotations


import numpy as np
import pytest

import sdcpp
from sdcpp.lora import LoraFamilyError, LoraUnmatchedError, LoraWarning
from fixtures.devices import TEST_DEVICE, RecentModels, tol as device_tol
from fixtures.e2e import NEGATIVE, PROMPT, SIZE, rel, unit_latents

import lora_helpers as H

LATENT_TOL = 1e-3
F16_TOL = 5e-3
MATTERS = 0.02          # a LoRA must move the result by more than this (relative L2)


@pytest.fixture(scope="module", autouse=True)
def torch_one_thread():
    """torch single-threaded: its idle OpenMP workers spin and starve ggml's threads on a
    2-core machine (the first U-Net call after torch work took ~10x longer)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("loras")


@pytest.fixture(scope="module")
def loaded(model_fixtures):
    """Models loaded for the module, the four most recent kept (fixtures.devices.RecentModels).
    One ggml thread: on this shared 2-core machine the tiny graphs run ~9x faster
    single-threaded (ggml's barriers spin when cores are oversubscribed)."""
    models = RecentModels(lambda family, fmt, weight_type: sdcpp.load(
        str(model_fixtures.get(family).path(fmt)), device=TEST_DEVICE, weight_type=weight_type, threads=1), keep=4)

    def get(family, fmt="ldm", weight_type="f32"):
        return models((family, fmt, weight_type), family, fmt, weight_type)
    return get


@pytest.fixture(scope="module")
def loras(model_fixtures, workdir):
    """The module's LoRAs, made once: name -> (RandomLora, {format: path})."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _make(model_fixtures, workdir, name)
        return cache[name]
    return get


def _make(model_fixtures, workdir, name):
    d = workdir / name
    if name == "sd1-kohya":          # LCM-style module set + LoCon convs, text encoder, alpha != rank
        fx = model_fixtures.get("sd1")
        lo = H.make_lora(fx, seed=11, unet_targets=H.LCM_TARGETS, text_targets=H.TEXT_TARGETS, rank=4, alpha=2,
                         std=0.1)
        return lo, {"diffusers": H.write_diffusers(fx, lo, d / "ref"),
                    "kohya": H.write_kohya(fx, lo, d / "kohya.safetensors", te_prefix="lora_te_")}
    if name == "sd1-b":              # a second sd1 LoRA (attention + ff + text), for sets of two
        fx = model_fixtures.get("sd1")
        lo = H.make_lora(fx, seed=12, unet_targets=H.ATTN_TARGETS + ["ff.net.0.proj", "conv2"],
                         text_targets=["q_proj", "fc2"], rank=2, alpha=4)
        return lo, {"diffusers": H.write_diffusers(fx, lo, d / "ref"),
                    "kohya": H.write_kohya(fx, lo, d / "b.safetensors", te_prefix="lora_te_")}
    if name == "sdxl-kohya-ldm":     # SDXL kohya in LDM spelling incl. top-level modules, te1 + te2
        fx = model_fixtures.get("sdxl")
        lo = H.make_lora(fx, seed=21, rank=4, alpha=8, text_targets=H.TEXT_TARGETS,
                         unet_targets=H.LCM_TARGETS + ["conv_in", "conv_out", "time_embedding.linear_1",
                                                       "add_embedding.linear_2"])
        return lo, {"diffusers": H.write_diffusers(fx, lo, d / "ref"),
                    "kohya": H.write_kohya(fx, lo, d / "sdxl.safetensors", spelling="ldm")}
    if name == "ssd1b-style":        # like seungminh/lora-swarovski-SSD-1B: attention, U-Net only
        fx = model_fixtures.get("ssd-1b")
        lo = H.make_lora(fx, seed=31, unet_targets=H.ATTN_TARGETS, rank=4)
        return lo, {"diffusers": H.write_diffusers(fx, lo, d / "ref")}
    if name == "ssd1b-lcm":          # an LCM-LoRA: the LCM training script's target modules
        fx = model_fixtures.get("ssd-1b")
        lo = H.make_lora(fx, seed=32, unet_targets=H.LCM_TARGETS, rank=8, alpha=8, std=0.1)
        return lo, {"diffusers": H.write_diffusers(fx, lo, d / "ref")}
    if name == "vega-021":           # diffusers 0.21 format (.lora.down / lora_linear_layer), te1 + te2
        fx = model_fixtures.get("vega")
        lo = H.make_lora(fx, seed=41, unet_targets=H.LCM_TARGETS, text_targets=H.TEXT_TARGETS, rank=4)
        return lo, {"diffusers": H.write_diffusers(fx, lo, d / "ref"),
                    "diffusers-021": H.write_diffusers_021(fx, lo, d / "v021")}
    if name == "tiny-old":           # diffusers <= 0.20 attention processors, U-Net + text encoder
        fx = model_fixtures.get("bk-sdm-tiny")
        lo = H.make_lora(fx, seed=51, unet_targets=H.ATTN_TARGETS, text_targets=["q_proj", "k_proj", "v_proj",
                                                                                 "out_proj"], rank=4)
        return lo, {"diffusers": H.write_diffusers(fx, lo, d / "ref"),
                    "old": H.write_old_processor(fx, lo, d / "old.safetensors")}
    if name == "tiny-peft":          # PEFT's own save_pretrained (base_model.model., adapter_config.json)
        fx = model_fixtures.get("bk-sdm-tiny")
        lo = H.make_lora(fx, seed=52, unet_targets=["ff.net.0.proj", "ff.net.2", "conv1", "proj_in",
                                                    "upsamplers.0.conv"], rank=4, alpha=3)
        return lo, {"diffusers": H.write_diffusers(fx, lo, d / "ref"),
                    "peft": H.write_peft_raw(fx, lo, "unet", d / "peft")}
    raise KeyError(name)


def _ours(model, latents, **kw):
    args = dict(width=SIZE, height=SIZE, steps=4, cfg_scale=7.0, sampler="euler", scheduler="discrete",
                latents=latents, output_type="latent")
    args.update(kw)
    prompt = args.pop("prompt", PROMPT)
    negative = args.pop("negative", NEGATIVE)
    return model.txt2img(prompt, negative, **args)[0]


def _check(model, fx, refs, ours_loras, latents, tol=LATENT_TOL, fmt="ldm"):
    """Apply ``ours_loras`` on the model, compare with diffusers fusing ``refs``; returns the error."""
    base = _ours(model, latents)
    report = model.set_loras(ours_loras)
    try:
        ours = _ours(model, latents)
    finally:
        model.set_loras([])
    ref = H.run_reference(H.reference_pipeline(fx, refs, fmt), latents=latents)[0]
    err = rel(ours, ref)
    tol = device_tol(tol)
    print(f"[lora parity] {fx.name}: rel L2 {err:.2e} (LoRA effect {rel(base, ref):.2f}, {TEST_DEVICE})")
    assert err <= tol, f"latents rel L2 {err:.2e} > {tol}"
    assert rel(base, ref) > MATTERS, "the LoRA does not change the result: the test would prove nothing"
    for r in report.loras:
        assert not r.skipped, r.skipped
    return err, report


# --------------------------------------------------------------------------- formats x families
@pytest.mark.device
def test_sd1_kohya_locon_and_text_encoder(model_fixtures, loaded, loras):
    fx = model_fixtures.get("sd1")
    lo, files = loras("sd1-kohya")
    model = loaded("sd1")
    err, report = _check(model, fx, [(files["diffusers"], 0.8)], [(files["kohya"], 0.8)], unit_latents(7))
    (r,) = report.loras
    assert r.format == "kohya"
    n_unet = len(lo.state_dicts["unet"]) // 2
    n_te = len(lo.state_dicts["text_encoder"]) // 2
    assert r.tensors == {"unet": n_unet, "text_encoder": n_te}
    assert r.modules["unet:conv1"] > 0 and r.modules["unet:downsamplers.conv"] == 3
    assert model.info.loras == []            # cleared by _check


@pytest.mark.device
def test_sdxl_kohya_ldm_names_both_text_encoders(model_fixtures, loaded, loras):
    fx = model_fixtures.get("sdxl")
    lo, files = loras("sdxl-kohya-ldm")
    err, report = _check(loaded("sdxl"), fx, [(files["diffusers"], 0.7)], [(files["kohya"], 0.7)], unit_latents(8))
    (r,) = report.loras
    assert set(r.tensors) == {"unet", "text_encoder", "text_encoder_2"}
    assert r.targets["lora_unet_input_blocks_0_0"] == "unet.conv_in.weight"
    assert r.targets["lora_unet_label_emb_0_2"] == "unet.add_embedding.linear_2.weight"
    assert r.tensors["unet"] == len(lo.state_dicts["unet"]) // 2


@pytest.mark.device
def test_vega_diffusers_021_format(model_fixtures, loaded, loras):
    fx = model_fixtures.get("vega")
    lo, files = loras("vega-021")
    err, report = _check(loaded("vega"), fx, [(files["diffusers"], 1.0)], [(files["diffusers-021"], 1.0)],
                         unit_latents(9))
    assert report.loras[0].format == "diffusers+peft"      # the 0.21 converter renames attention only
    assert set(report.loras[0].tensors) == {"unet", "text_encoder", "text_encoder_2"}


@pytest.mark.device
def test_ssd1b_diffusers_peft_format(model_fixtures, loaded, loras):
    fx = model_fixtures.get("ssd-1b")
    lo, files = loras("ssd1b-style")
    err, report = _check(loaded("ssd-1b"), fx, [(files["diffusers"], 0.9)], [(files["diffusers"], 0.9)],
                         unit_latents(10))
    assert report.loras[0].format == "peft"
    assert report.loras[0].tensors == {"unet": len(lo.state_dicts["unet"]) // 2}


@pytest.mark.device
def test_tiny_two_loras_old_processor_and_peft_raw(model_fixtures, loaded, loras):
    fx = model_fixtures.get("bk-sdm-tiny")
    _, a = loras("tiny-old")
    _, b = loras("tiny-peft")
    err, report = _check(loaded("bk-sdm-tiny"), fx, [(a["diffusers"], 0.6), (b["diffusers"], 1.2)],
                         [(a["old"], 0.6), (b["peft"].parent, 1.2)], unit_latents(12))
    assert [r.format for r in report.loras] == ["diffusers-old", "peft"]
    assert "text_encoder" in report.loras[0].tensors


@pytest.mark.device
def test_sd1_two_loras_at_once(model_fixtures, loaded, loras):
    fx = model_fixtures.get("sd1")
    _, a = loras("sd1-kohya")
    _, b = loras("sd1-b")
    _check(loaded("sd1"), fx, [(a["diffusers"], 0.5), (b["diffusers"], -0.7)],
           [(a["kohya"], 0.5), (b["kohya"], -0.7)], unit_latents(13))


@pytest.mark.device
def test_sd1_f16_weights(model_fixtures, loaded, loras):
    """f16 storage: the merged weight is rounded once to f16; diffusers fuses in f32 over the same
    f16-rounded checkpoint. The engine's own f16 error (no LoRA) is ~3.8e-3 on this case."""
    fx = model_fixtures.get("sd1")
    _, files = loras("sd1-kohya")
    _check(loaded("sd1", "ldm-fp16", "f16"), fx, [(files["diffusers"], 0.8)], [(files["kohya"], 0.8)],
           unit_latents(7), tol=F16_TOL, fmt="ldm-fp16")


@pytest.mark.device
def test_ssd1b_lcm_lora_with_style_lora_lcm_sampler(model_fixtures, loaded, loras):
    """The issue's case: a style LoRA and an LCM-LoRA on SSD-1B, 4 steps of the lcm sampler,
    against diffusers' LCMScheduler with both fused (no CFG, as LCM is used)."""
    fx = model_fixtures.get("ssd-1b")
    _, style = loras("ssd1b-style")
    _, lcm = loras("ssd1b-lcm")
    model = loaded("ssd-1b")
    report = model.set_loras([(style["diffusers"], 0.8), (lcm["diffusers"], 1.0)])
    try:
        kinds = report.loras[1].modules
        for k in ("conv1", "conv2", "conv_shortcut", "downsamplers.conv", "upsamplers.conv", "time_emb_proj"):
            assert kinds.get(f"unet:{k}", 0) > 0, k
        ours = model.txt2img(PROMPT, "", width=SIZE, height=SIZE, steps=4, cfg_scale=1.0, sampler="lcm",
                             scheduler="lcm", seed=1234, output_type="latent")[0]
    finally:
        model.set_loras([])
    pipe = H.reference_pipeline(fx, [(style["diffusers"], 0.8), (lcm["diffusers"], 1.0)])
    ref = H.run_reference(pipe, sampler=("lcm", "lcm"), steps=4, cfg=1.0, seed=1234, negative=None)[0]
    base = H.run_reference(H.reference_pipeline(fx, []), sampler=("lcm", "lcm"), steps=4, cfg=1.0, seed=1234,
                           negative=None)[0]
    err = rel(ours, ref)
    print(f"[lora parity] ssd-1b lcm: rel L2 {err:.2e} (LoRA effect {rel(base, ref):.2f})")
    assert err <= device_tol(LATENT_TOL), f"lcm: latents rel L2 {err:.2e}"
    assert rel(base, ref) > MATTERS


# --------------------------------------------------------------------------- set / change / clear
def test_set_change_clear_is_bit_exact(model_fixtures, loaded, loras):
    _, a = loras("sd1-kohya")
    _, b = loras("sd1-b")
    model = loaded("sd1")
    base = H.store_snapshot(model)

    ra = model.set_loras([(a["kohya"], 0.8)])
    only_a = H.store_snapshot(model)
    changed = {n for n in base if not np.array_equal(base[n], only_a[n])}
    assert changed == set(ra.loras[0].targets.values()) and ra.written == len(changed)

    model.set_loras([(b["kohya"], 0.5)])                   # change the set
    via_a = H.store_snapshot(model)
    model.set_loras([])
    assert all(np.array_equal(base[n], v) for n, v in H.store_snapshot(model).items())
    model.set_loras([(b["kohya"], 0.5)])                   # the same set straight from the base
    direct = H.store_snapshot(model)
    assert all(np.array_equal(direct[n], via_a[n]) for n in base), "switching sets is not exact"

    # only the tensors whose recipe changes are rewritten
    r1 = model.set_loras([(a["kohya"], 0.8), (b["kohya"], 0.5)])
    r2 = model.set_loras([(a["kohya"], 0.8), (b["kohya"], 0.25)])
    n_b = len(r1.loras[1].targets)
    assert (r2.written, r2.restored) == (n_b, 0)
    r3 = model.set_loras([(a["kohya"], 0.8), (b["kohya"], 0.25)])
    assert (r3.written, r3.restored) == (0, 0)

    r4 = model.set_loras([])
    assert r4.restored == len(set(r1.loras[0].targets.values()) | set(r1.loras[1].targets.values()))
    after = H.store_snapshot(model)
    bad = [n for n in base if not np.array_equal(base[n], after[n])]
    assert not bad, f"not restored bit-exactly: {bad[:5]}"


def test_clear_is_bit_exact_with_f16_and_bf16_storage(model_fixtures, loaded, loras):
    _, a = loras("sd1-kohya")
    for fmt, wt in (("ldm-fp16", "f16"), ("ldm", "bf16")):
        model = loaded("sd1", fmt, wt)
        base = H.store_snapshot(model)
        model.set_loras([(a["kohya"], 1.0)])
        merged = H.store_snapshot(model)
        assert sum(not np.array_equal(base[n], merged[n]) for n in base) > 0
        model.set_loras([])
        after = H.store_snapshot(model)
        assert all(np.array_equal(base[n], after[n]) for n in base), (fmt, wt)


# --------------------------------------------------------------------------- readers
@pytest.mark.parametrize("fmt", ["pt", "gguf"])
def test_pickle_and_gguf_lora_files_merge_the_same(model_fixtures, loaded, loras, workdir, fmt):
    fx = model_fixtures.get("sd1")
    lo, files = loras("sd1-kohya")
    model = loaded("sd1")
    import torch
    p16 = H.write_kohya(fx, lo, workdir / "f16.safetensors", te_prefix="lora_te_", dtype=torch.float16)
    other = H.write_kohya(fx, lo, workdir / f"f16.{fmt}", te_prefix="lora_te_", dtype=torch.float16, fmt=fmt)
    model.set_loras([(p16, 0.8)])
    want = H.store_snapshot(model)
    report = model.set_loras([(other, 0.8)])
    got = H.store_snapshot(model)
    model.set_loras([])
    assert report.loras[0].matched == len(lo.state_dicts["unet"]) // 2 + len(lo.state_dicts["text_encoder"]) // 2
    assert all(np.array_equal(want[n], got[n]) for n in want)


# --------------------------------------------------------------------------- errors
def test_sd1_lora_on_sdxl_is_a_family_error(loaded, loras):
    _, files = loras("sd1-kohya")
    model = loaded("sdxl")
    base = H.store_snapshot(model)
    with pytest.raises(LoraFamilyError, match="SD1/SD2.*SDXL"):
        model.set_loras([(files["kohya"], 1.0)])
    with pytest.raises(LoraFamilyError):
        model.set_loras([(files["kohya"], 1.0)], strict=False)
    assert all(np.array_equal(base[n], v) for n, v in H.store_snapshot(model).items())


def test_sdxl_lora_on_sd1_is_a_family_error(loaded, loras):
    _, files = loras("sdxl-kohya-ldm")
    with pytest.raises(LoraFamilyError, match="SDXL.*SD1"):
        loaded("sd1").set_loras([(files["kohya"], 1.0)])


def test_sdxl_indices_missing_from_ssd1b_are_unmatched_not_a_crash(model_fixtures, loaded, loras):
    """An SDXL LoRA on SSD-1B: the transformer layers SSD-1B removed are unmatched keys."""
    _, files = loras("sdxl-kohya-ldm")
    model = loaded("ssd-1b")
    with pytest.raises(LoraUnmatchedError) as exc:
        model.set_loras([(files["kohya"], 1.0)])
    assert any("transformer_blocks_1_" in k for k in exc.value.keys)
    with pytest.warns(LoraWarning):
        report = model.set_loras([(files["kohya"], 1.0)], strict=False)
    model.set_loras([])
    assert report.loras[0].matched > 0 and report.loras[0].skipped


def test_unmatched_keys_raise_listing_them_and_strict_false_warns(model_fixtures, loaded, loras, workdir):
    fx = model_fixtures.get("sd1")
    lo, files = loras("sd1-kohya")
    import torch
    sd = H.kohya_state_dict(fx, lo, te_prefix="lora_te_")
    bogus = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn9_to_q.lora_down.weight": torch.ones(4, 32),
             "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn9_to_q.lora_up.weight": torch.ones(32, 4),
             "lora_unet_down_blocks_7_resnets_0_conv1.alpha": torch.tensor(4.0),
             "some_random_tensor": torch.ones(3)}
    path = H.save_state_dict({**sd, **bogus}, workdir / "bogus.safetensors")
    model = loaded("sd1")
    base = H.store_snapshot(model)
    with pytest.raises(LoraUnmatchedError) as exc:
        model.set_loras([(path, 1.0)])
    assert sorted(exc.value.keys) == sorted(bogus)
    assert all(np.array_equal(base[n], v) for n, v in H.store_snapshot(model).items())
    with pytest.warns(LoraWarning, match="attn9_to_q"):
        report = model.set_loras([(path, 1.0)], strict=False)
    with_bogus = H.store_snapshot(model)
    model.set_loras([(files["kohya"], 1.0)])
    clean = H.store_snapshot(model)
    model.set_loras([])
    assert sorted(report.loras[0].unmatched) == sorted(bogus)
    assert all(np.array_equal(with_bogus[n], clean[n]) for n in base)


# --------------------------------------------------------------------------- prompt tags and CLI
def test_prompt_tags_apply_for_the_call(model_fixtures, loaded, loras, workdir):
    import shutil
    fx = model_fixtures.get("sd1")
    _, files = loras("sd1-kohya")
    folder = workdir / "tagdir"
    folder.mkdir(exist_ok=True)
    shutil.copy(files["kohya"], folder / "style.safetensors")
    model = loaded("sd1")
    base = H.store_snapshot(model)
    latents = unit_latents(15)
    model.lora_dir = folder
    try:
        ours = _ours(model, latents, prompt=PROMPT + " <lora:style:0.8>")
        ref = H.run_reference(H.reference_pipeline(fx, [(files["diffusers"], 0.8)]), latents=latents)[0]
        assert rel(ours, ref) <= LATENT_TOL
        assert model.info.loras[0].name == "style" and model.loras == []
        _ours(model, latents)                                 # no tags: back to the model's own set
        assert all(np.array_equal(base[n], v) for n, v in H.store_snapshot(model).items())
        with pytest.raises(sdcpp.errors.LoraError, match="nosuch"):
            _ours(model, latents, prompt=PROMPT + " <lora:nosuch:1>")
        with pytest.raises(sdcpp.errors.LoraError, match="outside"):
            _ours(model, latents, prompt=PROMPT + " <lora:../x:1>")
    finally:
        model.lora_dir = None
        model.set_loras([])


def test_cli_lora_flags_and_prompt_tags(model_fixtures, loras, workdir):
    """`sdcpp txt2img --lora PATH:SCALE --lora-dir DIR` with a <lora:..> tag, against the diffusers
    image with both LoRAs fused."""
    import shutil

    from PIL import Image

    from sdcpp.cli import main
    fx = model_fixtures.get("sd1")
    _, a = loras("sd1-kohya")
    _, b = loras("sd1-b")
    folder = workdir / "clidir"
    folder.mkdir(exist_ok=True)
    shutil.copy(b["kohya"], folder / "second.safetensors")
    out = workdir / "cli.png"
    rc = main(["txt2img", "-m", str(fx.path("ldm")), "-p", PROMPT + " <lora:second:-0.6>", "-n", NEGATIVE,
               "--lora", f"{a['kohya']}:0.7", "--lora-dir", str(folder), "--steps", "4", "--sampler", "euler",
               "-W", str(SIZE), "-H", str(SIZE), "-s", "5", "-o", str(out), "--type", "f32", "-t", "1",
               "--no-progress", "--device", "cpu"])
    assert rc == 0
    img = np.asarray(Image.open(out).convert("RGB"), dtype=np.float32) / 255.0
    pipe = H.reference_pipeline(fx, [(a["diffusers"], 0.7), (b["diffusers"], -0.6)])
    ref = H.run_reference(pipe, seed=5, output_type="np")[0]
    err = np.abs(img - ref).max()
    base = H.run_reference(H.reference_pipeline(fx, []), seed=5, output_type="np")[0]
    effect = np.abs(base - ref).max()
    print(f"[lora parity] cli image max abs {err:.2e} (LoRA effect {effect:.2f})")
    assert err <= 1.5e-2
    # The LoRAs must move the image far more than the tolerance, or the check proves nothing.
    assert effect > 10 * 1.5e-2, "the LoRAs do not change the image: the test would prove nothing"


def test_load_time_loras_equal_set_loras(model_fixtures, loaded, loras):
    fx = model_fixtures.get("sd1")
    _, a = loras("sd1-kohya")
    _, b = loras("sd1-b")
    specs = [(a["kohya"], 0.8), (str(b["kohya"]), 0.3)]
    at_load = sdcpp.load(str(fx.path("ldm")), device="cpu", weight_type="f32", threads=1, loras=specs)
    model = loaded("sd1")
    model.set_loras(specs)
    want = H.store_snapshot(model)
    model.set_loras([])
    got = H.store_snapshot(at_load)
    assert all(np.array_equal(want[n], got[n]) for n in want)
    assert at_load.loras == [(str(a["kohya"]), 0.8), (str(b["kohya"]), 0.3)]
    assert [r.name for r in at_load.info.loras] == ["kohya", "b"]
    with pytest.raises(sdcpp.errors.LoraError, match="list of paths"):
        at_load.set_loras(str(a["kohya"]))
    at_load.close()
    with pytest.raises(sdcpp.errors.LoraError, match="closed"):
        at_load.set_loras([])
