"""Text cleanup and pre-tokenization for the CLIP tokenizer, in pure Python.

OpenAI's reference tokenizer cleans a prompt with ``ftfy.fix_text``, unescapes
HTML entities twice, strips it, collapses runs of whitespace to one space and
lowercases it; then it splits the text with the pattern::

    <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+

(the ``regex`` module's Unicode classes). This module does the same without
``ftfy`` or ``regex`` (sdcpp has no runtime dependency besides numpy, and the
output must not depend on which optional packages happen to be installed):

- :func:`clean_text` applies the part of ``ftfy.fix_text`` (default settings)
  that does not guess at encodings: surrogate repair, HTML unescaping, C1
  controls read as Windows-1252, Latin ligatures, full/half-width forms,
  curly quotes, terminal escapes, control characters, NFC. It leaves out
  ftfy's mojibake repair (``fix_encoding`` and its helpers ``restore_byte_a0``,
  ``replace_lossy_sequences``, ``decode_inconsistent_utf8``), which is
  heuristic and only matters for text that was decoded with the wrong codec,
  and ftfy's upper-case HTML entity names (``&EACUTE;``).
- :func:`pretokenize` splits with the pattern above, taking the Unicode
  letter/number classes from :func:`unicodedata.category` (``L*`` letters,
  ``N*`` numbers). The Unicode version is the one Python ships, which can
  differ from ``regex``'s only for code points assigned in newer versions.
"""
from __future__ import annotations

import html
import re
import unicodedata
from functools import lru_cache

__all__ = ["clean_text", "fix_text", "pretokenize", "SPECIAL_TOKENS"]

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")

# ---------------------------------------------------------------------------
# ftfy-like fixes

# Latin typographic ligatures and legacy digraph code points -> their letters.
_LIGATURES = {
    0x0132: "IJ", 0x0133: "ij", 0x0149: "\u02bcn",
    0x01C4: "D\u017d", 0x01C5: "D\u017e", 0x01C6: "d\u017e",
    0x01C7: "LJ", 0x01C8: "Lj", 0x01C9: "lj",
    0x01CA: "NJ", 0x01CB: "Nj", 0x01CC: "nj",
    0x01F1: "DZ", 0x01F2: "Dz", 0x01F3: "dz",
    0xFB00: "ff", 0xFB01: "fi", 0xFB02: "fl", 0xFB03: "ffi", 0xFB04: "ffl",
    0xFB05: "\u017ft", 0xFB06: "st",
}

# Curly quotes (and the modifier-letter apostrophe) -> ASCII quotes.
_QUOTES = {0x02BC: "'", 0x2018: "'", 0x2019: "'", 0x201A: "'", 0x201B: "'",
           0x201C: '"', 0x201D: '"', 0x201E: '"', 0x201F: '"'}

# Control characters with no visible effect, deleted: C0 except tab, LF, FF,
# CR; DEL; deprecated Arabic format controls; BOM; interlinear annotations and
# the object replacement character.
_CONTROLS = dict.fromkeys(
    [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F,
     *range(0x206A, 0x2070), 0xFEFF, *range(0xFFF9, 0xFFFD)])

_ANSI_ESCAPE = re.compile("\x1b\\[[0-9;]*[A-Za-z]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_C1 = re.compile("[\x80-\x9f]")
_LINE_BREAKS = re.compile("\r\n|[\r\u2028\u2029\x85]")


@lru_cache(maxsize=1)
def _char_table() -> dict[int, str | None]:
    """One str.translate table: ligatures, widths, quotes, deleted controls."""
    table: dict[int, str | None] = {0x3000: " "}       # ideographic space
    for cp in range(0xFF01, 0xFFF0):                  # full/half-width forms
        ch = chr(cp)
        normal = unicodedata.normalize("NFKC", ch)
        if normal != ch:
            table[cp] = normal
    table.update(_LIGATURES)
    table.update(_QUOTES)
    table.update(_CONTROLS)
    return table


def _join_surrogates(m: re.Match) -> str:
    hi, lo = (ord(c) for c in m.group(0))
    return chr(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))


def _c1_as_cp1252(m: re.Match) -> str:
    byte = m.group(0).encode("latin-1")
    try:
        return byte.decode("cp1252")
    except UnicodeDecodeError:      # 0x81 0x8D 0x8F 0x90 0x9D: undefined, kept
        return m.group(0)


def _unescape_all(text: str) -> str:
    for _ in range(16):
        new = html.unescape(text)
        if new == text:
            break
        text = new
    return text


def fix_text(text: str) -> str:
    """The encoding-independent subset of ``ftfy.fix_text`` (see module doc).

    Like ftfy, HTML entities are decoded (repeatedly) only when the text has
    no ``<``, and the fixes are repeated until the text stops changing.
    """
    unescape = "<" not in text
    for _ in range(8):
        before = text
        if _SURROGATE.search(text):
            text = _SURROGATE_PAIR.sub(_join_surrogates, text)
            text = _SURROGATE.sub("\ufffd", text)
        if unescape and "&" in text:
            text = _unescape_all(text)
        text = _C1.sub(_c1_as_cp1252, text)
        if "\x1b" in text:                     # before ESC itself is deleted below
            text = _ANSI_ESCAPE.sub("", text)
        text = text.translate(_char_table())
        text = _LINE_BREAKS.sub("\n", text)
        text = unicodedata.normalize("NFC", text)
        if text == before:
            break
    return text


def clean_text(text: str) -> str:
    """OpenAI CLIP's cleanup: fix, unescape HTML twice, collapse whitespace, lowercase."""
    text = fix_text(text)
    text = html.unescape(html.unescape(text))
    # str.split() splits on exactly the characters re's "\s" matches in str patterns
    return " ".join(text.split()).lower()


# ---------------------------------------------------------------------------
# pre-tokenizer

_LETTER, _NUMBER, _SPACE, _OTHER = 0, 1, 2, 3
_CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")


@lru_cache(maxsize=65536)
def _char_class(ch: str) -> int:
    if ch.isspace() and not "\x1c" <= ch <= "\x1f":   # regex's \s is White_Space
        return _SPACE
    major = unicodedata.category(ch)[0]
    if major == "L":
        return _LETTER
    if major == "N":
        return _NUMBER
    return _OTHER


def pretokenize(text: str) -> list[str]:
    """Split cleaned text into words exactly as CLIP's pre-tokenizer regex does.

    Alternatives are tried in the pattern's order at each position (leftmost
    first, like ``regex.findall``); whitespace that no alternative matches is
    skipped.
    """
    out: list[str] = []
    n = len(text)
    i = 0
    cls = _char_class
    while i < n:
        ch = text[i]
        if ch == "<":
            special = next((s for s in SPECIAL_TOKENS if text.startswith(s, i)), None)
            if special is not None:
                out.append(special)
                i += len(special)
                continue
        elif ch == "'":
            suffix = next((s for s in _CONTRACTIONS if text.startswith(s, i + 1)), None)
            if suffix is not None:
                out.append("'" + suffix)
                i += 1 + len(suffix)
                continue
        kind = cls(ch)
        if kind == _SPACE:
            i += 1
            continue
        if kind == _NUMBER:          # [\p{N}]: one character at a time
            out.append(ch)
            i += 1
            continue
        j = i + 1
        while j < n and cls(text[j]) == kind:
            j += 1
        out.append(text[i:j])
        i = j
    return out
