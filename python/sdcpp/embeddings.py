"""Textual-inversion embeddings: files of input vectors that stand for a word in the prompt.

Formats (read without torch; pickles through sdcpp's no-code unpickler):
- A1111 ``.pt``: ``string_to_param.*`` [n, C];
- A1111 / civitai ``.safetensors``: ``emb_params`` [n, C], or SDXL ``clip_l`` [n, 768] +
  ``clip_g`` [n, 1280];
- diffusers ``learned_embeds.bin`` / ``.safetensors``: one tensor named after its token, [C] or [n, C].
The word is the file's stem (as A1111 names them), matched case-insensitively on the prompt's
CLIP tokens, so ``(easynegative:1.2)`` and ``BREAK`` work around it like any word. A match
becomes n consecutive tokens whose input embeddings are the file's vectors (diffusers'
``load_textual_inversion`` reaches the same numbers by adding n tokens to the vocabulary).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Union

import numpy as np

from . import errors

PathLike = Union[str, os.PathLike]
SUFFIXES = (".pt", ".bin", ".safetensors")
MAX_VECTORS = 75      # one prompt chunk


@dataclass
class Embedding:
    name: str                          # the word in the prompt (the file stem)
    vectors: dict[str, np.ndarray]     # "" (one encoder) or "clip_l" / "clip_g" -> float32 [n, C]
    path: Path

    @property
    def n_vectors(self) -> int:
        return next(iter(self.vectors.values())).shape[0]


def read_embedding(path: PathLike) -> Embedding:
    """Read one embedding file; raises :class:`sdcpp.errors.EmbeddingError` naming the file."""
    from .io import read_tensors

    path = Path(path)
    if not path.is_file():
        raise errors.EmbeddingError(f"{path}: no such embedding file")
    try:
        tensors = read_tensors(path)
    except errors.SdcppError as e:
        raise errors.EmbeddingError(f"{path}: not a readable embedding file ({e})") from e
    if not tensors:
        raise errors.EmbeddingError(f"{path}: holds no tensors, so it is not an embedding")
    if "clip_l" in tensors or "clip_g" in tensors:
        missing = {"clip_l", "clip_g"} - set(tensors)
        if missing:
            raise errors.EmbeddingError(f"{path}: an SDXL embedding needs clip_l and clip_g; {sorted(missing)} is missing")
        vectors = {k: _matrix(path, k, tensors[k]) for k in ("clip_l", "clip_g")}
        if vectors["clip_l"].shape[0] != vectors["clip_g"].shape[0]:
            raise errors.EmbeddingError(f"{path}: clip_l has {vectors['clip_l'].shape[0]} vectors but clip_g "
                                        f"{vectors['clip_g'].shape[0]}")
    else:
        names = [k for k in tensors if k.startswith("string_to_param.")] or (
            ["emb_params"] if "emb_params" in tensors else list(tensors))
        if len(names) != 1:
            raise errors.EmbeddingError(f"{path}: expected one embedding tensor, found {sorted(tensors)[:8]}")
        vectors = {"": _matrix(path, names[0], tensors[names[0]])}
    return Embedding(path.stem, vectors, path)


def _matrix(path: Path, key: str, record) -> np.ndarray:
    shape = tuple(record.shape)
    if len(shape) == 1:
        shape = (1, shape[0])
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise errors.EmbeddingError(f"{path}: tensor {key!r} has shape {tuple(record.shape)}, expected [n, width]")
    if shape[0] > MAX_VECTORS:
        raise errors.EmbeddingError(f"{path}: tensor {key!r} holds {shape[0]} vectors, more than the "
                                    f"{MAX_VECTORS} of one prompt chunk")
    m = np.asarray(record.numpy(), dtype=np.float32).reshape(shape)
    if not np.all(np.isfinite(m)):
        raise errors.EmbeddingError(f"{path}: tensor {key!r} holds non-finite values")
    return np.ascontiguousarray(m)


def embedding_files(sources: Iterable[PathLike]) -> list[Path]:
    """Files from a list of files and folders (a folder gives its embedding files, sorted)."""
    out: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES))
        elif p.is_file():
            out.append(p)
        else:
            raise errors.EmbeddingError(f"{p}: no such embedding file or folder")
    return out


class EmbeddingTable:
    """The embeddings of one model: the extra input rows of each text encoder and the token
    sequences that call them up in a prompt.

    slots: the model's encoders as (key, width) with key "" for the single encoder of SD1/SD2
    and "clip_l", "clip_g" for SDXL. Ids vocab_size + offset .. stand for the rows."""

    def __init__(self, slots: Sequence[tuple[str, int]], vocab_size: int):
        self.slots = list(slots)
        self.vocab_size = int(vocab_size)
        self.embeddings: dict[str, Embedding] = {}

    def add(self, emb: Embedding) -> None:
        keys = [k for k, _ in self.slots]
        vectors = emb.vectors
        if keys == [""] and set(vectors) != {""}:
            raise errors.EmbeddingError(f"{emb.path}: an SDXL embedding (clip_l/clip_g) does not fit this "
                                        "single-encoder model")
        if keys != [""] and set(vectors) == {""}:
            raise errors.EmbeddingError(f"{emb.path}: a single-encoder (SD1/SD2) embedding does not fit this SDXL "
                                        "model, which needs clip_l and clip_g vectors")
        for key, width in self.slots:
            got = vectors[key].shape[1]
            if got != width:
                raise errors.EmbeddingError(f"{emb.path}: vectors{' ' + key if key else ''} are {got} wide, but this "
                                            f"model's text encoder is {width} wide (an embedding for another family)")
        if not emb.name.strip():
            raise errors.EmbeddingError(f"{emb.path}: the file name gives no word to use in prompts")
        self.embeddings[emb.name.lower()] = emb

    def __len__(self) -> int:
        return len(self.embeddings)

    def names(self) -> list[str]:
        return [e.name for e in self.embeddings.values()]

    def extra(self, key: str) -> np.ndarray:
        """float32 [total vectors, width] for the encoder `key`, in id order."""
        width = dict(self.slots)[key]
        rows = [e.vectors[key] for e in self.embeddings.values()]
        return np.concatenate(rows) if rows else np.zeros((0, width), np.float32)

    def token_map(self, tokenizer) -> Mapping[tuple[int, ...], tuple[int, ...]]:
        """{CLIP token ids of the name: the ids that replace them}."""
        out: dict[tuple[int, ...], tuple[int, ...]] = {}
        offset = self.vocab_size
        for emb in self.embeddings.values():
            seq = tuple(tokenizer.encode(emb.name))
            n = emb.n_vectors
            if seq:
                out[seq] = tuple(range(offset, offset + n))
            offset += n
        return out


__all__ = ["Embedding", "EmbeddingTable", "read_embedding", "embedding_files", "SUFFIXES"]
