"""The smallest known reproduction of the lavapipe (Mesa 22.3) crash on whole-graph computes
(docs/build.md, "Vulkan"): the three small random CLIP encoders of tests/engine/test_clip.py,
each encoding a few id batches on Vulkan in one process.

    python tools/vk_crash_repro.py prepare DIR     # once: weights + configs to DIR (needs torch)
    GGML_VK_VISIBLE_DEVICES=0 python tools/vk_crash_repro.py run DIR [PASSES]

`run` needs only numpy and sdcpp (no torch), so that it can run under valgrind or gdb. It prints
one line per (encoder, batch) after its three encodes; with SDCPP_NODE_BY_NODE=1 every pass ends.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

BOS, EOS = 49406, 49407
KINDS = {"L": 1, "H": 2, "G": 3}  # encoder kind -> the seed test_clip.py gives it


def prepare(out: Path) -> None:
    tests = Path(__file__).resolve().parents[1] / "tests"
    sys.path[:0] = [str(tests), str(tests / "engine")]
    import test_clip as T  # the test's own model factory and canonical names

    out.mkdir(parents=True, exist_ok=True)
    weights, configs = {}, {}
    for kind, seed in KINDS.items():
        model = T.make_model(kind, seed=seed)
        prefix = "text_encoder_2." if kind == "G" else "text_encoder."
        weights.update({f"{kind}|{k}": v for k, v in T.canonical(model, prefix).items()})
        configs[kind] = [prefix, model.config.to_dict()]
    np.savez(out / "clip_weights.npz", **weights)
    (out / "clip_configs.json").write_text(json.dumps(configs, default=str))


def run(src: Path, passes: int) -> None:
    from sdcpp.engine.text import TextEncoder, config_from_transformers
    from sdcpp.engine.weights import build_store, open_device

    weights = np.load(src / "clip_weights.npz")
    configs = json.loads((src / "clip_configs.json").read_text())
    device = open_device("vulkan")
    encoders = {}
    for kind in KINDS:
        prefix, cfg = configs[kind]
        tensors = {k.split("|", 1)[1]: weights[k] for k in weights.files if k.startswith(kind + "|")}
        encoders[kind] = TextEncoder(build_store(device, tensors, "f32"), prefix,
                                     config_from_transformers(cfg, with_projection=(kind == "G")))
    rng = np.random.default_rng(0)
    for p in range(passes):
        for kind, enc in encoders.items():
            layers = int(configs[kind][1]["num_hidden_layers"])
            for batch in (1, 2):
                ids = np.full((batch, 77), EOS, dtype=np.int64)
                ids[:, 0] = BOS
                ids[:, 1:10] = rng.integers(1, BOS, (batch, 9))
                enc.encode(ids)
                enc.encode(ids, layers=layers - 1, final_norm=False)
                enc.encode(ids, layers=layers - 1, final_norm=True)
                print(p, kind, batch, flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("prepare", "run"):
        sys.exit(__doc__)
    if sys.argv[1] == "prepare":
        prepare(Path(sys.argv[2]))
    else:
        run(Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1)
