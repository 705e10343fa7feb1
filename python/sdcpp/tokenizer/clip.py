"""The CLIP byte-level BPE tokenizer (OpenAI CLIP / OpenCLIP), without PyTorch.

API
---
``ClipTokenizer(vocab_path=None)``
    ``encode(text) -> list[int]``                      ids of the text, no BOS/EOS, no limit
    ``decode(ids, skip_special=True) -> str``          words joined with single spaces
    ``tokenize(text, pad_id, max_length=77, truncate=True) -> np.ndarray[int32]``
        BOS + ids + EOS, padded with ``pad_id`` to ``max_length``; with ``truncate``
        the ids are cut to ``max_length - 2`` (diffusers' ``truncation=True``);
        without it a longer text gives a longer, unpadded row. A list of texts
        gives a [B, L] array (L = the longest row when not truncating).
    ``vocab`` (dict token -> id), ``vocab_size``, ``token_to_id``, ``id_to_token``
``get_tokenizer()``: the shared instance over the bundled vocabulary.
Constants: ``BOS_ID`` 49406, ``EOS_ID`` 49407, ``VOCAB_SIZE`` 49408, ``MAX_LENGTH`` 77,
``PAD_EOS`` (= EOS_ID: SD1.x and SDXL's first encoder, CLIP ViT-L) and ``PAD_ZERO``
(= 0: SD2.x's OpenCLIP ViT-H and SDXL's second encoder, OpenCLIP ViT-bigG).

Vocabulary: ``data/bpe_simple_vocab_16e6.txt.gz`` (gzip; a header line, then one merge
per line). CLIP uses merges 1..48894; the vocabulary is the 256 byte symbols (in
``bytes_to_unicode`` order), the same with ``</w>``, one token per merge (the two halves
concatenated), then ``<|startoftext|>`` and ``<|endoftext|>``: 49408 tokens. The tables
are read once per file, on first use, and shared by every instance (thread-safe).

Encoding: :func:`sdcpp.tokenizer._text.clean_text` (ftfy-like fixes, HTML unescape, whitespace
collapse, lowercase), :func:`~sdcpp.tokenizer._text.pretokenize`, then each word's UTF-8 bytes
as byte symbols, ``</w>`` appended to the last one, merged pairwise by merge rank (lowest
first, every occurrence of that pair, until no known pair is left). Results are cached per
word. The literal strings ``<|startoftext|>`` / ``<|endoftext|>`` in a text map to their
special ids, as in OpenAI's and transformers' tokenizers.
"""
from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from ..errors import InvalidArgumentError
from ._text import SPECIAL_TOKENS, clean_text, pretokenize

__all__ = [
    "ClipTokenizer", "get_tokenizer", "bytes_to_unicode",
    "BOS_ID", "EOS_ID", "VOCAB_SIZE", "MAX_LENGTH", "PAD_EOS", "PAD_ZERO", "NUM_MERGES",
    "DEFAULT_VOCAB_PATH",
]

BOS_ID = 49406
EOS_ID = 49407
VOCAB_SIZE = 49408
MAX_LENGTH = 77
PAD_EOS = EOS_ID
PAD_ZERO = 0
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2          # 48894
END_OF_WORD = "</w>"
DEFAULT_VOCAB_PATH = Path(__file__).with_name("data") / "bpe_simple_vocab_16e6.txt.gz"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map byte -> printable character.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to
    U+0100 onwards in byte order. Insertion order is the vocabulary order.
    """
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@dataclass(frozen=True)
class _Tables:
    encoder: dict[str, int]
    decoder: list[str]
    ranks: dict[tuple[str, str], int]


_TABLES: dict[Path, _Tables] = {}
_TABLES_LOCK = threading.Lock()


def _read_tables(path: Path) -> _Tables:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except OSError as e:
        raise InvalidArgumentError(f"cannot read the CLIP vocabulary {str(path)!r}: {e}") from e
    merge_lines = lines[1:1 + NUM_MERGES]
    if len(merge_lines) != NUM_MERGES:
        raise InvalidArgumentError(
            f"CLIP vocabulary {str(path)!r} has {len(merge_lines)} merges, expected {NUM_MERGES}")
    merges = []
    for line in merge_lines:
        parts = line.split()
        if len(parts) != 2:
            raise InvalidArgumentError(f"bad merge line {line!r} in {str(path)!r}")
        merges.append((parts[0], parts[1]))
    byte_symbols = list(bytes_to_unicode().values())
    decoder = byte_symbols + [s + END_OF_WORD for s in byte_symbols]
    decoder += [a + b for a, b in merges]
    decoder += list(SPECIAL_TOKENS)
    encoder = {tok: i for i, tok in enumerate(decoder)}
    if len(encoder) != VOCAB_SIZE:
        raise InvalidArgumentError(
            f"CLIP vocabulary {str(path)!r} gives {len(encoder)} distinct tokens, expected {VOCAB_SIZE}")
    ranks = {pair: i for i, pair in enumerate(merges)}
    return _Tables(encoder, decoder, ranks)


def _tables_for(path: Path) -> _Tables:
    tables = _TABLES.get(path)
    if tables is None:
        with _TABLES_LOCK:
            tables = _TABLES.get(path)
            if tables is None:
                tables = _read_tables(path)
                _TABLES[path] = tables
    return tables


class ClipTokenizer:
    """CLIP BPE tokenizer over a ``bpe_simple_vocab_16e6.txt.gz``-format file (see module doc)."""

    _CACHE_LIMIT = 100_000

    def __init__(self, vocab_path: Optional[Union[str, Path]] = None):
        self.vocab_path = Path(vocab_path) if vocab_path is not None else DEFAULT_VOCAB_PATH
        self._tables: Optional[_Tables] = None
        self._cache: dict[str, tuple[int, ...]] = {}
        self._byte_symbols = bytes_to_unicode()
        self._byte_values = {s: b for b, s in self._byte_symbols.items()}

    # -- tables -------------------------------------------------------------
    @property
    def _t(self) -> _Tables:
        if self._tables is None:
            self._tables = _tables_for(self.vocab_path)
        return self._tables

    @property
    def vocab(self) -> dict[str, int]:
        """Token string -> id (shared; do not modify)."""
        return self._t.encoder

    @property
    def vocab_size(self) -> int:
        return len(self._t.decoder)

    def token_to_id(self, token: str) -> Optional[int]:
        return self._t.encoder.get(token)

    def id_to_token(self, token_id: int) -> str:
        return self._t.decoder[token_id]

    # -- encoding -----------------------------------------------------------
    def _bpe(self, word: str) -> tuple[int, ...]:
        t = self._t
        if word in SPECIAL_TOKENS:
            return (t.encoder[word],)
        symbols = [self._byte_symbols[b] for b in word.encode("utf-8")]
        symbols[-1] += END_OF_WORD
        ranks = t.ranks
        while len(symbols) > 1:
            best_rank = None
            best = None
            for pair in zip(symbols, symbols[1:]):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best_rank, best = r, pair
            if best is None:
                break
            first, second = best
            merged = first + second
            out: list[str] = []
            i = 0
            n = len(symbols)
            while i < n:
                if i + 1 < n and symbols[i] == first and symbols[i + 1] == second:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            symbols = out
        return tuple(t.encoder[s] for s in symbols)

    def _encode_word(self, word: str) -> tuple[int, ...]:
        ids = self._cache.get(word)
        if ids is None:
            ids = self._bpe(word)
            if len(self._cache) >= self._CACHE_LIMIT:
                self._cache.clear()
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``: no BOS/EOS, no length limit."""
        if not isinstance(text, str):
            raise InvalidArgumentError(f"text must be a str, got {type(text).__name__}")
        ids: list[int] = []
        for word in pretokenize(clean_text(text)):
            ids.extend(self._encode_word(word))
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of ``ids``: ``</w>`` becomes a space, bytes are read as UTF-8
        (invalid sequences become U+FFFD), the result is stripped."""
        t = self._t
        buf = bytearray()
        for i in ids:
            i = int(i)
            if not 0 <= i < len(t.decoder):
                raise InvalidArgumentError(f"token id {i} is outside the vocabulary (0..{len(t.decoder) - 1})")
            tok = t.decoder[i]
            if tok in SPECIAL_TOKENS:
                if not skip_special:
                    buf += tok.encode("ascii") + b" "
                continue
            end = tok.endswith(END_OF_WORD)
            if end:
                tok = tok[: -len(END_OF_WORD)]
            buf += bytes(self._byte_values[c] for c in tok)
            if end:
                buf += b" "
        return buf.decode("utf-8", errors="replace").strip()

    def tokenize(self, text: Union[str, Sequence[str]], pad_id: int,
                 max_length: int = MAX_LENGTH, truncate: bool = True) -> np.ndarray:
        """BOS + ids + EOS, padded with ``pad_id``: int32 [max_length] (or [B, L] for a list)."""
        if max_length < 2:
            raise InvalidArgumentError(f"max_length must be at least 2, got {max_length}")
        if not 0 <= int(pad_id) < VOCAB_SIZE:
            raise InvalidArgumentError(f"pad_id {pad_id} is outside the vocabulary")
        if isinstance(text, str):
            return self._row(text, int(pad_id), max_length, truncate)
        rows = [self._row(t, int(pad_id), max_length, truncate) for t in text]
        width = max((len(r) for r in rows), default=max_length)
        out = np.full((len(rows), width), int(pad_id), dtype=np.int32)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out

    def _row(self, text: str, pad_id: int, max_length: int, truncate: bool) -> np.ndarray:
        ids = self.encode(text)
        if truncate:
            ids = ids[: max_length - 2]
        row = [BOS_ID, *ids, EOS_ID]
        if len(row) < max_length:
            row += [pad_id] * (max_length - len(row))
        return np.asarray(row, dtype=np.int32)


_DEFAULT: Optional[ClipTokenizer] = None
_DEFAULT_LOCK = threading.Lock()


def get_tokenizer() -> ClipTokenizer:
    """The process-wide tokenizer over the bundled vocabulary (created on first call)."""
    global _DEFAULT
    if _DEFAULT is None:
        with _DEFAULT_LOCK:
            if _DEFAULT is None:
                _DEFAULT = ClipTokenizer()
    return _DEFAULT
