"""CLIP text encoders on ggml vs transformers (PyTorch, CPU, float32).

Random-weight reference models (every parameter, norms and biases included, carries noise):
  L: CLIPTextModel, quick_gelu (CLIP ViT-L/14 style: SD1, SDXL encoder 1)
  H: CLIPTextModel, gelu (OpenCLIP ViT-H/14 style: SD2)
  G: CLIPTextModelWithProjection, gelu, projection (OpenCLIP bigG style: SDXL encoder 2)
Each is compared on last_hidden_state, hidden_states[-2] (SDXL), final_layer_norm(hidden_states[-2])
(SD1 clip_skip 2, as diffusers does it) and the pooled output (pooler_output / text_embeds), for
batch 1 and 2, ids padded with EOS 49407 or with 0. transformers' configs here carry
eos_token_id=49407, so it pools at the first EOS; we pass that index explicitly (and once let
TextEncoder compute its default).
"""
from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fixtures.random_init import randomize_strongly_  # noqa: E402
from sdcpp import errors as sdcpp_errors  # noqa: E402
from sdcpp.engine import text as text_mod  # noqa: E402
from sdcpp.engine.text import TextEncoder, config_from_transformers  # noqa: E402
from sdcpp.engine.weights import build_store, native, open_device  # noqa: E402
from fixtures.devices import TEST_DEVICE, tol as device_tol  # noqa: E402

pytestmark = pytest.mark.device  # part of the device suite (SDCPP_TEST_DEVICE, tools/ci_vulkan.sh)

BOS, EOS = 49406, 49407
VOCAB = 49408
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4)
F32_TOL = device_tol(1e-4)
F16_TOL = 5e-3


def rel_err(ours, ref) -> float:
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def make_model(kind: str, seed: int = 0, **sizes):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    dims = dict(SMALL)
    dims.update(sizes)
    act = "quick_gelu" if kind == "L" else "gelu"
    cfg = CLIPTextConfig(vocab_size=VOCAB, max_position_embeddings=77, hidden_act=act, layer_norm_eps=1e-5,
                         projection_dim=48, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=1, **dims)
    model = (CLIPTextModelWithProjection if kind == "G" else CLIPTextModel)(cfg)
    randomize_strongly_(model, torch.Generator().manual_seed(seed))
    return model.eval()


def canonical(model, prefix: str) -> dict:
    """Canonical names (docs/internals.md §3): transformers 5's CLIPTextModel has no `text_model`
    submodule (its state dict and save_pretrained files say `embeddings.…`), while checkpoints on
    disk and CLIPTextModelWithProjection say `text_model.embeddings.…`: normalise to the latter."""
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("position_ids"):
            continue
        if not k.startswith(("text_model.", "text_projection.")):
            k = "text_model." + k
        out[prefix + k] = v.detach().numpy()
    return out


def text_transformer(model):
    return getattr(model, "text_model", model)


def make_ids(batch: int, pad: int, seed: int, length: int = 77) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = np.full((batch, length), pad, dtype=np.int64)
    for b in range(batch):
        n = int(rng.integers(3, 40))
        ids[b, 0] = BOS
        ids[b, 1:n + 1] = rng.integers(1, BOS, size=n)
        ids[b, n + 1] = EOS
    return ids


def first_eos(ids: np.ndarray) -> np.ndarray:
    return np.argmax(ids == EOS, axis=1).astype(np.int32)


@pytest.fixture(scope="module")
def device():
    return open_device(TEST_DEVICE)


_models: dict = {}


def small(kind: str, device, weight_type: str = "f32"):
    """(reference model, TextEncoder) for one kind, built once per weight type."""
    key = (kind, weight_type)
    if key not in _models:
        if (kind, "model") not in _models:
            _models[(kind, "model")] = make_model(kind, seed={"L": 1, "H": 2, "G": 3}[kind])
        model = _models[(kind, "model")]
        prefix = "text_encoder_2." if kind == "G" else "text_encoder."
        store = build_store(device, canonical(model, prefix), weight_type)
        cfg = config_from_transformers(model.config.to_dict(), with_projection=(kind == "G"))
        _models[key] = (model, TextEncoder(store, prefix, cfg))
    return _models[(kind, "model")], _models[key][1]


def reference(model, ids: np.ndarray):
    with torch.no_grad():
        out = model(torch.from_numpy(ids), output_hidden_states=True)
        penult = out.hidden_states[-2]
        penult_ln = text_transformer(model).final_layer_norm(penult)
    pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
    return {
        "last": out.last_hidden_state.numpy(),
        "penult": penult.numpy(),
        "penult_ln": penult_ln.numpy(),
        "pooled": pooled.numpy(),
    }


def compare_all(model, enc: TextEncoder, ids: np.ndarray, tol: float, label: str):
    n = model.config.num_hidden_layers
    ref = reference(model, ids)
    pidx = first_eos(ids)
    h_last, p1 = enc.encode(ids, pooled_index=pidx)
    h_pen, p2 = enc.encode(ids, layers=n - 1, final_norm=False, pooled_index=pidx)
    h_pen_ln, p3 = enc.encode(ids, layers=n - 1, final_norm=True, pooled_index=pidx)
    errs = {
        "last_hidden": rel_err(h_last, ref["last"]),
        "hidden[-2]": rel_err(h_pen, ref["penult"]),
        "final_ln(hidden[-2])": rel_err(h_pen_ln, ref["penult_ln"]),
        # pooled always comes from the last layer, whatever `layers` is
        "pooled": max(rel_err(p, ref["pooled"]) for p in (p1, p2, p3)),
    }
    print(f"\n[{label}] " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    for k, v in errs.items():
        assert v <= tol, f"{label}: {k} rel err {v:.3e} > {tol}"
    return ref


@pytest.mark.parametrize("kind", ["L", "H", "G"])
@pytest.mark.parametrize("pad", [EOS, 0])
@pytest.mark.parametrize("batch", [1, 2])
def test_parity_f32(device, kind, pad, batch):
    model, enc = small(kind, device)
    ids = make_ids(batch, pad, seed=10 * batch + pad % 7)
    compare_all(model, enc, ids, F32_TOL, f"{kind} f32 batch={batch} pad={pad}")


@pytest.mark.parametrize("level", native().cpu_levels())
@pytest.mark.parametrize("kind", ["L", "G"])
def test_parity_at_each_cpu_level(device, kind, level):
    """The fused CPU ops of the text graph (LayerNorm, quick GELU / GELU) at every CPU level
    this machine has, against transformers in float32."""
    core = native()
    cap = core.cpu_kernels()["cap"]
    try:
        core.set_cpu_level(level)
        model, enc = small(kind, device)
        compare_all(model, enc, make_ids(2, EOS, seed=3), F32_TOL, f"{kind} f32 at {level}")
    finally:
        core.set_cpu_level(cap)


@pytest.mark.parametrize("kind", ["L", "G"])
def test_extra_embeddings_match_a_resized_vocabulary(device, kind):
    """Textual-inversion input vectors (ids >= vocab_size) against transformers with the token
    embedding table grown by those rows, as diffusers' load_textual_inversion does."""
    model, enc = small(kind, device)
    C = model.config.hidden_size
    rng = np.random.default_rng(11)
    extra = (rng.standard_normal((3, C)) * 0.5).astype(np.float32)
    ids = make_ids(2, EOS, seed=4)
    ids[0, 2:5] = [VOCAB, VOCAB + 1, VOCAB + 2]   # a 3-vector embedding
    ids[1, 3] = VOCAB + 1
    import copy
    big = copy.deepcopy(model)
    big.resize_token_embeddings(VOCAB + 3)
    with torch.no_grad():
        text_transformer(big).embeddings.token_embedding.weight[VOCAB:] = torch.from_numpy(extra)
        ref = big(torch.from_numpy(ids), output_hidden_states=True)
    pooled_ref = (ref.text_embeds if hasattr(ref, "text_embeds") else ref.pooler_output).numpy()
    hidden, pooled = enc.encode(ids, pooled_index=first_eos(ids), extra=extra)
    assert rel_err(hidden, ref.last_hidden_state.numpy()) <= F32_TOL
    assert rel_err(pooled, pooled_ref) <= F32_TOL
    plain, _ = enc.encode(ids.clip(0, VOCAB - 1), pooled=False)
    assert rel_err(plain, ref.last_hidden_state.numpy()) > 1e-2   # the vectors matter
    with pytest.raises(sdcpp_errors.InvalidArgumentError, match="outside"):
        enc.encode(ids, extra=extra[:1])
    with pytest.raises(sdcpp_errors.InvalidArgumentError, match="shape"):
        enc.encode(ids, extra=extra[:, :5])


@pytest.mark.parametrize("kind", ["L", "H", "G"])
def test_parity_f16_weights(device, kind):
    model, enc = small(kind, device, "f16")
    ids = make_ids(2, 0 if kind == "G" else EOS, seed=5)
    compare_all(model, enc, ids, F16_TOL, f"{kind} f16 weights batch=2")


def test_bf16_weights(device):
    """No spec tolerance for bf16; rounding the weights to 8 mantissa bits alone gives ~4e-3."""
    model, enc = small("G", device, "bf16")
    compare_all(model, enc, make_ids(2, 0, seed=6), 1e-2, "G bf16 weights batch=2")


@pytest.mark.parametrize("kind", ["L", "G"])
def test_default_pooled_index_and_no_pooled(device, kind):
    model, enc = small(kind, device)
    ids = make_ids(2, 0 if kind == "G" else EOS, seed=7)
    ref = reference(model, ids)
    n = model.config.num_hidden_layers
    _, pooled = enc.encode(ids)  # default pooled index: first EOS
    h, none = enc.encode(ids, layers=n - 1, final_norm=False, pooled=False)  # graph without the last layer
    assert none is None
    e_pool, e_h = rel_err(pooled, ref["pooled"]), rel_err(h, ref["penult"])
    print(f"\n[{kind} default pooled index] pooled {e_pool:.2e}; [no pooled] hidden[-2] {e_h:.2e}")
    assert e_pool <= F32_TOL and e_h <= F32_TOL
    # a pooled index elsewhere than the EOS gives the final-LN state of the last layer there
    with torch.no_grad():
        last_ln = text_transformer(model)(torch.from_numpy(ids)).last_hidden_state.numpy()
    pidx = np.array([3, 5], dtype=np.int32)
    _, p = enc.encode(ids, pooled_index=pidx)
    want = last_ln[np.arange(2), pidx]
    if kind == "G":
        want = want @ model.text_projection.weight.detach().numpy().T
    assert rel_err(p, want) <= F32_TOL


def test_alternating_cached_graphs(device):
    """Several cached graphs (different batch sizes and options) run in turn: each must be placed
    afresh in the scheduler's buffers, which a larger graph may have reallocated in between
    (this corrupted the heap before GraphRunner::run cleared stale tensor data)."""
    model, enc = small("H", device)
    n = model.config.num_hidden_layers
    ids1, ids2 = make_ids(1, 0, seed=21), make_ids(2, 0, seed=22)
    ref1, ref2 = reference(model, ids1), reference(model, ids2)
    worst = 0.0
    for _ in range(3):
        for ids, ref in ((ids1, ref1), (ids2, ref2)):
            h, p = enc.encode(ids, pooled_index=first_eos(ids))
            h2, _ = enc.encode(ids, layers=n - 1, final_norm=False, pooled_index=first_eos(ids))
            h3, _ = enc.encode(ids, layers=n - 1, final_norm=True, pooled=False)
            worst = max(worst, rel_err(h, ref["last"]), rel_err(p, ref["pooled"]), rel_err(h2, ref["penult"]),
                        rel_err(h3, ref["penult_ln"]))
        reference(model, ids2)  # heap traffic between rounds
    print(f"\n[H alternating 6 graphs x3] worst rel err {worst:.2e}")
    assert worst <= F32_TOL


def test_shorter_sequence(device):
    model, enc = small("L", device)
    ids = make_ids(2, EOS, seed=3, length=77)[:, :45]
    compare_all(model, enc, ids, F32_TOL, "L f32 batch=2 length=45")


@pytest.mark.skipif(TEST_DEVICE.startswith("vulkan"), reason=(
    "the f32 token table (49408x768, 145 MiB) is past lavapipe's 128 MiB storage-buffer range: ggml-vulkan "
    "cannot run its GET_ROWS and ggml's scheduler aborts (docs/build.md, 'Vulkan')"))
def test_real_size_clip_l(device):
    model = make_model("L", seed=11, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12)
    store = build_store(device, canonical(model, "text_encoder."), "f32")
    enc = TextEncoder(store, "text_encoder.", config_from_transformers(model.config.to_dict(), False))
    ids = make_ids(1, EOS, seed=99)
    t0 = time.perf_counter()
    enc.encode(ids, pooled_index=first_eos(ids))  # first call builds the graph
    t1 = time.perf_counter()
    hidden, pooled = enc.encode(ids, pooled_index=first_eos(ids))
    t2 = time.perf_counter()
    with torch.no_grad():
        out = model(torch.from_numpy(ids))
    t3 = time.perf_counter()
    e_h = rel_err(hidden, out.last_hidden_state.numpy())
    e_p = rel_err(pooled, out.pooler_output.numpy())
    print(f"\n[CLIP-L real size f32, batch 1] last_hidden {e_h:.2e}, pooled {e_p:.2e}; encode first call "
          f"{t1 - t0:.3f}s, cached {t2 - t1:.3f}s (threads={device.threads}); torch forward {t3 - t2:.3f}s")
    assert e_h <= F32_TOL and e_p <= F32_TOL


# ---------------------------------------------------------------- errors


def test_bad_inputs(device):
    model, enc = small("L", device)
    ids = make_ids(1, EOS, seed=1)
    bad_calls = [
        lambda: enc.encode(np.where(ids == EOS, VOCAB, ids)),          # id == vocab
        lambda: enc.encode(np.where(ids == BOS, -1, ids)),              # negative id
        lambda: enc.encode(ids.astype(np.float32)),                     # float ids
        lambda: enc.encode(ids[0]),                                     # 1-D
        lambda: enc.encode(ids[None]),                                  # 3-D
        lambda: enc.encode(np.zeros((1, 78), np.int32)),                # longer than max_positions
        lambda: enc.encode(np.zeros((0, 77), np.int32)),                # empty batch
        lambda: enc.encode(ids, layers=0),
        lambda: enc.encode(ids, layers=5),
        lambda: enc.encode(ids, pooled_index=np.array([77])),
        lambda: enc.encode(ids, pooled_index=np.array([1, 2])),
        lambda: enc.encode(ids, pooled_index=np.array([1.0])),
    ]
    for i, call in enumerate(bad_calls):
        with pytest.raises(ValueError):
            call()
            pytest.fail(f"bad call {i} did not raise")


def test_native_checks_without_python_layer(device):
    """The C++ side validates on its own (ggml's get_rows would read out of bounds)."""
    model, enc = small("L", device)
    nat = enc._native
    ids = make_ids(1, EOS, seed=2).astype(np.int32)
    for bad_ids in (np.where(ids == EOS, VOCAB, ids).astype(np.int32), np.where(ids == BOS, -5, ids).astype(np.int32)):
        with pytest.raises(ValueError, match="outside"):
            nat.encode(bad_ids, 4, True, None)
    with pytest.raises(ValueError, match="int32"):
        nat.encode(ids.astype(np.int64), 4, True, None)
    with pytest.raises(ValueError):
        nat.encode(ids, 4, True, np.array([77], np.int32))
    with pytest.raises(ValueError):
        nat.encode(ids, 0, True, None)
    with pytest.raises(ValueError):
        nat.encode(np.zeros((1, 78), np.int32), 4, True, None)
    # still usable afterwards
    h, p = nat.encode(ids, 4, True, first_eos(ids))
    assert np.isfinite(h).all() and np.isfinite(p).all()


def test_bad_weights_and_config(device):
    model = _models.get(("L", "model")) or make_model("L", seed=1)
    tensors = canonical(model, "text_encoder.")
    cfg = config_from_transformers(model.config.to_dict(), False)

    missing = dict(tensors)
    del missing["text_encoder.text_model.encoder.layers.3.mlp.fc2.bias"]
    with pytest.raises(ValueError, match="layers.3.mlp.fc2.bias"):
        TextEncoder(build_store(device, missing), "text_encoder.", cfg)

    store = build_store(device, tensors)
    with pytest.raises(ValueError, match="missing weight"):
        TextEncoder(store, "text_encoder_2.", cfg)                       # wrong prefix
    with pytest.raises(ValueError, match="shape"):
        TextEncoder(store, "text_encoder.", dict(cfg, intermediate_size=256))
    with pytest.raises(ValueError, match="text_projection"):
        TextEncoder(store, "text_encoder.", dict(cfg, projection_dim=48))
    with pytest.raises(ValueError):
        TextEncoder(store, "text_encoder.", dict(cfg, num_heads=5))
    with pytest.raises(ValueError):
        TextEncoder(store, "text_encoder.", dict(cfg, act="relu"))
    with pytest.raises(ValueError):
        TextEncoder(store, "text_encoder.", {k: v for k, v in cfg.items() if k != "vocab_size"})
    with pytest.raises(ValueError):
        native().ClipTextEncoder(store, "text_encoder.", {k: v for k, v in cfg.items() if k != "num_layers"})
    with pytest.raises(ValueError, match="f32"):  # norms/biases must be f32 (ggml's element-wise ops)
        TextEncoder(build_store(device, tensors, type_of=lambda n, shape, wt: "f16"), "text_encoder.", cfg)
    # and the good config works on the same store
    TextEncoder(store, "text_encoder.", cfg)


def test_config_normalization():
    cfg = text_mod.normalize_config({"hidden_size": 64, "intermediate_size": 128, "num_heads": 4, "num_layers": 4,
                                     "vocab_size": VOCAB, "max_positions": 77, "act": "gelu"})
    assert cfg["projection_dim"] == 0 and cfg["eos_token_id"] == EOS and cfg["eps"] == 1e-5
