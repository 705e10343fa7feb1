"""Hostile files of every class in issue 11 are refused with a typed error naming the file.

Each file is built byte by byte here (hostile_builders). Classes: recursion bombs, memory bombs,
exponential structures, tensors that lie, configs that lie, LoRA files that are not LoRAs.
Every test asserts the exact error class and that the message names the file (and the tensor
or key where one is at fault); a valid twin of each hostile file is read first where it
matters, so the refusal is about the hostile part and nothing else.
"""
from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import pytest

from hostile_builders import (diffusers_folder, f32, gguf_info, gguf_raw, gguf_string, nested_json, p_dict,
                              p_global, p_str, p_tensor, pickle_of, safetensors_f32,
                              safetensors_raw, torch_legacy, torch_zip)
from sdcpp.errors import AmbiguousSourceError, ConfigError, CorruptFileError, SdcppError
from sdcpp.io import open_source, read_tensors
from sdcpp.io.limits import MAX_JSON_DEPTH, MAX_PICKLE_DEPTH
from sdcpp.lora import LoraFormatError, read_lora

CONTAINERS = ["zip", "legacy"]


def refused(cls, fn, *, file, tensor=None, key=None, match=None) -> SdcppError:
    """fn() raises exactly `cls` (not a subclass of it standing in), naming `file` (and more)."""
    with pytest.raises(SdcppError) as ei:
        fn()
    e = ei.value
    assert type(e) is cls, f"{type(e).__name__}: {e}"
    msg = str(e)
    assert str(file) in msg, msg
    if tensor is not None:
        assert repr(tensor) in msg, msg
    if key is not None:
        assert key in msg, msg
    if match is not None:
        assert match in msg, msg
    return e


def ckpt(tmp_path: Path, container: str, body: bytes, storages: dict[str, bytes] | None = None,
         name: str = "m.ckpt") -> Path:
    """A torch checkpoint whose object pickle is PROTO 2 + body + STOP."""
    storages = storages or {}
    if container == "zip":
        return torch_zip(tmp_path / name, pickle_of(body), storages)
    return torch_legacy(tmp_path / name, pickle_of(body), {k: (len(v) // 4, v) for k, v in storages.items()})


# ============================================================ recursion bombs
def test_safetensors_header_nested_too_deep(tmp_path):
    ok = safetensors_f32(tmp_path / "ok.safetensors", {"w": ((2,), f32(1, 2))}, metadata={"a": "b"})
    assert set(read_tensors(ok)) == {"w"}
    deep_meta = ('{"__metadata__": {"a": ' + nested_json(100_000) + '}, '
                 '"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}')
    f = safetensors_raw(tmp_path / "meta.safetensors", deep_meta, f32(1, 2))
    refused(CorruptFileError, lambda: read_tensors(f), file=f, match="nests")
    deep_shape = '{"w": {"dtype": "F32", "shape": ' + nested_json(5000) + ', "data_offsets": [0, 8]}}'
    f = safetensors_raw(tmp_path / "shape.safetensors", deep_shape, f32(1, 2))
    refused(CorruptFileError, lambda: read_tensors(f), file=f, match="nests")


def test_json_depth_limit_is_exact_and_ignores_brackets_in_strings(tmp_path):
    shallow = ('{"__metadata__": {"a": "' + "[" * 10_000 + '"}, '
               '"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}')
    assert set(read_tensors(safetensors_raw(tmp_path / "s.safetensors", shallow, f32(1, 2)))) == {"w"}
    # __metadata__ values are strings; a nested value is kept as its JSON text: at the limit it reads
    at_limit = ('{"__metadata__": {"a": ' + nested_json(MAX_JSON_DEPTH - 2) + '}, '
                '"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}')
    assert set(read_tensors(safetensors_raw(tmp_path / "l.safetensors", at_limit, f32(1, 2)))) == {"w"}
    over = at_limit.replace(nested_json(MAX_JSON_DEPTH - 2), nested_json(MAX_JSON_DEPTH - 1))
    f = safetensors_raw(tmp_path / "o.safetensors", over, f32(1, 2))
    refused(CorruptFileError, lambda: read_tensors(f), file=f, match=f"{MAX_JSON_DEPTH + 1} levels")


def test_sharded_index_nested_too_deep_or_naming_itself(tmp_path):
    safetensors_f32(tmp_path / "s1.safetensors", {"w": ((2,), f32(1, 2))})
    f = tmp_path / "model.safetensors.index.json"
    f.write_text('{"weight_map": {"w": "s1.safetensors"}, "metadata": ' + nested_json(3000) + "}")
    refused(CorruptFileError, lambda: read_tensors(f), file=f, match="nests")
    f.write_text(json.dumps({"weight_map": {"w": "model.safetensors.index.json"}}))
    refused(CorruptFileError, lambda: read_tensors(f), file=f, match="JSON index")


@pytest.mark.parametrize("where", ["model_index", "unet_config", "scheduler_config"])
def test_diffusers_configs_nested_too_deep(tmp_path, where):
    deep = ('{"a": ' + nested_json(50_000) + "}").encode()
    configs = {"unet": {"in_channels": 4}, "scheduler": {"num_train_timesteps": 1000}}
    kwargs = {}
    if where == "model_index":
        kwargs["model_index"] = deep
        bad = tmp_path / "m" / "model_index.json"
    elif where == "unet_config":
        configs["unet"] = deep
        bad = tmp_path / "m" / "unet" / "config.json"
    else:
        configs["scheduler"] = deep
        bad = tmp_path / "m" / "scheduler" / "scheduler_config.json"
    root = diffusers_folder(tmp_path / "m", configs, **kwargs)
    refused(CorruptFileError, lambda: open_source(root), file=bad, match="nests")


@pytest.mark.parametrize("container", CONTAINERS)
def test_pickle_nested_lists_and_tuples(tmp_path, container):
    storages = {"0": f32(1, 2)}
    ok = ckpt(tmp_path, container, p_dict({"w": p_tensor("0", (2,), (1,)), "x": b"]" * 10 + b"a" * 9}),
              storages, "ok.ckpt")
    assert set(read_tensors(ok)) == {"w"}
    lists = ckpt(tmp_path, container, p_dict({"x": b"]" * 200_000 + b"a" * 199_999}), storages, "lists.ckpt")
    refused(CorruptFileError, lambda: read_tensors(lists), file=lists, match="nests")
    # a 200,000-deep tuple used as a dict key: hash() would overflow the C stack (a crash)
    key = ckpt(tmp_path, container, b"}N" + b"\x85" * 200_000 + b"K\x01s", storages, "tuplekey.ckpt")
    refused(CorruptFileError, lambda: read_tensors(key), file=key, match="nests")
    # TUPLE from MARK, nested MAX_PICKLE_DEPTH + 1 deep
    marks = ckpt(tmp_path, container, b"(" * (MAX_PICKLE_DEPTH + 1) + b"t" * (MAX_PICKLE_DEPTH + 1),
                 storages, "marks.ckpt")
    refused(CorruptFileError, lambda: read_tensors(marks), file=marks, match="nests")


@pytest.mark.parametrize("container", CONTAINERS)
def test_pickle_deep_nesting_built_through_aliases(tmp_path, container):
    # 300 empty lists memoized, then list i appended into list i-1 *after* i-1 was placed: the
    # dry run cannot see the depth; the flattener's own limit refuses it (no RecursionError)
    n = 300
    body = b"]q\x000" + b"".join(b"]r" + struct.pack("<I", i) + b"0" for i in range(1, n))
    body += b"".join(b"j" + struct.pack("<I", i) + b"j" + struct.pack("<I", i + 1) + b"a0" for i in range(n - 1))
    body = body + b"h\x00"
    f = ckpt(tmp_path, container, b"}" + p_str("root") + body + b"s", {}, "alias.ckpt")
    refused(CorruptFileError, lambda: read_tensors(f), file=f, match="nests containers")


# ================================================================ memory bombs
MEMORY_BOMBS = {
    "memo index 2**32-16": b"N" + b"r\xf0\xff\xff\xff" + b"0",
    "text memo index 10**15": b"Np1000000000000000\n0",
    "BINBYTES8 2**60": b"\x8e" + struct.pack("<Q", 1 << 60) + b"xx",
    "BYTEARRAY8 2**40": b"\x96" + struct.pack("<Q", 1 << 40) + b"xx",
    "BINUNICODE8 2**50": b"\x8d" + struct.pack("<Q", 1 << 50) + b"xx",
    "LONG4 2**31-1": b"\x8b" + struct.pack("<i", 2**31 - 1) + b"xx",
    "BINBYTES 2**32-1": b"B" + struct.pack("<I", 2**32 - 1) + b"xx",
    "FRAME 2**62": b"\x95" + struct.pack("<Q", 1 << 62) + b"N",
}


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("bomb", list(MEMORY_BOMBS))
def test_pickle_opcodes_declaring_huge_sizes(tmp_path, container, bomb):
    f = ckpt(tmp_path, container, b"}" + p_str("x") + MEMORY_BOMBS[bomb] + b"s", {}, "bomb.ckpt")
    refused(CorruptFileError, lambda: read_tensors(f), file=f)


@pytest.mark.parametrize("container", CONTAINERS)
def test_pickle_quadratic_copies_of_a_shared_list(tmp_path, container):
    # one 20,000-item list, then 20,000 calls tuple(that list): 6 bytes each, 4e8 copies in all
    k = 20_000
    body = (b"]q\x00(" + b"K\x01" * k + b"e" + p_global("builtins", "tuple") + b"q\x01"
            + b"(" + b"h\x01h\x00\x85R" * k + b"l")
    f = ckpt(tmp_path, container, b"}" + p_str("x") + body + b"s", {}, "quad.ckpt")
    refused(CorruptFileError, lambda: read_tensors(f), file=f, match="copies")


def test_zip_member_inflating_past_the_archive(tmp_path):
    # a valid data.pkl followed by 64 MB of zeros after STOP, deflated to ~64 KB
    pkl = pickle_of(p_dict({"w": p_tensor("0", (2,), (1,))})) + b"\0" * (64 << 20)
    f = torch_zip(tmp_path / "bomb.ckpt", pkl, {"0": f32(1, 2)}, pkl_compress=zipfile.ZIP_DEFLATED)
    assert f.stat().st_size < (1 << 20)
    refused(CorruptFileError, lambda: read_tensors(f), file=f, match="more than the")


def test_zip_member_declaring_a_size_it_does_not_have(tmp_path):
    f = torch_zip(tmp_path / "lie.ckpt", pickle_of(p_dict({"w": p_tensor("0", (2,), (1,))})), {"0": f32(1, 2)})
    raw = bytearray(f.read_bytes())
    cd = raw.find(b"PK\x01\x02")                           # first central entry: archive/data.pkl
    assert raw[cd + 46:cd + 46 + 16] == b"archive/data.pkl"
    raw[cd + 24:cd + 28] = struct.pack("<I", 0xFFFF0000)  # uncompressed size
    f.write_bytes(bytes(raw))
    refused(CorruptFileError, lambda: read_tensors(f), file=f)


def test_legacy_storage_count_past_the_file(tmp_path):
    body = p_dict({"w": p_tensor("0", (2,), (1,))})
    f = torch_legacy(tmp_path / "l.ckpt", pickle_of(body), {"0": (1 << 60, f32(1, 2))})
    refused(CorruptFileError, lambda: read_tensors(f), file=f, match="runs past")


def test_gguf_counts_and_lengths_past_the_file(tmp_path):
    f = gguf_raw(tmp_path / "kv.gguf", n_kv=1 << 40)
    refused(CorruptFileError, lambda: read_tensors(f), file=f, match="more than")
    f = gguf_raw(tmp_path / "str.gguf", kvs=struct.pack("<Q", 1 << 62) + b"k", n_kv=1)
    refused(CorruptFileError, lambda: read_tensors(f), file=f)
    arr = gguf_string("k") + struct.pack("<IIQ", 9, 8, 1 << 50)        # array of 2**50 strings
    f = gguf_raw(tmp_path / "arr.gguf", kvs=arr, n_kv=1)
    refused(CorruptFileError, lambda: read_tensors(f), file=f)
    nested = gguf_string("k") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 40 + struct.pack("<IQ", 4, 0)
    f = gguf_raw(tmp_path / "nested.gguf", kvs=nested, n_kv=1)
    refused(CorruptFileError, lambda: read_tensors(f), file=f, match="nested")


# ====================================================== exponential structures
@pytest.mark.parametrize("container", CONTAINERS)
def test_pickle_dag_of_shared_lists(tmp_path, container):
    # L0 = [tensor]; L(i) = [L(i-1), L(i-1)]: 2**60 paths to the tensor, 300 bytes of pickle
    body = b"]" + p_tensor("0", (2,), (1,)) + b"ar\x00\x00\x00\x000"
    for i in range(1, 61):
        prev = struct.pack("<I", i - 1)
        body += b"]j" + prev + b"aj" + prev + b"ar" + struct.pack("<I", i) + b"0"
    body += b"j" + struct.pack("<I", 60)
    f = ckpt(tmp_path, container, b"}" + p_str("m") + body + b"s", {"0": f32(1, 2)}, "dag.ckpt")
    refused(CorruptFileError, lambda: read_tensors(f), file=f, match="exponential")


@pytest.mark.parametrize("container", CONTAINERS)
def test_shared_tensors_and_a_shared_dict_still_load(tmp_path, container):
    # tied weights (one tensor under two names) and one sub-dict under two keys are legitimate
    t = p_tensor("0", (2,), (1,)) + b"q\x05"
    sub = b"}" + p_str("w") + t + b"s" + b"q\x06"
    body = b"}(" + p_str("a") + sub + p_str("b") + b"h\x06" + p_str("tied") + b"h\x05" + b"u"
    recs = read_tensors(ckpt(tmp_path, container, body, {"0": f32(3, 4)}))
    assert set(recs) == {"a.w", "b.w", "tied"}
    assert all(r.numpy().tolist() == [3.0, 4.0] for r in recs.values())


# ============================================================ tensors that lie
@pytest.mark.parametrize("container", CONTAINERS)
def test_pickle_negative_stride(tmp_path, container):
    f = ckpt(tmp_path, container, p_dict({"w": p_tensor("0", (2,), (-1,), offset=1)}), {"0": f32(1, 2)})
    refused(CorruptFileError, lambda: read_tensors(f), file=f, tensor="w", match="negative stride")


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("size,stride,offset", [((3,), (1,), 0), ((2,), (1,), 1), ((2, 2), (2, 1), 0),
                                                ((2,), (5,), 0), ((1 << 40,), (0,), 0), ((0, 1 << 50), (1, 1), 0)])
def test_pickle_view_past_its_storage(tmp_path, container, size, stride, offset):
    f = ckpt(tmp_path, container, p_dict({"w": p_tensor("0", size, stride, offset=offset)}), {"0": f32(1, 2)})
    refused(CorruptFileError, lambda: read_tensors(f), file=f, tensor="w")


def test_safetensors_offsets_and_shapes_that_lie(tmp_path):
    for i, (entry, data) in enumerate([
        ({"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, f32(1, 2)),            # past the data
        ({"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}, f32(1, 2)),            # window past the end
        ({"dtype": "F32", "shape": [0, 1 << 62], "data_offsets": [0, 0]}, b""),          # empty, huge other dim
        ({"dtype": "F32", "shape": [1] * 100, "data_offsets": [0, 4]}, f32(1)),          # 100 dims
        ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, f32(1, 2)),
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, f32(1, 2)),
    ]):
        f = safetensors_raw(tmp_path / f"t{i}.safetensors", {"w": entry}, data)
        refused(CorruptFileError, lambda: read_tensors(f), file=f, tensor="w")


def test_gguf_offsets_and_shapes_that_lie(tmp_path):
    past = gguf_raw(tmp_path / "past.gguf", infos=gguf_info("w", [4], 0, 0), n_tensors=1, data=f32(1, 2))
    refused(CorruptFileError, lambda: read_tensors(past), file=past, tensor="w", match="past the end")
    empty = gguf_raw(tmp_path / "empty.gguf", infos=gguf_info("w", [0, 1 << 62], 0, 0), n_tensors=1, data=f32(1))
    refused(CorruptFileError, lambda: read_tensors(empty), file=empty, tensor="w")
    mis = gguf_raw(tmp_path / "mis.gguf", infos=gguf_info("w", [1], 0, 3), n_tensors=1, data=f32(1, 2))
    refused(CorruptFileError, lambda: read_tensors(mis), file=mis, tensor="w", match="alignment")


# ============================================================ configs that lie
BAD_CONFIGS = [
    ("vae", "scaling_factor", "abc"), ("vae", "scaling_factor", None), ("vae", "scaling_factor", -0.18),
    ("vae", "norm_num_groups", 0), ("vae", "latent_channels", 4.5),
    ("unet", "block_out_channels", [320, 0]), ("unet", "block_out_channels", []),
    ("unet", "layers_per_block", -1), ("unet", "attention_head_dim", "8"), ("unet", "norm_eps", 0),
    ("unet", "in_channels", True), ("unet", "down_block_types", [1, 2]),
    ("unet", "transformer_layers_per_block", [1, [2, -3]]), ("unet", "sample_size", 0),
    ("text_encoder", "num_attention_heads", "12"), ("text_encoder", "hidden_size", 0),
    ("text_encoder", "layer_norm_eps", float("nan")), ("text_encoder", "architectures", "CLIPTextModel"),
    ("scheduler", "num_train_timesteps", 0), ("scheduler", "beta_end", "0.012"),
    ("scheduler", "prediction_type", 5),
]


@pytest.mark.parametrize("comp,key,value", BAD_CONFIGS, ids=[f"{c}.{k}={v!r}" for c, k, v in BAD_CONFIGS])
def test_config_values_of_the_wrong_type_or_range(tmp_path, comp, key, value):
    configs = {"unet": {"in_channels": 4, "block_out_channels": [32, 64]}, "vae": {"scaling_factor": 0.18215},
               "text_encoder": {"hidden_size": 32}, "scheduler": {"num_train_timesteps": 1000}}
    root = diffusers_folder(tmp_path / "ok", configs)
    assert set(open_source(root).components) == {"unet", "vae", "text_encoder"}
    configs[comp] = {**configs[comp], key: value}
    root = diffusers_folder(tmp_path / "bad", configs)
    name = "scheduler_config.json" if comp == "scheduler" else "config.json"
    e = refused(ConfigError, lambda: open_source(root), file=root / comp / name, key=repr(key))
    assert e.key == key


def test_model_index_entry_of_the_wrong_type(tmp_path):
    root = diffusers_folder(tmp_path / "m", {"unet": {}}, model_index={"unet": "diffusers/UNet"})
    refused(ConfigError, lambda: open_source(root), file=root / "model_index.json", key="'unet'")


def test_bare_component_folder_config_is_checked(tmp_path):
    root = diffusers_folder(tmp_path / "m", {"vae": {"_class_name": "AutoencoderKL", "scaling_factor": "abc"}})
    refused(ConfigError, lambda: open_source(root / "vae"), file=root / "vae" / "config.json", key="scaling_factor")


@pytest.mark.parametrize("files", [
    ["diffusion_pytorch_model.safetensors", "model.safetensors"],
    ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json"],
    ["model.ema.safetensors", "model.nonema.safetensors"],
])
def test_two_weight_files_for_one_component(tmp_path, files):
    root = diffusers_folder(tmp_path / "m", {"unet": {}}, weights={"unet": files})
    refused(AmbiguousSourceError, lambda: open_source(root), file=root / "unet", tensor="w", match=files[1])


def test_weight_files_sdcpp_orders_are_not_ambiguous(tmp_path):
    # safetensors over .bin, plain over variants, the requested variant first: documented order
    files = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
             "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.ema.safetensors"]
    root = diffusers_folder(tmp_path / "m", {"unet": {}}, weights={"unet": files})
    assert open_source(root).files["unet"].name == "diffusion_pytorch_model.safetensors"
    assert open_source(root, variant="fp16").files["unet"].name == "diffusion_pytorch_model.fp16.safetensors"


# ================================================== LoRA files that are not LoRAs
def _lora(tmp_path: Path, name: str, tensors: dict, metadata: dict | None = None) -> Path:
    return safetensors_f32(tmp_path / name, tensors, metadata)


DOWN = ("lora_unet_conv_in.lora_down.weight", ((2, 4), f32(*range(8))))
UP = ("lora_unet_conv_in.lora_up.weight", ((4, 2), f32(*range(8))))


def test_lora_rank_zero(tmp_path):
    f = _lora(tmp_path, "r0.safetensors", {DOWN[0]: ((0, 4), b""), UP[0]: ((4, 0), b"")})
    refused(LoraFormatError, lambda: read_lora(f), file=f, key=DOWN[0], match="rank 0")


def test_lora_factor_below_two_dims(tmp_path):
    f = _lora(tmp_path, "1d.safetensors", {DOWN[0]: ((8,), f32(*range(8))), UP[0]: UP[1]})
    refused(LoraFormatError, lambda: read_lora(f), file=f, key=DOWN[0])


@pytest.mark.parametrize("alpha", [((2,), f32(1, 2)), ((), f32(float("nan"))), ((), f32(float("inf")))])
def test_lora_alpha_not_a_finite_scalar(tmp_path, alpha):
    f = _lora(tmp_path, "a.safetensors", dict([DOWN, UP, ("lora_unet_conv_in.alpha", alpha)]))
    refused(LoraFormatError, lambda: read_lora(f), file=f, key="lora_unet_conv_in.alpha")


def test_lora_without_any_tensor(tmp_path):
    f = _lora(tmp_path, "empty.safetensors", {})
    refused(LoraFormatError, lambda: read_lora(f), file=f, match="no tensors")


@pytest.mark.parametrize("meta,key", [
    ("[1, 2]", "lora_adapter_metadata"),
    (json.dumps({"unet.lora_alpha": "eight"}), "unet.lora_alpha"),
    (json.dumps({"unet.alpha_pattern": {"(a+)+$": 2}}), "unet.alpha_pattern"),
    (json.dumps({"unet.alpha_pattern": [1]}), "unet.alpha_pattern"),
    (nested_json(10_000), None),
])
def test_lora_adapter_metadata_that_lies(tmp_path, meta, key):
    f = _lora(tmp_path, "m.safetensors", dict([("unet.conv_in.lora_A.weight", DOWN[1]),
                                               ("unet.conv_in.lora_B.weight", UP[1])]),
              {"lora_adapter_metadata": meta})
    refused(LoraFormatError, lambda: read_lora(f), file=f, key=key)


@pytest.mark.parametrize("cfg,key", [('{"lora_alpha": "x"}', "lora_alpha"), ('{"use_rslora": "yes"}', "use_rslora"),
                                     ("[]", None), (nested_json(10_000), None), ("{not json", None)])
def test_peft_adapter_config_that_lies(tmp_path, cfg, key):
    folder = tmp_path / "peft"
    folder.mkdir()
    _lora(folder, "adapter_model.safetensors", {"base_model.model.conv_in.lora_A.weight": DOWN[1],
                                                "base_model.model.conv_in.lora_B.weight": UP[1]})
    (folder / "adapter_config.json").write_text(cfg)
    refused(LoraFormatError, lambda: read_lora(folder), file=folder / "adapter_config.json", key=key)
