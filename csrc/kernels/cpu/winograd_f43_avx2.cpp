// AVX2 + FMA variant of the Winograd F(4x4, 3x3) transforms: 8 channels (input) or 8 tiles
// (output) per vector; the output tiles' columns are interleaved with in-register shuffles.
#include "winograd_f43.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

namespace sdcpp::kernels::cpu {

namespace {

#define SD_TARGET __attribute__((target("avx2,fma")))
typedef __m256 V;
constexpr int L = 8;

// dst[4 l + k] = y[k][l]: a 4x8 -> 8x4 transpose.
SD_TARGET inline void interleave4(const V* y, float* dst) {
    const __m256 t0 = _mm256_unpacklo_ps(y[0], y[1]), t1 = _mm256_unpackhi_ps(y[0], y[1]);
    const __m256 t2 = _mm256_unpacklo_ps(y[2], y[3]), t3 = _mm256_unpackhi_ps(y[2], y[3]);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);  // tiles 0|4, 1|5
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);  // tiles 2|6, 3|7
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(u0, u1, 0x20));
    _mm256_storeu_ps(dst + 8, _mm256_permute2f128_ps(u2, u3, 0x20));
    _mm256_storeu_ps(dst + 16, _mm256_permute2f128_ps(u0, u1, 0x31));
    _mm256_storeu_ps(dst + 24, _mm256_permute2f128_ps(u2, u3, 0x31));
}

// The channels' kernels are 9 floats apart: one gather per kernel position.
SD_TARGET inline void load9(const float* g, V* k) {
    const __m256i idx = _mm256_setr_epi32(0, 9, 18, 27, 36, 45, 54, 63);
    for (int q = 0; q < 9; ++q) k[q] = _mm256_i32gather_ps(g + q, idx, 4);
}

#include "winograd_f43_body.h"
#undef SD_TARGET

}  // namespace

const WinogradF43* winograd_f43_avx2() {
    static const WinogradF43 t{Level::Avx2, input_tiles, output_tiles, kernel};
    return &t;
}

}  // namespace sdcpp::kernels::cpu

#else
namespace sdcpp::kernels::cpu {
const WinogradF43* winograd_f43_avx2() { return nullptr; }
}  // namespace sdcpp::kernels::cpu
#endif
