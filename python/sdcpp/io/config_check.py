"""Type and range checks of the config keys sdcpp reads (docs/formats.md, Hostile files).

A diffusers folder's JSON configs steer the architecture (``scaling_factor``, heads, groups...).
A value of the wrong type or a size that is zero or negative would otherwise surface much
later as a ``TypeError`` in ``float()`` or a ``ZeroDivisionError`` in the engine. Only the keys
sdcpp reads are checked; every other key (diffusers writes dozens) is left alone. ``null`` is
accepted only where sdcpp treats it as absent.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import ConfigError


# ----------------------------------------------------------------------- value kinds
# Each kind: (check(value) -> bool, description for the message).
def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return (_int(v) or isinstance(v, float)) and math.isfinite(v)


Kind = tuple[Callable[[Any], bool], str]
POS_INT: Kind = (lambda v: _int(v) and v > 0, "a positive integer")
NONNEG_INT: Kind = (lambda v: _int(v) and v >= 0, "a non-negative integer")
INT: Kind = (_int, "an integer")
POS_NUM: Kind = (lambda v: _num(v) and v > 0, "a positive finite number")
NONNEG_NUM: Kind = (lambda v: _num(v) and v >= 0, "a non-negative finite number")
NUM: Kind = (_num, "a finite number")
STR: Kind = (lambda v: isinstance(v, str), "a string")
BOOL: Kind = (lambda v: isinstance(v, bool), "true or false")


def list_of(kind: Kind, *, nonempty: bool = True) -> Kind:
    check, what = kind
    return (lambda v: isinstance(v, list) and (bool(v) or not nonempty) and all(check(x) for x in v),
            f"a {'non-empty ' if nonempty else ''}list of {_plural(what)}")


def one_of(*kinds: Kind) -> Kind:
    return (lambda v: any(check(v) for check, _ in kinds), " or ".join(what for _, what in kinds))


def nullable(kind: Kind) -> Kind:
    check, what = kind
    return (lambda v: v is None or check(v), f"{what} or null")


def _plural(what: str) -> str:
    for art in ("a ", "an "):
        if what.startswith(art):
            what = what[len(art):]
    return what.replace("integer", "integers").replace("number", "numbers").replace("string", "strings")


POS_INT_OR_LIST = one_of(POS_INT, list_of(POS_INT))
_LAYERS = one_of(NONNEG_INT, list_of(one_of(NONNEG_INT, list_of(NONNEG_INT))))

# ------------------------------------------------------------------------ schemas
UNET: dict[str, Kind] = {
    "sample_size": nullable(POS_INT_OR_LIST),
    "in_channels": POS_INT, "out_channels": POS_INT,
    "block_out_channels": list_of(POS_INT),
    "layers_per_block": POS_INT_OR_LIST,
    "transformer_layers_per_block": _LAYERS,
    "reverse_transformer_layers_per_block": nullable(list_of(one_of(NONNEG_INT, list_of(NONNEG_INT)))),
    "attention_head_dim": nullable(POS_INT_OR_LIST),
    "num_attention_heads": nullable(POS_INT_OR_LIST),
    "cross_attention_dim": nullable(POS_INT_OR_LIST),
    "norm_num_groups": nullable(POS_INT),
    "norm_eps": nullable(POS_NUM),
    "down_block_types": list_of(STR), "up_block_types": list_of(STR),
    "mid_block_type": nullable(STR),
    "use_linear_projection": nullable(BOOL),
    "addition_embed_type": nullable(STR),
    "addition_time_embed_dim": nullable(POS_INT),
    "projection_class_embeddings_input_dim": nullable(POS_INT),
    "time_embedding_dim": nullable(POS_INT),
}
VAE: dict[str, Kind] = {
    "scaling_factor": POS_NUM,             # read with float(): null is not "absent" there
    "shift_factor": nullable(NUM),
    "norm_num_groups": POS_INT,
    "block_out_channels": list_of(POS_INT),
    "in_channels": POS_INT, "out_channels": POS_INT, "latent_channels": POS_INT,
    "layers_per_block": POS_INT,
    "sample_size": nullable(POS_INT_OR_LIST),
}
TEXT: dict[str, Kind] = {
    "hidden_size": POS_INT, "intermediate_size": POS_INT, "num_hidden_layers": POS_INT,
    "num_attention_heads": POS_INT, "max_position_embeddings": POS_INT, "vocab_size": POS_INT,
    "projection_dim": nullable(POS_INT),
    "layer_norm_eps": POS_NUM,
    "hidden_act": STR,
    "eos_token_id": nullable(INT), "bos_token_id": nullable(INT), "pad_token_id": nullable(INT),
    "architectures": nullable(list_of(STR, nonempty=False)),
}
SCHEDULER: dict[str, Kind] = {
    "num_train_timesteps": POS_INT,
    "beta_start": NONNEG_NUM, "beta_end": NONNEG_NUM,
    "beta_schedule": STR,
    "prediction_type": nullable(STR),
    "steps_offset": NONNEG_INT,
    "timestep_spacing": nullable(STR),
    "trained_betas": nullable(list_of(NONNEG_NUM)),
}
_COMPONENT_ENTRY: Kind = (
    lambda v: v is None or (isinstance(v, list) and len(v) == 2 and all(x is None or isinstance(x, str) for x in v)),
    'a ["library", "ClassName"] pair (or [null, null])')
MODEL_INDEX: dict[str, Kind] = {
    "_class_name": STR,
    **{c: _COMPONENT_ENTRY for c in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer",
                                     "tokenizer_2", "scheduler")},
}
SCHEMAS: dict[str, dict[str, Kind]] = {
    "unet": UNET, "vae": VAE, "text_encoder": TEXT, "text_encoder_2": TEXT,
    "scheduler": SCHEDULER, "model_index": MODEL_INDEX,
}


def _preview(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:80] + "..."


def check_config(config: dict, schema: dict[str, Kind], *, file: Optional[str | Path],
                 error: Callable[..., Exception] = ConfigError) -> dict:
    """Raise ``error(message, file=..., key=...)`` for the first key of `schema` whose value in
    `config` is not of its kind; return `config` unchanged."""
    for key, (check, what) in schema.items():
        if key in config and not check(config[key]):
            raise error(f"config value {_preview(config[key])} should be {what}", file=file, key=key)
    return config


def check_component_config(kind: str, config: dict, *, file: Optional[str | Path]) -> dict:
    """check_config with the schema of a diffusers component (``unet``, ``vae``, ``scheduler``...);
    a component sdcpp does not know is returned unchecked."""
    schema = SCHEMAS.get(kind)
    return check_config(config, schema, file=file) if schema else config


__all__ = ["check_config", "check_component_config", "SCHEMAS", "POS_INT", "NONNEG_INT", "POS_NUM", "NUM",
           "STR", "BOOL", "list_of", "one_of", "nullable"]
