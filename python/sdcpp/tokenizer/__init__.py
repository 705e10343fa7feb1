"""CLIP tokenizer and A1111 prompt parsing, in pure Python + numpy.

- :mod:`sdcpp.tokenizer.clip`: :class:`ClipTokenizer` (``encode``, ``decode``, ``tokenize``),
  :func:`get_tokenizer` (shared instance over the bundled vocabulary), special ids and pads.
- :mod:`sdcpp.tokenizer.prompt`: :func:`parse_prompt_attention`, :func:`extract_lora_tags`,
  :func:`encode_prompt_chunks` (-> :class:`PromptChunks`), :func:`apply_emphasis`.
- :mod:`sdcpp.tokenizer._text`: text cleanup and pre-tokenization (``clean_text``, ``pretokenize``).

No runtime dependency besides numpy: ``ftfy`` and ``regex`` are not used even when
installed, so the ids never depend on the environment (see ``_text`` for what the built-in
cleanup does and does not cover).

Typical pipeline use::

    from sdcpp.tokenizer import encode_prompt_chunks, apply_emphasis, PAD_EOS, PAD_ZERO
    chunks = encode_prompt_chunks(prompt, PAD_EOS)          # SD1 / SDXL encoder 1
    # run the text encoder on chunks.ids (k rows of 77), pool at chunks.eos_index,
    # then hidden = apply_emphasis(hidden, chunks.weights) and concatenate the k chunks
    # along the token axis; chunks.loras lists the <lora:name:mult> tags.
"""
from __future__ import annotations

from .clip import (
    BOS_ID, EOS_ID, MAX_LENGTH, PAD_EOS, PAD_ZERO, VOCAB_SIZE, ClipTokenizer, get_tokenizer,
)
from .prompt import (
    BREAK, CHUNK_TOKENS, PromptChunks, apply_emphasis, encode_prompt_chunks, extract_lora_tags,
    parse_prompt_attention,
)

__all__ = [
    "ClipTokenizer", "get_tokenizer", "BOS_ID", "EOS_ID", "MAX_LENGTH", "PAD_EOS", "PAD_ZERO",
    "VOCAB_SIZE", "parse_prompt_attention", "extract_lora_tags", "encode_prompt_chunks",
    "apply_emphasis", "PromptChunks", "BREAK", "CHUNK_TOKENS",
]
