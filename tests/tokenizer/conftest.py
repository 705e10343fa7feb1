"""Fixtures: our tokenizer, and transformers' CLIPTokenizer built offline from the same vocabulary."""
from __future__ import annotations

import gzip
import json

import pytest

from sdcpp.tokenizer.clip import DEFAULT_VOCAB_PATH, NUM_MERGES, ClipTokenizer


@pytest.fixture(scope="session")
def tok() -> ClipTokenizer:
    return ClipTokenizer()


def _reference_byte_map() -> dict[int, str]:
    # written out independently of sdcpp's bytes_to_unicode (GPT-2's table)
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


@pytest.fixture(scope="session")
def hf_files(tmp_path_factory):
    """vocab.json + merges.txt in the layout of openai/clip-vit-large-patch14, from our .gz."""
    d = tmp_path_factory.mktemp("clip_vocab")
    with gzip.open(DEFAULT_VOCAB_PATH, "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1:1 + NUM_MERGES]
    symbols = list(_reference_byte_map().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return str(d / "vocab.json"), str(d / "merges.txt")


def _build(cls, files, **kw):
    try:
        return cls(*files, **kw)
    except TypeError:                   # transformers 4.x keyword names
        return cls(vocab_file=files[0], merges_file=files[1], **kw)


@pytest.fixture(scope="session")
def hf_fast(hf_files):
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, "CLIPTokenizerFast", None) or transformers.CLIPTokenizer
    t = _build(cls, hf_files)
    assert len(t) == 49408, "reference tokenizer did not load the vocabulary"
    return t


@pytest.fixture(scope="session")
def hf_fast_pad0(hf_files):
    """SD2 / SDXL text_encoder_2 tokenizer config: pad_token "!" (id 0)."""
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, "CLIPTokenizerFast", None) or transformers.CLIPTokenizer
    return _build(cls, hf_files, pad_token="!")


@pytest.fixture(scope="session")
def hf_slow(hf_files):
    """The pure-Python CLIPTokenizer of transformers 4.x; transformers 5 no longer has one."""
    transformers = pytest.importorskip("transformers")
    cls = transformers.CLIPTokenizer
    if cls is getattr(transformers, "CLIPTokenizerFast", None) or not hasattr(cls, "bpe"):
        pytest.skip("this transformers has no slow (Python) CLIPTokenizer")
    return _build(cls, hf_files)
