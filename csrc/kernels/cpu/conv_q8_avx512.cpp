// AVX-512 variant of the quantized convolution's gather transpose (conv_q8.h): 16 x 16 tiles
// transposed in registers (4-byte, then 8-byte interleaves within 128-bit lanes, then two rounds
// of lane shuffles), 16 loads, 64 shuffles and 16 stores per 256 values where the portable
// loops move one value at a time.
#include "conv_q8.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define SD_TARGET __attribute__((target("avx512f")))

namespace sdcpp::kernels::cpu {

namespace {

// out[j * ldo + i] = in[i * ldi + j] for i, j < 16.
SD_TARGET inline void tile16(const float* in, int64_t ldi, float* out, int64_t ldo) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(in + i * ldi);
    // per 128-bit lane: rows 2i, 2i + 1 interleaved (columns 0-1 of the lane, then 2-3)
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // r[4 g + j]: per lane L, rows 4g .. 4g + 3 of column 4 L + j
    for (int g = 0; g < 4; ++g) {
        const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
        const __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
        r[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    // column 4 L + j gathers lane L of r[j], r[4 + j], r[8 + j], r[12 + j]
    for (int j = 0; j < 4; ++j) {
        const __m512 v0 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88), v1 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xDD);
        const __m512 v2 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88), v3 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xDD);
        _mm512_storeu_ps(out + (0 + j) * ldo, _mm512_shuffle_f32x4(v0, v2, 0x88));
        _mm512_storeu_ps(out + (4 + j) * ldo, _mm512_shuffle_f32x4(v1, v3, 0x88));
        _mm512_storeu_ps(out + (8 + j) * ldo, _mm512_shuffle_f32x4(v0, v2, 0xDD));
        _mm512_storeu_ps(out + (12 + j) * ldo, _mm512_shuffle_f32x4(v1, v3, 0xDD));
    }
}

SD_TARGET void transpose(const float* in, int64_t rows, float* out) {
    for (int64_t i = 0; i < rows; i += 16) {
        tile16(in + i * 32, 32, out + i, rows);
        tile16(in + i * 32 + 16, 32, out + 16 * rows + i, rows);
    }
}

}  // namespace

ConvQ8Transpose conv_q8_transpose_avx512() {
    static const bool avx512 = __builtin_cpu_supports("avx512f");
    return avx512 ? transpose : nullptr;
}

}  // namespace sdcpp::kernels::cpu

#else
namespace sdcpp::kernels::cpu {
ConvQ8Transpose conv_q8_transpose_avx512() { return nullptr; }
}  // namespace sdcpp::kernels::cpu
#endif
