"""ggml block-quantized tensor types: sizes and exact dequantization (numpy).

A quantized GGUF tensor is a sequence of blocks along ggml's ne0 (numpy's last dim).
Each block packs ``block_size`` values into ``type_size`` bytes. The routines here
reproduce ggml's reference ``dequantize_row_*`` (ggml-quants.c) step by step in
float32, so the results match ggml's scalar path bit for bit.

Every function takes ``blocks``: a C-contiguous uint8 array of shape (n_blocks, type_size)
and returns float32 of shape (n_blocks, block_size).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

QK_K = 256

# ggml type id -> name, for every type GGUF may hold.
GGML_TYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K",
    16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S",
    22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
    29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}

# name -> (values per block, bytes per block), for the block-quantized types only.
QUANT_BLOCKS: dict[str, tuple[int, int]] = {
    "Q4_0": (32, 2 + 16),
    "Q4_1": (32, 2 + 2 + 16),
    "Q5_0": (32, 2 + 4 + 16),
    "Q5_1": (32, 2 + 2 + 4 + 16),
    "Q8_0": (32, 2 + 32),
    "Q2_K": (QK_K, QK_K // 16 + QK_K // 4 + 2 + 2),
    "Q3_K": (QK_K, QK_K // 8 + QK_K // 4 + 12 + 2),
    "Q4_K": (QK_K, 2 + 2 + 12 + QK_K // 2),
    "Q5_K": (QK_K, 2 + 2 + 12 + QK_K // 8 + QK_K // 2),
    "Q6_K": (QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2),
    "Q8_K": (QK_K, 4 + QK_K + QK_K // 8),
    "IQ2_XXS": (QK_K, 2 + QK_K // 4),
    "IQ2_XS": (QK_K, 2 + QK_K // 4 + QK_K // 32),
    "IQ3_XXS": (QK_K, 2 + QK_K // 4 + QK_K // 8),
    "IQ1_S": (QK_K, 2 + QK_K // 8 + QK_K // 16),
    "IQ4_NL": (32, 2 + 16),
    "IQ3_S": (QK_K, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),
    "IQ2_S": (QK_K, 2 + QK_K // 4 + QK_K // 16),
    "IQ4_XS": (QK_K, 2 + 2 + QK_K // 64 + QK_K // 2),
    "IQ1_M": (QK_K, QK_K // 8 + QK_K // 16 + QK_K // 32),
    "TQ1_0": (QK_K, 2 + 4 * 13),
    "TQ2_0": (QK_K, 2 + 64),
    "MXFP4": (32, 1 + 16),
}


def _f16(col: np.ndarray) -> np.ndarray:
    """Bytes (n, 2) holding little-endian f16 -> float32 (n, 1)."""
    return np.ascontiguousarray(col).view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 16) bytes -> (n, 32): low nibbles first, then high nibbles (ggml's q4 order)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _q8_0(b: np.ndarray) -> np.ndarray:
    d = _f16(b[:, 0:2])
    q = b[:, 2:34].view(np.int8).astype(np.float32)
    return q * d


def _q4_0(b: np.ndarray) -> np.ndarray:
    d = _f16(b[:, 0:2])
    q = _nibbles(b[:, 2:18]).astype(np.int8) - np.int8(8)
    return q.astype(np.float32) * d


def _q4_1(b: np.ndarray) -> np.ndarray:
    d = _f16(b[:, 0:2])
    m = _f16(b[:, 2:4])
    q = _nibbles(b[:, 4:20]).astype(np.float32)
    return q * d + m


def _high_bits(qh_bytes: np.ndarray) -> np.ndarray:
    """(n, 4) bytes = one little-endian uint32 per block -> (n, 32) bits 0..31 as uint8."""
    qh = np.ascontiguousarray(qh_bytes).view("<u4").astype(np.uint32)       # (n, 1)
    return ((qh >> np.arange(32, dtype=np.uint32)) & np.uint32(1)).astype(np.uint8)


def _q5_0(b: np.ndarray) -> np.ndarray:
    d = _f16(b[:, 0:2])
    q = _nibbles(b[:, 6:22]) | (_high_bits(b[:, 2:6]) << 4)
    return (q.astype(np.int8) - np.int8(16)).astype(np.float32) * d


def _q5_1(b: np.ndarray) -> np.ndarray:
    d = _f16(b[:, 0:2])
    m = _f16(b[:, 2:4])
    q = _nibbles(b[:, 8:24]) | (_high_bits(b[:, 4:8]) << 4)
    return q.astype(np.float32) * d + m


def _k_scale_min(sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K packed 6-bit (scale, min) pairs: (n, 12) bytes -> two (n, 8) uint8 arrays."""
    scale = np.empty((sc.shape[0], 8), np.uint8)
    mn = np.empty((sc.shape[0], 8), np.uint8)
    scale[:, :4] = sc[:, 0:4] & 63
    mn[:, :4] = sc[:, 4:8] & 63
    scale[:, 4:] = (sc[:, 8:12] & 0x0F) | ((sc[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (sc[:, 8:12] >> 4) | ((sc[:, 4:8] >> 6) << 4)
    return scale, mn


def _q4_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    d = _f16(b[:, 0:2])
    dmin = _f16(b[:, 2:4])
    scale, mn = _k_scale_min(b[:, 4:16])
    d_sub = d * scale.astype(np.float32)            # (n, 8): d1, d2 of each 64-value chunk
    m_sub = dmin * mn.astype(np.float32)
    qs = b[:, 16:144].reshape(n, 4, 32)             # chunk j: 32 bytes, low nibbles then high
    q = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(n, 8, 32).astype(np.float32)
    return (d_sub[:, :, None] * q - m_sub[:, :, None]).reshape(n, QK_K)


def _q5_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    d = _f16(b[:, 0:2])
    dmin = _f16(b[:, 2:4])
    scale, mn = _k_scale_min(b[:, 4:16])
    d_sub = d * scale.astype(np.float32)
    m_sub = dmin * mn.astype(np.float32)
    qh = b[:, 16:48]                                 # (n, 32): bit s of qh[l] -> sub-block s
    qs = b[:, 48:176].reshape(n, 4, 32)
    low = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(n, 8, 32)
    high = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    q = (low + (high << 4)).astype(np.float32)
    return (d_sub[:, :, None] * q - m_sub[:, :, None]).reshape(n, QK_K)


def _q6_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    ql = b[:, 0:128].reshape(n, 2, 64)
    qh = b[:, 128:192].reshape(n, 2, 32)
    sc = b[:, 192:208].view(np.int8).astype(np.float32).reshape(n, 2, 8)
    d = _f16(b[:, 208:210])                          # (n, 1)
    lo = np.stack([ql[:, :, 0:32] & 0x0F, ql[:, :, 32:64] & 0x0F,
                   ql[:, :, 0:32] >> 4, ql[:, :, 32:64] >> 4], axis=2)             # (n, 2, 4, 32)
    hi = np.stack([(qh >> s) & 3 for s in (0, 2, 4, 6)], axis=2)                   # (n, 2, 4, 32)
    q = ((lo | (hi << 4)).astype(np.int8) - np.int8(32)).astype(np.float32)
    # scale index: 16-value groups; group g of quarter k in half h uses sc[h, 2k + l//16]
    scales = sc.reshape(n, 2, 4, 2)                                                # [h, k, l//16]
    ds = d[:, :, None, None] * scales                                              # d * sc
    out = ds[..., None] * q.reshape(n, 2, 4, 2, 16)
    return out.reshape(n, QK_K)


def _q3_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    hmask = b[:, 0:32]
    qs = b[:, 32:96].reshape(n, 2, 32)
    raw = b[:, 96:108]
    d = _f16(b[:, 108:110])
    # 16 six-bit scales: low 4 bits from bytes 0..7, high 2 bits from bytes 8..11.
    low4 = np.concatenate([raw[:, 0:8] & 0x0F, raw[:, 0:8] >> 4], axis=1)         # (n, 16)
    tmp = raw[:, 8:12]
    high2 = np.concatenate([(tmp >> s) & 3 for s in (0, 2, 4, 6)], axis=1)        # (n, 16)
    scales = ((low4 | (high2 << 4)).astype(np.int8) - np.int8(32)).astype(np.float32)
    dl = (d * scales).reshape(n, 2, 4, 2)                                         # [half, j, l//16]
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)
    q = (qs[:, :, None, :] >> shifts[None, None, :, None]) & 3                   # (n, 2, 4, 32)
    bit = np.arange(8, dtype=np.uint8).reshape(2, 4)                              # m = 1 << (4h + j)
    hm = (hmask[:, None, None, :] >> bit[None, :, :, None]) & 1
    qv = (q.astype(np.int8) - np.where(hm == 0, np.int8(4), np.int8(0))).astype(np.float32)
    out = dl[..., None] * qv.reshape(n, 2, 4, 2, 16)
    return out.reshape(n, QK_K)


def _q2_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    sc = b[:, 0:16]
    qs = b[:, 16:80].reshape(n, 2, 32)
    d = _f16(b[:, 80:82])
    dmin = _f16(b[:, 82:84])
    dl = (d * (sc & 0x0F).astype(np.float32)).reshape(n, 2, 4, 2)
    ml = (dmin * (sc >> 4).astype(np.float32)).reshape(n, 2, 4, 2)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)
    q = ((qs[:, :, None, :] >> shifts[None, None, :, None]) & 3).astype(np.float32)
    q = q.reshape(n, 2, 4, 2, 16)
    return (dl[..., None] * q - ml[..., None]).reshape(n, QK_K)


DEQUANTIZERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1,
    "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
}


def dequantize_blocks(type_name: str, blocks: np.ndarray) -> np.ndarray:
    """(n_blocks, type_size) uint8 -> (n_blocks, block_size) float32. KeyError if unsupported."""
    fn = DEQUANTIZERS[type_name]
    blocks = np.ascontiguousarray(blocks, dtype=np.uint8)
    with np.errstate(over="ignore", invalid="ignore"):
        return fn(blocks)
