"""The native LoRA merge (``WeightStore.merge_low_rank``, csrc/runtime/lora_merge.cpp) against numpy.

Kernel level: every CPU level this machine has, every storage type and original dtype, shapes
that do not fill the tiles (rows, columns, 512-column chunks), two terms of different ranks; the
reference is numpy's float64 product converted by the store's own ``set``. Model level: a LoRA
set merged natively equals the same set merged by the numpy path (``SDCPP_LORA_MERGE=numpy``).
Differences allowed: float32 rounding of the sum, i.e. one step of the stored type where the
value lies on a rounding boundary.
"""
from __future__ import annotations

import numpy as np
import pytest

import sdcpp
from sdcpp.engine.weights import native, open_device

import lora_helpers as H

SHAPES = [(96, 64), (77, 100), (50, 13, 3, 3), (33, 1100), (40, 32, 1, 1), (1, 544), (24, 1088), (13, 4192)]
STEP = {"q8_0": 127.0, "q5_0": 15.0, "q4_0": 7.0}     # block absmax / STEP = one quantization step


def _store(dev, shapes, wt):
    st = native().WeightStore(dev, False)
    for n, s in shapes.items():
        st.declare(n, list(s), wt)
    st.allocate()
    return st


def assert_close(got: np.ndarray, want: np.ndarray, stype: str, what: str) -> None:
    """got within float32 rounding of want, after both went to `stype`."""
    got, want = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    f32_err = 2e-6 * max(1.0, float(np.abs(want).max()))    # float32 sums of terms of this size
    if stype == "f32":
        tol = f32_err
    elif stype in ("f16", "bf16"):
        # one unit in the last place (of the larger of the two) where the f32 sums straddle a
        # rounding boundary
        tol = (2.0 ** -10 if stype == "f16" else 2.0 ** -7) * np.maximum(np.abs(got), np.abs(want)) + f32_err
    else:
        blocks = np.abs(want).reshape(-1, 32).max(axis=1)
        tol = np.repeat(blocks / STEP[stype] * 1.01 + 1e-7, 32)
    bad = np.abs(got - want) > tol
    assert not bad.any(), f"{what}: {int(bad.sum())} values off, max |diff| {np.abs(got - want).max():.3g}"
    if stype != "f32":   # rounding boundaries only: nearly every value is equal
        assert np.mean(got != want) < 0.01, f"{what}: {np.mean(got != want):.3%} of the values differ"


def _bf16_bits(a: np.ndarray) -> np.ndarray:
    u = a.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


@pytest.mark.parametrize("level", native().cpu_levels())
@pytest.mark.parametrize("wt", ["f32", "f16", "bf16", "q8_0", "q4_0"])
def test_merge_low_rank_equals_numpy_every_level_and_type(level, wt):
    core = native()
    dev = open_device("cpu", 2)
    rng = np.random.default_rng(7)
    shapes = {f"w{i}": s for i, s in enumerate(SHAPES)}
    ours, ref = _store(dev, shapes, wt), _store(dev, shapes, wt)
    prev = core.cpu_level()
    core.set_cpu_level(level)
    try:
        for i, (name, shape) in enumerate(shapes.items()):
            out, k = shape[0], int(np.prod(shape[1:]))
            base = rng.standard_normal(shape).astype(np.float32)
            terms = [(rng.standard_normal((out, r)).astype(np.float32), rng.standard_normal((r, k)).astype(np.float32),
                      s) for r, s in ((8, 0.25), (3, -1.5))]
            # the LoRA factors as files hold them: f32, f16, bf16 bits (read exactly)
            factors = [(u, d) for u, d, _ in terms]
            if i % 2 == 1:
                terms = [(u.astype(np.float16), d.astype(np.float16), s) for u, d, s in terms]
                factors = [(u.astype(np.float32), d.astype(np.float32)) for u, d, _ in terms]
            elif i % 4 == 2:
                terms = [(_bf16_bits(u), _bf16_bits(d), s) for u, d, s in terms]
                factors = [((u.astype(np.uint32) << 16).view(np.float32), (d.astype(np.uint32) << 16).view(np.float32))
                           for u, d, _ in terms]
            # the original in each dtype the native merge reads: f32, f16, bf16 bits
            if i % 3 == 0:
                src = exact = base
            elif i % 3 == 1:
                src = base.astype(np.float16)
                exact = src.astype(np.float32)
            else:
                src = _bf16_bits(base)
                exact = (src.astype(np.uint32) << 16).view(np.float32)
            want = exact.astype(np.float64).reshape(out, k)
            for (up, down), (_, _, s) in zip(factors, terms):
                want += (up.astype(np.float64) * np.float32(s)) @ down.astype(np.float64)
            ours.merge_low_rank(name, src, terms, threads=1 + i % 2)
            ref.set(name, want.astype(np.float32).reshape(ref.shape(name)))
            assert_close(ours.get(name), ref.get(name), ref.type(name), f"{level} {wt} {shape}")
    finally:
        core.set_cpu_level(prev)


def test_merge_low_rank_refuses_what_does_not_fit():
    dev = open_device("cpu", 1)
    st = _store(dev, {"w": (8, 16)}, "f32")
    up, down = np.ones((8, 2), np.float32), np.ones((2, 16), np.float32)
    st.merge_low_rank("w", np.zeros((8, 16), np.float32), [(up, down, 1.0)])
    assert np.array_equal(st.get("w"), np.full((8, 16), 2.0, np.float32))
    with pytest.raises(ValueError, match="'w'"):
        st.merge_low_rank("w", np.zeros((8, 15), np.float32), [(up, down, 1.0)])
    with pytest.raises(ValueError, match="'w'"):
        st.merge_low_rank("w", np.zeros((8, 16), np.float32), [(up, np.ones((3, 16), np.float32), 1.0)])
    with pytest.raises(ValueError, match="'w'"):
        st.merge_low_rank("w", np.zeros((8, 16), np.int32), [(up, down, 1.0)])
    with pytest.raises(ValueError, match="missing weight 'nope'"):
        st.merge_low_rank("nope", np.zeros((8, 16), np.float32), [(up, down, 1.0)])


# --------------------------------------------------------------------------- whole models
@pytest.fixture(scope="module")
def sd1_loras(model_fixtures, tmp_path_factory):
    """A LoCon LoRA (3x3 convs, linears, text encoder) and a second one, in kohya spelling."""
    fx = model_fixtures.get("sd1")
    d = tmp_path_factory.mktemp("native")
    a = H.make_lora(fx, seed=61, unet_targets=H.LCM_TARGETS, text_targets=H.TEXT_TARGETS, rank=4, alpha=2, std=0.1)
    b = H.make_lora(fx, seed=62, unet_targets=H.ATTN_TARGETS + ["conv2"], text_targets=["q_proj"], rank=2, alpha=4)
    return (H.write_kohya(fx, a, d / "a.safetensors", te_prefix="lora_te_"),
            H.write_kohya(fx, b, d / "b.safetensors", te_prefix="lora_te_"))


@pytest.mark.parametrize("fmt,wt", [("ldm", "f32"), ("ldm-fp16", "f16"), ("ldm", "bf16"), ("ldm", "q8_0")])
def test_native_merge_equals_numpy_merge_on_a_model(model_fixtures, sd1_loras, monkeypatch, fmt, wt):
    a, b = sd1_loras
    model = sdcpp.load(str(model_fixtures.get("sd1").path(fmt)), device="cpu", weight_type=wt, threads=2)
    spec = [(a, 0.8), (b, -0.5)]
    base = H.store_snapshot(model)
    monkeypatch.setenv("SDCPP_LORA_MERGE", "numpy")
    model.set_loras(spec)
    by_numpy = H.store_snapshot(model)
    model.set_loras([])
    monkeypatch.delenv("SDCPP_LORA_MERGE")
    model.set_loras(spec)
    by_native = H.store_snapshot(model)
    mgr = model._lora_manager
    weights = [n for n, how in mgr._merges.items() if how[0] == "w"]
    assert weights and all(mgr._native(mgr._merges[n]) for n in weights), "the native merge was not used"
    assert sum(not np.array_equal(base[n], by_native[n]) for n in weights) == len(weights)
    types = {**model._c["stores"]["unet"].types(), **{k: v for s in model._c["stores"].values()
                                                      for k, v in s.types().items()}}
    for n in by_numpy:
        assert_close(by_native[n], by_numpy[n], types[n], n)
    model.set_loras([])
    assert all(np.array_equal(base[n], v) for n, v in H.store_snapshot(model).items()), "restore is not bit-exact"


@pytest.mark.parametrize("level", native().cpu_levels())
def test_store_conversions_round_like_ieee_at_every_level(level):
    """WeightStore.set's host conversions (the restore path) and the merge's: float -> bf16 bits
    equal the rounding rule written out in numpy (NaN payloads included), float -> f16 equals
    numpy's IEEE conversion, f16 / bf16 -> f32 is exact."""
    core = native()
    rng = np.random.default_rng(3)
    x = rng.standard_normal(1 << 16).astype(np.float32) * np.float32(2.0) ** rng.integers(-140, 120, 1 << 16).astype(np.float32)
    x[:6] = [np.inf, -np.inf, np.nan, 1e-45, -3e-39, 0.0]
    x[6:4102] = rng.integers(0, 2 ** 32, 4096, dtype=np.uint64).astype(np.uint32).view(np.float32)   # any bits
    u = x.view(np.uint32).astype(np.uint64)
    want_bf16 = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    want_bf16[nan] = ((u[nan] >> 16) | 64).astype(np.uint32)
    prev = core.cpu_level()
    core.set_cpu_level(level)
    try:
        st = _store(open_device("cpu", 1), {"b": (x.size,), "h": (x.size,), "f": (x.size,), "g": (x.size,)}, "f32")
        bst = _store(open_device("cpu", 1), {"b": (x.size,)}, "bf16")
        hst = _store(open_device("cpu", 1), {"h": (x.size,)}, "f16")
        bst.set("b", x)
        assert np.array_equal(bst.get("b").view(np.uint32), want_bf16 << 16)
        with np.errstate(over="ignore"):
            h = x.astype(np.float16)
        hst.set("h", x)
        assert np.array_equal(hst.get("h"), h.astype(np.float32), equal_nan=True)
        st.set("h", h)
        assert np.array_equal(st.get("h"), h.astype(np.float32), equal_nan=True)
        bits = (want_bf16 & 0xFFFF).astype(np.uint16)
        st.set("b", bits)
        assert np.array_equal(st.get("b").view(np.uint32), want_bf16 << 16)
    finally:
        core.set_cpu_level(prev)


def _q8_0_reference(x: np.ndarray) -> np.ndarray:
    """ggml's q8_0 rule written out in numpy, dequantized: per 32 values d = amax / 127 (stored
    as half), q = roundf(x * (1 / d)) (halves away from zero), value = q * d."""
    b = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(b).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        idv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    v = (b * idv[:, None]).astype(np.float32)
    q = np.trunc(v) + np.where(np.abs(v - np.trunc(v)) >= 0.5, np.sign(v), 0)
    return (q.astype(np.float32) * d.astype(np.float16).astype(np.float32)[:, None]).ravel()


@pytest.mark.parametrize("level", native().cpu_levels())
def test_q8_0_quantizer_is_ggmls_rule_at_every_level(level):
    core = native()
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(32 * 4096) * np.repeat(np.float32(2.0) ** rng.integers(-20, 20, 4096), 32)).astype(np.float32)
    x[:32] = 0.0                                                     # d = 0
    x[32:64] = np.arange(32) - 15.5                                  # ties after scaling? d = 15.5/127
    x[64:96] = np.r_[127.0, np.arange(31) - 15.5]                    # d = 1: exact halves round away from 0
    special = x.copy()
    special[96:128] = rng.standard_normal(32) * 1e-42                # subnormals: 1 / d overflows
    special[128 + 3] = np.nan
    special[160 + 7] = np.inf
    prev = core.cpu_level()
    try:
        core.set_cpu_level(level)
        st = _store(open_device("cpu", 1), {"q": (x.size // 32, 32), "s": (x.size // 32, 32)}, "q8_0")
        st.set("q", x.reshape(-1, 32))
        assert np.array_equal(st.get("q").ravel(), _q8_0_reference(x))
        st.set("s", special.reshape(-1, 32))
        ours = st.get("s").ravel()
        core.set_cpu_level("portable")                               # ggml's own code for every block
        st.set("s", special.reshape(-1, 32))
        assert np.array_equal(ours, st.get("s").ravel(), equal_nan=True)
        assert np.array_equal(ours[192:], _q8_0_reference(x)[192:])
        assert ours[:96].tobytes() == _q8_0_reference(x)[:96].tobytes()
    finally:
        core.set_cpu_level(prev)


def _q4_0_reference(x: np.ndarray) -> np.ndarray:
    """ggml's q4_0 rule in numpy, dequantized: d = -(first value of largest magnitude) / 8 as
    half, q = min(15, trunc(x * (1 / d) + 8.5)) (product and sum rounded), value = (q - 8) * d."""
    b = x.reshape(-1, 32).astype(np.float32)
    first = np.argmax(np.abs(b) == np.abs(b).max(axis=1, keepdims=True), axis=1)
    mx = np.where(np.abs(b).max(axis=1) > 0, b[np.arange(len(b)), first], np.float32(0)).astype(np.float32)
    d = (mx / np.float32(-8)).astype(np.float32)
    with np.errstate(divide="ignore"):
        idv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    v = ((b * idv[:, None]).astype(np.float32) + np.float32(8.5)).astype(np.float32)
    q = np.minimum(15, np.trunc(v)).astype(np.float32)
    return ((q - 8) * d.astype(np.float16).astype(np.float32)[:, None]).ravel()


@pytest.mark.parametrize("level", native().cpu_levels())
def test_q4_0_quantizer_is_ggmls_rule_at_every_level(level):
    core = native()
    rng = np.random.default_rng(6)
    x = (rng.standard_normal(32 * 4096) * np.repeat(np.float32(2.0) ** rng.integers(-20, 20, 4096), 32)).astype(np.float32)
    x[:32] = 0.0
    x[32:64] = np.r_[-8.0, 8.0, np.arange(30) - 7.5]                 # ties of magnitude: the first wins; halves
    x[64:96] = np.r_[8.0, -8.0, np.arange(30) * 0.5 - 7.25]
    special = x.copy()
    special[96 + 3] = np.nan
    special[128 + 7] = -np.inf
    prev = core.cpu_level()
    try:
        core.set_cpu_level(level)
        st = native().WeightStore(open_device("cpu", 1), False)     # repack off: readable
        for n in ("q", "s"):
            st.declare(n, [x.size // 32, 32], "q4_0")
        st.allocate()
        st.set("q", x.reshape(-1, 32))
        with np.errstate(over="ignore", invalid="ignore"):   # scales past half range: inf * 0
            assert np.array_equal(st.get("q").ravel(), _q4_0_reference(x), equal_nan=True)
        st.set("s", special.reshape(-1, 32))
        ours = st.get("s").ravel()
        core.set_cpu_level("portable")
        st.set("s", special.reshape(-1, 32))
        assert np.array_equal(ours, st.get("s").ravel(), equal_nan=True)
    finally:
        core.set_cpu_level(prev)
