"""Control-image preprocessors in numpy (no OpenCV needed at run time).

``canny(image, low=100, high=200)``: the Canny edge map that ControlNet canny models are
trained on, computed as OpenCV's ``cv2.Canny(np.asarray(image), low, high)`` does (3x3 Sobel
with replicated borders, L1 gradient magnitude, on a colour image the channel with the largest
magnitude per pixel, OpenCV's tangent-sector non-maximum suppression, hysteresis over
8-connected neighbours), returned as an RGB PIL image (white edges on black), the control image
format of diffusers' ControlNet examples.
"""
from __future__ import annotations

import numpy as np

from . import errors

# tan(22.5 deg) in OpenCV's 15-bit fixed point (its sector test: no floating-point angles)
_TG22 = 13573


def _as_uint8(image) -> np.ndarray:
    from PIL import Image

    if isinstance(image, Image.Image):
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3)):
        raise errors.InvalidArgumentError(f"image must be a PIL image or an HxW / HxWx3 array, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        arr = np.clip(np.round(arr * 255.0), 0, 255)
    return arr.astype(np.uint8)


def _sobel(ch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3x3 Sobel dx, dy (int32) with replicated borders, as cv2.Sobel(BORDER_REPLICATE)."""
    p = np.pad(ch.astype(np.int32), 1, mode="edge")
    h, w = ch.shape
    win = lambda dy, dx: p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]  # noqa: E731
    gx = (win(-1, 1) + 2 * win(0, 1) + win(1, 1)) - (win(-1, -1) + 2 * win(0, -1) + win(1, -1))
    gy = (win(1, -1) + 2 * win(1, 0) + win(1, 1)) - (win(-1, -1) + 2 * win(-1, 0) + win(-1, 1))
    return gx, gy


def canny_edges(image, low: float = 100, high: float = 200) -> np.ndarray:
    """The edge map as a uint8 HxW array (255 = edge), as cv2.Canny(image, low, high)."""
    arr = _as_uint8(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    for what, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
            raise errors.InvalidArgumentError(f"canny {what} threshold must be a number >= 0, got {v!r}")
    if low > high:
        low, high = high, low
    lo, hi = int(np.floor(low)), int(np.floor(high))
    h, w, cn = arr.shape
    # per channel gradients; keep the channel of the largest L1 magnitude (the first on ties)
    dx = dy = mag = None
    for c in range(cn):
        gx, gy = _sobel(arr[:, :, c])
        m = np.abs(gx) + np.abs(gy)
        if mag is None:
            dx, dy, mag = gx, gy, m
        else:
            better = m > mag
            dx, dy, mag = np.where(better, gx, dx), np.where(better, gy, dy), np.where(better, m, mag)
    # non-maximum suppression along the gradient's sector (zero magnitude outside the image)
    mp = np.pad(mag, 1)
    at = lambda oy, ox: mp[1 + oy:1 + oy + h, 1 + ox:1 + ox + w]  # noqa: E731
    ax = np.abs(dx).astype(np.int64)
    ay = np.abs(dy).astype(np.int64) << 15
    tg22 = ax * _TG22
    tg67 = tg22 + (ax << 16)
    horizontal = ay < tg22
    vertical = ~horizontal & (ay > tg67)
    diagonal = ~horizontal & ~vertical
    s = np.where((dx ^ dy) < 0, -1, 1)
    keep_h = (mag > at(0, -1)) & (mag >= at(0, 1))
    keep_v = (mag > at(-1, 0)) & (mag >= at(1, 0))
    # diagonal: the previous row at x - s and the next row at x + s
    prev_m = np.where(s < 0, at(-1, 1), at(-1, -1))
    next_m = np.where(s < 0, at(1, -1), at(1, 1))
    keep_d = (mag > prev_m) & (mag > next_m)
    candidate = (mag > lo) & ((horizontal & keep_h) | (vertical & keep_v) | (diagonal & keep_d))
    strong = candidate & (mag > hi)
    # hysteresis: candidates 8-connected to a strong pixel
    edges = np.zeros((h + 2, w + 2), bool)
    cand = np.pad(candidate, 1)
    stack = list(np.flatnonzero(np.pad(strong, 1)))
    flat_e, flat_c = edges.reshape(-1), cand.reshape(-1)
    flat_e[stack] = True
    W2 = w + 2
    offsets = (-W2 - 1, -W2, -W2 + 1, -1, 1, W2 - 1, W2, W2 + 1)
    while stack:
        i = stack.pop()
        for o in offsets:
            j = i + o
            if flat_c[j] and not flat_e[j]:
                flat_e[j] = True
                stack.append(j)
    return (edges[1:-1, 1:-1] * np.uint8(255)).astype(np.uint8)


def canny(image, low: float = 100, high: float = 200):
    """Canny edges of `image` (PIL image or HxW(x3) uint8 / [0, 1] float array) as an RGB PIL
    image, white edges on black: a ControlNet canny model's control image. `low` / `high`: the
    hysteresis thresholds on the L1 gradient magnitude (OpenCV's convention; swapped if
    reversed)."""
    from PIL import Image

    e = canny_edges(image, low, high)
    return Image.fromarray(np.repeat(e[:, :, None], 3, axis=2), "RGB")


__all__ = ["canny", "canny_edges"]
