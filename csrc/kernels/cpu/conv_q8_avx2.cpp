// AVX2 variant of the quantized convolution's gather transpose (conv_q8.h): 8 x 8 tiles
// transposed in registers (4-byte and 8-byte interleaves within 128-bit lanes, then a lane
// swap), 8 loads, 24 shuffles and 8 stores per 64 values where the portable loops move one value
// at a time (on an AVX2 CPU those loops cost about as much as quantizing the rows).
#include "conv_q8.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define SD_TARGET __attribute__((target("avx2")))

namespace sdcpp::kernels::cpu {

namespace {

// out[j * ldo + i] = in[i * ldi + j] for i, j < 8.
SD_TARGET inline void tile8(const float* in, int64_t ldi, float* out, int64_t ldo) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(in + i * ldi);
    // per 128-bit lane: rows 2i, 2i + 1 interleaved (columns 0-1 of the lane, then 2-3)
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // r[4 g + j]: per lane L, rows 4g .. 4g + 3 of column 4 L + j
    for (int g = 0; g < 2; ++g) {
        const __m256d a = _mm256_castps_pd(t[4 * g]), b = _mm256_castps_pd(t[4 * g + 1]);
        const __m256d c = _mm256_castps_pd(t[4 * g + 2]), d = _mm256_castps_pd(t[4 * g + 3]);
        r[4 * g] = _mm256_castpd_ps(_mm256_unpacklo_pd(a, c));
        r[4 * g + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a, c));
        r[4 * g + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(b, d));
        r[4 * g + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(b, d));
    }
    // column j (lane 0) and 4 + j (lane 1): rows 0-3 from r[j], rows 4-7 from r[4 + j]
    for (int j = 0; j < 4; ++j) {
        _mm256_storeu_ps(out + j * ldo, _mm256_permute2f128_ps(r[j], r[4 + j], 0x20));
        _mm256_storeu_ps(out + (4 + j) * ldo, _mm256_permute2f128_ps(r[j], r[4 + j], 0x31));
    }
}

SD_TARGET void transpose(const float* in, int64_t rows, float* out) {
    for (int64_t i = 0; i < rows; i += 8)
        for (int64_t c = 0; c < 32; c += 8) tile8(in + i * 32 + c, 32, out + c * rows + i, rows);
}

}  // namespace

ConvQ8Transpose conv_q8_transpose_avx2() {
    static const bool avx2 = __builtin_cpu_supports("avx2");
    return avx2 ? transpose : nullptr;
}

}  // namespace sdcpp::kernels::cpu

#else
namespace sdcpp::kernels::cpu {
ConvQ8Transpose conv_q8_transpose_avx2() { return nullptr; }
}  // namespace sdcpp::kernels::cpu
#endif
