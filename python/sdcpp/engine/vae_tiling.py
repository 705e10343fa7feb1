"""Tiled VAE decode and encode: overlapping tiles, linearly blended, as diffusers' AutoencoderKL
does with ``enable_tiling()`` (``tiled_decode`` / ``_tiled_encode``).

Why tiles: the VAE's compute buffers grow with the image area (about 780 MB for a 512x512 SD
decode, four times that at 1024x1024); decoding tiles of a fixed size bounds them at one tile's,
whatever the image size.

The scheme, in diffusers' words (``tile_sample_min_size`` = ``tile`` pixels,
``tile_latent_min_size`` = ``tile / factor``, ``tile_overlap_factor`` = ``overlap``):

* the input is cut into tiles of ``tile_in`` (latent tiles for decode, image tiles for encode)
  starting every ``int(tile_in * (1 - overlap))``; tiles at the right and bottom edges are
  smaller (they are run at their own size, never padded);
* each output tile (``tile_out`` = the other side's tile size) is blended into the tile above
  over ``int(tile_out * overlap)`` rows, then into the tile on its left over as many columns,
  with the weights ``y / extent`` (a linear ramp), in place, so a tile's neighbours below and
  to its right blend against its already-blended values;
* each tile keeps its first ``tile_out - extent`` rows and columns and the kept parts are
  concatenated.

Not exact against an untiled run: the mid-block attention and the GroupNorm statistics see one
tile at a time (diffusers says the same of its own tiling). Only the previous row of tiles is
held at once, so host memory beyond the output is about two rows of tiles.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .. import errors

DEFAULT_TILE = 512          # pixels: diffusers' SD 1.x/2.x tile (sample_size 512, 64 latents)
DEFAULT_OVERLAP = 0.25      # diffusers' tile_overlap_factor


def check_tile(tile: int, overlap: float, factor: int, encode: bool = True) -> tuple[int, float]:
    """Validate a tile size in pixels and an overlap fraction; return them normalised. For
    encoding, the stride between image tiles must be a multiple of the factor (the encoder takes
    only such sizes); decoding strides in latents, which needs only a stride of at least one."""
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < factor or tile % factor:
        raise errors.InvalidArgumentError(f"VAE tile size must be a positive multiple of {factor} pixels, got {tile!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0.0 <= overlap < 1.0:
        raise errors.InvalidArgumentError(f"VAE tile overlap must be in [0, 1), got {overlap!r}")
    tile = int(tile)
    stride = int(tile * (1 - overlap)) if encode else int(tile // factor * (1 - overlap)) * factor
    if stride < factor or stride % factor:
        raise errors.InvalidArgumentError(
            f"VAE tile {tile} with overlap {overlap} gives a stride of {stride} pixels; it must be a positive "
            f"multiple of {factor} (e.g. tile 512 or 256 with overlap 0.25)")
    return tile, float(overlap)


def _ramp(extent: int) -> tuple[np.ndarray, np.ndarray]:
    # diffusers computes y / extent and 1 - y / extent in Python floats (double) and the
    # product in float32: round the same doubles to float32.
    y = np.arange(extent, dtype=np.float64) / extent
    return (1.0 - y).astype(np.float32), y.astype(np.float32)


def _blend_rows(above: np.ndarray, below: np.ndarray, extent: int) -> None:
    """Blend the last `extent` rows of `above` into the first rows of `below` (in place)."""
    extent = min(above.shape[2], below.shape[2], extent)
    if extent <= 0:
        return
    a, b = _ramp(extent)
    below[:, :, :extent, :] = (above[:, :, above.shape[2] - extent:, :] * a[None, None, :, None]
                               + below[:, :, :extent, :] * b[None, None, :, None])


def _blend_cols(left: np.ndarray, right: np.ndarray, extent: int) -> None:
    """Blend the last `extent` columns of `left` into the first columns of `right` (in place)."""
    extent = min(left.shape[3], right.shape[3], extent)
    if extent <= 0:
        return
    a, b = _ramp(extent)
    right[:, :, :, :extent] = (left[:, :, :, left.shape[3] - extent:] * a[None, None, None, :]
                               + right[:, :, :, :extent] * b[None, None, None, :])


def run_tiled(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, tile_in: int, tile_out: int,
              overlap: float) -> np.ndarray:
    """Apply `run` (one tile [B, C, h, w] -> [B, C', h*s, w*s]) over overlapping tiles of `x` and
    blend the results (the scheme of the module docstring)."""
    stride = int(tile_in * (1 - overlap))
    extent = int(tile_out * overlap)
    keep = tile_out - extent
    H, W = x.shape[2], x.shape[3]
    out_rows = []
    prev = None
    for i in range(0, H, stride):
        row = []
        for j in range(0, W, stride):
            t = np.array(run(np.ascontiguousarray(x[:, :, i:i + tile_in, j:j + tile_in])), dtype=np.float32)
            if prev is not None:
                _blend_rows(prev[len(row)], t, extent)
            if row:
                _blend_cols(row[-1], t, extent)
            row.append(t)
        out_rows.append(np.concatenate([t[:, :, :keep, :keep] for t in row], axis=3))
        prev = row
    return np.ascontiguousarray(np.concatenate(out_rows, axis=2))


def tiled_decode(decode: Callable[[np.ndarray], np.ndarray], z: np.ndarray, factor: int,
                 tile: int = DEFAULT_TILE, overlap: float = DEFAULT_OVERLAP) -> np.ndarray:
    """Decode latent `z` in tiles of ``tile // factor`` latents (``tile`` pixels)."""
    tile, overlap = check_tile(tile, overlap, factor, encode=False)
    return run_tiled(decode, z, tile // factor, tile, overlap)


def tiled_encode(encode: Callable[[np.ndarray], np.ndarray], x: np.ndarray, factor: int,
                 tile: int = DEFAULT_TILE, overlap: float = DEFAULT_OVERLAP) -> np.ndarray:
    """Encode image `x` in tiles of ``tile`` pixels into raw moments (blended as diffusers blends
    its ``quant_conv`` output, before the mean/logvar split)."""
    tile, overlap = check_tile(tile, overlap, factor)
    return run_tiled(encode, x, tile, tile // factor, overlap)


def needs_tiles(size_hw: tuple[int, int], tile: int) -> bool:
    """diffusers' rule: tile only when a side exceeds one tile (sizes in the input's units)."""
    return size_hw[0] > tile or size_hw[1] > tile


__all__ = ["DEFAULT_TILE", "DEFAULT_OVERLAP", "check_tile", "run_tiled", "tiled_decode", "tiled_encode", "needs_tiles"]
