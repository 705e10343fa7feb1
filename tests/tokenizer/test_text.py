"""The pure-Python cleanup and pre-tokenizer against ftfy and the regex module (test-only)."""
from __future__ import annotations

import html
import random
import re
import unicodedata

import pytest

from sdcpp.tokenizer._text import _char_class, clean_text, pretokenize

CLIP_PATTERN = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"""
                r"""[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")


@pytest.fixture(scope="module")
def clip_regex():
    regex = pytest.importorskip("regex")
    return regex.compile(CLIP_PATTERN, regex.IGNORECASE)


def openai_clean(text: str) -> str:
    ftfy = pytest.importorskip("ftfy")
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


CLEAN_CASES = [
    "Tom &amp; Jerry", "&amp;amp;amp;", "a &lt;b&gt;", "<b>&amp;</b>", "P&eacute;rez",
    "this&not that", "&#8217;s", "&nbsp;x", "Café", "cafe\u0301", "naïve résumé",
    "\ufb01ne \ufb02ow \ufb03", "\u0133s \u01c6", "\uff21\uff22\uff23 \uff11\uff12 \uff01",
    "\uff76\uff80\uff76\uff85", "\u3000x", "don\u2019t \u201cquoted\u201d \u2018single\u2019",
    "a\x00b\x07c\x1bd", "\x1b[31mred\x1b[0m", "\ufeffbom", "x\ufffcy", "line\r\nbreak\u2028x\x85y",
    "\x80\x93\x81", "\ud83d\ude00 \ud83d", "\u0130stanbul", "\u03a3\u039f\u03a3 \u039f\u0394\u039f\u03a3",
    "\u00a0nbsp\u00a0", "\t tabs \n\n", "MiXeD   CaSe", "", "   ",
]


@pytest.mark.parametrize("text", CLEAN_CASES)
def test_clean_text_matches_ftfy_pipeline(text):
    assert clean_text(text) == openai_clean(text)


def test_clean_text_known_gap_mojibake():
    # ftfy repairs UTF-8 read as Latin-1/Windows-1252 ("cafÃ©"); the built-in cleanup does not
    assert clean_text("caf\u00c3\u00a9") == "caf\u00e3\u00a9"


def test_char_classes_match_regex_for_assigned_code_points():
    regex = pytest.importorskip("regex")
    letter, number, space = (regex.compile(p) for p in (r"\p{L}", r"\p{N}", r"\s"))
    bad = []
    for cp in range(0x30000):
        ch = chr(cp)
        if 0xD800 <= cp < 0xE000 or unicodedata.category(ch) == "Cn":
            continue  # unassigned in Python's Unicode version: may be assigned in regex's
        want = 2 if space.match(ch) else 0 if letter.match(ch) else 1 if number.match(ch) else 3
        if _char_class(ch) != want:
            bad.append(hex(cp))
    assert not bad


@pytest.mark.parametrize("text", [
    "it's don't we're they've i'm you'll he'd", "''s", "!'s", "'", "'x", "a'", "rock'n'roll",
    "1234", "x²½", "hello,world!!!", "<|endoftext|>", "a<|startoftext|>b", ",<|endoftext|>",
    "<|endoftext", "e\u0301\u0301", "🙂🙂x", "a  b", "",
])
def test_pretokenize_matches_regex(clip_regex, text):
    assert pretokenize(text) == clip_regex.findall(text)


def test_pretokenize_random_matches_regex(clip_regex):
    rng = random.Random(7)
    alphabet = list("ab z09'!.,<|>()") + ["'s", "'re", "'ll", "é", "你", "🙂", "\u0301", "²",
                                             "<|endoftext|>", "\u00a0", "\u200b"]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        assert pretokenize(text) == clip_regex.findall(text), repr(text)


def test_no_optional_dependency_is_used():
    """The tokenizer runs, with the same ids, when ftfy, regex and torch cannot be imported."""
    import os
    import subprocess
    import sys
    import sdcpp
    code = (
        "import sys\n"
        "for m in ('ftfy', 'regex', 'torch', 'transformers'): sys.modules[m] = None\n"
        "from sdcpp.tokenizer import get_tokenizer, encode_prompt_chunks\n"
        "print(get_tokenizer().encode('Tom &amp; Jerry don\\u2019t caf\\u00e9 1234'))\n"
        "print(encode_prompt_chunks('a (cat:1.5)', 0).ids.shape)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(sdcpp.__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout.split("\n")
    from sdcpp.tokenizer import get_tokenizer
    assert out[0] == str(get_tokenizer().encode("Tom & Jerry don't café 1 2 3 4"))
    assert out[1] == "(1, 77)"
