// AVX2 variant of the Winograd F(2x2, 3x3) transforms: 8 channels (input, kernel) or 8 tiles
// (output) per vector; the output tiles' two columns are interleaved with in-register shuffles.
#include "winograd_f23.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

namespace sdcpp::kernels::cpu {

namespace {

#define SD_TARGET __attribute__((target("avx2,fma")))
typedef __m256 V;
constexpr int L = 8;

// dst[2 l + k] = y[k][l]: unpack interleaves within each 128-bit half (tiles 0,1 | 4,5 and
// 2,3 | 6,7), the lane permutes put the halves in order.
SD_TARGET inline void interleave2(const V* y, float* dst) {
    const __m256 lo = _mm256_unpacklo_ps(y[0], y[1]), hi = _mm256_unpackhi_ps(y[0], y[1]);
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(dst + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
}

// The channels' kernels are 9 floats apart: one gather per kernel position (a transpose
// through memory would stall on store forwarding).
SD_TARGET inline void load9(const float* g, V* k) {
    const __m256i idx = _mm256_setr_epi32(0, 9, 18, 27, 36, 45, 54, 63);
    for (int q = 0; q < 9; ++q) k[q] = _mm256_i32gather_ps(g + q, idx, 4);
}

#include "winograd_f23_body.h"
#undef SD_TARGET

}  // namespace

const WinogradF23* winograd_f23_avx2() {
    static const WinogradF23 t{Level::Avx2, input_tiles, output_tiles, kernel};
    return &t;
}

}  // namespace sdcpp::kernels::cpu

#else
namespace sdcpp::kernels::cpu {
const WinogradF23* winograd_f23_avx2() { return nullptr; }
}  // namespace sdcpp::kernels::cpu
#endif
