// AMX-INT8 variant of the q8_0 product (Sapphire Rapids and later): TDPBSSD multiplies a 16-row
// tile of int8 A by a tile of int8 B (4-byte groups of k per column) into 16 x 16 int32 sums,
// s8 x s8, so A needs neither the +128 offset nor B a compensation. A 32 x 32 tile of C is four
// int32 tiles (tmm0-3) fed by two A tiles (tmm4-5, rows 0-15 and 16-31) and two B tiles (tmm6-7,
// columns 0-15 and 16-31).
//
// Numerics as the portable reference: a tile product runs over one 32-value block only (A tiles
// 32 bytes wide, B tiles 8 rows of 4 k), so each int32 sum is one block's exact dot product; the
// four tiles are stored and AVX-512 folds them in, block by block, as fma(float(dot), d_b * d_a,
// acc). The tile product of block kb + 1 is issued before the fold of block kb, so that the tile
// unit and the vector units may work at once (measured, they overlap little: the stores and the
// fold cost about as much as the tile products; bench/README.md). A is used as the driver quantized it (rows lda apart: the
// tile loads take the stride), B packed per block as [2 halves of 16 columns][8 groups of 4 k]
// [16 columns][4 int8], then the 32 scales.
#include "gemm_q8.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include "amx_tiles.h"

#include <algorithm>
#include <cstring>

#include "gemm_q8_quant.h"

#define SD_TARGET __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512dq,avx512vl,fma,f16c")))

namespace sdcpp::kernels::cpu {

namespace {

constexpr int MR = 32, NR = 32;
constexpr int64_t HALF = 8 * 16 * 4;  // one B tile: 8 groups x 16 columns x 4 bytes = 512
constexpr int64_t SCALES = 2 * HALF;
constexpr int64_t PANEL_BLOCK = SCALES + NR * 4;

// The tile shapes (amx_tiles.h): tiles 0-3 C (16 rows of 16 int32), 4-5 A (16 rows of
// 32 int8), 6-7 B (8 rows of 16 x 4 int8).
SD_TARGET void thread_begin() {
    static const AmxTileConfig cfg = amx_tiles({64, 64, 64, 64, 32, 32, 64, 64}, {16, 16, 16, 16, 16, 16, 8, 8});
    _tile_loadconfig(&cfg);
}

SD_TARGET void thread_end() { _tile_release(); }

// ggml's quantization (gemm_q8_quant.h), vectorized (vcvtps2dq's round to nearest even,
// vpmovsdb's saturation), kept as int8. 16 blocks at a time: their 16 amax reduced into one
// vector by a transposing max tree, so d = f16(amax / 127) (vcvtps2ph rounds to nearest even, as
// float_to_half_bits) and 127 / amax are one vector division each instead of 16 scalar ones:
// 1.6x the AVX-512 variant's per-block loop (measured 5.4 against 3.3 Gfloat/s from L2), which
// matters because quantizing A is a fifth to a third of the product's time at these speeds.
SD_TARGET inline void quantize_values(const float* x, int8_t* out, float id) {
    const __m512 v = _mm512_set1_ps(id);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x), v))));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16),
                     _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + 16), v))));
}

SD_TARGET void quantize_a(const float* x, int64_t K, void* q, float* d) {
    int8_t* out = static_cast<int8_t*>(q);
    const int64_t KB = K / 32;
    const __m512 sign = _mm512_set1_ps(-0.0f);
    // after the tree, lane i holds block (i % 4) * 4 + i / 4; this index vector puts block j at lane j
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    alignas(64) float ids[16];
    int64_t b = 0;
    for (; b + 16 <= KB; b += 16) {
        const float* xb = x + b * 32;
        __m512 m[16], h[8], g[4], f[2];
#pragma GCC unroll 16
        for (int j = 0; j < 16; ++j)
            m[j] = _mm512_max_ps(_mm512_andnot_ps(sign, _mm512_loadu_ps(xb + j * 32)),
                                 _mm512_andnot_ps(sign, _mm512_loadu_ps(xb + j * 32 + 16)));
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i)  // 256-bit halves: lanes 0-7 block 2i, 8-15 block 2i + 1
            h[i] = _mm512_max_ps(_mm512_shuffle_f32x4(m[2 * i], m[2 * i + 1], 0x44),
                                 _mm512_shuffle_f32x4(m[2 * i], m[2 * i + 1], 0xEE));
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i)  // 128-bit quarters
            g[i] = _mm512_max_ps(_mm512_shuffle_f32x4(h[2 * i], h[2 * i + 1], 0x88),
                                 _mm512_shuffle_f32x4(h[2 * i], h[2 * i + 1], 0xDD));
#pragma GCC unroll 2
        for (int i = 0; i < 2; ++i) {  // pairs of floats
            const __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(g[2 * i]), _mm512_castps_pd(g[2 * i + 1]));
            const __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(g[2 * i]), _mm512_castps_pd(g[2 * i + 1]));
            f[i] = _mm512_max_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
        }
        const __m512 tree = _mm512_max_ps(_mm512_shuffle_ps(f[0], f[1], 0x88), _mm512_shuffle_ps(f[0], f[1], 0xDD));
        const __m512 amax = _mm512_permutexvar_ps(order, tree);
        const __m256i dh = _mm512_cvtps_ph(_mm512_div_ps(amax, _mm512_set1_ps(127.0f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm512_storeu_ps(d + b, _mm512_cvtph_ps(dh));
        const __mmask16 nz = _mm512_cmp_ps_mask(amax, _mm512_setzero_ps(), _CMP_NEQ_OQ);
        _mm512_store_ps(ids, _mm512_maskz_div_ps(nz, _mm512_set1_ps(127.0f), amax));
#pragma GCC unroll 4
        for (int j = 0; j < 16; ++j) quantize_values(xb + j * 32, out + (b + j) * 32, ids[j]);
    }
    for (; b < KB; ++b) {
        const float* xb = x + b * 32;
        const __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1)));
        d[b] = gemm_detail::half_to_float(gemm_q8_detail::float_to_half_bits(amax / 127.0f));
        quantize_values(xb, out + b * 32, amax != 0.0f ? 127.0f / amax : 0.0f);
    }
}

// Gathers transpose 16 columns at a time: vector g holds bytes 4g .. 4g + 3 of each column's
// block, which is row g of a B tile. Columns past nn are masked off (read nothing, packed as 0).
SD_TARGET void pack_b(const uint8_t* B, int64_t ldb, int64_t n0, int64_t nn, int64_t kb0, int64_t nkb, uint8_t* Bp) {
    const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32(static_cast<int32_t>(ldb)));
    for (int64_t p = 0; p * NR < nn; ++p) {
        for (int h = 0; h < 2; ++h) {
            const int64_t j0 = p * NR + h * 16;
            const int64_t valid = std::min<int64_t>(16, std::max<int64_t>(0, nn - j0));
            const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1u);
            const uint8_t* row = valid > 0 ? B + (n0 + j0) * ldb : B;
            for (int64_t kb = 0; kb < nkb; ++kb) {
                const uint8_t* base = row + (kb0 + kb) * kQ8BlockBytes;
                uint8_t* blk = Bp + (p * nkb + kb) * PANEL_BLOCK;
#pragma GCC unroll 8
                for (int g = 0; g < 8; ++g) {
                    const __m512i v = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mask, rows, base + 2 + 4 * g, 1);
                    _mm512_storeu_si512(blk + h * HALF + g * 64, v);
                }
                const __m512i dw = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mask, rows, base, 1);
                _mm512_storeu_ps(blk + SCALES + h * 64, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dw)));  // low 16 bits: d
            }
        }
    }
}

// The four int32 tiles of one block: C(r, c) += A(r) B(c) from zeroed tiles.
#define SD_AMX_BLOCK(a, lda, b)              \
    do {                                     \
        _tile_zero(0);                       \
        _tile_zero(1);                       \
        _tile_zero(2);                       \
        _tile_zero(3);                       \
        _tile_loadd(4, (a), (lda));          \
        _tile_loadd(5, (a) + 16 * (lda), (lda)); \
        _tile_loadd(6, (b), 64);             \
        _tile_loadd(7, (b) + HALF, 64);      \
        _tile_dpbssd(0, 4, 6);               \
        _tile_dpbssd(1, 4, 7);               \
        _tile_dpbssd(2, 5, 6);               \
        _tile_dpbssd(3, 5, 7);               \
    } while (0)

SD_TARGET void micro(int64_t nkb, const uint8_t* A, int64_t lda, const float* D, int64_t ldd, const uint8_t* Bp,
                     float* C, int64_t ldc, bool accumulate) {
    // The f32 tile of C lives here, not in C itself: C's rows may be a multiple of 4 KiB apart,
    // all in one L1 set. The int32 sums go to two buffers in turn, so that block kb + 1's stores
    // need not wait for block kb's fold to have read its sums.
    alignas(64) float acc[MR][NR];
    alignas(64) int32_t dots[2][MR][NR];
    for (int i = 0; i < MR; ++i) {
        if (accumulate) {
            std::memcpy(acc[i], C + i * ldc, NR * sizeof(float));
        } else {
            std::memset(acc[i], 0, NR * sizeof(float));
        }
    }
    SD_AMX_BLOCK(A, lda, Bp);
    for (int64_t kb = 0; kb < nkb; ++kb) {
        int32_t(*s)[NR] = dots[kb & 1];
        _tile_stored(0, &s[0][0], NR * 4);
        _tile_stored(1, &s[0][16], NR * 4);
        _tile_stored(2, &s[16][0], NR * 4);
        _tile_stored(3, &s[16][16], NR * 4);
        const uint8_t* bp = Bp + kb * PANEL_BLOCK;
        if (kb + 1 < nkb) SD_AMX_BLOCK(A + (kb + 1) * 32, lda, bp + PANEL_BLOCK);
        const __m512 d0 = _mm512_loadu_ps(bp + SCALES), d1 = _mm512_loadu_ps(bp + SCALES + 64);
#pragma GCC unroll 4
        for (int i = 0; i < MR; ++i) {
            const __m512 da = _mm512_set1_ps(D[i * ldd + kb]);
            const __m512 f0 = _mm512_cvtepi32_ps(_mm512_load_si512(&s[i][0]));
            const __m512 f1 = _mm512_cvtepi32_ps(_mm512_load_si512(&s[i][16]));
            _mm512_store_ps(&acc[i][0], _mm512_fmadd_ps(f0, _mm512_mul_ps(d0, da), _mm512_load_ps(&acc[i][0])));
            _mm512_store_ps(&acc[i][16], _mm512_fmadd_ps(f1, _mm512_mul_ps(d1, da), _mm512_load_ps(&acc[i][16])));
        }
    }
    for (int i = 0; i < MR; ++i) std::memcpy(C + i * ldc, acc[i], NR * sizeof(float));
}

#undef SD_AMX_BLOCK

// q5_0 / q4_0 blocks unpack as the AVX-512 variant's (every AMX CPU has AVX512-VNNI), else
// through the portable unpacker.
GemmQ8Kernels make_table() {
    const GemmQ8Kernels* avx512 = gemm_q8_avx512();
    GemmQ8Kernels t{Level::Amx, MR, NR, 1, PANEL_BLOCK, quantize_a, pack_b, micro, avx512 ? avx512->unpack_block : nullptr};
    t.thread_begin = thread_begin;
    t.thread_end = thread_end;
    return t;
}

}  // namespace

const GemmQ8Kernels* gemm_q8_amx() {
    static const GemmQ8Kernels table = make_table();
    static const bool amx = supported(Level::Amx);
    return amx ? &table : nullptr;
}

}  // namespace sdcpp::kernels::cpu

#else
namespace sdcpp::kernels::cpu {
const GemmQ8Kernels* gemm_q8_amx() { return nullptr; }
}  // namespace sdcpp::kernels::cpu
#endif
