"""read_tensors / open_source: from a path or Hub id to TensorRecords (docs/internals.md §2)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from ..errors import AmbiguousSourceError, CheckpointError, CorruptFileError, UnsupportedFormatError
from .config_check import check_component_config
from .gguf_reader import read_gguf
from .json_safe import load_json_file
from .pickle_reader import is_legacy_torch, read_torch_legacy, read_torch_zip
from .records import TensorRecord
from .safetensors_reader import MAX_HEADER_SIZE, read_safetensors, read_sharded_index

Tensors = dict[str, TensorRecord]
Metadata = dict[str, str]

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")
CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft")

# config `_class_name` / `architectures` -> component, for a bare component folder
_CLASS_TO_COMPONENT = {
    "UNet2DConditionModel": "unet", "AutoencoderKL": "vae",
    "CLIPTextModel": "text_encoder", "CLIPTextModelWithProjection": "text_encoder_2",
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9_.\-]+$")


@dataclass
class Source:
    """Everything read from one checkpoint source (docs/internals.md §2)."""
    path: Path
    layout: str                                                # "single_file" | "diffusers"
    components: dict[str, Tensors]
    configs: dict[str, dict] = field(default_factory=dict)
    metadata: Metadata = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)      # component -> weights file read


# ------------------------------------------------------------------------- one file
def _read_file(path: Path) -> tuple[Tensors, Metadata]:
    """Records and metadata of one file of any supported format, chosen by its first bytes."""
    path = Path(os.path.abspath(path))
    if not path.exists():
        raise CheckpointError(f"No such file or directory: {str(path)!r}", file=path)
    if path.is_dir():
        raise CheckpointError("expected a checkpoint file, got a directory (use open_source)", file=path)
    with open(path, "rb") as f:
        head = f.read(64)
    name = path.name.lower()
    if head[:4] == b"GGUF":
        return read_gguf(path)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return read_torch_zip(path)
    if is_legacy_torch(head):
        return read_torch_legacy(path)
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= MAX_HEADER_SIZE:
        return read_safetensors(path)
    if name.endswith(".json") or head.lstrip()[:1] == b"{":
        if not name.endswith(".json"):
            raise UnsupportedFormatError("a JSON file, but not a sharded checkpoint index (*.index.json)", file=path)
        return read_sharded_index(path, _read_file)
    # Unknown first bytes: let the extension pick the parser that explains what is wrong.
    if name.endswith((".safetensors", ".sft")):
        return read_safetensors(path)
    if name.endswith(".gguf"):
        return read_gguf(path)
    if name.endswith((".ckpt", ".pt", ".pth", ".bin")):
        if head[:2] == b"PK":
            return read_torch_zip(path)
        from .pickle_reader import read_torch
        return read_torch(path)
    raise UnsupportedFormatError(
        f"unrecognized checkpoint format (first bytes {head[:8]!r}); expected safetensors, "
        f"a torch .ckpt/.pt/.bin, GGUF or a *.index.json", file=path)


def read_tensors(path: str | os.PathLike) -> Tensors:
    """All tensors of one file (safetensors, torch zip/legacy pickle, GGUF) or sharded index."""
    return _read_file(Path(path))[0]


# --------------------------------------------------------------------- weight choice
def _weight_candidates(variant: Optional[str]) -> list[str]:
    out = []
    for ext in ("safetensors", "bin"):
        for stem in WEIGHT_STEMS:
            if variant is None:
                out += [f"{stem}.{ext}", f"{stem}.{ext}.index.json"]
            else:
                out += [f"{stem}.{variant}.{ext}", f"{stem}.{ext}.index.{variant}.json",
                        f"{stem}.{ext}.{variant}.index.json", f"{stem}.{variant}.{ext}.index.json"]
    return out


_VARIANT_TOKEN = re.compile(r"^[A-Za-z0-9_]+$")


def _variant_of(name: str) -> Optional[tuple[str, str]]:
    """(variant, ext) of a variant weights entry file such as ``model.fp16.safetensors`` or
    ``diffusion_pytorch_model.safetensors.index.fp16.json``; None for anything else (shards too)."""
    stem, _, rest = name.partition(".")
    if stem not in WEIGHT_STEMS:
        return None
    parts = rest.split(".")
    exts = [p for p in parts if p in ("safetensors", "bin")]
    others = [p for p in parts if p not in ("safetensors", "bin", "index", "json")]
    if len(exts) != 1 or len(others) != 1 or not _VARIANT_TOKEN.match(others[0]):
        return None
    is_index = "json" in parts
    if is_index != ("index" in parts) or (is_index and parts[-1] != "json"):
        return None
    if not is_index and parts[-1] != exts[0]:
        return None
    return others[0], exts[0]


def pick_weights_file(names: Iterable[str], variant: Optional[str] = None) -> Optional[str]:
    """Which weights file of a component folder to read, given the file names in it.

    Order: the requested variant (``<stem>.<variant>.safetensors``...), then the plain files
    (safetensors before sharded safetensors before .bin), then -- no variant requested and no
    plain file present -- any variant (fp16 first, safetensors before .bin).
    """
    names = set(names)
    if variant:
        for cand in _weight_candidates(variant):
            if cand in names:
                return cand
    for cand in _weight_candidates(None):
        if cand in names:
            return cand
    found = []
    for n in names:
        v = _variant_of(n)
        if v is not None:
            var, ext = v
            found.append((ext != "safetensors", var != "fp16", n.endswith(".json"), var, n))
    return min(found)[-1] if found else None


# ------------------------------------------------------------------------ folders
# Configs are small; a bigger "config" is not one (and is not read into memory whole).
MAX_CONFIG_BYTES = 16 << 20


def _load_json(path: Path, kind: Optional[str] = None) -> dict:
    """A JSON object file (depth-limited parse); `kind` names the schema its keys are checked
    against (config_check.SCHEMAS: "unet", "vae", "model_index"...)."""
    data = load_json_file(path, max_bytes=MAX_CONFIG_BYTES)
    if not isinstance(data, dict):
        raise CorruptFileError("JSON file is not an object", file=path)
    if kind is not None:
        check_component_config(kind, data, file=path)
    return data


def _preference_level(name: str, variant: Optional[str]) -> Optional[tuple[str, str]]:
    """Files of one component that ``pick_weights_file`` cannot order share a level: the same
    format (safetensors / bin) and the same kind (plain, the requested variant, fp16, another
    variant), differing only in stem or in single-file vs sharded form."""
    for ext in ("safetensors", "bin"):
        for stem in WEIGHT_STEMS:
            if name in (f"{stem}.{ext}", f"{stem}.{ext}.index.json"):
                return "plain", ext
    v = _variant_of(name)
    if v is None:
        return None
    var, ext = v
    if variant and var == variant:
        return "requested", ext
    return ("fp16" if var == "fp16" else "variant"), ext


def _ambiguity(folder: Path, pick: str, names: list[str], variant: Optional[str], tensors: Tensors) -> None:
    """Refuse a folder whose weight files for one component tie with `pick` (AmbiguousSourceError):
    sdcpp would otherwise load one of two sources and silently ignore the other."""
    level = _preference_level(pick, variant)
    ties = sorted(n for n in names if n != pick and level is not None and _preference_level(n, variant) == level)
    for other in ties:
        theirs = _read_file(folder / other)[0]
        shared = next((t for t in tensors if t in theirs), None)
        how = (f"both hold tensor {shared!r}" if shared is not None
               else "they hold different tensors")
        raise AmbiguousSourceError(
            f"two weight files for one component, {pick!r} and {other!r}: {how}; sdcpp does not guess "
            f"which one is meant -- remove or rename one" + (" (or pass variant=)" if level[0] == "variant" else ""),
            file=folder, tensor=shared)


def _read_component(folder: Path, variant: Optional[str]) -> tuple[Path, Tensors, Metadata]:
    names = [p.name for p in folder.iterdir() if p.is_file()]
    pick = pick_weights_file(names, variant)
    if pick is None:
        raise CheckpointError(
            f"no weights file (diffusion_pytorch_model/model/pytorch_model .safetensors/.bin) in folder; "
            f"found: {sorted(names)}", file=folder)
    tensors, meta = _read_file(folder / pick)
    _ambiguity(folder, pick, names, variant, tensors)
    return folder / pick, tensors, meta


def _component_name(folder: Path, config: dict) -> str:
    if folder.name in COMPONENTS:
        return folder.name
    cls = config.get("_class_name")
    if isinstance(cls, str) and cls in _CLASS_TO_COMPONENT:
        return _CLASS_TO_COMPONENT[cls]
    archs = config.get("architectures")
    if isinstance(archs, list):
        for a in archs:
            if isinstance(a, str) and a in _CLASS_TO_COMPONENT:
                return _CLASS_TO_COMPONENT[a]
    return folder.name


def _open_diffusers(root: Path, variant: Optional[str]) -> Source:
    configs: dict[str, dict] = {"model_index": _load_json(root / "model_index.json", "model_index")}
    sched = root / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        configs["scheduler"] = _load_json(sched, "scheduler")
    index = configs["model_index"]
    components: dict[str, Tensors] = {}
    files: dict[str, Path] = {}
    metadata: Metadata = {}
    for comp in COMPONENTS:
        folder = root / comp
        entry = index.get(comp)
        if isinstance(entry, list) and (not entry or entry[0] is None):
            continue                                   # listed as absent ([null, null])
        if not folder.is_dir():
            if entry is not None:
                raise CheckpointError(f"model_index.json lists {comp!r} but the folder is missing "
                                      f"(No such directory: {str(folder)!r})", file=root / "model_index.json")
            continue
        if (folder / "config.json").is_file():
            configs[comp] = _load_json(folder / "config.json", comp)
        wfile, tensors, meta = _read_component(folder, variant)
        components[comp], files[comp] = tensors, wfile
        metadata.update({f"{comp}.{k}": v for k, v in meta.items()})
    if not components:
        raise CheckpointError(f"diffusers folder without any of the components {COMPONENTS}", file=root)
    return Source(path=root, layout="diffusers", components=components, configs=configs,
                  metadata=metadata, files=files)


def _open_component_folder(folder: Path, variant: Optional[str]) -> Source:
    config = _load_json(folder / "config.json")
    comp = _component_name(folder, config)
    check_component_config(comp, config, file=folder / "config.json")
    wfile, tensors, meta = _read_component(folder, variant)
    return Source(path=folder, layout="diffusers", components={comp: tensors}, configs={comp: config},
                  metadata={f"{comp}.{k}": v for k, v in meta.items()}, files={comp: wfile})


def _open_local(path: Path, variant: Optional[str]) -> Source:
    path = Path(os.path.abspath(path))
    if path.is_file():
        if path.name == "model_index.json":
            return _open_diffusers(path.parent, variant)
        tensors, metadata = _read_file(path)
        return Source(path=path, layout="single_file", components={"": tensors}, configs={},
                      metadata=metadata, files={"": path})
    if path.is_dir():
        if (path / "model_index.json").is_file():
            return _open_diffusers(path, variant)
        if (path / "config.json").is_file():
            return _open_component_folder(path, variant)
        ckpts = sorted(p.name for p in path.iterdir() if p.name.lower().endswith(CHECKPOINT_EXTENSIONS))
        hint = f"; pass one of its files instead: {ckpts}" if ckpts else ""
        raise CheckpointError(f"folder has neither model_index.json (diffusers pipeline) nor config.json "
                              f"(diffusers component){hint}", file=path)
    raise CheckpointError(f"No such file or directory: {str(path)!r}", file=path)


# --------------------------------------------------------------------------- Hub
def looks_like_hub_id(s: str) -> bool:
    return bool(_HUB_ID.match(s)) and ".." not in s


def _hub_plan(files: list[str], variant: Optional[str]) -> tuple[list[str], Optional[str]]:
    """Files to download and, for a single-file repo, the file to open."""
    fileset = set(files)

    def folder_names(prefix: str) -> list[str]:
        return [f[len(prefix):] for f in files if f.startswith(prefix) and "/" not in f[len(prefix):]]

    if "model_index.json" in fileset:
        want = ["model_index.json"]
        if "scheduler/scheduler_config.json" in fileset:
            want.append("scheduler/scheduler_config.json")
        for comp in COMPONENTS:
            names = folder_names(comp + "/")
            if not names:
                continue
            if "config.json" in names:
                want.append(f"{comp}/config.json")
            pick = pick_weights_file(names, variant)
            if pick:
                want.append(f"{comp}/{pick}")
        return want, None
    if "config.json" in fileset:
        pick = pick_weights_file(folder_names(""), variant)
        return ["config.json"] + ([pick] if pick else []), None
    ckpts = [f for f in files if "/" not in f and f.lower().endswith(CHECKPOINT_EXTENSIONS)]
    if len(ckpts) == 1:
        return ckpts, ckpts[0]
    raise CheckpointError(
        "Hub repo is neither a diffusers pipeline (model_index.json) nor a component (config.json)"
        + (f" and holds several checkpoint files {sorted(ckpts)}: download one and pass its path"
           if ckpts else " and holds no checkpoint file"))


def _open_hub(repo_id: str, variant: Optional[str], revision: Optional[str]) -> Source:
    try:
        import huggingface_hub
    except ImportError:
        raise CheckpointError(
            f"{repo_id!r} is not an existing path; to download it from the Hugging Face Hub, install "
            f"huggingface_hub (pip install huggingface_hub)") from None
    try:
        files = list(huggingface_hub.list_repo_files(repo_id, revision=revision))
    except Exception as listing_error:            # offline, unknown repo, gated...
        try:
            local = huggingface_hub.snapshot_download(repo_id, revision=revision, local_files_only=True)
        except Exception:
            raise CheckpointError(
                f"No such file or directory: {repo_id!r}; resolving it as a Hugging Face Hub repo id "
                f"failed too: {listing_error}") from None
        return _open_local(Path(local), variant)
    if variant is None and any(_variant_of(f.rsplit("/", 1)[-1]) == ("fp16", "safetensors") for f in files):
        # A user of a repo id gets the half-size download when the repo publishes one: the
        # weights are stored as f16 by default anyway (components without it use plain files).
        variant = "fp16"
    want, single = _hub_plan(files, variant)
    try:
        local = Path(huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=want))
        # sharded weights: fetch exactly the shards the downloaded indexes name
        shards = []
        for rel in want:
            if rel.endswith(".json") and ".index" in rel:
                idx = _load_json(local / rel)
                base = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
                wmap = idx.get("weight_map")
                if isinstance(wmap, dict):
                    shards += [base + s for s in dict.fromkeys(wmap.values()) if isinstance(s, str)]
        if shards:
            huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=shards)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"downloading Hugging Face Hub repo {repo_id!r} failed: {e}") from None
    return _open_local(local / single if single else local, variant)


def open_source(source: str | os.PathLike, *, variant: Optional[str] = None,
                revision: Optional[str] = None) -> Source:
    """Open a checkpoint file, a diffusers folder, a bare component folder or a Hub repo id.

    `variant` (e.g. "fp16") picks ``*.fp16.safetensors``-style files in diffusers folders (plain
    files are used where a component lacks it); a Hub repo id without a variant takes its fp16
    files when it has them (``variant=""`` asks for the plain files). `revision` is passed to the Hub.
    """
    if isinstance(source, Source):
        return source
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.exists():
        return _open_local(path, variant)
    if isinstance(source, str) and looks_like_hub_id(text):
        return _open_hub(text, variant, revision)
    raise CheckpointError(f"No such file or directory: {text!r}", file=text)


__all__ = ["Source", "read_tensors", "open_source", "pick_weights_file", "looks_like_hub_id", "COMPONENTS"]
