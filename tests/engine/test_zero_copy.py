"""Zero-copy weights (build_store maps aligned records of the stored type in place): the
results must be bit-identical to copied weights, end to end, and still match diffusers.

Mapping needs the stored type, C order and an offset that is a multiple of the element size
(every ordinary checkpoint, so the other end-to-end tests run mapped too wherever the storage
type is the file's). Here the fixture is also re-written with 64-byte aligned tensors (header
padded with spaces, gaps in the data area) to pin the file layout the test relies on; a record
of another type (f32 stored as f16) is copied as before.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import sdcpp
from sdcpp.engine import weights as W
from sdcpp.io import read_tensors
from fixtures.e2e import NEGATIVE, PROMPT, SIZE, rel, run_diffusers, unit_latents

DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64"}


def write_aligned(arrays: dict, path, align: int = 64) -> None:
    header, offset, chunks = {}, 0, []
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        pad = (-offset) % align
        chunks.append(b"\0" * pad)
        offset += pad
        header[name] = {"dtype": DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        chunks.append(a.tobytes())
        offset += a.nbytes
    text = json.dumps(header).encode()
    text += b" " * ((-(8 + len(text))) % align)
    with open(path, "wb") as fh:
        fh.write(len(text).to_bytes(8, "little"))
        fh.write(text)
        for c in chunks:
            fh.write(c)


@pytest.fixture(scope="module")
def aligned_file(model_fixtures, tmp_path_factory):
    fx = model_fixtures.get("sd1")
    arrays = load_file(str(fx.path("ldm")))
    path = tmp_path_factory.mktemp("zero-copy") / "sd1-aligned.safetensors"
    write_aligned(arrays, path)
    return fx, path


def test_store_maps_aligned_records_and_reads_the_same(aligned_file):
    _, path = aligned_file
    recs = read_tensors(path)
    dev = W.open_device("cpu", 1)
    names = [k for k, r in recs.items() if r.dtype == "F32"][:40]
    sub = {k: recs[k] for k in names}
    mapped = W.build_store(dev, sub, "f32", zero_copy=True)
    copied = W.build_store(dev, sub, "f32", zero_copy=False)
    assert all(mapped.is_mapped(k) for k in names)
    assert not any(copied.is_mapped(k) for k in names)
    assert mapped.mapped_nbytes == sum(recs[k].numpy().nbytes for k in names)
    for k in names:
        assert np.array_equal(mapped.get(k), copied.get(k))
    # f16 storage of f32 records converts: nothing mapped
    half = W.build_store(dev, sub, "f16", type_of=lambda n, s, wt: "f16", zero_copy=True)
    assert half.mapped_nbytes == 0
    # writes go to a private copy of the page, never to the file
    k = names[0]
    before = np.array(recs[k].numpy())
    mapped.set(k, np.zeros(recs[k].shape, np.float32))
    assert not np.any(mapped.get(k)) and np.array_equal(np.array(recs[k].numpy()), before)
    assert np.array_equal(np.asarray(read_tensors(path)[k].numpy()), before)


def test_release_mapped_pages_keeps_values_and_writes(aligned_file):
    """release_mapped_pages drops the unwritten mapped pages (madvise DONTNEED on the private
    mapping): every tensor must read the same afterwards, also those written by set() and by
    merge_low_rank (their copied pages would fall back to the file's bytes if dropped), and
    small neighbours sharing a page with a written tensor."""
    _, path = aligned_file
    recs = read_tensors(path)
    dev = W.open_device("cpu", 1)
    names = [k for k, r in recs.items() if r.dtype == "F32"][:60]
    store = W.build_store(dev, {k: recs[k] for k in names}, "f32", zero_copy=True)
    rng = np.random.default_rng(3)
    small = next(k for k in names if 0 < recs[k].numpy().nbytes < 4096)
    mat = next(k for k in names if len(recs[k].shape) == 2 and k != small)
    store.set(small, rng.standard_normal(recs[small].shape).astype(np.float32))
    out, K = recs[mat].shape
    up = rng.standard_normal((out, 2)).astype(np.float32)
    down = rng.standard_normal((2, K)).astype(np.float32)
    store.merge_low_rank(mat, np.asarray(recs[mat].numpy()), [(up, down, 0.5)])
    want = {k: store.get(k) for k in names}
    assert not np.array_equal(want[small], recs[small].numpy())
    assert not np.array_equal(want[mat], recs[mat].numpy())
    for _ in range(2):
        assert store.release_mapped_pages() > 0
        for k in names:
            assert np.array_equal(store.get(k), want[k]), k
    copied = W.build_store(dev, {k: recs[k] for k in names}, "f32", zero_copy=False)
    assert copied.release_mapped_pages() == 0


def test_zero_copy_pipeline_is_bit_identical_and_matches_diffusers(aligned_file, monkeypatch):
    fx, path = aligned_file
    latents = unit_latents(7)
    out = {}
    for zc in (True, False):
        monkeypatch.setattr(W, "ZERO_COPY", zc)
        m = sdcpp.load(str(path), device="cpu", weight_type="f32", threads=2)
        mapped = sum(s.mapped_nbytes for s in m._c["stores"].values())
        assert (mapped > 0) == zc
        out[zc] = m.txt2img(PROMPT, NEGATIVE, width=SIZE, height=SIZE, steps=4, sampler="euler", latents=latents,
                            output_type="latent")[0]
    assert np.array_equal(out[True], out[False])
    ref = run_diffusers(fx, "ldm", latents=latents, height=SIZE, width=SIZE)
    assert rel(out[True], ref[0]) <= 1e-3


def test_tensors_sharing_bytes_are_copied(aligned_file):
    """Two records over the same bytes (tied weights of a pickled checkpoint): mapping both
    would let a write to one change the other, so both are copied."""
    from dataclasses import replace

    _, path = aligned_file
    recs = read_tensors(path)
    k = next(n for n, r in recs.items() if r.dtype == "F32" and len(r.shape) == 2)
    sub = {"a": recs[k].renamed("a"), "b": recs[k].renamed("b"),
           "c": replace(recs[k], name="c", offset=recs[k].offset + 4 * recs[k].shape[1], shape=(2, recs[k].shape[1]))}
    other = next(n for n, r in recs.items() if r.dtype == "F32" and n != k and len(r.shape) == 2
                 and abs(r.offset - recs[k].offset) > 10 * recs[k].numpy().nbytes)
    sub["d"] = recs[other]
    store = W.build_store(W.open_device("cpu", 1), sub, "f32", zero_copy=True)
    assert [store.is_mapped(n) for n in "abcd"] == [False, False, False, True]
    store.set("a", np.zeros(recs[k].shape, np.float32))
    assert np.array_equal(store.get("b"), recs[k].numpy())


def _mapped_rss_kib(path) -> int:
    """Rss of this process's private writable mappings of `path`: WeightStore's zero-copy maps
    (the readers map files read-only)."""
    total, hit = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and ":" in parts[3]:   # a mapping's header line
                hit = parts[1] == "rw-p" and len(parts) >= 6 and parts[-1] == str(path)
            elif hit and parts[0] == "Rss:":
                total += int(parts[1])
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_streamed_unet_weights_are_bit_identical_and_given_back(aligned_file, model_fixtures):
    """memory="low" streams the mapped U-Net (UNet.stream_weights): each module's file pages are
    given back once its part of the graph ran. The result must not change (with and without a
    LoRA merged into mapped pages, over repeated calls), and after a streamed call far fewer of the
    U-Net's mapped pages are resident than after a plain one."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lora"))
    from lora_helpers import make_lora, write_kohya

    fx, path = aligned_file
    m = sdcpp.load(str(path), device="cpu", weight_type="f32", threads=2, memory="low")
    res = m._c["unet"].resident
    unet = res.get()
    assert unet.stream_weights and res.store.mapped_nbytes > 0
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    ctx = rng.standard_normal((2, 77, unet.cross_attention_dim)).astype(np.float32)

    def run(stream):
        unet.stream_weights = stream
        y = unet(x, 500.0, ctx)
        return y, _mapped_rss_kib(path)

    plain, rss_plain = run(False)
    streamed, rss_streamed = run(True)
    again, _ = run(True)
    assert np.array_equal(plain, streamed) and np.array_equal(plain, again)
    print(f"U-Net mapped RSS after a call: plain {rss_plain} KiB, streamed {rss_streamed} KiB")
    assert rss_streamed < 0.5 * rss_plain

    lo = make_lora(fx, seed=61, unet_targets=["to_q", "to_v", "conv1"], rank=2)
    lora = write_kohya(fx, lo, path.parent / "stream-lora.safetensors")
    m.set_loras([(lora, 0.9)])
    with_lora, _ = run(False)
    assert not np.array_equal(with_lora, plain)
    for _ in range(2):
        y, _ = run(True)
        assert np.array_equal(y, with_lora)
    m.set_loras([])
    y, _ = run(True)
    assert np.array_equal(y, plain)
