"""Every family x every file format: the canonical view equals the diffusers/transformers
state dicts exactly (names and bytes)."""
from __future__ import annotations

import numpy as np
import pytest

from fixtures import FAMILIES, FORMATS
from sdcpp.io import open_source
from sdcpp.naming import canonicalize


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("family", FAMILIES)
def test_canonical_tensors_equal_state_dicts(model_fixtures, family, fmt):
    fx = model_fixtures.get(family)
    names = canonicalize(open_source(fx.path(fmt)))
    expected = fx.expected(fmt)

    assert names.unknown == []
    assert sorted(set(expected) - set(names.tensors)) == []          # nothing missing
    assert sorted(set(names.tensors) - set(expected)) == []          # nothing extra
    assert set(names.ignored) == fx.ignorable_keys(fmt)               # junk is ignored, not dropped silently
    bad = [k for k, want in expected.items() if not _same_bits(names.tensors[k].numpy(), want)]
    assert bad == []
    assert set(names.origin) == set(names.tensors)
    if fmt in ("diffusers-bin", "ckpt"):      # the fixture really stores non-contiguous tensors
        assert sum(not _contiguous(r) for r in names.tensors.values()) > len(names.tensors) // 10


def _contiguous(rec) -> bool:
    s, want = 1, []
    for d in reversed(rec.shape):
        want.insert(0, s)
        s *= d
    return all(a == b for a, b, d in zip(rec.strides, want, rec.shape) if d > 1)
