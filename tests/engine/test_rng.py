"""torch-compatible random numbers: sdcpp.engine.sampling.Generator / randn vs torch itself."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sdcpp import errors  # noqa: E402
from sdcpp.engine import sampling as S  # noqa: E402

SEEDS = [0, 42, 2**32 + 7, 2**63 - 1]
SHAPES = [(1,), (3,), (15,), (16,), (17,), (100,), (4, 64, 64), (2, 4, 128, 128)]


def torch_randn(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32).numpy()


# ---------------------------------------------------------------------------------------------
# "cpu": bit-exact torch.randn

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cpu_randn_bit_exact(shape, seed):
    ours = S.randn(shape, seed)
    ref = torch_randn(shape, seed)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.array_equal(ours, ref), f"{int((ours != ref).sum())} of {ref.size} values differ"


def test_cpu_successive_draws_continue_the_stream():
    # Sizes below 16 use torch's double Box-Muller with a cached second normal kept in the
    # generator; sizes >= 16 the vectorised fill (which leaves that cache alone).
    shapes = [(3,), (17,), (1,), (1,), (4, 64, 64), (5,), (33,), (2,), (16,), (7,), (1, 4, 8, 8)]
    for seed in (0, 2**63 - 1):
        g = torch.Generator().manual_seed(seed)
        ours = S.Generator(seed)
        for shape in shapes:
            ref = torch.randn(shape, generator=g).numpy()
            assert np.array_equal(ours.randn(shape), ref), (seed, shape)


def test_cpu_clone_forks_the_state():
    g = S.Generator(5)
    g.randn(3)  # leaves a cached normal
    h = g.clone()
    assert np.array_equal(g.randn((2, 9)), h.randn((2, 9)))
    assert np.array_equal(g.randn(1), h.randn(1))


def test_cpu_scalar_matches_torch_default_capability():
    """"cpu_scalar" = torch's portable kernel; torch takes it with ATEN_CPU_CAPABILITY=default."""
    script = textwrap.dedent(
        """
        import numpy as np, torch
        from sdcpp.engine import sampling as S
        assert torch.backends.cpu.get_cpu_capability() == "DEFAULT"
        bad = []
        for seed in (0, 42, 2**32 + 7, 2**63 - 1):
            for shape in ((1,), (15,), (16,), (17,), (100,), (4, 64, 64)):
                g = torch.Generator().manual_seed(seed)
                ref = torch.randn(shape, generator=g).numpy()
                if not np.array_equal(S.randn(shape, seed, "cpu_scalar"), ref):
                    bad.append((seed, shape))
        g = torch.Generator().manual_seed(9); ours = S.Generator(9, "cpu_scalar")
        for shape in ((3,), (40,), (1,), (2, 4, 8, 8)):
            if not np.array_equal(ours.randn(shape), torch.randn(shape, generator=g).numpy()):
                bad.append(("successive", shape))
        print("BAD", bad)
        assert not bad
        """
    )
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default", PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------
# "cuda": Philox4x32-10 + torch's CUDA thread mapping

# Random123's published known-answer vectors (tests/kat_vectors of the reference implementation).
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,expected", PHILOX_KAT)
def test_philox_known_answers(ctr, key, expected):
    from sdcpp import _core

    assert tuple(_core.sampling.philox4x32_10(list(ctr), list(key))) == expected


def test_philox_matches_torch_engine(tmp_path: Path):
    """Our counter layout (seed -> key, subsequence -> counter words 2..3, offset/4 -> words
    0..1) against torch's own Philox engine (ATen/core/PhiloxRNGEngine.h, the same algorithm
    as curand's), compiled here."""
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    include = Path(torch.__file__).parent / "include"
    if cxx is None or not (include / "ATen/core/PhiloxRNGEngine.h").exists():
        pytest.skip("needs a C++ compiler and torch's headers")
    src = tmp_path / "philox.cpp"
    src.write_text(textwrap.dedent(
        """
        #include <ATen/core/PhiloxRNGEngine.h>
        #include <cstdio>
        #include <cstdlib>
        int main(int argc, char** argv) {
          for (int i = 1; i + 2 < argc; i += 3) {
            unsigned long long s = strtoull(argv[i], 0, 10), sub = strtoull(argv[i+1], 0, 10), off = strtoull(argv[i+2], 0, 10);
            at::Philox4_32 e(s, sub, off / 4);
            unsigned a = e(), b = e(), c = e(), d = e();
            printf("%u %u %u %u\\n", a, b, c, d);
          }
        }
        """))
    exe = tmp_path / "philox"
    subprocess.run([cxx, "-std=c++17", "-O1", f"-I{include}", str(src), "-o", str(exe)], check=True,
                   capture_output=True, timeout=120)
    cases = [(s, sub, off) for s in (0, 42, 2**63 - 1, 0xFEDCBA9876543210)
             for sub in (0, 1, 16383, 2**33 + 5) for off in (0, 4, 4 * 12345)]
    args = [str(v) for case in cases for v in case]
    lines = subprocess.run([str(exe), *args], check=True, capture_output=True, text=True).stdout.split("\n")
    from sdcpp import _core

    for (s, sub, off), line in zip(cases, lines):
        blk = off // 4
        ctr = [blk & 0xFFFFFFFF, blk >> 32, sub & 0xFFFFFFFF, sub >> 32]
        key = [s & 0xFFFFFFFF, s >> 32]
        assert tuple(_core.sampling.philox4x32_10(ctr, key)) == tuple(int(v) for v in line.split()), (s, sub, off)


def _np_box_muller(a, b):
    """curand's _curand_box_muller in numpy (float32): (s*sin v, s*cos v)."""
    inv32 = np.float32(2.0 ** -32)
    inv32_2pi = np.float32(inv32 * np.float32(6.2831855))
    u = a.astype(np.float32) * inv32 + np.float32(inv32 / 2)
    # v = fma(b, C, C/2) on the GPU; the float64 product of two float32 values is exact
    v = b.astype(np.float32).astype(np.float64) * np.float64(inv32_2pi) + np.float64(inv32_2pi / 2)
    v = v.astype(np.float32)
    s = np.sqrt(np.float32(-2.0) * np.log(u))
    return s * np.sin(v), s * np.cos(v)


def _np_torch_cuda_randn(n, seed, offset, max_threads):
    """torch's CUDA randn for a float tensor of numel n (DistributionTemplates.h, written
    independently in numpy): grid-stride threads of 256, curand_normal4 per round."""
    from sdcpp import _core

    blocks = -(-n // 256)
    if max_threads:
        blocks = min(blocks, max(1, max_threads // 256))
    T = blocks * 256
    rounds = (n - 1) // (T * 4) + 1
    out = np.empty(n, np.float32)
    key = [seed & 0xFFFFFFFF, seed >> 32]
    for idx in range(T):
        for k in range(rounds):
            w = np.array(_core.sampling.philox4x32_10([offset // 4 + k, 0, idx, 0], key), dtype=np.uint32)
            s0, c0 = _np_box_muller(w[0:1], w[1:2])
            s1, c1 = _np_box_muller(w[2:3], w[3:4])
            vals = [s0[0], c0[0], s1[0], c1[0]]
            for ii in range(4):
                li = idx + T * (4 * k + ii)
                if li < n:
                    out[li] = vals[ii]
    return out, offset + rounds * 4


@pytest.mark.parametrize("n,max_threads", [(100, 0), (1000, 256), (3000, 512)])
def test_cuda_mapping_and_offsets(n, max_threads):
    seed = 2**40 + 123
    g = S.Generator(seed, "cuda", cuda_max_threads=max_threads or None)
    offset = 0
    for _ in range(2):  # successive calls advance the philox offset like torch's generator
        ref, offset = _np_torch_cuda_randn(n, seed, offset, max_threads)
        ours = g.randn(n)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6)


def test_cuda_is_a_standard_normal():
    x = S.randn((4, 128, 128), 1, "cuda").ravel()
    assert abs(float(x.mean())) < 0.02 and abs(float(x.std()) - 1) < 0.02


# ---------------------------------------------------------------------------------------------
# argument checking

def test_bad_arguments():
    with pytest.raises(errors.InvalidArgumentError, match="cpu, cpu_scalar, cuda"):
        S.Generator(0, "mps")
    with pytest.raises(ValueError):
        S.randn((2, 2), -1)
    with pytest.raises(errors.InvalidArgumentError):
        S.randn((2, 2), 2**64)
    with pytest.raises(errors.InvalidArgumentError):
        S.randn((2, -1), 0)
    with pytest.raises(errors.InvalidArgumentError):
        S.randn((2, 2), 1.5)
    assert S.randn((0, 3), 0).shape == (0, 3)
