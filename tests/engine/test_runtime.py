"""The native runtime: devices, weight storage conversions, errors (reference: torch's casts)."""
import numpy as np
import pytest
import torch

import sdcpp
from sdcpp import errors
from sdcpp.engine.weights import build_store, open_device


@pytest.fixture(scope="module")
def cpu():
    return open_device("cpu", threads=2)


@pytest.mark.parametrize("weight_type,torch_dtype", [("f32", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16)])
def test_store_conversion_matches_torch_cast(cpu, weight_type, torch_dtype):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((48, 20)) * 3).astype(np.float32)
    store = build_store(cpu, {"m.weight": w, "m.bias": w[0]}, weight_type)
    assert store.type("m.weight") == weight_type
    assert store.type("m.bias") == "f32"  # vectors stay f32
    expected = torch.from_numpy(w).to(torch_dtype).float().numpy()
    np.testing.assert_array_equal(store.get("m.weight"), expected)
    np.testing.assert_array_equal(store.get("m.bias"), w[0])


def test_store_accepts_f16_and_noncontiguous_arrays(cpu):
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    view = base.T  # non-contiguous
    half = base.astype(np.float16)
    store = build_store(cpu, {"a.weight": view, "b.weight": half}, "f32")
    np.testing.assert_array_equal(store.get("a.weight"), view)
    np.testing.assert_array_equal(store.get("b.weight"), half.astype(np.float32))


def test_store_shape_mismatch_is_a_value_error(cpu):
    store = sdcpp.engine.weights.native().WeightStore(cpu)
    store.declare("x.weight", [4, 4], "f32")
    store.allocate()
    with pytest.raises(ValueError, match="x.weight"):
        store.set("x.weight", np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="missing weight 'nope'"):
        store.get("nope")


def test_unknown_and_unavailable_devices_raise_typed_errors():
    with pytest.raises(errors.InvalidArgumentError, match="unknown device"):
        open_device("tpu")
    # A backend missing from this build is refused naming the CMake option that adds it; which
    # backends are missing depends on how sdcpp was built (CPU-only, CUDA, Vulkan ...).
    backends = set(sdcpp.system_info()["backends"])
    for name, option in (("cuda:0", "SD_CUDA=ON"), ("vulkan", "SD_VULKAN=ON"), ("metal", "SD_METAL=ON")):
        if name.split(":")[0].upper() in {b.upper() for b in backends}:
            continue
        # A build with the backend but no usable device of it (e.g. Vulkan without a driver, or
        # lavapipe hidden by ggml) says so instead of naming the CMake option.
        with pytest.raises(errors.InvalidArgumentError, match=f"{option}|found 0 device"):
            open_device(name)


def test_system_info_reports_ggml_and_cpu():
    info = sdcpp.system_info()
    assert info["ggml_version"].startswith("0.")
    assert "CPU" in info["backends"]
    assert any(d["type"] == "cpu" for d in info["devices"])
    assert info["default_threads"] >= 1
    # Which warnings are due depends on the build (native or portable, llamafile or not): a
    # feature the CPU has but the build lacks, and a missing llamafile sgemm, must each be named.
    compiled, host = info["cpu_features_compiled"], info["cpu_features_host"]
    missing = sorted(f for f in host if not compiled.get(f))
    text = " ".join(info["warnings"])
    for feature in missing:
        assert feature in text, (feature, info["warnings"])
    assert ("GGML_LLAMAFILE" in text) == (not compiled.get("llamafile"))
    if not missing and compiled.get("llamafile"):
        assert info["warnings"] == [], info["warnings"]


@pytest.mark.device
def test_device_max_tensor_bytes():
    """The CPU takes tensors of any size (None); a device reports the largest tensor its ops
    take (lavapipe: its 128 MiB storage-buffer range), which the graph builders keep score
    matrices and im2col strips within."""
    from fixtures.devices import ON_CPU, TEST_DEVICE

    assert open_device("cpu", threads=1).max_tensor_bytes is None
    if not ON_CPU:
        limit = open_device(TEST_DEVICE, threads=1).max_tensor_bytes
        assert limit is None or (limit > 0 and limit % 4096 == 0)
