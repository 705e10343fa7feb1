// AVX-512 variant of the Winograd F(2x2, 3x3) transforms: 16 channels (input, kernel) or 16
// tiles (output) per vector; the output tiles' two columns are interleaved with two-source
// permutes.
#include "winograd_f23.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

namespace sdcpp::kernels::cpu {

namespace {

#define SD_TARGET __attribute__((target("avx512f,fma")))
typedef __m512 V;
constexpr int L = 16;

// dst[2 l + k] = y[k][l].
SD_TARGET inline void interleave2(const V* y, float* dst) {
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    _mm512_storeu_ps(dst, _mm512_permutex2var_ps(y[0], lo, y[1]));
    _mm512_storeu_ps(dst + 16, _mm512_permutex2var_ps(y[0], hi, y[1]));
}

// The channels' kernels are 9 floats apart: one gather per kernel position (a transpose
// through memory would stall on store forwarding).
SD_TARGET inline void load9(const float* g, V* k) {
    const __m512i idx = _mm512_setr_epi32(0, 9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 99, 108, 117, 126, 135);
    for (int q = 0; q < 9; ++q) k[q] = _mm512_i32gather_ps(idx, g + q, 4);
}

#include "winograd_f23_body.h"
#undef SD_TARGET

}  // namespace

const WinogradF23* winograd_f23_avx512() {
    static const WinogradF23 t{Level::Avx512, input_tiles, output_tiles, kernel};
    return &t;
}

}  // namespace sdcpp::kernels::cpu

#else
namespace sdcpp::kernels::cpu {
const WinogradF23* winograd_f23_avx512() { return nullptr; }
}  // namespace sdcpp::kernels::cpu
#endif
