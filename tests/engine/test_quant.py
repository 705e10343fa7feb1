"""Quantized weights (q8_0, q5_0, q4_0) against diffusers / transformers float32.

The U-Net (SD1 and SDXL-family topologies at small widths, tests/engine/unet_models.py) and the
CLIP text encoders, with every linear and convolution weight quantized by the native store, are
compared with the float32 PyTorch models (relative L2). The random-weight fixtures amplify any
rounding (f16 weights alone give ~1e-3 on one U-Net call), so the bounds are the measured errors
plus a margin; what makes them tests of the quantized path:
  * a broken layout (wrong block order, a conv kernel misread as rows) gives errors of order 1;
  * the errors must grow with fewer bits: 0 < f16 < q8_0 < q5_0 < q4_0;
  * against the same PyTorch model holding the *dequantized* weights, what is left is the q8
    rounding of the activations (ggml's integer dot products): much less than the weight error
    of q4_0.
Then: the storage rules (what stays f32 / f16), a GGUF file holding Q8_0 / Q4_0 tensors (written
by the `gguf` package) loading block for block and generating like the f32 weights it came from,
the end-to-end final latents with q8_0 against diffusers, and typed errors.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import unet_models as um  # noqa: E402
from test_clip import canonical, first_eos, make_ids, make_model  # noqa: E402

import sdcpp  # noqa: E402
from sdcpp import errors  # noqa: E402
from sdcpp.engine import weights  # noqa: E402
from sdcpp.engine.text import TextEncoder, config_from_transformers  # noqa: E402
from sdcpp.engine.unet import UNet  # noqa: E402

torch.set_num_threads(1)

QUANT = ("q8_0", "q5_0", "q4_0")
H, W, L = 16, 24, 7

# One U-Net call (B=2 CFG-style, t=500), relative L2 vs diffusers fp32. Measured on the small
# random-weight topologies (sd1 / sdxl / bk_tiny), with the KEEP_F16 roles f16: q8_0
# 1.6e-2..2.1e-2, q5_0 0.089..0.12, q4_0 0.16..0.25 (every role quantized: q8_0 2.3e-2..3.4e-2,
# q5_0 0.15..0.19, q4_0 0.24..0.36); bounds = about 1.5x the largest.
UNET_TOL = {"q8_0": 3.5e-2, "q5_0": 0.18, "q4_0": 0.38}
# CLIP (4 layers, hidden 64), last hidden state and pooled output vs transformers fp32.
# Measured (L and G), self-attention f16 (KEEP_F16): q8_0 1.1e-2..1.3e-2, q5_0 6.0e-2..6.8e-2,
# q4_0 0.11..0.12 (every role quantized: 1.6e-2..1.7e-2, ~9.9e-2, 0.17..0.19).
CLIP_TOL = {"q8_0": 2e-2, "q5_0": 0.1, "q4_0": 0.18}
# End to end (4 Euler steps, CFG 7, 64x64 image), final latents with q8_0 vs diffusers fp32.
# Measured with the KEEP_F16 roles: sd1 7.8e-2, sdxl 4.9e-2 (all roles quantized: 0.118 / 0.075;
# f16: 2.7e-3 / 2.3e-3). The issue's 3e-2 is asserted at real widths below
# (test_q8_0_final_latents_real_widths_within_issue_bound): these fixtures (small widths, every
# parameter + N(0, 0.05^2)) amplify rounding ~2-3x more than a real-size U-Net (f16 2.3e-3..2.7e-3
# here vs 1.3e-3 there) and CFG 7 multiplies it ~5x (CFG 1: q8_0 1.5e-2..1.9e-2), so here the
# bound is the measured error + margin.
E2E_Q8_TOL = 0.1
# The issue's bounds on final latents (issue 8).
ISSUE_F16, ISSUE_Q8 = 5e-3, 3e-2


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def device():
    return weights.open_device("cpu", 1)


# ------------------------------------------------------------------------------------ U-Net
@functools.lru_cache(maxsize=None)
def _unet_model(name: str):
    dc = um.diffusers_config(name)
    model = um.build_diffusers_unet(dc, seed=sum(map(ord, name)))
    return model, um.canonical_tensors(model), um.native_config(dc)


def _unet_inputs(nc, seed=2):
    rng = np.random.default_rng(seed)
    B = 2
    x = np.repeat(rng.standard_normal((1, nc["in_channels"], H, W)).astype(np.float32), B, axis=0)
    ctx = rng.standard_normal((B, L, nc["cross_attention_dim"])).astype(np.float32)
    kw = {}
    if nc["addition_embed"]:
        pooled = nc["addition_embed"]["in_dim"] - 6 * nc["addition_embed"]["time_embed_dim"]
        kw["text_embeds"] = rng.standard_normal((B, pooled)).astype(np.float32)
        kw["time_ids"] = np.tile(np.array([[128, 192, 0, 0, 128, 192]], np.float32), (B, 1))
    return x, ctx, kw


def _unet_reference(model, x, ctx, kw, state=None):
    if state is not None:
        model = __import__("copy").deepcopy(model)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    extra = {"added_cond_kwargs": {k: torch.from_numpy(v) for k, v in kw.items()}} if kw else {}
    with torch.no_grad():
        return model(torch.from_numpy(x), torch.full((x.shape[0],), 500.0), torch.from_numpy(ctx), **extra).sample.numpy()


@functools.lru_cache(maxsize=None)
def _unet_errors(name: str):
    """weight type -> (rel L2 vs fp32, rel L2 vs the model with the stored (dequantized) weights, store)."""
    model, tensors, nc = _unet_model(name)
    x, ctx, kw = _unet_inputs(nc)
    ref = _unet_reference(model, x, ctx, kw)
    dev = weights.open_device("cpu", 1)
    out = {}
    for wt in ("f16",) + QUANT:
        store = weights.build_store(dev, tensors, wt)           # q4_0: repacked where ggml can
        ours = UNet(store, nc)(x, 500.0, ctx, **kw)
        readable = weights.build_store(dev, tensors, wt, repack=False)   # the same blocks, readable
        deq = {k[len("unet."):]: readable.get(k).reshape(v.shape) for k, v in tensors.items()}
        out[wt] = (rel(ours, ref), rel(ours, _unet_reference(model, x, ctx, kw, deq)), store)
        print(f"{name} {wt}: vs fp32 {out[wt][0]:.3e}, vs dequantized weights {out[wt][1]:.3e}")
    return out


@pytest.mark.parametrize("name", ["sd1", "sdxl", "bk_tiny"])
@pytest.mark.parametrize("wt", QUANT)
def test_unet_quantized_vs_diffusers(name, wt):
    err, err_deq, _ = _unet_errors(name)[wt]
    assert err <= UNET_TOL[wt], (name, wt, err)
    # what is left against the dequantized weights is the q8 rounding of the activations
    assert err_deq <= UNET_TOL["q8_0"], (name, wt, err_deq)


@pytest.mark.parametrize("name", ["sd1", "sdxl", "bk_tiny"])
def test_unet_error_grows_with_fewer_bits(name):
    e = {wt: v[0] for wt, v in _unet_errors(name).items()}
    assert 0 < e["f16"] < e["q8_0"] < e["q5_0"] < e["q4_0"], e
    # q4_0's error is its weights': the activations' q8 rounding is a small part of it
    assert _unet_errors(name)["q4_0"][1] < 0.25 * e["q4_0"]


def test_auto_attention_is_int8_for_quantized_weights(device):
    """The default attention ("auto") on the CPU: the int8 kernel for q8_0 / q5_0 / q4_0 weights
    (its error is small next to theirs: bench/README.md "Int8 attention by default"), the exact
    flash kernel for float weights; an explicit choice is kept."""
    _, tensors, nc = _unet_model("sd1")
    for wt in ("f32", "f16", "bf16") + QUANT:
        unet = UNet(weights.build_store(device, tensors, wt), nc)
        assert unet.attention == "auto"
        assert unet.resolved_attention == ("int8" if wt in QUANT else "flash"), wt
        for forced in ("flash", "mul_mat", "int8"):
            unet.attention = forced
            assert unet.resolved_attention == forced, (wt, forced)


@pytest.mark.parametrize("name", ["sd1", "bk_tiny"])
def test_unet_q8_0_default_attention_vs_diffusers(device, name):
    """q8_0 with the default attention at a 32x32 latent, where the first level's 1024-token
    self-attention takes the int8 kernel: one call within q8_0's bound of diffusers fp32, and not
    much further from it than the exact kernel ("flash"). Measured: sd1 2.07e-2 vs 2.03e-2, bk_tiny
    2.11e-2 vs 2.12e-2. (auto and flash are ~1.7e-2 apart: the int8 kernel's small change redraws
    the activations' q8 rounding downstream, a different sample of an error of the same size.)"""
    model, tensors, nc = _unet_model(name)
    rng = np.random.default_rng(8)
    _, ctx, kw = _unet_inputs(nc)
    x = np.repeat(rng.standard_normal((1, nc["in_channels"], 32, 32)).astype(np.float32), 2, axis=0)
    ref = _unet_reference(model, x, ctx, kw)
    unet = UNet(weights.build_store(device, tensors, "q8_0"), nc)
    auto = unet(x, 500.0, ctx, **kw)
    unet.attention = "flash"
    exact = unet(x, 500.0, ctx, **kw)
    err, err_exact, diff = rel(auto, ref), rel(exact, ref), rel(auto, exact)
    print(f"{name} q8_0 32x32: auto (int8) {err:.3e}, flash {err_exact:.3e}, auto vs flash {diff:.3e}")
    assert err <= UNET_TOL["q8_0"], (err, err_exact)
    assert diff > 0                                   # the int8 kernel ran
    assert err <= 1.15 * err_exact, (err, err_exact)  # and costs little next to the weights' error


def test_storage_rules(device):
    _, tensors, nc = _unet_model("sd1")
    for wt in QUANT:
        types = weights.build_store(device, tensors, wt).types()
        assert types["unet.down_blocks.0.resnets.0.conv1.weight"] == wt            # 3x3 conv, K = 32*9
        assert types["unet.up_blocks.0.upsamplers.0.conv.weight"] == wt            # 3x3 conv
        assert types["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"] == wt
        # the KEEP_F16 roles (1x1 conv, stride-2 conv), and only with the table in force
        for name in ("unet.down_blocks.0.attentions.0.proj_in.weight", "unet.down_blocks.0.downsamplers.0.conv.weight",
                     "unet.up_blocks.1.resnets.0.conv_shortcut.weight"):
            assert weights.f16_role(name, wt) is not None and types[name] == "f16", name
            assert weights.storage_type(name, tensors[name].shape, wt, keep_f16=False) == wt
        # resnet conv2: f16 for q8_0 (fidelity), quantized for q5_0 / q4_0 (size)
        assert types["unet.down_blocks.0.resnets.0.conv2.weight"] == ("f16" if wt == "q8_0" else wt)
        assert types["unet.conv_in.weight"] == "f16"          # K = 4*9 = 36: not whole 32-blocks
        assert types["unet.conv_out.weight"] == "f16"         # 4 output rows (MIN_QUANT_ROWS)
        assert types["unet.time_embedding.linear_1.weight"] == "f32"
        assert types["unet.down_blocks.0.resnets.0.norm1.weight"] == "f32"
        assert types["unet.down_blocks.0.resnets.0.conv1.bias"] == "f32"
    # q4_0 on a CPU with ggml's repacked kernels (AVX2, NEON dot product): the matrices live in
    # the CPU_REPACK buffer and cannot be read back (a typed error, not a crash)
    q4 = weights.build_store(device, tensors, "q4_0")
    name = "unet.down_blocks.0.resnets.0.conv1.weight"
    if q4.repacked(name):
        with pytest.raises(ValueError, match="repacked"):
            q4.get(name)
    assert not weights.build_store(device, tensors, "q4_0", repack=False).repacked(name)
    store = weights.build_store(device, tensors, "q8_0")
    assert tuple(store.shape(name)) == tensors[name].shape     # the declared OIHW shape is kept
    # read back: q8_0 of the f32 values in their OIHW order, blocks of 32 consecutive values:
    # at most half a step (amax / 127) off, plus the scale's f16 rounding (127 steps * 2^-11)
    got, want = store.get(name), tensors[name]
    blocks = want.reshape(-1, 32)
    step = np.abs(blocks).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(got.reshape(-1, 32) - blocks) <= (0.5 + 127 / 2048) * step + 1e-7)


# ------------------------------------------------------------------------------------- CLIP
@functools.lru_cache(maxsize=None)
def _clip_model(kind: str):
    return make_model(kind, seed={"L": 1, "G": 3}[kind])


@pytest.mark.parametrize("kind", ["L", "G"])
def test_clip_quantized_vs_transformers(device, kind):
    model = _clip_model(kind)
    prefix = "text_encoder_2." if kind == "G" else "text_encoder."
    cfg = config_from_transformers(model.config.to_dict(), with_projection=(kind == "G"))
    ids = make_ids(2, 49407, seed=5)
    with torch.no_grad():
        out = model(torch.from_numpy(ids))
    ref_h = out.last_hidden_state.numpy()
    ref_p = (out.text_embeds if kind == "G" else out.pooler_output).numpy()
    errs = {}
    for wt in ("f16",) + QUANT:
        store = weights.build_store(device, canonical(model, prefix), wt)
        types = store.types()
        assert types[prefix + "text_model.encoder.layers.0.mlp.fc1.weight"] == ("f16" if wt == "f16" else wt)
        assert types[prefix + "text_model.embeddings.token_embedding.weight"] == "f32"
        h, p = TextEncoder(store, prefix, cfg).encode(ids, pooled_index=first_eos(ids))
        errs[wt] = max(rel(h, ref_h), rel(p, ref_p))
        print(f"CLIP-{kind} {wt}: {errs[wt]:.3e}")
    for wt in QUANT:
        assert errs[wt] <= CLIP_TOL[wt], (kind, wt, errs[wt])
    assert 0 < errs["f16"] < errs["q8_0"] < errs["q4_0"], errs


# ------------------------------------------------------------------------------------- GGUF
def _write_gguf(path, state: dict, qtype) -> dict:
    """The state dict as GGUF: 2-D matrices whose rows are whole blocks as `qtype`, the rest F32
    (as stable-diffusion.cpp writes them: conv kernels' ne0 = KW cannot be quantized)."""
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), arch="sdcpp-test")
    quantized = {}
    for name, t in state.items():
        arr = t.detach().float().numpy() if hasattr(t, "detach") else np.asarray(t, np.float32)
        if arr.ndim == 2 and arr.shape[1] % 32 == 0:
            data = gguf.quants.quantize(arr, qtype)
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
            quantized[name] = gguf.quants.dequantize(data, qtype)
        else:
            w.add_tensor(name, np.ascontiguousarray(arr))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return quantized


@pytest.mark.parametrize("qname", ["Q8_0", "Q4_0"])
def test_gguf_quantized_tensors_load_as_they_are(device, tmp_path, qname):
    gguf = pytest.importorskip("gguf")
    qtype = getattr(gguf.GGMLQuantizationType, qname)
    model, tensors, nc = _unet_model("sd1")
    path = tmp_path / "unet.gguf"
    deq = _write_gguf(path, {k: v for k, v in tensors.items()}, qtype)
    recs = sdcpp.io.read_tensors(path)
    assert recs["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"].dtype == qname
    # weight_type f16: the Q tensors whose role takes the type keep their type and blocks; the
    # time embedding (f32 by rule) is dequantized; the others follow weight_type
    store = weights.build_store(device, recs, "f16", repack=False)   # readable (q4_0 is repacked by default)
    types = store.types()
    q = qname.lower()
    kept = [n for n in deq if weights.storage_type(n, tensors[n].shape, q, keep_f16=False) == q]
    assert len(kept) > 20 and "unet.time_embedding.linear_1.weight" not in kept
    for name, values in deq.items():
        assert types[name] == (q if name in kept else "f32"), name
        np.testing.assert_array_equal(store.get(name), values.reshape(tensors[name].shape))
    assert types["unet.down_blocks.0.resnets.0.conv1.weight"] == "f16"
    # and they compute like the fp32 model holding the same dequantized values
    x, ctx, kw = _unet_inputs(nc, seed=4)
    state = {k[len("unet."):]: (deq[k].reshape(v.shape) if k in deq else v) for k, v in tensors.items()}
    ref = _unet_reference(model, x, ctx, kw, state)
    for st in (store, weights.build_store(device, recs, "f16")):    # readable, and as loaded (repacked)
        err = rel(UNet(st, nc)(x, 500.0, ctx, **kw), ref)
        print(f"GGUF {qname}: vs the dequantized fp32 model {err:.3e}")
        assert err <= UNET_TOL["q8_0"], err


def test_gguf_round_trip_through_load(model_fixtures, tmp_path):
    """A single-file GGUF (LDM names) with Q8_0 matrices, token embedding included (dequantized:
    embeddings stay f32), loaded by sdcpp.load and generating like the f32 file it came from."""
    gguf = pytest.importorskip("gguf")
    from fixtures.e2e import NEGATIVE, PROMPT, SIZE, unit_latents

    fx = model_fixtures.get("sd1")
    path = tmp_path / "sd1-q8.gguf"
    deq = _write_gguf(path, fx.ldm_state_dict(junk=False), gguf.GGMLQuantizationType.Q8_0)
    assert any("token_embedding" in k for k in deq)
    q = sdcpp.load(str(path), device="cpu", threads=1)            # default weight_type: f16
    types = q.weight_types()
    assert "q8_0" in set(types["unet"].values()) and "q8_0" in set(types["text_encoder"].values())
    assert types["text_encoder"]["text_encoder.text_model.embeddings.token_embedding.weight"] == "f32"
    # a KEEP_F16 role (CLIP self-attention) keeps the file's Q8_0 blocks: the table is for
    # converting from float, and dequantizing the blocks to f16 would only round them again
    q_proj = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.weight"
    assert weights.f16_role(q_proj) and types["text_encoder"][q_proj] == "q8_0"
    ref = sdcpp.load(str(fx.path("ldm")), device="cpu", weight_type="f16", threads=1)
    latents = unit_latents(7)
    kw = dict(width=SIZE, height=SIZE, steps=2, cfg_scale=7.0, sampler="euler", latents=latents, output_type="latent")
    a = q.txt2img(PROMPT, NEGATIVE, **kw)[0]
    b = ref.txt2img(PROMPT, NEGATIVE, **kw)[0]
    err = rel(a, b)
    print(f"GGUF q8_0 file vs the f32 file stored as f16: {err:.3e}")
    assert np.isfinite(a).all() and err <= 0.1  # measured 4.9e-2 (2 steps)


# ------------------------------------------------------------------------------ end to end
def test_txt2img_q8_0_final_latents_vs_diffusers(model_fixtures):
    """Final latents (4 Euler steps, CFG 7) with q8_0 weights vs diffusers fp32. The random-weight
    fixtures compound every step's error; the single-call errors are in the tests above."""
    from fixtures.e2e import NEGATIVE, PROMPT, SIZE, run_diffusers, unit_latents

    errs = {}
    for family in ("sd1", "sdxl"):
        fx = model_fixtures.get(family)
        latents = unit_latents(7)
        ref = run_diffusers(fx, "ldm", latents=latents, height=SIZE, width=SIZE)
        for wt in ("f16", "q8_0"):
            m = sdcpp.load(str(fx.path("ldm")), device="cpu", weight_type=wt, threads=1)
            ours = m.txt2img(PROMPT, NEGATIVE, width=SIZE, height=SIZE, steps=4, cfg_scale=7.0, sampler="euler",
                             scheduler="discrete", latents=latents, output_type="latent")[0]
            errs[(family, wt)] = rel(ours, ref[0])
            print(f"e2e {family} {wt}: final latents rel L2 {errs[(family, wt)]:.3e}")
    for family in ("sd1", "sdxl"):
        assert errs[(family, "f16")] <= ISSUE_F16
        assert errs[(family, "q8_0")] <= E2E_Q8_TOL, (family, errs)
        assert errs[(family, "q8_0")] > errs[(family, "f16")]


@functools.lru_cache(maxsize=None)
def _bk_tiny_real():
    """BK-SDM-tiny's published config (321 M quantizable weights) with diffusers' default
    initialisation: (model, canonical tensors, native config)."""
    from diffusers import UNet2DConditionModel

    dc = {k: v for k, v in um.load_reference("bk-sdm-tiny.json").items() if not k.startswith("_")}
    torch.manual_seed(0)
    model = UNet2DConditionModel(**dc).eval().float()
    return model, um.canonical_tensors(model), um.native_config(dc)


def _bk_tiny_real_run(size: int):
    """4 Euler steps with CFG 7 on a size x size latent and a random cond / uncond context pair:
    (tensors, native config, eps(unet) -> final latents, diffusers fp32's final latents)."""
    from euler_loop import euler

    model, tensors, nc = _bk_tiny_real()
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((1, 4, size, size)).astype(np.float32)
    ctx = rng.standard_normal((2, 77, nc["cross_attention_dim"])).astype(np.float32)   # uncond, cond

    def torch_eps(x, t):
        with torch.no_grad():
            out = model(torch.from_numpy(x), torch.full((2,), t), torch.from_numpy(ctx)).sample.numpy()
        return out[:1], out[1:]

    def run(unet):
        def eps(x, t):
            out = unet(x, t, ctx)
            return out[:1], out[1:]
        return euler(eps, latents)

    return tensors, nc, run, euler(torch_eps, latents)


@pytest.mark.slow
def test_q8_0_final_latents_real_widths_within_issue_bound():
    """The issue's bound (final latents within 3e-2 of diffusers fp32 with q8_0, 5e-3 with f16)
    on a real-size U-Net (_bk_tiny_real) on an 8x8 latent. With every role quantized it is over
    the bound (measured 3.9e-2): the KEEP_F16 table is what brings it within (measured 2.2e-2;
    f16 1.3e-3). Nearly all of q8_0's error here is ggml's q8 rounding of the activations: the
    same q8_0-rounded weights in float products give 3.8e-3 (bench/q8_fidelity_real.py
    --configs q8_0-wonly)."""
    tensors, nc, run, ref = _bk_tiny_real_run(8)
    dev = weights.open_device("cpu", 2)
    errs = {}
    for label, wt, type_of in (("f16", "f16", weights.storage_type), ("q8_0", "q8_0", weights.storage_type),
                               ("q8_0 every role", "q8_0",
                                lambda n, shape, w: weights.storage_type(n, shape, w, keep_f16=False))):
        errs[label] = rel(run(UNet(weights.build_store(dev, tensors, wt, type_of), nc)), ref)
        print(f"bk-sdm-tiny real widths, {label}: final latents rel L2 {errs[label]:.3e}")
    assert errs["f16"] <= ISSUE_F16, errs
    assert errs["q8_0"] <= ISSUE_Q8, errs
    assert errs["q8_0 every role"] > ISSUE_Q8, errs      # the policy is what meets the bound


@pytest.mark.slow
def test_q8_0_int8_attention_final_latents_real_widths():
    """q8_0 weights with the default attention ("auto": the int8 kernel on the CPU for quantized
    weights) within the issue's 3e-2 of diffusers fp32 on the final latents: the real-size U-Net
    (_bk_tiny_real) on a 32x32 latent, whose first level's 1024-token self-attention takes the
    int8 kernel (512+ keys; the rest stays exact). Measured 2.459e-2 against 2.439e-2 with the
    exact attention ("flash"); at a 64x64 latent 2.408e-2 against 2.404e-2, and with q/k logits
    up to 16x sharper still within 3e-2 (bench/README.md "Int8 attention by default")."""
    tensors, nc, run, ref = _bk_tiny_real_run(32)
    unet = UNet(weights.build_store(weights.open_device("cpu", 2), tensors, "q8_0"), nc)
    errs = {}
    for attention in ("auto", "flash"):
        unet.attention = attention
        errs[attention] = rel(run(unet), ref)
        print(f"bk-sdm-tiny real widths 32x32, q8_0 attention {attention} ({unet.resolved_attention}): "
              f"final latents rel L2 {errs[attention]:.3e}")
    unet.attention = "auto"
    assert unet.resolved_attention == "int8"
    assert errs["auto"] <= ISSUE_Q8, errs
    assert errs["auto"] != errs["flash"]  # the int8 kernel ran


# ----------------------------------------------------------------------------------- errors
def test_bad_weight_types_are_typed_errors(device, model_fixtures):
    _, tensors, _ = _unet_model("sd1")
    with pytest.raises(errors.InvalidArgumentError, match="q4_k"):
        weights.build_store(device, tensors, "q4_k")
    with pytest.raises(errors.InvalidArgumentError, match="q8_1"):
        sdcpp.load(str(model_fixtures.get("sd1").path("ldm")), device="cpu", weight_type="q8_1")
    from sdcpp.engine.vae import VAE
    with pytest.raises(errors.InvalidArgumentError, match="VAE"):
        VAE.from_tensors(device, {"vae.x": np.zeros((32, 32), np.float32)}, {}, weight_type="q8_0")
    store = weights.native().WeightStore(device)
    with pytest.raises(ValueError, match="q4_K|q2_K|cannot be stored"):
        store.declare("w", [64, 256], "q2_k")
    store.declare("w", [64, 64], "q8_0")
    store.allocate()
    with pytest.raises(ValueError, match="bytes"):
        store.set_blocks("w", np.zeros(10, np.uint8), "q8_0")


# ------------------------------------------------------------------------------------- LoRA
def test_lora_on_quantized_weights_restores_bit_for_bit(model_fixtures, tmp_path):
    """A LoRA merged into q8_0 weights (requantized per row) changes them; set_loras([]) gives
    the loaded blocks back exactly: quantized at load from f32, and a GGUF's own Q8_0 blocks."""
    gguf = pytest.importorskip("gguf")
    pytest.importorskip("peft")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lora"))
    import lora_helpers as LH

    fx = model_fixtures.get("sd1")
    lora = LH.write_kohya(fx, LH.make_lora(fx, seed=3), tmp_path / "l.safetensors")
    path = tmp_path / "sd1-q8.gguf"
    _write_gguf(path, fx.ldm_state_dict(junk=False), gguf.GGMLQuantizationType.Q8_0)
    for model in (sdcpp.load(str(fx.path("ldm")), device="cpu", weight_type="q8_0", threads=1),
                  sdcpp.load(str(path), device="cpu", threads=1)):
        before = LH.store_snapshot(model)
        model.set_loras([(lora, 1.0)])
        during = LH.store_snapshot(model)
        changed = [n for n in before if not np.array_equal(before[n], during[n])]
        assert any(model.weight_types()["unet"].get(n) == "q8_0" for n in changed)
        model.set_loras([])
        after = LH.store_snapshot(model)
        for n in before:
            np.testing.assert_array_equal(after[n], before[n], err_msg=n)
