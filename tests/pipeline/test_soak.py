"""Cancel-and-reuse soak and threads (issue 11), on the tiny fixture: cancelled runs (callback
returning False, KeyboardInterrupt) leave the model giving a fresh model's results; threads on one
model and on two models give their serial results; loading, LoRA and error paths leave the user's
files byte-identical and write nothing next to them. A longer run: bench/soak.py."""
import hashlib
import threading

import numpy as np
import pytest

import sdcpp
from sdcpp import errors

SIZE = 64
PROMPT = "a lighthouse at dusk"


def _run(model, seed, **kw):
    args = dict(width=SIZE, height=SIZE, steps=3, sampler="euler_a", seed=seed, output_type="latent")
    args.update(kw)
    return model.txt2img(PROMPT, **args)[0]


@pytest.fixture(scope="module")
def tiny_path(model_fixtures):
    return str(model_fixtures.get("bk-sdm-tiny").path("ldm"))


def test_cancelled_runs_leave_the_model_as_fresh(tiny_path):
    fresh = sdcpp.load(tiny_path, device="cpu", threads=2)
    expected = {s: _run(fresh, s) for s in (1, 2)}
    model = sdcpp.load(tiny_path, device="cpu", threads=2)
    rng = np.random.default_rng(0)
    for i in range(12):
        stop_at = int(rng.integers(0, 3))
        if i % 2:
            def cb(step, total, x, stop_at=stop_at):
                return step != stop_at
            with pytest.raises(errors.Cancelled):
                _run(model, 100 + i, callback=cb)
        else:
            def interrupt(step, total, x, stop_at=stop_at):
                if step == stop_at:
                    raise KeyboardInterrupt
            with pytest.raises((errors.Cancelled, KeyboardInterrupt)):
                _run(model, 100 + i, callback=interrupt)
        s = 1 + i % 2
        assert np.array_equal(_run(model, s), expected[s]), f"after cancel {i}"


def test_threads_on_one_and_two_models_equal_serial_runs(tiny_path):
    a = sdcpp.load(tiny_path, device="cpu", threads=1)
    b = sdcpp.load(tiny_path, device="cpu", threads=1)
    serial = {s: _run(a, s) for s in range(4)}
    results, failures = {}, []

    def work(model, seed):
        try:
            results[(id(model), seed)] = _run(model, seed)
        except Exception as exc:   # noqa: BLE001 - reported below
            failures.append(exc)

    jobs = [(a, s) for s in range(4)] + [(b, s) for s in range(4)]
    threads = [threading.Thread(target=work, args=j) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not failures and len(results) == 8
    for model, seed in jobs:
        assert np.array_equal(results[(id(model), seed)], serial[seed])


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_nothing_the_user_owns_is_modified(tiny_path, tmp_path):
    import shutil

    from safetensors.numpy import save_file

    src = tmp_path / "user"
    src.mkdir()
    model_file = src / "model.safetensors"
    shutil.copy(tiny_path, model_file)
    bad = src / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    lora = src / "lora.safetensors"
    model = sdcpp.load(str(model_file), device="cpu", threads=2)
    # a tiny kohya LoRA on the first U-Net projection the model has
    name = next(k for k in sorted(model.info.origin.values()) if k.endswith("attn1.to_q.weight"))
    base = name[len("model.diffusion_model."):-len(".weight")].replace(".", "_")
    w = model.info.tensors[next(c for c, o in model.info.origin.items() if o == name)]
    out_f, in_f = w.shape
    save_file({f"lora_unet_{base}.lora_down.weight": np.ones((2, in_f), np.float32) * 0.01,
               f"lora_unet_{base}.lora_up.weight": np.ones((out_f, 2), np.float32) * 0.01,
               f"lora_unet_{base}.alpha": np.array(2.0, np.float32)}, str(lora))
    before = _digest(src)
    model.set_loras([(str(lora), 0.8)])
    _run(model, 1)
    model.set_loras([])
    for path in (bad, src / "missing.ckpt"):
        with pytest.raises(errors.SdcppError):
            sdcpp.load(str(path), device="cpu")
    with pytest.raises(errors.SdcppError):
        model.set_loras([(str(bad), 1.0)])
    assert _digest(src) == before         # same files, same bytes, nothing new next to them
