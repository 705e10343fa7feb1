"""Textual-inversion embeddings end to end against diffusers' load_textual_inversion.

The same random vectors go to diffusers (which adds one token per vector to its tokenizer and
grows the token-embedding table) and to sdcpp (file stem matched on the prompt's tokens, the
vectors fed as input embeddings). Spec: final latents rel L2 <= 1e-3 with f32 weights, as for
txt2img; a prompt without the word must differ (so the vectors are really used).
"""
import numpy as np
import pytest
import torch

import sdcpp
from fixtures.e2e import SIZE, rel, unit_latents

LATENT_TOL = 1e-3
PROMPT = "a lighthouse at dusk, shinystyle, oil painting"
NEGATIVE = "blurry, badquality"


def _widths(fx) -> list[int]:
    return [c["hidden_size"] for c in fx.spec.text_encoders]


def _save_a1111_pt(path, vectors: np.ndarray) -> None:
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.from_numpy(vectors)},
                "name": path.stem, "step": 100}, path)


def _save_safetensors(path, tensors: dict) -> None:
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))


def _diffusers_latents(fx, files_and_tokens, latents, prompt=PROMPT, negative=NEGATIVE):
    from fixtures.e2e import diffusers_scheduler

    import copy

    pipe = fx.pipeline("diffusers")
    # load_textual_inversion grows the token-embedding tables in place: work on copies, the
    # fixture's modules are shared with the other tests of the session.
    pipe.text_encoder = copy.deepcopy(pipe.text_encoder)
    if getattr(pipe, "text_encoder_2", None) is not None:
        pipe.text_encoder_2 = copy.deepcopy(pipe.text_encoder_2)
    pipe.scheduler = diffusers_scheduler(("euler", "discrete"), pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    for state, token, key in files_and_tokens:
        if key is None:
            pipe.load_textual_inversion(state, token=token)
        else:   # SDXL: each encoder gets its own vectors
            pipe.load_textual_inversion(state[0], token=token, text_encoder=pipe.text_encoder,
                                        tokenizer=pipe.tokenizer)
            pipe.load_textual_inversion(state[1], token=token, text_encoder=pipe.text_encoder_2,
                                        tokenizer=pipe.tokenizer_2)
    with torch.no_grad():
        out = pipe(prompt, negative_prompt=negative, num_inference_steps=4, guidance_scale=7.0,
                   latents=torch.from_numpy(latents), output_type="latent", height=SIZE, width=SIZE)
    return out.images.numpy()


def _ours(model, latents, prompt=PROMPT, negative=NEGATIVE):
    return model.txt2img(prompt, negative, width=SIZE, height=SIZE, steps=4, cfg_scale=7.0, sampler="euler",
                         scheduler="discrete", latents=latents, output_type="latent")[0]


def test_sd1_a1111_pt_and_safetensors_match_diffusers(model_fixtures, tmp_path):
    fx = model_fixtures.get("bk-sdm-tiny")
    (C,) = _widths(fx)
    rng = np.random.default_rng(3)
    style = (rng.standard_normal((2, C)) * 0.4).astype(np.float32)      # a 2-vector positive embedding
    bad = (rng.standard_normal((1, C)) * 0.4).astype(np.float32)        # a 1-vector negative embedding
    _save_a1111_pt(tmp_path / "shinystyle.pt", style)
    _save_safetensors(tmp_path / "badquality.safetensors", {"emb_params": bad})
    latents = unit_latents(5)

    ref = _diffusers_latents(fx, [(str(tmp_path / "shinystyle.pt"), "shinystyle", None),
                                  (str(tmp_path / "badquality.safetensors"), "badquality", None)], latents)
    model = sdcpp.load(str(fx.path("diffusers")), device="cpu", weight_type="f32", threads=2)
    plain = _ours(model, latents)
    words = model.load_embeddings([tmp_path])
    assert sorted(words) == ["badquality", "shinystyle"]
    ours = _ours(model, latents)
    err = rel(ours, ref[0])
    print(f"[embeddings] sd1 rel L2 vs diffusers {err:.2e}, without the vectors {rel(plain, ref[0]):.2e}")
    assert err <= LATENT_TOL
    assert rel(plain, ref[0]) > 10 * LATENT_TOL


def test_sdxl_clip_l_clip_g_match_diffusers(model_fixtures, tmp_path):
    fx = model_fixtures.get("ssd-1b")
    cl, cg = _widths(fx)
    rng = np.random.default_rng(4)
    vl = (rng.standard_normal((2, cl)) * 0.4).astype(np.float32)
    vg = (rng.standard_normal((2, cg)) * 0.4).astype(np.float32)
    _save_safetensors(tmp_path / "shinystyle.safetensors", {"clip_l": vl, "clip_g": vg})
    latents = unit_latents(6)
    ref = _diffusers_latents(fx, [(({"emb_params": torch.from_numpy(vl)}, {"emb_params": torch.from_numpy(vg)}),
                                   "shinystyle", "xl")], latents, negative="blurry")
    model = sdcpp.load(str(fx.path("ldm")), device="cpu", weight_type="f32", threads=2,
                       embeddings=[tmp_path / "shinystyle.safetensors"])
    ours = _ours(model, latents, negative="blurry")
    err = rel(ours, ref[0])
    print(f"[embeddings] sdxl rel L2 vs diffusers {err:.2e}")
    assert err <= LATENT_TOL


def test_embeddings_that_do_not_fit_are_refused(model_fixtures, tmp_path):
    fx = model_fixtures.get("bk-sdm-tiny")
    (C,) = _widths(fx)
    model = sdcpp.load(str(fx.path("diffusers")), device="cpu", weight_type="f32", threads=2)
    _save_safetensors(tmp_path / "wide.safetensors", {"emb_params": np.zeros((1, C + 8), np.float32)})
    _save_safetensors(tmp_path / "xl.safetensors", {"clip_l": np.zeros((1, C), np.float32),
                                                     "clip_g": np.zeros((1, 32), np.float32)})
    _save_safetensors(tmp_path / "empty.safetensors", {})
    _save_safetensors(tmp_path / "nan.safetensors", {"emb_params": np.full((1, C), np.nan, np.float32)})
    (tmp_path / "notes.txt").write_text("not an embedding")
    for name, match in [("wide", "wide"), ("xl", "SDXL"), ("empty", "no tensors"), ("nan", "non-finite")]:
        with pytest.raises(sdcpp.errors.EmbeddingError, match=match) as e:
            model.load_embeddings([tmp_path / f"{name}.safetensors"])
        assert f"{name}.safetensors" in str(e.value)
    with pytest.raises(sdcpp.errors.EmbeddingError, match="no such"):
        model.load_embeddings([tmp_path / "missing.pt"])
    assert model.conditioner.embeddings is None      # nothing half-loaded


def test_embedding_group_is_never_split_between_chunks():
    from sdcpp.tokenizer import PAD_EOS, encode_prompt_chunks, get_tokenizer

    tok = get_tokenizer()
    word = tuple(tok.encode("shinystyle"))
    extra = tuple(range(49408, 49408 + 5))
    prompt = ", ".join(["cat"] * 36) + ", shinystyle"          # 72 tokens, then the 5-vector word
    chunks = encode_prompt_chunks(prompt, PAD_EOS, embeddings={word: extra})
    assert chunks.ids.shape[0] == 2
    assert list(chunks.ids[1, 1:6]) == list(extra)           # moved whole to the second chunk
    assert not np.isin(np.array(extra), chunks.ids[0]).any()
    weighted = encode_prompt_chunks("(shinystyle:1.3)", PAD_EOS, embeddings={word: extra})
    assert np.allclose(weighted.weights[0, 1:6], 1.3)
