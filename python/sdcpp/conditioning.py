"""Prompt -> U-Net conditioning for each family (A1111 prompt syntax, diffusers numerics).

- sd1: CLIP-L hidden states after `layers` layers with the final LayerNorm (clip_skip 1 = all).
- sd2: OpenCLIP-H penultimate layer + final LayerNorm (a diffusers folder already drops the
  last layer, so its encoder runs whole).
- sdxl (incl. SSD-1B, Vega): CLIP-L and OpenCLIP-bigG penultimate layers, no final LayerNorm,
  concatenated on channels (768 + 1280); pooled = bigG's projected EOS state of the first chunk.
  An empty negative prompt gives zeros (diffusers' force_zeros_for_empty_prompt).
Long prompts are encoded in 77-token chunks and concatenated along the sequence (A1111).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from . import errors
from .tokenizer import PAD_EOS, PAD_ZERO, apply_emphasis, encode_prompt_chunks


@dataclass
class Conditioning:
    context: np.ndarray            # [1, 77k, D]
    pooled: Optional[np.ndarray]   # [1, P] (sdxl) or None
    loras: list                    # <lora:name:mult> tags found in the prompt


@dataclass
class EncoderSlot:
    """One text encoder as the conditioner uses it."""
    encoder: object                # sdcpp.engine.text.TextEncoder
    num_layers: int
    pad_id: int
    final_norm: bool               # apply final LayerNorm to the returned hidden states
    default_skip: int              # A1111 clip_skip used when the caller gives none


class Conditioner:
    def __init__(self, family: str, slots: Sequence[EncoderSlot], zero_empty_negative: bool):
        self.family = family
        self.slots = list(slots)
        self.zero_empty_negative = zero_empty_negative
        self.embeddings = None         # sdcpp.embeddings.EmbeddingTable, set by set_embeddings
        self._token_map = None

    def slot_keys(self) -> list[str]:
        """The embedding-file key of each encoder: "" for one encoder, clip_l / clip_g for SDXL."""
        return ["clip_l", "clip_g"] if len(self.slots) == 2 else [""] * len(self.slots)

    def set_embeddings(self, table) -> None:
        """Use a textual-inversion EmbeddingTable (or None) for the prompts that follow."""
        from .tokenizer import get_tokenizer

        self.embeddings = table if table is not None and len(table) else None
        self._token_map = self.embeddings.token_map(get_tokenizer()) if self.embeddings else None

    def _layers(self, slot: EncoderSlot, clip_skip: Optional[int]) -> int:
        skip = slot.default_skip if clip_skip is None else int(clip_skip)
        if skip < 1 or skip > slot.num_layers:
            raise errors.InvalidArgumentError(
                f"clip_skip must be between 1 and {slot.num_layers}, got {clip_skip}")
        return max(1, slot.num_layers - (skip - 1))

    def encode(self, prompt: str, clip_skip: Optional[int] = None, n_chunks: Optional[int] = None) -> Conditioning:
        return self.encode_many([prompt], clip_skip, n_chunks)[0]

    def encode_schedules(self, prompt: str, negative: str, clip_skip: Optional[int],
                         steps: int) -> tuple[list, list]:
        """Prompt editing / alternation (sdcpp.tokenizer.schedule) over `steps` sampling steps:
        ([(end_step, Conditioning)] of the prompt, the same of the negative prompt). Every
        distinct text is encoded once, all in one batched call per encoder, padded to the same
        number of chunks so any two entries can stand in one batch."""
        from .tokenizer.schedule import prompt_schedule

        ps, ns = prompt_schedule(prompt, steps), prompt_schedule(negative, steps)
        zero_negative = self.zero_empty_negative and negative == ""
        texts = list(dict.fromkeys([t for _, t in ps] + ([] if zero_negative else [t for _, t in ns])))
        n = max(self.n_chunks(t) for t in texts)
        encoded = dict(zip(texts, self.encode_many(texts, clip_skip, n)))
        cond = [(end, encoded[t]) for end, t in ps]
        if zero_negative:
            c0 = cond[0][1]
            return cond, [(steps, Conditioning(np.zeros_like(c0.context),
                                               None if c0.pooled is None else np.zeros_like(c0.pooled), []))]
        return cond, [(end, encoded[t]) for end, t in ns]

    def encode_pair(self, prompt: str, negative: str, clip_skip: Optional[int]) -> tuple[Conditioning, Conditioning]:
        n = max(self.n_chunks(prompt), self.n_chunks(negative))
        if self.zero_empty_negative and negative == "":
            cond = self.encode_many([prompt], clip_skip, n)[0]
            uncond = Conditioning(np.zeros_like(cond.context),
                                  None if cond.pooled is None else np.zeros_like(cond.pooled), [])
            return cond, uncond
        cond, uncond = self.encode_many([prompt, negative], clip_skip, n)
        return cond, uncond

    def encode_many(self, prompts: Sequence[str], clip_skip: Optional[int] = None,
                    n_chunks: Optional[int] = None) -> list[Conditioning]:
        """Several prompts (each padded to the same number of chunks) through each encoder in
        one batched call: one graph run per encoder instead of one per prompt."""
        if n_chunks is None:
            n_chunks = max(self.n_chunks(pr) for pr in prompts)
        hidden_parts: list[list[np.ndarray]] = [[] for _ in prompts]
        pooled: list[Optional[np.ndarray]] = [None] * len(prompts)
        loras: list[list] = [[] for _ in prompts]
        for i, slot in enumerate(self.slots):
            ids, weights, eos = [], [], []
            for j, prompt in enumerate(prompts):
                chunks = encode_prompt_chunks(prompt, slot.pad_id, embeddings=self._token_map)
                loras[j] = chunks.loras
                c_ids, c_w, c_eos = chunks.ids, chunks.weights, chunks.eos_index
                if len(c_ids) < n_chunks:  # pad with empty chunks (A1111)
                    empty = encode_prompt_chunks("", slot.pad_id)
                    extra = n_chunks - len(c_ids)
                    c_ids = np.concatenate([c_ids, np.repeat(empty.ids, extra, 0)])
                    c_w = np.concatenate([c_w, np.repeat(empty.weights, extra, 0)])
                    c_eos = np.concatenate([c_eos, np.repeat(empty.eos_index, extra, 0)])
                ids.append(c_ids)
                weights.append(c_w)
                eos.append(c_eos)
            # Only SDXL's last encoder contributes a pooled vector; the others skip it (and
            # with clip_skip, the layers after the ones returned).
            wants_pooled = self.family == "sdxl" and i == len(self.slots) - 1
            extra = self.embeddings.extra(self.slot_keys()[i]) if self.embeddings else None
            hidden, pool = slot.encoder.encode(np.concatenate(ids), layers=self._layers(slot, clip_skip),
                                               final_norm=slot.final_norm,
                                               pooled_index=np.concatenate(eos) if wants_pooled else None,
                                               pooled=wants_pooled, extra=extra)
            for j in range(len(prompts)):
                h = hidden[j * n_chunks:(j + 1) * n_chunks]
                if not np.all(weights[j] == 1.0):
                    h = apply_emphasis(h, weights[j])
                hidden_parts[j].append(h.reshape(1, -1, h.shape[-1]))
                if wants_pooled:
                    pooled[j] = pool[j * n_chunks:j * n_chunks + 1]
        return [Conditioning(np.concatenate(hidden_parts[j], axis=-1).astype(np.float32), pooled[j], loras[j])
                for j in range(len(prompts))]

    def n_chunks(self, prompt: str) -> int:
        return len(encode_prompt_chunks(prompt, PAD_EOS, embeddings=self._token_map).ids)


def default_pad(kind: str) -> int:
    """CLIP-L pads with EOS; OpenCLIP (H, bigG) pads with 0."""
    return PAD_EOS if kind == "clip-l" else PAD_ZERO
