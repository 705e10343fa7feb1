"""Images in and out of JSON: base64 PNGs (with A1111's "parameters" text) and uploads."""
from __future__ import annotations

import base64
import binascii
import io
import warnings

from .errors import bad_request


def encode_png(image) -> str:
    """A PIL image -> base64 PNG text, the "parameters" chunk kept (A1111 clients read it back)."""
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    if "parameters" in image.info:
        meta.add_text("parameters", image.info["parameters"])
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=meta)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_b64_image(text, field: str, max_pixels: int):
    """base64 (optionally a ``data:image/...;base64,`` URL, as browsers and A1111 clients send) ->
    RGB PIL image. Anything undecodable is a 400 naming `field`."""
    if not isinstance(text, str) or not text:
        raise bad_request(field, f"{field} must be a non-empty base64 string")
    if text.startswith("data:"):
        _, sep, text = text.partition(",")
        if not sep:
            raise bad_request(field, f"{field}: a data URL without a ',' before the data")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(field, f"{field} is not valid base64: {exc}") from None
    return decode_image_bytes(raw, field, max_pixels)


def decode_image_bytes(raw: bytes, field: str, max_pixels: int, keep_alpha: bool = False):
    """Bytes -> RGB PIL image (transparency composited on white), or with `keep_alpha` the image
    as stored in RGBA (an OpenAI edit mask)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
            w, h = img.size
            if w * h > max_pixels or w < 1 or h < 1:
                raise bad_request(field, f"{field}: image of {w}x{h} pixels is over the server's limit "
                                         f"of {max_pixels} pixels")
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise bad_request(field, f"{field} is not a readable image: {exc}") from None
    if keep_alpha:
        has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
        return img.convert("RGBA") if has_alpha else img.convert("RGB")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))   # transparent pixels on white, as A1111 does
        img = Image.alpha_composite(bg, rgba)
    return img.convert("RGB")
