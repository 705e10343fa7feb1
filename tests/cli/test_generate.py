"""`sdcpp txt2img` / `img2img` / `inspect` from a shell: files, PNG metadata, exit codes."""
import numpy as np
import pytest
from PIL import Image

from sdcpp.cli import main


@pytest.fixture(scope="module")
def tiny_path(model_fixtures):
    return str(model_fixtures.get("bk-sdm-tiny").path("ldm"))


def test_txt2img_writes_pngs_with_parameters(tiny_path, tmp_path, capsys):
    out = tmp_path / "img.png"
    rc = main(["txt2img", "-m", tiny_path, "-p", "a red fox", "-n", "blurry", "--steps", "2", "-W", "64", "-H", "64",
               "-s", "7", "-b", "2", "-o", str(out), "--no-progress", "--sampler", "euler"])
    assert rc == 0
    files = [tmp_path / "img_1.png", tmp_path / "img_2.png"]
    assert capsys.readouterr().out.split() == [str(f) for f in files]
    for f in files:
        img = Image.open(f)
        assert img.size == (64, 64)
        params = img.text["parameters"]
        assert params.startswith("a red fox\nNegative prompt: blurry\n")
        assert "Seed: 7" in params and "Sampler: Euler" in params and "Size: 64x64" in params
        assert "Model: model" in params and "Model hash: " in params


def test_same_seed_from_cli_and_api_gives_the_same_image(tiny_path, tmp_path):
    import sdcpp
    out = tmp_path / "a.png"
    assert main(["txt2img", "-m", tiny_path, "-p", "a red fox", "--steps", "2", "-W", "64", "-H", "64", "-s", "3",
                 "-o", str(out), "--no-progress"]) == 0
    api = sdcpp.load(tiny_path).txt2img("a red fox", width=64, height=64, steps=2, seed=3)[0]
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(api))


def test_img2img_cli(tiny_path, tmp_path):
    src = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (120, 30, 200)).save(src)
    out = tmp_path / "out.png"
    assert main(["img2img", "-m", tiny_path, "-i", str(src), "-p", "a red fox", "--steps", "2", "--strength", "0.5",
                 "-o", str(out), "--no-progress"]) == 0
    assert "Denoising strength: 0.5" in Image.open(out).text["parameters"]


def test_user_errors_exit_1_with_one_line(tiny_path, tmp_path, capsys):
    assert main(["txt2img", "-m", tiny_path, "-p", "x", "-W", "63", "-o", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("sdcpp: error:") and "multiple of 8" in err and "\n" not in err
    assert main(["txt2img", "-m", str(tmp_path / "missing.safetensors"), "-p", "x"]) == 1
    assert "missing.safetensors" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["txt2img", "-p", "no model given"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["txt2img", "-m", "x", "-p", "y", "--sampler", "plms"])
    assert exc.value.code == 2


def test_inspect_cli(tiny_path, capsys):
    assert main(["inspect", tiny_path]) == 0
    assert "sd1 (bk-sdm-tiny)" in capsys.readouterr().out


def test_memory_and_vae_tiling_flags_change_nothing_at_this_size(tiny_path, tmp_path):
    """--memory low and --vae-tiling auto (64x64 is far below the automatic size) give the image
    of the defaults: the modes change memory and time only."""
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["txt2img", "-m", tiny_path, "-p", "a red fox", "--steps", "2", "-W", "64", "-H", "64", "-s", "3",
                 "-o", str(a), "--no-progress"]) == 0
    assert main(["txt2img", "-m", tiny_path, "-p", "a red fox", "--steps", "2", "-W", "64", "-H", "64", "-s", "3",
                 "-o", str(b), "--no-progress", "--memory", "low", "--vae-tiling", "auto"]) == 0
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    with pytest.raises(SystemExit):
        main(["txt2img", "-m", tiny_path, "-p", "x", "--memory", "tiny"])


def test_hires_and_embedding_flags_reach_the_model(tiny_path, tmp_path):
    """--hires-* give the API's hires result; --embd-dir loads a folder of embeddings."""
    import sdcpp
    from safetensors.numpy import save_file

    out = tmp_path / "h.png"
    assert main(["txt2img", "-m", tiny_path, "-p", "a red fox", "--steps", "2", "-W", "64", "-H", "64", "-s", "5",
                 "--sampler", "euler", "--hires-scale", "1.5", "--hires-steps", "2", "--hires-denoise", "0.6",
                 "-o", str(out), "--no-progress"]) == 0
    ref = sdcpp.load(tiny_path, threads=2).txt2img("a red fox", width=64, height=64, steps=2, seed=5, sampler="euler",
                                                   hires=dict(scale=1.5, steps=2, denoise=0.6))[0]
    got = Image.open(out)
    assert got.size == (96, 96) and np.array_equal(np.asarray(got), np.asarray(ref))
    emb = tmp_path / "embs"
    emb.mkdir()
    width = sdcpp.inspect(tiny_path).text_encoders[0]["width"]
    save_file({"emb_params": np.full((1, width), 0.5, np.float32)}, str(emb / "foxstyle.safetensors"))
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    common = ["txt2img", "-m", tiny_path, "-p", "a foxstyle fox", "--steps", "2", "-W", "64", "-H", "64", "-s", "5",
              "--no-progress"]
    assert main(common + ["-o", str(a)]) == 0
    assert main(common + ["-o", str(b), "--embd-dir", str(emb)]) == 0
    assert not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_inpaint_command(tiny_path, tmp_path):
    import sdcpp

    rng = np.random.default_rng(0)
    img = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8), "RGB")
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 8:40] = 255
    img.save(tmp_path / "in.png")
    Image.fromarray(mask, "L").save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    assert main(["inpaint", "-m", tiny_path, "-i", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"),
                 "-p", "a red fox", "--steps", "2", "-s", "4", "--sampler", "euler", "-o", str(out),
                 "--no-progress"]) == 0
    ref = sdcpp.load(tiny_path, threads=2).inpaint(img, Image.fromarray(mask, "L"), "a red fox", steps=2, seed=4,
                                                   sampler="euler")[0]
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(ref))
    assert main(["inpaint", "-m", tiny_path, "-i", str(tmp_path / "in.png"), "--mask", str(tmp_path / "no.png"),
                 "-p", "x", "--no-progress"]) == 1
