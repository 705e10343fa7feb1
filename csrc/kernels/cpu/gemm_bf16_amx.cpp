// AMX-BF16 variant of the bf16 product (Sapphire Rapids and later): TDPBF16PS multiplies a
// 16-row tile of bf16 A (32 k per row) by a tile of bf16 B (16 k pairs x 16 columns) into 16 x 16
// f32 sums. A 32 x 32 tile of C is four f32 tiles (tmm0-3) fed by two A tiles (tmm4-5, rows 0-15
// and 16-31) and two B tiles (tmm6-7, columns 0-15 and 16-31). There are no per-block scales (unlike
// the q8_0 product), so C stays in the tile registers across the whole K block: per 32 k, four tile
// loads and four tile products, and C is loaded and stored once per micro call.
//
// Rounding with VCVTNE2PS2BF16 (round to nearest even, denormals to zero: gemm_bf16.h's rule, so
// A and f32 / f16 B round exactly as the portable reference); bf16 B is copied as it is (its
// denormals, which the rule flushes, TDPBF16PS reads as zero anyway).
#include "gemm_bf16.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include "amx_tiles.h"

#include <algorithm>

#define SD_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,f16c")))

namespace sdcpp::kernels::cpu {

namespace {

constexpr int MR = 32, NR = 32;
constexpr int64_t HALF = 16 * 16 * 2;  // one B tile: 16 k pairs x 16 columns x 2 bf16 = 512 values

// The tile shapes (amx_tiles.h): all eight tiles 16 rows of 64 bytes (C: 16 f32, A: 32
// bf16, B: 16 columns of 2 bf16).
SD_TARGET void thread_begin() {
    static const AmxTileConfig cfg = amx_tiles({64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16});
    _tile_loadconfig(&cfg);
}

SD_TARGET void thread_end() { _tile_release(); }

SD_TARGET inline __mmask16 mask16(int64_t n) {
    return n >= 16 ? static_cast<__mmask16>(0xffff) : n <= 0 ? 0 : static_cast<__mmask16>((1u << n) - 1u);
}

SD_TARGET inline __mmask32 mask32(int64_t n) {
    return n >= 32 ? static_cast<__mmask32>(0xffffffffu) : n <= 0 ? 0 : static_cast<__mmask32>((1u << n) - 1u);
}

// n (<= 32) f32 values as 32 bf16, zero past n.
SD_TARGET inline __m512i round32(const float* x, int64_t n) {
    const __m512 lo = _mm512_maskz_loadu_ps(mask16(n), x);
    const __m512 hi = _mm512_maskz_loadu_ps(mask16(n - 16), x + 16);
    return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));
}

SD_TARGET void round_a(const float* x, int64_t K, uint16_t* out) {
    for (int64_t k = 0; k < K; k += 32) _mm512_storeu_si512(out + k, round32(x + k, K - k));
}

// n (<= 32) values of B's row at src as 32 bf16, zero past n.
SD_TARGET inline __m512i b32(const char* src, GemmB type, int64_t n) {
    if (type == GemmB::F32) return round32(reinterpret_cast<const float*>(src), n);
    const __m512i h = _mm512_maskz_loadu_epi16(mask32(n), src);
    if (type == GemmB::BF16) return h;
    const __m512 lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
    const __m512 hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
    return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));
}

// Each column's 32 k as 16 dwords (k pairs) into a 16 x 16 scratch, then 16 gathers transpose it:
// row q of a B tile holds pair q of the 16 columns.
SD_TARGET void pack_b(const void* B, GemmB type, int64_t ldb, int64_t K, int64_t n0, int64_t nn, int64_t k0, int64_t kc,
                      uint16_t* Bp) {
    const int64_t esz = type == GemmB::F32 ? 4 : 2;
    const int64_t nkb = (kc + 31) / 32;
    const __m512i cols = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32(16));
    alignas(64) uint32_t tmp[16][16];
    for (int64_t p = 0; p * NR < nn; ++p) {
        for (int h = 0; h < 2; ++h) {
            const int64_t j0 = p * NR + h * 16;
            const int64_t valid = std::min<int64_t>(16, std::max<int64_t>(0, nn - j0));
            for (int64_t kb = 0; kb < nkb; ++kb) {
                const int64_t k = k0 + kb * 32;
                const int64_t n = std::min<int64_t>({32, kc - kb * 32, K - k});
                for (int c = 0; c < 16; ++c) {
                    const __m512i v = c < valid ? b32(static_cast<const char*>(B) + (n0 + j0 + c) * ldb + k * esz, type, n)
                                                : _mm512_setzero_si512();
                    _mm512_store_si512(tmp[c], v);
                }
                uint16_t* blk = Bp + (p * nkb + kb) * 32 * NR + h * HALF;
#pragma GCC unroll 16
                for (int q = 0; q < 16; ++q)
                    _mm512_storeu_si512(blk + q * 32, _mm512_i32gather_epi32(cols, &tmp[0][q], 4));
            }
        }
    }
}

SD_TARGET void micro(int64_t nkb, const uint16_t* A, int64_t lda, const uint16_t* Bp, float* C, int64_t ldc,
                     bool accumulate) {
    const int64_t cs = ldc * 4, as = lda * 2;
    if (accumulate) {
        _tile_loadd(0, C, cs);
        _tile_loadd(1, C + 16, cs);
        _tile_loadd(2, C + 16 * ldc, cs);
        _tile_loadd(3, C + 16 * ldc + 16, cs);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    for (int64_t kb = 0; kb < nkb; ++kb) {
        const uint16_t* a = A + kb * 32;
        const uint16_t* b = Bp + kb * 32 * NR;
        _tile_loadd(4, a, as);
        _tile_loadd(6, b, 64);
        _tile_loadd(7, b + HALF, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_loadd(5, a + 16 * lda, as);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, C, cs);
    _tile_stored(1, C + 16, cs);
    _tile_stored(2, C + 16 * ldc, cs);
    _tile_stored(3, C + 16 * ldc + 16, cs);
}

GemmBf16Kernels make_table() {
    GemmBf16Kernels t{Level::Amx, MR, NR, round_a, pack_b, micro};
    t.thread_begin = thread_begin;
    t.thread_end = thread_end;
    return t;
}

}  // namespace

// The level amx asks for AMX-TILE and AMX-INT8 (and the OS's permission); this product also needs AMX-BF16.
const GemmBf16Kernels* gemm_bf16_amx() {
    static const GemmBf16Kernels table = make_table();
    static const bool ok = [] {
        bool bf16 = false;
        for (const auto& [name, has] : reported_features()) bf16 = bf16 || (name == "amx_bf16" && has);
        return supported(Level::Amx) && bf16;
    }();
    return ok ? &table : nullptr;
}

}  // namespace sdcpp::kernels::cpu

#else
namespace sdcpp::kernels::cpu {
const GemmBf16Kernels* gemm_bf16_amx() { return nullptr; }
}  // namespace sdcpp::kernels::cpu
#endif
