"""A1111-style prompts: emphasis weights, BREAK, LoRA tags, long prompts in 77-token chunks.

API
---
``parse_prompt_attention(text) -> list[tuple[str, float]]``
    Runs of text with their weights. ``(x)`` multiplies by 1.1, ``[x]`` divides by 1.1,
    ``(x:w)`` multiplies by ``w`` (a number ``[+-]?[.0-9]+``, spaces allowed around it,
    followed by ``)``); nesting multiplies; brackets still open at the end close there;
    ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal characters; a closing bracket with no
    matching opener, or a ``:`` not starting a weight, is literal text. ``BREAK`` (upper case,
    whole word, surrounding whitespace eaten) gives the marker ``("BREAK", -1.0)``. Adjacent
    runs of equal weight are merged. An empty prompt gives ``[("", 1.0)]``.
``extract_lora_tags(text) -> tuple[str, list[tuple[str, float]]]``
    Removes every ``<kind:args>`` extra-network tag (``kind`` a word; A1111 removes them all)
    and returns the text and the ``lora`` / ``lyco`` ones as ``(name, multiplier)`` in prompt
    order. ``<lora:name>`` has multiplier 1.0; ``<lora:name:0.5>`` 0.5; ``<lora:name:te=0.5>``
    too; A1111's third positional value (a separate U-Net multiplier) is ignored.
``encode_prompt_chunks(text, pad_id, weighted=True, *, comma_backtrack=20, tokenizer=None)``
    ``-> PromptChunks(ids [k,77] int32, weights [k,77] float32, eos_index [k] int32, loras)``.
    LoRA tags are extracted first. The runs of :func:`parse_prompt_attention` are tokenized
    one by one (so a run boundary is also a word boundary) and laid into chunks of 75 tokens,
    each written as BOS + 75 + EOS, filled with EOS and, after the first EOS, with ``pad_id``.
    ``BREAK`` ends the current chunk. When a token would start a new chunk and the chunk's
    last comma is at most ``comma_backtrack`` tokens back, the tokens after the comma move
    to the next chunk (A1111's "comma padding backtrack", default 20; 0 turns it off).
    ``weighted=False`` reads the prompt literally (no brackets, no BREAK; all weights 1).
    BOS/EOS/padding have weight 1.0. ``eos_index[i]`` is the position of the first EOS in
    chunk ``i`` (the pooled token for CLIP's pooled output).
``apply_emphasis(hidden, weights, normalize=True) -> hidden``
    A1111's "Original" emphasis on the text encoder output: per chunk, ``z *= w`` per token,
    then ``z *= mean(z_before) / mean(z_after)``. ``hidden`` is [..., T, C], ``weights`` [..., T];
    means are taken per chunk (over T and C). ``normalize=False`` is A1111's "No norm".

Deliberate differences from A1111 (``modules/prompt_parser.py``, ``sd_hijack_clip.py``):
a ``BREAK`` inside brackets still breaks (A1111 multiplies its marker's -1 weight and then
tokenizes it as the word "break"); BREAK markers are never merged with a neighbouring
run; a malformed number such as ``(a:1.2.3)`` is literal text (A1111 raises); prompt
editing/scheduling (``[a:b:0.5]``, ``[a|b]``) and comment lines are not handled here.
Textual-inversion words become their embedding's ids when ``embeddings`` is given.
"""
from __future__ import annotations

import re
from typing import Mapping, NamedTuple, Optional

import numpy as np

from ..errors import InvalidArgumentError
from .clip import BOS_ID, EOS_ID, MAX_LENGTH, ClipTokenizer, get_tokenizer

__all__ = [
    "parse_prompt_attention", "extract_lora_tags", "encode_prompt_chunks",
    "apply_emphasis", "PromptChunks", "BREAK", "CHUNK_TOKENS",
]

BREAK = ("BREAK", -1.0)
CHUNK_TOKENS = MAX_LENGTH - 2               # 75 prompt tokens per chunk
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

_WEIGHT = re.compile(r":\s*([+-]?[.\d]+)\s*\)")
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*", re.S)
_PLAIN_END = re.compile(r"[\\()\[\]:]")
_ESCAPABLE = "()[]\\"
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_LORA_KINDS = ("lora", "lyco")


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split an A1111 prompt into (text, weight) runs; see the module doc."""
    runs: list[list] = []           # [text, weight, is_break]
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for run in runs[start:]:
            if not run[2]:
                run[1] *= factor

    def add_text(piece: str) -> None:
        for k, part in enumerate(_BREAK_SPLIT.split(piece)):
            if k:
                runs.append([BREAK[0], BREAK[1], True])
            runs.append([part, 1.0, False])

    pos, n = 0, len(text)
    while pos < n:
        ch = text[pos]
        if ch == "\\":
            nxt = text[pos + 1] if pos + 1 < n else ""
            if nxt and nxt in _ESCAPABLE:
                runs.append([nxt, 1.0, False])
                pos += 2
            else:                    # a lone backslash is dropped, as in A1111
                pos += 1
        elif ch == "(":
            round_open.append(len(runs))
            pos += 1
        elif ch == "[":
            square_open.append(len(runs))
            pos += 1
        elif ch == ":":
            m = _WEIGHT.match(text, pos)
            weight = _to_float(m.group(1)) if m else None
            if weight is not None and round_open:
                scale_from(round_open.pop(), weight)
                pos = m.end()
            else:
                add_text(":")
                pos += 1
        elif ch == ")" and round_open:
            scale_from(round_open.pop(), ROUND_MULTIPLIER)
            pos += 1
        elif ch == "]" and square_open:
            scale_from(square_open.pop(), SQUARE_MULTIPLIER)
            pos += 1
        elif ch in ")]":
            add_text(ch)
            pos += 1
        else:
            m = _PLAIN_END.search(text, pos)
            end = m.start() if m else n
            add_text(text[pos:end])
            pos = end

    for start in round_open:
        scale_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        scale_from(start, SQUARE_MULTIPLIER)

    merged: list[list] = []
    for run in runs:
        if merged and not run[2] and not merged[-1][2] and merged[-1][1] == run[1]:
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    if not merged:
        return [("", 1.0)]
    return [(t, float(w)) for t, w, _ in merged]


def _to_float(s: str) -> Optional[float]:
    try:
        return float(s)
    except ValueError:
        return None


def extract_lora_tags(text: str) -> tuple[str, list[tuple[str, float]]]:
    """Remove extra-network tags; return the text and the LoRA (name, multiplier) pairs."""
    loras: list[tuple[str, float]] = []

    def take(m: re.Match) -> str:
        kind, args = m.group(1), m.group(2)
        if kind in _LORA_KINDS:
            positional: list[str] = []
            named: dict[str, str] = {}
            for item in args.split(":"):
                key, eq, value = item.partition("=")
                if eq:
                    named[key.strip()] = value
                else:
                    positional.append(item)
            name = positional[0].strip() if positional else ""
            if not name:
                raise InvalidArgumentError(f"LoRA tag {m.group(0)!r} has no name")
            raw = named.get("te", positional[1] if len(positional) > 1 else "1.0")
            mult = _to_float(raw.strip())
            if mult is None:
                raise InvalidArgumentError(f"LoRA tag {m.group(0)!r}: {raw!r} is not a number")
            loras.append((name, mult))
        return ""

    return _EXTRA_NETWORK.sub(take, text), loras


class PromptChunks(NamedTuple):
    ids: np.ndarray          # int32 [k, 77]
    weights: np.ndarray      # float32 [k, 77]
    eos_index: np.ndarray    # int32 [k]: first EOS per chunk
    loras: list[tuple[str, float]]


def encode_prompt_chunks(text: str, pad_id: int, weighted: bool = True, *,
                         comma_backtrack: int = 20,
                         tokenizer: Optional[ClipTokenizer] = None,
                         embeddings: Optional[Mapping[tuple, tuple]] = None) -> PromptChunks:
    """Tokenize an A1111 prompt into k chunks of 77 ids with per-token weights; see the module doc.

    embeddings: {token ids of a word: the ids that replace it} (textual inversion, see
    sdcpp.embeddings): where the word's tokens appear, its ids are placed as one group that is
    never split between chunks (A1111)."""
    if not isinstance(text, str):
        raise InvalidArgumentError(f"prompt must be a str, got {type(text).__name__}")
    if not 0 <= comma_backtrack < CHUNK_TOKENS:
        raise InvalidArgumentError(f"comma_backtrack must be in 0..{CHUNK_TOKENS - 1}, got {comma_backtrack}")
    tok = tokenizer if tokenizer is not None else get_tokenizer()
    if not 0 <= int(pad_id) < tok.vocab_size:
        raise InvalidArgumentError(f"pad_id {pad_id} is outside the vocabulary")
    comma = tok.token_to_id(",</w>")
    text, loras = extract_lora_tags(text)
    runs = parse_prompt_attention(text) if weighted else [(text, 1.0)]

    chunks: list[tuple[list[int], list[float]]] = []
    cur_ids: list[int] = []
    cur_w: list[float] = []
    last_comma = -1

    def close_chunk() -> None:
        nonlocal cur_ids, cur_w, last_comma
        fill = CHUNK_TOKENS - len(cur_ids)
        chunks.append(([BOS_ID, *cur_ids, *[EOS_ID] * fill, EOS_ID],
                       [1.0, *cur_w, *[1.0] * fill, 1.0]))
        cur_ids, cur_w, last_comma = [], [], -1

    for run_text, weight in runs:
        if (run_text, weight) == BREAK:
            close_chunk()
            continue
        for group in _token_groups(tok.encode(run_text), embeddings):
            if isinstance(group, tuple):           # an embedding's ids: kept in one chunk
                if len(cur_ids) + len(group) > CHUNK_TOKENS:
                    close_chunk()
                cur_ids.extend(group)
                cur_w.extend([weight] * len(group))
                continue
            token = group
            if token == comma:
                last_comma = len(cur_ids)
            elif (comma_backtrack and len(cur_ids) == CHUNK_TOKENS and last_comma != -1
                  and len(cur_ids) - last_comma <= comma_backtrack):
                cut = last_comma + 1
                moved_ids, moved_w = cur_ids[cut:], cur_w[cut:]
                cur_ids, cur_w = cur_ids[:cut], cur_w[:cut]
                close_chunk()
                cur_ids, cur_w = moved_ids, moved_w
            if len(cur_ids) == CHUNK_TOKENS:
                close_chunk()
            cur_ids.append(token)
            cur_w.append(weight)
    if cur_ids or not chunks:
        close_chunk()

    ids = np.asarray([c[0] for c in chunks], dtype=np.int32)
    weights = np.asarray([c[1] for c in chunks], dtype=np.float32)
    eos_index = np.argmax(ids == EOS_ID, axis=1).astype(np.int32)
    if int(pad_id) != EOS_ID:
        after_eos = np.arange(ids.shape[1])[None, :] > eos_index[:, None]
        ids[after_eos] = int(pad_id)
    return PromptChunks(ids, weights, eos_index, loras)


def _token_groups(tokens: list[int], embeddings: Optional[Mapping[tuple, tuple]]):
    """The tokens, with each longest match of an embedding's word replaced by its id tuple."""
    if not embeddings:
        yield from tokens
        return
    by_first: dict[int, list[tuple]] = {}
    for seq in sorted(embeddings, key=len, reverse=True):
        by_first.setdefault(seq[0], []).append(seq)
    i = 0
    while i < len(tokens):
        for seq in by_first.get(tokens[i], ()):
            if tuple(tokens[i:i + len(seq)]) == seq:
                yield tuple(embeddings[seq])
                i += len(seq)
                break
        else:
            yield tokens[i]
            i += 1


def apply_emphasis(hidden: np.ndarray, weights: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Scale each token's hidden state by its weight, keeping each chunk's mean (A1111 "Original")."""
    hidden = np.asarray(hidden)
    weights = np.asarray(weights)
    if hidden.ndim < 2 or weights.shape != hidden.shape[:-1]:
        raise InvalidArgumentError(
            f"weights shape {weights.shape} must equal hidden shape {hidden.shape} without its last axis")
    out_dtype = hidden.dtype if np.issubdtype(hidden.dtype, np.floating) else np.float32
    z = hidden.astype(np.float64)
    scaled = z * weights.astype(np.float64)[..., None]
    if normalize:
        before = z.mean(axis=(-2, -1), keepdims=True)
        after = scaled.mean(axis=(-2, -1), keepdims=True)
        safe = np.where(after == 0, 1.0, after)
        scaled *= np.where(after == 0, 1.0, before / safe)
    return scaled.astype(out_dtype)
