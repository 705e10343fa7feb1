"""Text encoders: HF CLIP names (SD1, SDXL encoder 0, diffusers folders) and OpenCLIP names
(SD2 ``cond_stage_model.model.*`` ViT-H, SDXL ``conditioner.embedders.1.model.*`` bigG)
-> transformers ``CLIPTextModel`` / ``CLIPTextModelWithProjection`` names (``text_model.…``,
``text_projection.weight``).

OpenCLIP facts (ARCHITECTURES.md §2.4): ``transformer.resblocks.i`` = ``text_model.encoder.layers.i``;
``ln_1/ln_2`` = ``layer_norm1/2``; ``mlp.c_fc/c_proj`` = ``mlp.fc1/fc2``; ``attn.in_proj_weight``
[3C, C] / ``in_proj_bias`` [3C] hold q, k, v in that row order; ``attn.out_proj`` =
``self_attn.out_proj``; ``positional_embedding`` is a bare [77, C] tensor; ``ln_final`` =
``final_layer_norm``; ``text_projection`` [C, P] is used as x @ P, so the HF Linear weight
[P, C] is its transpose.

Files written by very old tools (and by transformers >= 5, which drops ``text_model.`` from
CLIPTextModel's state dict) lack the ``text_model.`` level: it is put back.
SSD-1B.safetensors keeps HF-named leftovers inside the OpenCLIP prefix
(``text_projection.weight`` in HF orientation, ``text_model.embeddings.position_ids``): the
OpenCLIP tables accept the HF spellings too.
SD2 does not use ViT-H's ``text_projection``: there it is ignored.
"""
from __future__ import annotations

from .rules import IGNORE, TRANSPOSE, Out, R, TableScheme, rows

_P = r"(?P<p>weight|bias)"

HF_CLIP_RULES = [
    R(r"text_model\.(?P<r>.+)", "text_model.{r}"),
    R(r"(?P<r>(?:embeddings|encoder|final_layer_norm)\..+)", "text_model.{r}"),
    R(r"text_projection\.weight", "text_projection.weight"),
]

OPENCLIP_LAYER_NAMES = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1",
                        "mlp.c_proj": "mlp.fc2", "attn.out_proj": "self_attn.out_proj"}
_LAYER = "text_model.encoder.layers.{i}"

OPENCLIP_RULES = [
    R(r"token_embedding\.weight", "text_model.embeddings.token_embedding.weight"),
    R(r"positional_embedding", "text_model.embeddings.position_embedding.weight"),
    R(rf"transformer\.resblocks\.(?P<i>\d+)\.attn\.in_proj_{_P}",
      Out(_LAYER + ".self_attn.q_proj.{p}", rows(0, 3)),
      Out(_LAYER + ".self_attn.k_proj.{p}", rows(1, 3)),
      Out(_LAYER + ".self_attn.v_proj.{p}", rows(2, 3))),
    R(rf"transformer\.resblocks\.(?P<i>\d+)\.(?P<m>ln_1|ln_2|mlp\.c_fc|mlp\.c_proj|attn\.out_proj)\.{_P}",
      _LAYER + ".{m:layer}.{p}"),
    R(rf"ln_final\.{_P}", "text_model.final_layer_norm.{p}"),
]

FILTERS = {"layer": OPENCLIP_LAYER_NAMES}

HF_CLIP = TableScheme("clip", HF_CLIP_RULES)
# SDXL encoder 2 (bigG): keeps its projection (transposed into HF Linear orientation).
OPENCLIP_BIGG = TableScheme("openclip-bigg", OPENCLIP_RULES + [R(r"text_projection", Out("text_projection.weight", TRANSPOSE))]
                            + HF_CLIP_RULES, FILTERS)
# SD2 encoder (ViT-H): a plain CLIPTextModel; the projection is not used by SD2.
OPENCLIP_H = TableScheme("openclip-h", OPENCLIP_RULES + [IGNORE(r"text_projection(\.weight)?")] + HF_CLIP_RULES, FILTERS)
