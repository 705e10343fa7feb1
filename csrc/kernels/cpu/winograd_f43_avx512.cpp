// AVX-512 variant of the Winograd F(4x4, 3x3) transforms: 16 channels (input) or 16 tiles
// (output) per vector; the output tiles' columns are interleaved with two-source permutes.
#include "winograd_f43.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

namespace sdcpp::kernels::cpu {

namespace {

#define SD_TARGET __attribute__((target("avx512f,fma")))
typedef __m512 V;
constexpr int L = 16;

// dst[4 l + k] = y[k][l]: pairs (k = 0,1 and 2,3) interleaved as floats, then the pairs
// interleaved as 64-bit lanes.
SD_TARGET inline void interleave4(const V* y, float* dst) {
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    const __m512d a_lo = _mm512_castps_pd(_mm512_permutex2var_ps(y[0], lo, y[1]));
    const __m512d a_hi = _mm512_castps_pd(_mm512_permutex2var_ps(y[0], hi, y[1]));
    const __m512d b_lo = _mm512_castps_pd(_mm512_permutex2var_ps(y[2], lo, y[3]));
    const __m512d b_hi = _mm512_castps_pd(_mm512_permutex2var_ps(y[2], hi, y[3]));
    const __m512i q0 = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
    const __m512i q1 = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
    _mm512_storeu_pd(reinterpret_cast<double*>(dst), _mm512_permutex2var_pd(a_lo, q0, b_lo));
    _mm512_storeu_pd(reinterpret_cast<double*>(dst + 16), _mm512_permutex2var_pd(a_lo, q1, b_lo));
    _mm512_storeu_pd(reinterpret_cast<double*>(dst + 32), _mm512_permutex2var_pd(a_hi, q0, b_hi));
    _mm512_storeu_pd(reinterpret_cast<double*>(dst + 48), _mm512_permutex2var_pd(a_hi, q1, b_hi));
}

// The channels' kernels are 9 floats apart: one gather per kernel position.
SD_TARGET inline void load9(const float* g, V* k) {
    const __m512i idx = _mm512_setr_epi32(0, 9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 99, 108, 117, 126, 135);
    for (int q = 0; q < 9; ++q) k[q] = _mm512_i32gather_ps(idx, g + q, 4);
}

#include "winograd_f43_body.h"
#undef SD_TARGET

}  // namespace

const WinogradF43* winograd_f43_avx512() {
    static const WinogradF43 t{Level::Avx512, input_tiles, output_tiles, kernel};
    return &t;
}

}  // namespace sdcpp::kernels::cpu

#else
namespace sdcpp::kernels::cpu {
const WinogradF43* winograd_f43_avx512() { return nullptr; }
}  // namespace sdcpp::kernels::cpu
#endif
