"""sdcpp.preprocess.canny against OpenCV's cv2.Canny (when opencv-python-headless is installed),
and properties that hold without it."""
import numpy as np
import pytest
from PIL import Image, ImageDraw

from sdcpp import errors, preprocess


def _images():
    rng = np.random.default_rng(0)
    out = []
    img = Image.new("RGB", (96, 80), (30, 40, 50))
    d = ImageDraw.Draw(img)
    d.ellipse((10, 8, 60, 50), fill=(200, 120, 40))
    d.rectangle((50, 30, 90, 70), fill=(20, 220, 90))
    d.line((0, 79, 95, 0), fill=(250, 250, 250), width=3)
    out.append(img)
    noisy = np.clip(np.asarray(img, np.float32) + rng.normal(0, 25, (80, 96, 3)), 0, 255).astype(np.uint8)
    out.append(Image.fromarray(noisy, "RGB"))
    smooth = (rng.random((16, 20, 3)) * 255).astype(np.uint8)
    out.append(Image.fromarray(smooth, "RGB").resize((100, 64), Image.BILINEAR))
    out.append(Image.fromarray(noisy[:, :, 1], "L"))
    return out


@pytest.mark.parametrize("low,high", [(100, 200), (50, 150), (200, 100), (10.5, 30.7)])
def test_canny_matches_opencv(low, high):
    cv2 = pytest.importorskip("cv2")
    for i, img in enumerate(_images()):
        ours = preprocess.canny_edges(img, low, high)
        ref = cv2.Canny(np.asarray(img), low, high)
        diff = int((ours != ref).sum())
        assert diff == 0, f"image {i}: {diff} pixels differ of {ref.size} ({int((ref > 0).sum())} edges)"


def test_canny_properties():
    img = Image.new("RGB", (64, 48), (0, 0, 0))
    ImageDraw.Draw(img).rectangle((16, 12, 47, 35), fill=(255, 255, 255))
    out = preprocess.canny(img)
    assert out.mode == "RGB" and out.size == (64, 48)
    e = np.asarray(out)[:, :, 0]
    assert set(np.unique(e)) <= {0, 255}
    ys, xs = np.nonzero(e)
    # edges hug the rectangle's outline and nothing else, one or two pixels thick
    assert ys.min() >= 10 and ys.max() <= 37 and xs.min() >= 14 and xs.max() <= 49
    assert e[20:28, 22:42].sum() == 0 and e[:8].sum() == 0
    assert (e[24] > 0).sum() <= 4
    assert preprocess.canny_edges(Image.new("RGB", (32, 32), (90, 90, 90))).sum() == 0   # flat: no edges
    # higher thresholds keep a subset
    noisy = _images()[1]
    a, b = preprocess.canny_edges(noisy, 50, 100), preprocess.canny_edges(noisy, 150, 300)
    assert ((b > 0) & ~(a > 0)).sum() == 0 and (b > 0).sum() < (a > 0).sum()


def test_canny_errors():
    with pytest.raises(errors.InvalidArgumentError, match="threshold"):
        preprocess.canny(np.zeros((8, 8), np.uint8), -1, 10)
    with pytest.raises(errors.InvalidArgumentError, match="shape"):
        preprocess.canny(np.zeros((8, 8, 5), np.uint8))
