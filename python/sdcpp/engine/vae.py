"""The SD VAE (diffusers ``AutoencoderKL``) on the native ggml engine: numpy in, numpy out.

    vae = VAE(store, config)            # store: a WeightStore holding ``vae.<AutoencoderKL key>``
    image = vae.decode(latent)          # [B, 4, h, w] (already / scaling_factor) -> [B, 3, 8h, 8w], [-1, 1]
    moments = vae.encode(image)         # [B, 3, H, W] in [-1, 1] -> [B, 8, H/8, W/8] (mean | logvar)
    mean, logvar = split_moments(moments)

``config`` is the native VAE config of docs/internals.md §4 (``native_config`` builds it from a
diffusers ``AutoencoderKL`` config). A store may hold only the decoder or only the encoder;
calling the missing half raises ``InvalidArgumentError``.

Precision and the storage type of the weights
---------------------------------------------
The SDXL VAE's activations exceed the f16 range (diffusers marks it ``force_upcast``; decoding
it in f16 gives inf/NaN, i.e. black images). The native graph therefore computes in f32
whatever the weights' storage type: f16 / bf16 weights are widened to f32 inside the graph
right before their product, convolutions use an f32 im2col (``ggml_conv_2d`` would round
activations to f16) and no matrix product ever sees an f16 activation (ggml's CPU ``mul_mat``
with f16 weights would convert activations to f16). The storage type decides memory and the
rounding of the weights, never the range of the activations.

``DEFAULT_WEIGHT_TYPE`` is ``"f32"``: exact (relative L2 error vs diffusers float32 ~2e-6),
and the VAE is small (about 335 MB f32 for encoder + decoder, 198 MB for the decoder alone).
``"f16"`` halves that at a relative error of about 1e-3 and is NaN-free as well (weights are
stored in f16, activations stay f32; ``from_tensors`` keeps any tensor outside f16's range in
f32). ``"bf16"`` is NaN-free too, at about 1e-2. All three run at the same speed.

``set_options(compute="bf16")`` (CPU only) is the fast mode: the 3x3 convolutions' im2col and
kernels are rounded to bf16 (f32's exponent range, so no overflow either) and accumulated in
f32; about 1.8x less CPU time than f32 on an AVX512-BF16 CPU, relative error about 1e-2
(diffusers' own bfloat16 decode is about 2.5e-2 from its float32 one). Everything else
(norms, attention, 1x1 convolutions) stays f32.

Memory and speed
----------------
On the CPU, 3x3 convolutions use a custom im2col op (threads split output rows, padding read
as zeros, optionally bf16) followed by ggml's matrix product; large convolutions are computed
in horizontal strips written into one output so that no im2col buffer exceeds
``max_im2col_mb`` (128 MiB by default; the whole-image im2col of a 3x3 conv with 256 input
channels at 512x512 would be 2.4 GB). ``set_options(conv="direct")`` uses
``ggml_conv_2d_direct`` instead (16 MiB work buffer, about 2x slower here) and
``conv="im2col"`` the unbounded whole-image im2col (no faster, about 2 GB more peak memory).
Measured for a 512x512 decode of the SD VAE (2 threads): compute buffer 781 MB, peak RSS of
the whole process 1.2 GB (diffusers float32: 1.7 GB).
On other devices the same graph uses ggml's own im2col. The mid-block attention's score
matrix is computed in query chunks of at most ``max_attention_mb``. Batches are decoded one
image at a time (same graph, memory of one image). ``decode_tiled`` / ``encode_tiled`` run
overlapping tiles and blend them (diffusers' ``enable_tiling()`` scheme, ``vae_tiling.py``), so
that the compute buffers stay those of one tile for any image size.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from .. import errors
from .native_call import call_native
from .weights import build_store, native, storage_type  # noqa: F401 (re-exported)

DEFAULT_WEIGHT_TYPE = "f32"
VAE_WEIGHT_TYPES = ("f32", "f16", "bf16")  # never quantized (its convolutions dominate its error)
_F16_MAX = 65504.0


def native_config(diffusers_config: Mapping[str, Any]) -> dict:
    """The native VAE config (docs/internals.md §4) from a diffusers AutoencoderKL config dict."""
    c = dict(diffusers_config)
    try:
        return {
            "block_out_channels": [int(x) for x in c.get("block_out_channels", (128, 256, 512, 512))],
            "layers_per_block": int(c.get("layers_per_block", 2)),
            "latent_channels": int(c.get("latent_channels", 4)),
            "in_channels": int(c.get("in_channels", 3)),
            "out_channels": int(c.get("out_channels", 3)),
            "norm_groups": int(c.get("norm_num_groups", 32)),
            "norm_eps": 1e-6,
            "mid_attention": bool(c.get("mid_block_add_attention", True)),
            "use_quant_conv": bool(c.get("use_quant_conv", True)),
            "use_post_quant_conv": bool(c.get("use_post_quant_conv", True)),
        }
    except (TypeError, ValueError) as exc:
        raise errors.InvalidArgumentError(f"bad AutoencoderKL config: {exc}") from None


def split_moments(moments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, logvar) of encoder moments [B, 2C, h, w], logvar clamped to [-30, 20] as diffusers'
    DiagonalGaussianDistribution does."""
    m = np.asarray(moments)
    if m.ndim != 4 or m.shape[1] % 2:
        raise errors.InvalidArgumentError(f"moments must be [B, 2*C, h, w], got shape {m.shape}")
    c = m.shape[1] // 2
    return m[:, :c], np.clip(m[:, c:], -30.0, 20.0)


def _as_f32(array: Any, what: str) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype.kind not in "fiu":
        raise errors.InvalidArgumentError(f"{what} must be a numeric array, got dtype {a.dtype}")
    if a.ndim != 4:
        raise errors.InvalidArgumentError(f"{what} must have 4 dimensions [B, C, H, W], got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


class VAE:
    """AutoencoderKL decode/encode on a native WeightStore (see the module docstring)."""

    def __init__(self, store, config: Mapping[str, Any], *, prefix: str = "vae"):
        if not isinstance(config, Mapping):
            raise errors.InvalidArgumentError("VAE config must be a dict (docs/internals.md §4)")
        self.config = dict(config)
        self.store = store
        self._vae = call_native(native().VAE, store, dict(config), prefix)

    @classmethod
    def from_tensors(cls, device, tensors: Mapping[str, Any], config: Mapping[str, Any], *,
                     weight_type: str = DEFAULT_WEIGHT_TYPE, prefix: str = "vae") -> "VAE":
        """Build a store of the ``<prefix>.*`` tensors (numpy arrays or TensorRecords) and the VAE on it."""
        pre = prefix + "."
        selected = {k: v for k, v in tensors.items() if k.startswith(pre)}
        if not selected:
            raise errors.InvalidArgumentError(f"no tensor named {pre}* was given")

        if weight_type not in VAE_WEIGHT_TYPES:
            raise errors.InvalidArgumentError(
                f"VAE weight_type must be one of {VAE_WEIGHT_TYPES}, got {weight_type!r} (the VAE is not quantized)")

        def type_of(name, shape, wt):
            if wt not in VAE_WEIGHT_TYPES:  # a GGUF's quantized blocks are dequantized for the VAE
                return "f32" if len(shape) < 2 else DEFAULT_WEIGHT_TYPE
            t = storage_type(name, shape, wt)
            if t == "f16":
                v = selected[name]
                arr = v if isinstance(v, np.ndarray) else v.numpy()
                if arr.size and float(np.max(np.abs(arr))) > _F16_MAX:
                    return "f32"  # would overflow to inf in f16
            return t

        storage_type("", (), weight_type)  # validates weight_type
        store = build_store(device, selected, weight_type, type_of=type_of)
        return cls(store, config, prefix=prefix)

    # -- properties --------------------------------------------------------------------------
    @property
    def factor(self) -> int:
        """Spatial factor between image and latent (8 for the SD VAE)."""
        return int(self._vae.factor)

    @property
    def has_encoder(self) -> bool:
        return bool(self._vae.has_encoder)

    @property
    def has_decoder(self) -> bool:
        return bool(self._vae.has_decoder)

    def options(self) -> dict:
        return dict(self._vae.options())

    def set_options(self, conv: Optional[str] = None, max_im2col_mb: Optional[float] = None,
                    max_attention_mb: Optional[float] = None, compute: Optional[str] = None,
                    portable: Optional[bool] = None) -> None:
        """conv: 'strips' (default), 'direct' or 'im2col'; budgets in MiB; compute: 'f32'
        (default, exact) or 'bf16' (CPU: faster 3x3 convolutions, bf16-rounded products);
        portable: on the CPU, build the graph of stock ggml ops that other devices get (tests).
        See the module docstring."""
        cur = self.options()
        call_native(self._vae.set_options,
                     cur["conv"] if conv is None else conv,
                     float(cur["max_im2col_mb"] if max_im2col_mb is None else max_im2col_mb),
                     float(cur["max_attention_mb"] if max_attention_mb is None else max_attention_mb),
                     cur["compute"] if compute is None else compute,
                     bool(cur["portable"] if portable is None else portable))

    def free_compute_memory(self) -> None:
        """Drop cached graphs and the compute buffers (they are rebuilt on the next call)."""
        self._vae.clear()

    @property
    def compute_buffer_size(self) -> int:
        return int(self._vae.compute_buffer_size)

    def measure(self, decoder: bool, height: int, width: int) -> int:
        """Bytes of compute buffers for one image: decoding a latent of height x width, or
        encoding an image of height x width; planned without computing."""
        return int(call_native(self._vae.measure, bool(decoder), int(height), int(width)))

    # -- compute -----------------------------------------------------------------------------
    def decode(self, latent) -> np.ndarray:
        """latent [B, C_latent, h, w] (already divided by the scaling factor) -> image
        [B, C_out, h*f, w*f] float32, about [-1, 1], unclamped (as diffusers returns it)."""
        z = _as_f32(latent, "latent")
        return call_native(self._vae.decode, z)

    def encode(self, image) -> np.ndarray:
        """image [B, C_in, H, W] in [-1, 1] (H, W multiples of ``factor``) -> raw moments
        [B, 2*C_latent, H/f, W/f] (mean then logvar, unclamped; see ``split_moments``)."""
        x = _as_f32(image, "image")
        return call_native(self._vae.encode, x)

    def decode_tiled(self, latent, tile: int = 64, overlap: float = 0.25) -> np.ndarray:
        """Decode overlapping latent tiles of ``tile`` x ``tile`` latents and blend them linearly,
        diffusers' ``AutoencoderKL.tiled_decode`` (tile_latent_min_size=tile,
        tile_sample_min_size=tile*factor, tile_overlap_factor=overlap; see
        ``sdcpp.engine.vae_tiling``). Not exact: the mid-block attention sees one tile at a time.
        The compute buffers are those of one tile whatever the latent's size."""
        from .vae_tiling import tiled_decode

        z = _as_f32(latent, "latent")
        if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
            raise errors.InvalidArgumentError(f"tile must be a positive integer (latents), got {tile!r}")
        return tiled_decode(self.decode, z, self.factor, int(tile) * self.factor, overlap)

    def encode_tiled(self, image, tile: int = 512, overlap: float = 0.25) -> np.ndarray:
        """Encode overlapping image tiles of ``tile`` x ``tile`` pixels and blend their raw moments,
        diffusers' ``AutoencoderKL._tiled_encode`` (tile_sample_min_size=tile,
        tile_latent_min_size=tile/factor). ``tile * (1 - overlap)`` must be a multiple of the
        factor (image tiles must be). Compute buffers of one tile."""
        from .vae_tiling import tiled_encode

        x = _as_f32(image, "image")
        return tiled_encode(self.encode, x, self.factor, tile, overlap)


__all__ = ["VAE", "DEFAULT_WEIGHT_TYPE", "native_config", "storage_type", "split_moments"]
