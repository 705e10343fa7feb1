"""read_tensors dispatch and open_source: files, diffusers folders, component folders, Hub ids."""
from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sdcpp.errors import CheckpointError, CorruptFileError, UnsupportedFormatError
from sdcpp.io import Source, open_source, read_tensors
from sdcpp.io.source import pick_weights_file
from sdcpp_io_helpers import assert_records_match, expect_error


# ------------------------------------------------------------------ tiny diffusers models
@pytest.fixture(scope="module")
def tiny_models():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    scheduler = diffusers.DDIMScheduler()
    return unet, vae, scheduler


def _sd(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _text_encoder_folder(folder: Path, *, variant=None) -> dict:
    """A stand-in text_encoder (transformers' file names and config), without transformers."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = {"text_model.embeddings.token_embedding.weight": torch.randn(10, 8),
          "text_model.final_layer_norm.weight": torch.ones(8)}
    (folder / "config.json").write_text(json.dumps({"architectures": ["CLIPTextModel"], "hidden_size": 8}))
    name = "model.safetensors" if variant is None else f"model.{variant}.safetensors"
    save_file(sd if variant is None else {k: v.half() for k, v in sd.items()}, str(folder / name))
    return sd


def _pipeline(root: Path, tiny_models, **save_kwargs) -> dict:
    unet, vae, scheduler = tiny_models
    unet.save_pretrained(root / "unet", **save_kwargs)
    vae.save_pretrained(root / "vae", **save_kwargs)
    scheduler.save_pretrained(root / "scheduler")
    te = _text_encoder_folder(root / "text_encoder")
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.json").write_text("{}")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None]}))
    return {"unet": _sd(unet), "vae": _sd(vae), "text_encoder": te}


def _check_pipeline(src: Source, want: dict, root: Path):
    assert src.layout == "diffusers" and src.path == root
    assert set(src.components) == {"unet", "vae", "text_encoder"}
    for comp, sd in want.items():
        assert_records_match(src.components[comp], sd)
    assert src.configs["unet"]["cross_attention_dim"] == 8
    assert src.configs["vae"]["_class_name"] == "AutoencoderKL"
    assert src.configs["scheduler"]["_class_name"] == "DDIMScheduler"
    assert src.configs["model_index"]["_class_name"] == "StableDiffusionPipeline"
    assert "tokenizer" not in src.components


def test_diffusers_folder_safetensors(tmp_path, tiny_models):
    want = _pipeline(tmp_path, tiny_models)
    src = open_source(tmp_path)
    _check_pipeline(src, want, tmp_path)
    assert src.files["unet"].name == "diffusion_pytorch_model.safetensors"
    assert src.metadata.get("unet.format") == "pt"


def test_diffusers_folder_bin(tmp_path, tiny_models):
    want = _pipeline(tmp_path, tiny_models, safe_serialization=False)
    src = open_source(str(tmp_path))
    _check_pipeline(src, want, tmp_path)
    assert src.files["vae"].name == "diffusion_pytorch_model.bin"


def test_diffusers_variant_fp16(tmp_path, tiny_models):
    unet, vae, _ = tiny_models
    want = _pipeline(tmp_path, tiny_models)
    unet.half().save_pretrained(tmp_path / "unet", variant="fp16")
    unet.float()
    _text_encoder_folder(tmp_path / "text_encoder", variant="fp16")
    plain = open_source(tmp_path)                                  # no variant: the fp32 files
    _check_pipeline(plain, want, tmp_path)
    fp16 = open_source(tmp_path, variant="fp16")
    assert fp16.files["unet"].name == "diffusion_pytorch_model.fp16.safetensors"
    assert fp16.files["vae"].name == "diffusion_pytorch_model.safetensors"   # vae has no fp16 file
    assert_records_match(fp16.components["unet"], {k: v.half() for k, v in want["unet"].items()})
    assert all(r.dtype == "F16" for r in fp16.components["text_encoder"].values())
    # only the variant present: used even without asking for it
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    assert open_source(tmp_path).files["unet"].name == "diffusion_pytorch_model.fp16.safetensors"


def test_sharded_unet_folder(tmp_path, tiny_models):
    unet, _, _ = tiny_models
    unet.save_pretrained(tmp_path / "unet", max_shard_size="20KB")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors.index.json").exists()
    src = open_source(tmp_path / "unet")
    assert src.layout == "diffusers" and set(src.components) == {"unet"}
    assert src.configs["unet"]["block_out_channels"] == [8, 16]
    assert_records_match(src.components["unet"], _sd(unet))


def test_bin_with_non_contiguous_weights(tmp_path, tiny_models):
    _, vae, _ = tiny_models
    model = type(vae).from_config(vae.config)
    model.load_state_dict(vae.state_dict())
    changed = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.data = p.data.t().contiguous().t()               # same values, strides (1, rows)
                changed.append(name)
            elif p.ndim == 4 and p.shape[0] > 1:
                p.data = p.data.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
                changed.append(name)
    sd = model.state_dict()
    assert changed and not all(sd[n].is_contiguous() for n in changed)
    folder = tmp_path / "my_vae"                                    # not named "vae": found by class
    model.save_pretrained(folder, safe_serialization=False)
    # diffusers' save_pretrained makes every tensor contiguous first; other tools do not:
    # overwrite the .bin with the raw state dict, views and all
    weights = folder / "diffusion_pytorch_model.bin"
    torch.save(sd, str(weights))
    assert not all(v.is_contiguous() for v in torch.load(str(weights), weights_only=True).values())
    src = open_source(folder)
    assert set(src.components) == {"vae"}
    recs = src.components["vae"]
    assert_records_match(recs, {k: v.detach() for k, v in sd.items()})
    assert any(recs[n].strides != tuple(torch.empty(recs[n].shape).stride()) for n in changed)


def test_read_tensors_dispatches_by_magic_not_extension(tmp_path):
    t = {"a": torch.randn(2, 3)}
    st, zp, lg = tmp_path / "st.bin", tmp_path / "zip.safetensors", tmp_path / "legacy.dat"
    save_file(t, str(st))
    torch.save(t, str(zp))
    torch.save(t, str(lg), _use_new_zipfile_serialization=False)
    for p in (st, zp, lg):
        assert_records_match(read_tensors(p), t)
    junk = tmp_path / "junk.xyz"
    junk.write_bytes(b"hello world, not a checkpoint")
    expect_error(UnsupportedFormatError, lambda: read_tensors(junk), file=junk)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    expect_error(CorruptFileError, lambda: read_tensors(empty), file=empty)


def test_single_file_source_and_missing_paths(tmp_path):
    t = {"a": torch.randn(2, 3)}
    path = tmp_path / "model.safetensors"
    save_file(t, str(path), metadata={"modelspec.architecture": "test"})
    src = open_source(path)
    assert src.layout == "single_file" and src.path == path and set(src.components) == {""}
    assert src.metadata == {"modelspec.architecture": "test"} and src.configs == {}
    assert_records_match(src.components[""], t)
    for missing in (tmp_path / "nope.safetensors", "./definitely/not/here.ckpt"):
        e = expect_error(CheckpointError, lambda: open_source(missing))
        assert "No such file" in str(e)
    expect_error(CheckpointError, lambda: read_tensors(tmp_path / "nope.ckpt"), match="No such file")
    (tmp_path / "empty_dir").mkdir()
    expect_error(CheckpointError, lambda: open_source(tmp_path / "empty_dir"), match="model_index.json")


def test_pick_weights_file_preferences():
    names = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
             "diffusion_pytorch_model.bin", "config.json"]
    assert pick_weights_file(names) == "diffusion_pytorch_model.safetensors"
    assert pick_weights_file(names, "fp16") == "diffusion_pytorch_model.fp16.safetensors"
    assert pick_weights_file(names, "bf16") == "diffusion_pytorch_model.safetensors"
    assert pick_weights_file(["pytorch_model.bin", "model.fp16.safetensors"]) == "pytorch_model.bin"
    assert pick_weights_file(["model.fp16-00001-of-00002.safetensors", "model.fp16-00002-of-00002.safetensors",
                              "model.safetensors.index.fp16.json"]) == "model.safetensors.index.fp16.json"
    assert pick_weights_file(["diffusion_pytorch_model-00001-of-00002.safetensors",
                              "diffusion_pytorch_model.safetensors.index.json"]) \
        == "diffusion_pytorch_model.safetensors.index.json"
    assert pick_weights_file(["config.json"]) is None


# ------------------------------------------------------------------------------ Hub ids
class _FakeHub(types.ModuleType):
    """Stands in for huggingface_hub: serves a local folder as the repo."""

    def __init__(self, repo: Path, cache: Path):
        super().__init__("huggingface_hub")
        self.repo, self.cache, self.calls = repo, cache, []

    def list_repo_files(self, repo_id, revision=None):
        return sorted(str(p.relative_to(self.repo)) for p in self.repo.rglob("*") if p.is_file())

    def snapshot_download(self, repo_id, revision=None, allow_patterns=None, local_files_only=False):
        import fnmatch
        self.calls.append((repo_id, list(allow_patterns or [])))
        for rel in self.list_repo_files(repo_id):
            if allow_patterns is None or any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                dst = self.cache / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(self.repo / rel, dst)
        return str(self.cache)


def test_hub_repo_downloads_only_needed_files(tmp_path, tiny_models, monkeypatch):
    repo = tmp_path / "repo"
    want = _pipeline(repo, tiny_models)
    unet, _, _ = tiny_models
    unet.save_pretrained(repo / "unet", safe_serialization=False)             # an extra .bin
    unet.half().save_pretrained(repo / "unet", variant="fp16")
    unet.float()
    (repo / "safety_checker").mkdir()
    save_file({"x": torch.zeros(1)}, str(repo / "safety_checker" / "model.safetensors"))
    hub = _FakeHub(repo, tmp_path / "cache")
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    src = open_source("someone/tiny-sd", variant="")                           # "": the plain files
    _check_pipeline(src, want, tmp_path / "cache")
    got = sorted(str(p.relative_to(hub.cache)) for p in hub.cache.rglob("*") if p.is_file())
    assert got == ["model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
                   "text_encoder/model.safetensors", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                   "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]

    # No variant asked: a repo that publishes fp16 files gets them downloaded (components
    # without an fp16 file fall back to their plain files).
    hub16 = _FakeHub(repo, tmp_path / "cache16")
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub16)
    src16 = open_source("someone/tiny-sd")
    got16 = sorted(str(p.relative_to(hub16.cache)) for p in hub16.cache.rglob("*") if p.is_file())
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in got16
    assert "unet/diffusion_pytorch_model.safetensors" not in got16
    assert "text_encoder/model.safetensors" in got16
    assert src16.components["unet"]["conv_in.weight"].dtype == "F16"


def test_hub_sharded_component_and_single_file(tmp_path, tiny_models, monkeypatch):
    unet, _, _ = tiny_models
    repo = tmp_path / "repo"
    unet.save_pretrained(repo, max_shard_size="20KB")                         # a bare component repo
    hub = _FakeHub(repo, tmp_path / "cache")
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    src = open_source("someone/tiny-unet")
    assert set(src.components) == {"unet"}
    assert_records_match(src.components["unet"], _sd(unet))
    assert len(hub.calls) == 2                                               # index first, then its shards

    repo2 = tmp_path / "repo2"
    repo2.mkdir()
    save_file({"w": torch.ones(3)}, str(repo2 / "model.safetensors"))
    (repo2 / "README.md").write_text("hi")
    monkeypatch.setitem(sys.modules, "huggingface_hub", _FakeHub(repo2, tmp_path / "cache2"))
    src = open_source("someone/single")
    assert src.layout == "single_file" and np.array_equal(src.components[""]["w"].numpy(), np.ones(3))


def test_hub_without_huggingface_hub_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)                 # import fails
    e = expect_error(CheckpointError, lambda: open_source("segmind/SSD-1B"))
    assert "pip install huggingface_hub" in str(e)


def test_readers_never_import_torch(tmp_path):
    import subprocess
    import sdcpp
    st, pt, lg = tmp_path / "a.safetensors", tmp_path / "b.pt", tmp_path / "c.pt"
    save_file({"w": torch.ones(2, 2)}, str(st))
    torch.save({"state_dict": {"w": torch.ones(2, 2).t()}}, str(pt))
    torch.save({"w": torch.ones(3)}, str(lg), _use_new_zipfile_serialization=False)
    code = (
        "import sys\n"
        "from sdcpp.io import read_tensors, open_source\n"
        f"for p in {[str(st), str(pt), str(lg)]!r}:\n"
        "    assert float(read_tensors(p)['w'].numpy().sum()) > 0\n"
        "bad = [m for m in ('torch', 'huggingface_hub', 'safetensors', 'diffusers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = {"PYTHONPATH": str(Path(sdcpp.__file__).parents[1]), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
