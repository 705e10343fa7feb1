"""ClipTokenizer against transformers' CLIPTokenizer built from the same vocabulary file.

transformers 5 only has the tokenizers-backed CLIPTokenizer (CLIPTokenizerFast is the same
class): its normalizer is NFC + whitespace collapse + lowercase, without OpenAI's ftfy and
HTML-unescape steps, so for texts those steps change we compare with the fast tokenizer fed
the text OpenAI's cleanup would give (ftfy itself is only used here, as a test reference).
"""
from __future__ import annotations

import html
import random
import re

import numpy as np
import pytest

from sdcpp.tokenizer import (
    BOS_ID, EOS_ID, PAD_EOS, PAD_ZERO, VOCAB_SIZE, ClipTokenizer, get_tokenizer,
)
from sdcpp.tokenizer.clip import bytes_to_unicode

# Texts on which OpenAI's cleanup and transformers' normalizer agree.
SAME = [
    "a photo of a cat", "A PHOTO OF A CAT", "Masterpiece, Best Quality, 8K UHD",
    "café", "cafe\u0301", "naïve", "Crème Brûlée à la carte", "straße", "İstanbul",
    "你好世界", "日本語のテキスト", "한국어 텍스트", "Привет мир", "مرحبا",
    "🙂🙂 emoji 🎉🔥", "👨\u200d👩\u200d👧 family", "✨ sparkles ✨",
    "1234", "3.14159", "1,000,000", "x² ½ Ⅻ ٣", "year 2024",
    "!!!", "...", "--", "?!?!", "a...b", "(((x)))", "[[y]]", "#hashtag @user $100 50%",
    "it's don't we're they've I'm you'll he'd", "''s", "rock'n'roll", "A'S IT'S", "'S",
    "multiple   spaces", "new\n\nlines", "tabs\tand\ttabs", "  leading and trailing  ",
    "nb\u00a0sp", "zero\u200bwidth", "e\u0301\u0301", "q\u0301", "\u0301alone", "new\u2028line",
    "a_b-c/d\\e", "masterpiece, best quality, (ultra-detailed:1.2), [blurry]",
    "a <|endoftext|> b", "a<|startoftext|>b", "",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG 0123456789",
]

# Texts OpenAI's cleanup (ftfy + html.unescape x2 + Python lower) changes and transformers'
# normalizer does not.
DIFFERENT = [
    "Tom &amp; Jerry", "&amp;amp;", "I &lt;3 you", "P&eacute;rez", "don\u2019t", "\u201cquoted\u201d",
    "\ufb01ne \ufb02ower", "\uff21\uff22\uff23\uff11\uff12", "\u3000ideographic space",
    "\ufeffbom", "ok\x85next", "a\x1cb", "\x1b[31mred\x1b[0m", "Ελληνικά ΣΟΣ", "\u0133s",
]


def openai_clean(text: str) -> str:
    """OpenAI CLIP's basic_clean + whitespace_clean + lower, with the real ftfy."""
    ftfy = pytest.importorskip("ftfy")
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


def hf_ids(hf, text: str) -> list[int]:
    return hf(text, add_special_tokens=False)["input_ids"]


# -- vocabulary ---------------------------------------------------------------------------

def test_vocabulary_size_and_special_ids(tok):
    assert tok.vocab_size == VOCAB_SIZE == 49408
    assert tok.token_to_id("<|startoftext|>") == BOS_ID == 49406
    assert tok.token_to_id("<|endoftext|>") == EOS_ID == 49407
    assert PAD_EOS == 49407 and PAD_ZERO == 0
    assert tok.id_to_token(0) == "!" and tok.id_to_token(256) == "!</w>"
    assert len(set(tok.vocab.values())) == 49408


def test_well_known_ids(tok):
    # ids every SD user has seen: "a photo of a cat", the comma A1111 splits long prompts at
    assert tok.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]
    assert tok.token_to_id(",</w>") == 267


def test_byte_map_is_gpt2s():
    m = bytes_to_unicode()
    assert len(m) == 256 and len(set(m.values())) == 256
    assert m[ord("a")] == "a" and m[0x20] == "\u0120" and m[0x00] == "\u0100"
    assert list(m)[:3] == [0x21, 0x22, 0x23]


def test_vocab_matches_reference(tok, hf_fast):
    assert tok.vocab == hf_fast.get_vocab()


def test_default_instance_is_shared():
    assert get_tokenizer() is get_tokenizer()
    a, b = ClipTokenizer(), ClipTokenizer()
    assert a.encode("x") == b.encode("x") and a._t is b._t     # tables read once


# -- ids against transformers ------------------------------------------------------------

@pytest.mark.parametrize("text", SAME)
def test_encode_matches_transformers_fast(tok, hf_fast, text):
    assert tok.encode(text) == hf_ids(hf_fast, text)


@pytest.mark.parametrize("text", SAME[:12])
def test_encode_matches_transformers_slow(tok, hf_slow, text):
    assert tok.encode(text) == hf_ids(hf_slow, text)


@pytest.mark.parametrize("text", DIFFERENT)
def test_cleanup_is_openais(tok, hf_fast, text):
    """Where ftfy/html matter we follow OpenAI: same ids as transformers on the cleaned text."""
    assert tok.encode(text) == hf_ids(hf_fast, openai_clean(text))


def test_known_differences_from_transformers_fast(tok, hf_fast):
    # transformers' normalizer has no HTML unescape, no curly-quote fix, no ftfy at all
    assert tok.encode("&amp;") == [261] != hf_ids(hf_fast, "&amp;")
    assert tok.encode("don\u2019t") == tok.encode("don't") != hf_ids(hf_fast, "don\u2019t")


def _random_texts(alphabet: list[str], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(count)]


_SAFE = (list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789") + list(" ,.!?;:-_/()[]'\"#@$%*+=~")
         + [" ", "  ", "\n", "\t", "é", "ï", "ß", "ñ", "ü", "ø", "你", "好", "日", "本", "한", "ж",
            "🙂", "🎉", "\u200d", "½", "²", "'s", "'t", "'re", "'ll", "n't", "cat", "the"])


def test_random_texts_match_transformers(tok, hf_fast):
    for text in _random_texts(_SAFE, 400, seed=1234):
        assert tok.encode(text) == hf_ids(hf_fast, text), repr(text)


def test_random_texts_with_cleanup_match_openai(tok, hf_fast):
    alphabet = _SAFE + ["&amp;", "&lt;", "&quot;", "&#39;", "\u2019", "\u201c", "\ufb01",
                        "\uff21", "\uff12", "\u3000", "\u03a3", "\x07", "\ufeff"]
    for text in _random_texts(alphabet, 300, seed=99):
        assert tok.encode(text) == hf_ids(hf_fast, openai_clean(text)), repr(text)


# -- tokenize: BOS/EOS, padding, truncation ------------------------------------------------

@pytest.mark.parametrize("text", ["a photo of a cat", "", "café 1234 !!!"])
def test_tokenize_pad_eos_matches_transformers(tok, hf_fast, text):
    ref = hf_fast(text, padding="max_length", max_length=77, truncation=True)["input_ids"]
    row = tok.tokenize(text, PAD_EOS)
    assert row.dtype == np.int32 and row.shape == (77,)
    assert row.tolist() == ref


@pytest.mark.parametrize("text", ["a photo of a cat", "", "café 1234 ???"])
def test_tokenize_pad_zero_matches_transformers(tok, hf_fast_pad0, text):
    ref = hf_fast_pad0(text, padding="max_length", max_length=77, truncation=True)["input_ids"]
    row = tok.tokenize(text, PAD_ZERO)
    assert row.tolist() == ref
    n = len(tok.encode(text))
    assert row[0] == BOS_ID and row[n + 1] == EOS_ID and (row[n + 2:] == 0).all()


def test_pad_zero_keeps_exclamation_marks(tok, hf_fast_pad0):
    # transformers makes the pad token "!" special, so with SD2's tokenizer config a literal
    # "!" in the prompt becomes id 0. OpenCLIP's tokenizer (what SD2/SDXL-G were trained
    # with) pads with 0 but still reads "!" as text; so do we.
    assert tok.encode("wow!!!") == [2781, 995]                 # "wow</w>", "!!!</w>"
    row = tok.tokenize("wow!!!", PAD_ZERO)
    assert row[:5].tolist() == [BOS_ID, 2781, 995, EOS_ID, 0]
    assert 0 in hf_fast_pad0("wow!!!", add_special_tokens=False)["input_ids"]


def test_tokenize_truncates_like_diffusers(tok, hf_fast):
    text = ", ".join(f"word{i}" for i in range(60))          # ~180 tokens
    ids = tok.encode(text)
    assert len(ids) > 150
    row = tok.tokenize(text, PAD_EOS)
    assert row.shape == (77,)
    assert row.tolist() == [BOS_ID, *ids[:75], EOS_ID]
    ref = hf_fast(text, padding="max_length", max_length=77, truncation=True)["input_ids"]
    assert row.tolist() == ref
    full = tok.tokenize(text, PAD_EOS, truncate=False)
    assert full.tolist() == [BOS_ID, *ids, EOS_ID]


def test_tokenize_exactly_75_tokens(tok):
    text = " ".join(["cat"] * 75)
    row = tok.tokenize(text, PAD_ZERO)
    assert row.tolist() == [BOS_ID] + [2368] * 75 + [EOS_ID]


def test_tokenize_batch(tok):
    rows = tok.tokenize(["a cat", "a photo of a dog"], PAD_ZERO)
    assert rows.shape == (2, 77) and rows.dtype == np.int32
    assert rows[0, :4].tolist() == [BOS_ID, 320, 2368, EOS_ID] and rows[0, 4] == 0


# -- decode ------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["a photo of a cat", "café naïve 你好 🙂", "1234 don't !!!"])
def test_decode_roundtrip(tok, hf_fast, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == hf_fast.decode(ids)
    assert tok.decode(tok.tokenize(text, PAD_EOS)) == tok.decode(ids)
    assert tok.decode(ids).replace(" ", "") == text.replace(" ", "")


def test_bad_arguments(tok):
    from sdcpp.errors import InvalidArgumentError
    with pytest.raises(InvalidArgumentError):
        tok.tokenize("x", pad_id=-1)
    with pytest.raises(InvalidArgumentError):
        tok.decode([VOCAB_SIZE])
    with pytest.raises(InvalidArgumentError):
        tok.encode(b"bytes")                                  # type: ignore[arg-type]
