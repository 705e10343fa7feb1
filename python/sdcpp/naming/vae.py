"""AutoencoderKL: LDM (``first_stage_model.*``) and diffusers spellings -> diffusers names.

LDM facts (ARCHITECTURES.md §2.5): ``encoder.down.i.block.j`` = ``encoder.down_blocks.i.resnets.j``;
the decoder is numbered from the bottom: ``decoder.up.(L-1-i)`` = ``decoder.up_blocks.i``;
``mid.block_1/2`` = ``mid_block.resnets.0/1``; the mid attention's q/k/v/proj_out are 1x1 convs
(canonical: 2-D linear ``to_q/to_k/to_v/to_out.0``), its ``norm`` is ``group_norm``;
``nin_shortcut`` = ``conv_shortcut``; ``norm_out`` = ``conv_norm_out``.
Old diffusers releases spelled the attention ``query/key/value/proj_attn``.
"""
from __future__ import annotations

import re
from typing import Iterable

from .rules import Out, R, TableScheme, squeeze

_P = r"(?P<p>weight|bias)"
_RES = r"(?P<r>(?:norm1|conv1|norm2|conv2|conv_shortcut)\.(?:weight|bias))"
_S = r"(?P<s>encoder|decoder)"

ATTN_NAMES = {"q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0",
              "query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0",
              "to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out.0": "to_out.0"}
RESNET_NAMES = {"nin_shortcut": "conv_shortcut"}

_UP_RE = re.compile(r"decoder\.up\.(\d+)\.")


def _context(keys: Iterable[str]) -> dict:
    ups = [int(m.group(1)) for k in keys if (m := _UP_RE.match(k))]
    return {"n_up": max(ups) + 1 if ups else 0}


FILTERS = {
    "reverse": lambda v, ctx: ctx["n_up"] - 1 - int(v),   # LDM decoder level -> diffusers up block
    "minus1": lambda v, ctx: int(v) - 1,
    "attn": ATTN_NAMES,
}

VAE_RULES = [
    # ---- LDM spelling
    R(rf"{_S}\.(?P<m>conv_in|conv_out)\.{_P}", "{s}.{m}.{p}"),
    R(rf"{_S}\.norm_out\.{_P}", "{s}.conv_norm_out.{p}"),
    R(rf"encoder\.down\.(?P<i>\d+)\.block\.(?P<j>\d+)\.nin_shortcut\.{_P}", "encoder.down_blocks.{i}.resnets.{j}.conv_shortcut.{p}"),
    R(rf"encoder\.down\.(?P<i>\d+)\.block\.(?P<j>\d+)\.{_RES}", "encoder.down_blocks.{i}.resnets.{j}.{r}"),
    R(rf"encoder\.down\.(?P<i>\d+)\.downsample\.conv\.{_P}", "encoder.down_blocks.{i}.downsamplers.0.conv.{p}"),
    R(rf"decoder\.up\.(?P<i>\d+)\.block\.(?P<j>\d+)\.nin_shortcut\.{_P}", "decoder.up_blocks.{i:reverse}.resnets.{j}.conv_shortcut.{p}"),
    R(rf"decoder\.up\.(?P<i>\d+)\.block\.(?P<j>\d+)\.{_RES}", "decoder.up_blocks.{i:reverse}.resnets.{j}.{r}"),
    R(rf"decoder\.up\.(?P<i>\d+)\.upsample\.conv\.{_P}", "decoder.up_blocks.{i:reverse}.upsamplers.0.conv.{p}"),
    R(rf"{_S}\.mid\.block_(?P<b>[12])\.nin_shortcut\.{_P}", "{s}.mid_block.resnets.{b:minus1}.conv_shortcut.{p}"),
    R(rf"{_S}\.mid\.block_(?P<b>[12])\.{_RES}", "{s}.mid_block.resnets.{b:minus1}.{r}"),
    R(rf"{_S}\.mid\.attn_1\.norm\.{_P}", "{s}.mid_block.attentions.0.group_norm.{p}"),
    R(rf"{_S}\.mid\.attn_1\.(?P<a>q|k|v|proj_out)\.weight", Out("{s}.mid_block.attentions.0.{a:attn}.weight", squeeze(2))),
    R(rf"{_S}\.mid\.attn_1\.(?P<a>q|k|v|proj_out)\.bias", "{s}.mid_block.attentions.0.{a:attn}.bias"),
    R(rf"(?P<q>quant_conv|post_quant_conv)\.{_P}", "{q}.{p}"),
    # ---- diffusers spelling (old attention names included; 1x1-conv attention weights squeezed)
    R(rf"{_S}\.mid_block\.attentions\.0\.(?P<a>query|key|value|proj_attn|to_q|to_k|to_v|to_out\.0)\.weight",
      Out("{s}.mid_block.attentions.0.{a:attn}.weight", squeeze(2))),
    R(rf"{_S}\.mid_block\.attentions\.0\.(?P<a>query|key|value|proj_attn)\.bias", "{s}.mid_block.attentions.0.{a:attn}.bias"),
    R(rf"{_S}\.(?P<r>(?:conv_in|conv_out|conv_norm_out|down_blocks|up_blocks|mid_block)\..+)", "{s}.{r}"),
]

VAE = TableScheme("vae", VAE_RULES, FILTERS, _context)
