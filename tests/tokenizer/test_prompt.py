"""A1111 prompt syntax. Expected values are worked out by hand from the rules (A1111's
``prompt_parser.parse_prompt_attention`` docstring examples included), not taken from our output."""
from __future__ import annotations

import numpy as np
import pytest

from sdcpp.errors import InvalidArgumentError
from sdcpp.tokenizer import (
    BOS_ID, EOS_ID, PAD_EOS, PAD_ZERO, apply_emphasis, encode_prompt_chunks, extract_lora_tags,
    parse_prompt_attention,
)

CAT, DOG, COMMA, A = 2368, 1929, 267, 320      # "cat</w>", "dog</w>", ",</w>", "a</w>"
UP, DOWN = 1.1, 1 / 1.1


def same(got, want):
    assert [t for t, _ in got] == [t for t, _ in want]
    assert [w for _, w in got] == pytest.approx([w for _, w in want], rel=1e-12)


# -- parse_prompt_attention -----------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    # A1111's own docstring examples
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", UP), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", UP)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", UP)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.3 * UP * UP), (" ", UP), ("on", DOWN * UP), (" a ", UP),
      ("hill", 0.5 * UP), (", sun, ", UP), ("sky", UP ** 4), (".", UP)]),
    # single rules
    ("[a]", [("a", DOWN)]),
    ("(a:1.5)", [("a", 1.5)]),
    ("(a: 1.5 )", [("a", 1.5)]),
    ("(a:.5)", [("a", 0.5)]),
    ("(a:-1)", [("a", -1.0)]),
    ("((a))", [("a", UP * UP)]),
    ("[[a]]", [("a", DOWN * DOWN)]),
    ("([a])", [("a", 1.0)]),
    ("((a:2))", [("a", 2 * UP)]),
    ("[(a:2)]", [("a", 2 * DOWN)]),
    ("(a:1.5) b [c", [("a", 1.5), (" b ", 1.0), ("c", DOWN)]),
    ("[a (b] c)", [("a ", DOWN), ("b", DOWN * UP), (" c", UP)]),
    # literals
    (r"a \(b\) c", [("a (b) c", 1.0)]),
    (r"(a\)b)", [("a)b", UP)]),
    (r"\[x\]", [("[x]", 1.0)]),
    ("a\\\\b", [("a\\b", 1.0)]),
    ("a) b]", [("a) b]", 1.0)]),
    ("a:b", [("a:b", 1.0)]),
    ("(a:b)", [("a:b", UP)]),
    ("(a:1.5", [("a:1.5", UP)]),
    (":1.5) x", [(":1.5) x", 1.0)]),
    # merging
    ("(a:1.5)(b:1.5)", [("ab", 1.5)]),
    ("(a)b", [("a", UP), ("b", 1.0)]),
    # BREAK
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("a  BREAK\nb", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("BREAK", [("", 1.0), ("BREAK", -1.0), ("", 1.0)]),
    ("a break b", [("a break b", 1.0)]),
    ("aBREAK b", [("aBREAK b", 1.0)]),
    ("(a BREAK b)", [("a", UP), ("BREAK", -1.0), ("b", UP)]),
    # empty
    ("", [("", 1.0)]),
])
def test_parse_prompt_attention(text, want):
    same(parse_prompt_attention(text), want)


# -- extract_lora_tags ------------------------------------------------------------------------

@pytest.mark.parametrize("text, want_text, want", [
    ("a cat <lora:foo:0.5>", "a cat ", [("foo", 0.5)]),
    ("<lora:bar>", "", [("bar", 1.0)]),
    ("<lora:x:te=0.3>", "", [("x", 0.3)]),
    ("<lora:x:0.8:0.2>", "", [("x", 0.8)]),
    ("<lyco:y:0.7> dog", " dog", [("y", 0.7)]),
    ("<hypernet:h:1>cat", "cat", []),
    ("<lora:a:1><lora:b:-0.5> c", " c", [("a", 1.0), ("b", -0.5)]),
    ("I <3 cats", "I <3 cats", []),
    ("(<lora:s:0.5>:1.2)", "(:1.2)", [("s", 0.5)]),
])
def test_extract_lora_tags(text, want_text, want):
    assert extract_lora_tags(text) == (want_text, want)


@pytest.mark.parametrize("text", ["<lora:a:abc>", "<lora::0.5>"])
def test_bad_lora_tags(text):
    with pytest.raises(InvalidArgumentError):
        extract_lora_tags(text)


# -- encode_prompt_chunks -----------------------------------------------------------------------

def _row(tokens, pad=EOS_ID):
    return [BOS_ID, *tokens, EOS_ID] + [pad] * (75 - len(tokens))


def test_short_prompt_pad_eos():
    c = encode_prompt_chunks("a photo of a cat", PAD_EOS)
    assert c.ids.dtype == np.int32 and c.weights.dtype == np.float32
    assert c.ids.tolist() == [_row([A, 1125, 539, A, CAT])]
    assert (c.weights == 1).all() and c.eos_index.tolist() == [6] and c.loras == []


def test_short_prompt_pad_zero():
    c = encode_prompt_chunks("a photo of a cat", PAD_ZERO)
    assert c.ids.tolist() == [_row([A, 1125, 539, A, CAT], pad=0)]
    assert c.eos_index.tolist() == [6]


@pytest.mark.parametrize("pad", [PAD_EOS, PAD_ZERO])
def test_empty_prompt(pad):
    c = encode_prompt_chunks("", pad)
    assert c.ids.tolist() == [_row([], pad)] and c.eos_index.tolist() == [1]


def test_weights_follow_runs():
    c = encode_prompt_chunks("a (cat:1.5) [dog]", PAD_EOS)
    assert c.ids[0, :5].tolist() == [BOS_ID, A, CAT, DOG, EOS_ID]
    assert c.weights[0, :5] == pytest.approx([1.0, 1.0, 1.5, DOWN, 1.0])
    assert (c.weights[0, 4:] == 1).all()


def test_runs_are_tokenized_separately(tok):
    # A1111 tokenizes each weighted run on its own: a run boundary ends a word
    c = encode_prompt_chunks("a(cat)s", PAD_EOS)
    want = tok.encode("a") + tok.encode("cat") + tok.encode("s")
    assert want != tok.encode("acats")
    assert c.ids[0, 1:4].tolist() == want


def test_break_starts_a_new_chunk():
    c = encode_prompt_chunks("cat BREAK dog", PAD_ZERO)
    assert c.ids.tolist() == [_row([CAT], 0), _row([DOG], 0)]
    assert c.eos_index.tolist() == [2, 2]


def test_leading_and_trailing_break():
    assert encode_prompt_chunks("BREAK cat", PAD_EOS).ids.tolist() == [_row([]), _row([CAT])]
    assert encode_prompt_chunks("cat BREAK", PAD_EOS).ids.tolist() == [_row([CAT])]


def test_break_after_a_full_chunk_adds_no_empty_chunk():
    c = encode_prompt_chunks("cat " * 75 + "BREAK dog", PAD_EOS)
    assert c.ids.tolist() == [_row([CAT] * 75), _row([DOG])]


def test_exactly_75_and_76_tokens():
    c = encode_prompt_chunks("cat " * 75, PAD_ZERO)
    assert c.ids.tolist() == [_row([CAT] * 75, 0)] and c.eos_index.tolist() == [76]
    c = encode_prompt_chunks("cat " * 76, PAD_ZERO)
    assert c.ids.tolist() == [_row([CAT] * 75, 0), _row([CAT], 0)]
    assert c.eos_index.tolist() == [76, 2]


def test_long_prompt_moves_text_after_a_near_comma():
    # 70 cats, a comma, 10 weighted dogs: the chunk fills up at the 4th dog; the comma is
    # 5 <= 20 tokens back, so the 4 dogs after it move to the second chunk.
    text = "cat " * 70 + ", " + "(dog:1.5) " * 10
    c = encode_prompt_chunks(text, PAD_EOS)
    assert c.ids.tolist() == [_row([CAT] * 70 + [COMMA]), _row([DOG] * 10)]
    assert (c.weights[0] == 1).all()
    assert c.weights[1].tolist() == [1.0] + [1.5] * 10 + [1.0] * 66
    assert c.eos_index.tolist() == [72, 11]


def test_long_prompt_without_backtrack():
    text = "cat " * 70 + ", " + "dog " * 10
    c = encode_prompt_chunks(text, PAD_EOS, comma_backtrack=0)
    assert c.ids.tolist() == [_row([CAT] * 70 + [COMMA] + [DOG] * 4), _row([DOG] * 6)]


def test_long_prompt_comma_too_far_back():
    text = "cat " * 50 + ", " + "dog " * 30       # comma 25 > 20 tokens back: plain split
    c = encode_prompt_chunks(text, PAD_EOS)
    assert c.ids.tolist() == [_row([CAT] * 50 + [COMMA] + [DOG] * 24), _row([DOG] * 6)]


def test_three_chunks_shape():
    c = encode_prompt_chunks("cat " * 200, PAD_ZERO)
    assert c.ids.shape == (3, 77) and c.weights.shape == (3, 77) and c.eos_index.shape == (3,)
    assert c.ids[2].tolist() == _row([CAT] * 50, 0)


def test_unweighted_reads_the_prompt_literally(tok):
    text = "(cat:1.5) BREAK [dog]"
    c = encode_prompt_chunks(text, PAD_EOS, weighted=False)
    ids = tok.encode(text)
    assert c.ids.tolist() == [_row(ids)] and (c.weights == 1).all()


def test_lora_tags_are_removed_and_returned():
    c = encode_prompt_chunks("a cat <lora:foo:0.5>", PAD_EOS)
    assert c.ids.tolist() == [_row([A, CAT])] and c.loras == [("foo", 0.5)]


def test_bad_chunk_arguments():
    with pytest.raises(InvalidArgumentError):
        encode_prompt_chunks("x", 49408)
    with pytest.raises(InvalidArgumentError):
        encode_prompt_chunks("x", PAD_EOS, comma_backtrack=75)


# -- apply_emphasis -----------------------------------------------------------------------------

def test_apply_emphasis_by_hand():
    z = np.array([[[1.0, 1.0], [3.0, 3.0]]], dtype=np.float32)      # mean 2
    out = apply_emphasis(z, np.array([[1.0, 2.0]]))                   # [[1,1],[6,6]]: mean 3.5, x 2/3.5
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[[4 / 7, 4 / 7], [24 / 7, 24 / 7]]], rtol=1e-6)
    np.testing.assert_allclose(out.mean(), z.mean(), rtol=1e-6)


def test_apply_emphasis_per_chunk_and_no_norm():
    rng = np.random.default_rng(0)
    z = rng.normal(1.0, 1.0, size=(2, 77, 8)).astype(np.float32)
    w = np.ones((2, 77), np.float32)
    w[0, 3] = 1.5
    out = apply_emphasis(z, w)
    np.testing.assert_allclose(out[1], z[1], rtol=1e-6)               # all-ones chunk unchanged
    np.testing.assert_allclose(out[0].mean(), z[0].mean(), rtol=1e-5)
    np.testing.assert_allclose(out[0, 3] / out[0, 2], 1.5 * z[0, 3] / z[0, 2], rtol=1e-5)
    raw = apply_emphasis(z, w, normalize=False)
    np.testing.assert_allclose(raw[0, 3], 1.5 * z[0, 3], rtol=1e-6)
    np.testing.assert_allclose(raw[0, 2], z[0, 2], rtol=1e-6)
    assert apply_emphasis(z.astype(np.float16), w).dtype == np.float16


def test_apply_emphasis_shape_check():
    with pytest.raises(InvalidArgumentError):
        apply_emphasis(np.zeros((1, 77, 4)), np.ones((1, 76)))
