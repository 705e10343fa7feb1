"""LoRA files -> adapted modules: the key formats (ARCHITECTURES.md §4.1) as data.

``read_lora(path) -> LoraFile``: reads a file (safetensors, torch pickle, GGUF, through the same
safe readers as checkpoints) or a folder holding one (``pytorch_lora_weights.*`` written by
diffusers' ``save_lora_weights``, PEFT's ``adapter_model.*`` + ``adapter_config.json``), groups
its keys per adapted module and records everything needed for the delta: ``down`` / ``up``
(/ ``mid``) records, the alpha, the PEFT bias of ``lora_B``, full deltas (``.diff``).

Key = <component prefix><module path><suffix>. Suffixes (first match wins, ``SUFFIXES``):

====================================================  =========================================
``.lora_down.weight`` ``.lora_up.weight``              kohya / A1111 (``.lora_mid.weight``: Tucker
``.alpha`` ``.scale``                                  core of a LoCon conv; ``.alpha`` scalar)
``.processor.to_q_lora.down.weight`` (to_k/v/out)      diffusers <= 0.20 attention processors
``.to_q_lora.down.weight`` (text encoder)              same, text encoder (q_proj ...)
``.lora.down.weight`` ``.lora.up.weight``              diffusers 0.21+ (U-Net)
``.lora_linear_layer.down.weight``                     diffusers 0.21+ (text encoders)
``.lora_A[.<adapter>].weight`` ``.lora_B[...].weight``  PEFT / diffusers >= 0.27 (``.lora_B.bias``:
                                                       PEFT's lora_bias)
``.diff`` ``.diff_b``                                  full weight / bias deltas (sd.cpp)
``hada_*`` ``lokr_*`` ``dora_scale``                   LoHa, LoKr, DoRA: recognised, unsupported
``lora_magnitude_vector`` ``lora_embedding_A/B``
====================================================  =========================================

Component prefixes (``PREFIXES``): ``lora_unet_`` / ``lora_te_`` / ``lora_te1_`` / ``lora_te2_``
(kohya, module path with ``.`` -> ``_``), ``unet.`` / ``text_encoder.`` / ``text_encoder_2.``
(diffusers), ``base_model.model.`` (PEFT; the component follows from the module's root),
``model.diffusion_model.`` (LDM); a key without a prefix is routed by its root like a bare
checkpoint (``down_blocks`` / ``input_blocks`` ... -> unet, ``text_model`` -> a text encoder).
Text-encoder modules without a component (PEFT ``base_model.model.text_model.*``) are resolved
against the model's encoders by shape.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from ..io.config_check import BOOL, NUM, STR, check_config, nullable
from ..io.json_safe import load_json_file, loads_json
from ..io.records import TensorRecord
from ..naming.unet import DIFFUSERS_ROOTS, LDM_ROOTS
from .errors import LoraFormatError

PathLike = Union[str, os.PathLike]

UNET, TE1, TE2 = "unet", "text_encoder", "text_encoder_2"
TEXT_ENCODERS = (TE1, TE2)

LORA_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf")
# files a LoRA folder may hold, in order of preference
FOLDER_FILES = ("pytorch_lora_weights", "adapter_model", "diffusion_pytorch_model", "model")

# (raw prefix, component or None = route by root, kohya spelling)
PREFIXES: list[tuple[str, Optional[str], bool]] = [
    ("lora_unet_", UNET, True),
    ("lora_te1_", TE1, True),
    ("lora_te2_", TE2, True),
    ("lora_te_", TE1, True),
    ("unet.", UNET, False),
    ("text_encoder_2.", TE2, False),
    ("text_encoder.", TE1, False),
    ("base_model.model.unet.", UNET, False),
    ("base_model.model.text_encoder_2.", TE2, False),
    ("base_model.model.text_encoder.", TE1, False),
    ("base_model.model.", None, False),
    ("model.diffusion_model.", UNET, False),
    ("diffusion_model.", UNET, False),
]
TEXT_ROOTS = frozenset({"text_model", "encoder", "embeddings", "final_layer_norm", "text_projection"})

# Old attention-processor names -> module names (U-Net, text encoder).
_OLD_UNET = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_OLD_TEXT = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}

# (pattern over the whole key, role, format). Roles: down, up, mid, alpha, scale, bias (lora_B
# bias), diff, diff_b, unsupported:<kind>. "du" groups say down/up, "ab" A/B.
SUFFIXES: list[tuple["re.Pattern[str]", str, str]] = [(re.compile(p), role, fmt) for p, role, fmt in [
    (r"(?P<m>.+)\.lora_down\.weight", "down", "kohya"),
    (r"(?P<m>.+)\.lora_up\.weight", "up", "kohya"),
    (r"(?P<m>.+)\.lora_mid\.weight", "mid", "kohya"),
    (r"(?P<m>.+)\.processor\.(?P<old>to_q|to_k|to_v|to_out)_lora\.(?P<du>down|up)\.weight", "du", "diffusers-old"),
    (r"(?P<m>.+)\.(?P<old>to_q|to_k|to_v|to_out)_lora\.(?P<du>down|up)\.weight", "du", "diffusers-old"),
    (r"(?P<m>.+)\.lora_linear_layer\.(?P<du>down|up)\.weight", "du", "diffusers"),
    (r"(?P<m>.+)\.lora\.(?P<du>down|up)\.weight", "du", "diffusers"),
    (r"(?P<m>.+)\.lora_A(?:\.(?P<ad>[\w\-]+))?\.weight", "down", "peft"),
    (r"(?P<m>.+)\.lora_B(?:\.(?P<ad>[\w\-]+))?\.weight", "up", "peft"),
    (r"(?P<m>.+)\.lora_B(?:\.(?P<ad>[\w\-]+))?\.bias", "bias", "peft"),
    (r"(?P<m>.+)\.alpha", "alpha", ""),
    (r"(?P<m>.+)\.scale", "scale", ""),
    (r"(?P<m>.+)\.diff", "diff", "full"),
    (r"(?P<m>.+)\.diff_b", "diff_b", "full"),
    (r"(?P<m>.+)\.(?:dora_scale|lora_magnitude_vector(?:\.[\w\-]+)?(?:\.weight)?)", "unsupported:DoRA", ""),
    (r"(?P<m>.+)\.hada_(?:w[12]_[ab]|t[12])", "unsupported:LoHa", ""),
    (r"(?P<m>.+)\.lokr_(?:w[12](?:_[ab])?|t2)", "unsupported:LoKr", ""),
    (r"(?P<m>.+)\.lora_embedding_[AB](?:\.[\w\-]+)?", "unsupported:embedding LoRA", ""),
    (r"(?P<m>.+)\.(?:oft_[\w]+|boft_[\w]+|ia3_l)(?:\.[\w\-]+)?(?:\.weight)?", "unsupported:OFT/IA3", ""),
]]


_ADAPTER = re.compile(r".+\.lora_[AB]\.([\w\-]+)\.(?:weight|bias)")


@dataclass
class LoraModule:
    """One adapted module of a LoRA file."""
    key: str                                   # module key as spelled in the file (prefix included)
    components: tuple[str, ...]                # candidate components (one unless ambiguous)
    path: str                                  # module path inside the component (dots or underscores)
    kohya: bool
    down: Optional[TensorRecord] = None
    up: Optional[TensorRecord] = None
    mid: Optional[TensorRecord] = None
    bias: Optional[TensorRecord] = None        # PEFT lora_B.bias
    diff: Optional[TensorRecord] = None
    diff_b: Optional[TensorRecord] = None
    alpha: Optional[float] = None              # from the file (.alpha) or the adapter config
    scale: Optional[float] = None              # .scale: replaces alpha / rank
    rslora: bool = False                       # PEFT use_rslora: alpha / sqrt(rank)
    unsupported: Optional[str] = None          # kind name when the module uses LoHa/LoKr/DoRA...
    keys: list[str] = field(default_factory=list)   # the file's keys of this module
    formats: set = field(default_factory=set)

    @property
    def rank(self) -> Optional[int]:
        return int(self.down.shape[0]) if self.down is not None else None

    def strength(self) -> float:
        """The per-module factor multiplying up @ down (before the user's multiplier)."""
        if self.scale is not None:
            return float(self.scale)
        if self.alpha is None or self.down is None:
            return 1.0
        r = self.rank
        return float(self.alpha) / (math.sqrt(r) if self.rslora else r)


@dataclass
class LoraFile:
    path: Path
    modules: list[LoraModule]
    unknown: list[str]                         # keys that fit no LoRA suffix at all
    metadata: dict
    format: str                                # "kohya" | "diffusers" | "diffusers-old" | "peft" | mixed "a+b"

    @property
    def name(self) -> str:
        return self.path.stem


# Keys of a LoRA config (PEFT adapter_config.json, diffusers' lora_adapter_metadata) that
# sdcpp reads; the rest (r, target_modules...) follow from the tensors or are not needed.
_PATTERNS = (lambda v: isinstance(v, dict) and all(isinstance(k, str) and NUM[0](x) for k, x in v.items()),
             "an object of module name -> finite number")
CONFIG_SCHEMA = {
    "lora_alpha": nullable(NUM), "alpha_pattern": nullable(_PATTERNS), "use_rslora": nullable(BOOL),
    "use_dora": nullable(BOOL), "peft_type": nullable(STR),
}
# alpha_pattern keys sdcpp matches: module names (PEFT allows regexes; evaluating one from a
# file could backtrack for hours, so anything else is refused).
_MODULE_NAME = re.compile(r"[\w.\-]+")


def _format_error(message: str, *, file=None, key=None) -> LoraFormatError:
    return LoraFormatError(message, file=file, key=key)


def _scalar(rec: TensorRecord, key: str, path) -> float:
    n = math.prod(rec.shape)
    if n != 1:
        raise LoraFormatError(f"expected a scalar, got shape {tuple(rec.shape)}", file=path, key=key)
    value = float(rec.numpy().reshape(-1)[0])
    if not math.isfinite(value):
        raise LoraFormatError(f"value {value} is not finite", file=path, key=key)
    return value


def _route(module_key: str) -> Optional[tuple[tuple[str, ...], str, bool]]:
    """(candidate components, path inside the component, kohya spelling) of a module key."""
    for prefix, comp, kohya in PREFIXES:
        if module_key.startswith(prefix):
            rest = module_key[len(prefix):]
            if comp is not None:
                return (comp,), rest, kohya
            return _route_bare(rest)
    return _route_bare(module_key)


def _route_bare(path: str):
    root = path.split(".", 1)[0]
    if root in DIFFUSERS_ROOTS or root in LDM_ROOTS:
        return (UNET,), path, False
    if root in TEXT_ROOTS:
        return TEXT_ENCODERS, path, False
    return None


def pick_file(folder: Path) -> Path:
    files = [p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(LORA_EXTENSIONS)]
    for stem in FOLDER_FILES:
        for ext in LORA_EXTENSIONS:
            for p in files:
                if p.name == stem + ext:
                    return p
    if len(files) == 1:
        return files[0]
    raise LoraFormatError(f"folder holds no single LoRA file "
                          f"({', '.join(sorted(p.name for p in files)) or 'no weight files'}); pass the file",
                          file=str(folder))


def _peft_config(folder: Path) -> Optional[dict]:
    cfg = folder / "adapter_config.json"
    if not cfg.is_file():
        return None
    data = load_json_file(cfg, what="adapter_config.json", error=_format_error, max_bytes=16 << 20)
    if not isinstance(data, dict):
        raise LoraFormatError("adapter_config.json is not a JSON object", file=cfg)
    return _checked_config(data, cfg, "")


def _checked_config(cfg: dict, file, prefix: str) -> dict:
    """`cfg` after checking the keys sdcpp reads (LoraFormatError naming the file and key)."""
    def error(message, *, file=None, key=None):
        return LoraFormatError(message, file=file, key=prefix + key if key else key)
    check_config(cfg, CONFIG_SCHEMA, file=file, error=error)
    for pat in (cfg.get("alpha_pattern") or {}):
        if not _MODULE_NAME.fullmatch(pat):
            raise LoraFormatError(f"alpha_pattern key {pat[:80]!r} is a regular expression; sdcpp matches "
                                  f"module names only", file=file, key=prefix + "alpha_pattern")
    return cfg


def _adapter_configs(metadata: dict, peft_cfg: Optional[dict], path) -> dict[str, dict]:
    """Per component ("" = whole file) LoRA configs: diffusers' ``lora_adapter_metadata``
    (``{"unet.lora_alpha": 8, ...}``) or PEFT's adapter_config.json."""
    out: dict[str, dict] = {}
    raw = metadata.get("lora_adapter_metadata")
    if raw:
        flat = loads_json(raw, file=path, what="lora_adapter_metadata", error=_format_error)
        if not isinstance(flat, dict):
            raise LoraFormatError("lora_adapter_metadata is not a JSON object", file=path,
                                  key="lora_adapter_metadata")
        for k, v in flat.items():
            comp, _, name = k.partition(".")
            out.setdefault(comp, {})[name] = v
        for comp, cfg in out.items():
            _checked_config(cfg, path, f"lora_adapter_metadata: {comp}." if comp else "lora_adapter_metadata: ")
    if peft_cfg:
        if not isinstance(peft_cfg, dict):
            raise LoraFormatError("PEFT adapter config is not a JSON object", file=path)
        out.setdefault("", {}).update(_checked_config(peft_cfg, path, ""))
    return out


def _pattern_value(patterns: dict, path: str):
    """PEFT's rank/alpha pattern lookup: a module name matches the module and its children's
    names at a dot boundary (keys are checked to be plain module names)."""
    for pat, value in (patterns or {}).items():
        if path == pat or path.endswith("." + pat):
            return value
    return None


def _apply_config(mod: LoraModule, cfg: dict) -> None:
    peft_type = str(cfg.get("peft_type") or "LORA").upper()
    if peft_type != "LORA":
        mod.unsupported = mod.unsupported or f"PEFT {peft_type}"
    if cfg.get("use_dora"):
        mod.unsupported = mod.unsupported or "DoRA"
    if mod.alpha is None:
        alpha = _pattern_value(cfg.get("alpha_pattern") or {}, mod.path)
        if alpha is None:
            alpha = cfg.get("lora_alpha")
        if alpha is not None and mod.down is not None:
            mod.alpha = float(alpha)
    mod.rslora = bool(cfg.get("use_rslora", False))


def read_lora(path: PathLike) -> LoraFile:
    """Read and group one LoRA file (or a folder holding one); no weight bytes are read
    except scalars (alphas)."""
    from ..io import open_source

    p = Path(os.path.abspath(os.fspath(path)))
    peft_cfg = None
    if p.is_dir():
        peft_cfg = _peft_config(p)
        p = pick_file(p)
    elif p.is_file() and p.stem == "adapter_model":
        peft_cfg = _peft_config(p.parent)
    if not p.exists():
        raise LoraFormatError("no such LoRA file", file=str(p))
    src = open_source(p)
    tensors = src.components.get("", {})
    return parse_lora(tensors, p, dict(src.metadata or {}), peft_cfg)


def parse_lora(tensors: dict[str, TensorRecord], path: PathLike = "<memory>", metadata: Optional[dict] = None,
               peft_config: Optional[dict] = None) -> LoraFile:
    """Group raw LoRA keys into modules (see the module doc)."""
    metadata = metadata or {}
    if not tensors:
        raise LoraFormatError("file holds no tensors at all", file=str(path))
    modules: dict[str, LoraModule] = {}
    unknown: list[str] = []
    formats: set[str] = set()
    adapters = {m.group(1) for m in map(_ADAPTER.fullmatch, tensors) if m}
    if len(adapters) > 1:
        raise LoraFormatError(f"LoRA holds several PEFT adapters ({', '.join(sorted(adapters))}); "
                              f"save them as separate files", file=str(path))
    for key in sorted(tensors):
        for pat, role, fmt in SUFFIXES:
            m = pat.fullmatch(key)
            if m is None:
                continue
            module_key = m.group("m")
            g = m.groupdict()
            if g.get("old"):
                route = _route(module_key)
                is_text = route is not None and route[0][0] != UNET
                module_key = f"{module_key}.{(_OLD_TEXT if is_text else _OLD_UNET)[g['old']]}"
            if g.get("du"):
                role = "down" if g["du"] == "down" else "up"
            route = _route(module_key)
            if route is None:
                unknown.append(key)
                break
            comps, sub, kohya = route
            mod = modules.get(module_key)
            if mod is None:
                mod = modules[module_key] = LoraModule(module_key, comps, sub, kohya)
            mod.keys.append(key)
            if fmt:
                mod.formats.add(fmt)
                formats.add(fmt)
            rec = tensors[key]
            if role.startswith("unsupported:"):
                mod.unsupported = role.split(":", 1)[1]
            elif role == "alpha":
                mod.alpha = _scalar(rec, key, path)
            elif role == "scale":
                mod.scale = _scalar(rec, key, path)
            else:
                if getattr(mod, role) is not None:
                    raise LoraFormatError(f"module {module_key!r} has two {role} tensors "
                                          f"({key!r} and another spelling)", file=path, key=key)
                if role in ("down", "up", "mid") and len(rec.shape) < 2:
                    raise LoraFormatError(f"{role} tensor has shape {tuple(rec.shape)}; a LoRA factor has "
                                          f"2 or more dims", file=path, key=key)
                if role == "down" and rec.shape[0] == 0:
                    raise LoraFormatError("down tensor has rank 0 (shape "
                                          f"{tuple(rec.shape)}): a LoRA of rank 0 changes nothing",
                                          file=path, key=key)
                setattr(mod, role, rec)
            break
        else:
            unknown.append(key)
    configs = _adapter_configs(metadata, peft_config, str(path))
    for mod in modules.values():
        cfg = configs.get(mod.components[0]) if len(mod.components) == 1 else None
        cfg = cfg or configs.get("")
        if cfg:
            _apply_config(mod, cfg)
    if not modules:
        raise LoraFormatError(f"file holds no LoRA tensors (first keys: {', '.join(sorted(tensors)[:3])})",
                              file=str(path))
    fmt = "+".join(sorted(formats)) or "unknown"
    return LoraFile(Path(path), list(modules.values()), unknown, metadata, fmt)


__all__ = ["LoraModule", "LoraFile", "read_lora", "parse_lora", "PREFIXES", "SUFFIXES", "UNET", "TE1", "TE2",
           "LORA_EXTENSIONS"]
