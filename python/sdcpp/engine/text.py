"""CLIP text encoders on the native engine (CLIP-L, OpenCLIP ViT-H, OpenCLIP bigG).

``TextEncoder(store, prefix, config)`` runs transformers' ``CLIPTextModel`` /
``CLIPTextModelWithProjection`` forward over the weights ``prefix + <transformers name>`` held
in a native WeightStore (docs/internals.md §3-4), stored in any of weights.WEIGHT_TYPES (quantized
linear weights run ggml's integer dot products). numpy in, numpy out.
"""
from __future__ import annotations

import operator
from typing import Any, Mapping, Optional

import numpy as np

from .. import errors
from .native_call import call_native
from .weights import native

_INT_KEYS = ("hidden_size", "intermediate_size", "num_heads", "num_layers", "vocab_size", "max_positions")
ACTIVATIONS = ("quick_gelu", "gelu")


def _int(value: Any, what: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise errors.InvalidArgumentError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise errors.InvalidArgumentError(f"{what} must be an integer, got {value!r}") from None


def normalize_config(config: Mapping[str, Any]) -> dict:
    """Check a native text-encoder config (docs/internals.md §4) and return a clean copy."""
    if not isinstance(config, Mapping):
        raise errors.InvalidArgumentError(f"text encoder config must be a dict, got {type(config).__name__}")
    out: dict = {}
    for key in _INT_KEYS:
        if key not in config:
            raise errors.InvalidArgumentError(f"text encoder config is missing {key!r}")
        out[key] = _int(config[key], f"text encoder config {key!r}")
        if out[key] <= 0:
            raise errors.InvalidArgumentError(f"text encoder config {key!r} must be positive, got {out[key]}")
    if out["hidden_size"] % out["num_heads"]:
        raise errors.InvalidArgumentError(
            f"text encoder config: hidden_size {out['hidden_size']} is not divisible by num_heads {out['num_heads']}")
    act = config.get("act")
    if act not in ACTIVATIONS:
        raise errors.InvalidArgumentError(f"text encoder config 'act' must be one of {ACTIVATIONS}, got {act!r}")
    out["act"] = act
    eps = float(config.get("eps", 1e-5))
    if not eps > 0:
        raise errors.InvalidArgumentError(f"text encoder config 'eps' must be positive, got {eps}")
    out["eps"] = eps
    proj = config.get("projection_dim", 0)
    out["projection_dim"] = 0 if proj is None else _int(proj, "text encoder config 'projection_dim'")
    if out["projection_dim"] < 0:
        raise errors.InvalidArgumentError("text encoder config 'projection_dim' must be >= 0")
    eos = config.get("eos_token_id")
    out["eos_token_id"] = out["vocab_size"] - 1 if eos is None else _int(eos, "text encoder config 'eos_token_id'")
    return out


def _int_array(value: Any, what: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise errors.InvalidArgumentError(f"{what} must be an integer array, got dtype {arr.dtype}")
    return arr


class TextEncoder:
    """A CLIP text transformer bound to ``store`` under ``prefix`` (e.g. ``"text_encoder."``).

    config: the native dict of docs/internals.md §4; an optional ``eos_token_id`` (default
    ``vocab_size - 1`` = 49407) picks the default pooled position.
    """

    def __init__(self, store, prefix: str, config: Mapping[str, Any]):
        if not isinstance(prefix, str):
            raise errors.InvalidArgumentError(f"prefix must be a string, got {type(prefix).__name__}")
        self.config = normalize_config(config)
        self.prefix = prefix
        core = native()
        native_cfg = {k: v for k, v in self.config.items() if k != "eos_token_id"}
        if not isinstance(store, core.WeightStore):
            raise errors.InvalidArgumentError(f"store must be a sdcpp WeightStore, got {type(store).__name__}")
        self._native = call_native(core.ClipTextEncoder, store, prefix, native_cfg)

    @property
    def hidden_size(self) -> int:
        return self.config["hidden_size"]

    @property
    def pooled_dim(self) -> int:
        return self.config["projection_dim"] or self.config["hidden_size"]

    def default_pooled_index(self, ids: np.ndarray) -> np.ndarray:
        """Per row, the first position of the EOS token; rows without one use argmax(ids)
        (transformers' legacy rule, which finds EOS = the largest id in CLIP's vocabulary)."""
        ids = np.asarray(ids)
        is_eos = ids == self.config["eos_token_id"]
        first = np.argmax(is_eos, axis=1)
        return np.where(is_eos.any(axis=1), first, np.argmax(ids, axis=1)).astype(np.int32)

    def encode(self, ids, *, layers: Optional[int] = None, final_norm: bool = True,
               pooled_index=None, pooled: bool = True, extra=None) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Token ids [B, L] (any integer dtype, 1 <= L <= max_positions) ->
        (hidden [B, L, hidden_size] float32, pooled [B, pooled_dim] float32).

        layers: how many transformer layers to run for the returned hidden states (default all;
            clip_skip k -> num_layers - (k - 1)).
        final_norm: apply final_layer_norm to the returned hidden states.
        pooled_index: [B] positions to pool (default: the first EOS of each row). The pooled
            vector is the final-LN output of the LAST layer at that position (times
            text_projection when the model has one), whatever `layers` is.
        pooled: False skips the pooled output (returns None in its place) and the layers after
            `layers`.
        extra: float [n, hidden_size] input embeddings (textual inversion) for the ids
            vocab_size .. vocab_size + n - 1, which then stand where they appear in `ids`.
        """
        cfg = self.config
        n_extra = 0
        if extra is not None:
            extra = np.ascontiguousarray(extra, dtype=np.float32)
            if extra.ndim != 2 or extra.shape[1] != cfg["hidden_size"]:
                raise errors.InvalidArgumentError(
                    f"extra embeddings must have shape [n, {cfg['hidden_size']}], got {extra.shape}")
            if not np.all(np.isfinite(extra)):
                raise errors.InvalidArgumentError("extra embeddings hold non-finite values")
            n_extra = extra.shape[0]
            if n_extra == 0:
                extra = None
        ids = _int_array(ids, "ids")
        if ids.ndim != 2:
            raise errors.InvalidArgumentError(f"ids must have shape [batch, length], got {ids.shape}")
        batch, length = ids.shape
        if batch < 1 or not 1 <= length <= cfg["max_positions"]:
            raise errors.InvalidArgumentError(
                f"ids shape {ids.shape}: need batch >= 1 and 1 <= length <= {cfg['max_positions']}")
        limit = cfg["vocab_size"] + n_extra
        if ids.min() < 0 or ids.max() >= limit:
            bad = ids[(ids < 0) | (ids >= limit)].ravel()[0]
            raise errors.InvalidArgumentError(f"token id {int(bad)} is outside [0, {limit})")
        n = cfg["num_layers"]
        layers = n if layers is None else _int(layers, "layers")
        if not 1 <= layers <= n:
            raise errors.InvalidArgumentError(f"layers must be between 1 and {n}, got {layers}")
        if not isinstance(final_norm, (bool, np.bool_)):
            raise errors.InvalidArgumentError(f"final_norm must be a bool, got {final_norm!r}")

        pidx = None
        if pooled:
            if pooled_index is None:
                pidx = self.default_pooled_index(ids)
            else:
                pidx = _int_array(pooled_index, "pooled_index")
                if pidx.shape != (batch,):
                    raise errors.InvalidArgumentError(
                        f"pooled_index must have shape ({batch},), got {pidx.shape}")
                if pidx.min() < 0 or pidx.max() >= length:
                    raise errors.InvalidArgumentError(f"pooled_index values must be in [0, {length}), got {pidx}")
            pidx = np.ascontiguousarray(pidx, dtype=np.int32)
        elif pooled_index is not None:
            raise errors.InvalidArgumentError("pooled_index was given with pooled=False")

        ids32 = np.ascontiguousarray(ids, dtype=np.int32)
        hidden, pooled_out = call_native(self._native.encode, ids32, int(layers), bool(final_norm), pidx, extra)
        return hidden, pooled_out

    def clear(self) -> None:
        """Drop cached graphs and their compute buffers."""
        self._native.clear()


def config_from_transformers(cfg: Mapping[str, Any], with_projection: Optional[bool] = None) -> dict:
    """The native config from a transformers CLIPTextConfig dict (config.json)."""
    if not isinstance(cfg, Mapping):
        cfg = cfg.to_dict()
    act = cfg.get("hidden_act", "quick_gelu")
    if act not in ACTIVATIONS:
        raise errors.InvalidArgumentError(f"unsupported CLIP text activation {act!r}")
    if with_projection is None:
        with_projection = "CLIPTextModelWithProjection" in (cfg.get("architectures") or [])
    eos = cfg.get("eos_token_id")
    return {
        "hidden_size": cfg.get("hidden_size", 512),
        "intermediate_size": cfg.get("intermediate_size", 2048),
        "num_heads": cfg.get("num_attention_heads", 8),
        "num_layers": cfg.get("num_hidden_layers", 12),
        "vocab_size": cfg.get("vocab_size", 49408),
        "max_positions": cfg.get("max_position_embeddings", 77),
        "act": act,
        "eps": cfg.get("layer_norm_eps", 1e-5),
        "projection_dim": cfg.get("projection_dim", 512) if with_projection else 0,
        # eos_token_id 2 is the legacy (wrong) value of old configs: the EOS is then the largest id.
        "eos_token_id": None if eos in (None, 2) else eos,
    }


__all__ = ["TextEncoder", "normalize_config", "config_from_transformers", "ACTIVATIONS"]
