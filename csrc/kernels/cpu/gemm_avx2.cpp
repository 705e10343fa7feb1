// AVX2 + FMA variant of the packed product: a 6 x 16 tile of C in 12 ymm accumulators; per k step
// two B loads and six broadcasts feed 12 FMAs (16 ymm registers in all: 12 + 2 + 1).
#include "gemm.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include "gemm_pack.h"

#define SD_TARGET __attribute__((target("avx2,fma,f16c")))

namespace sdcpp::kernels::cpu {

namespace {

typedef __m256 V;
constexpr int L = 8;
constexpr int MR = 6, NR = 16;

SD_TARGET void row_to_f32(float* dst, const char* src, GemmB type, int64_t n) {
    int64_t i = 0;
    if (type == GemmB::F32) {
        std::memcpy(dst, src, static_cast<size_t>(n) * 4);
        return;
    }
    const uint16_t* h = reinterpret_cast<const uint16_t*>(src);
    if (type == GemmB::F16) {
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i))));
        for (; i < n; ++i) dst[i] = gemm_detail::half_to_float(h[i]);
    } else {
        for (; i + 8 <= n; i += 8) {
            const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i)));
            _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
        }
        for (; i < n; ++i) dst[i] = gemm_detail::bf16_to_float(h[i]);
    }
}
constexpr Level LEVEL = Level::Avx2;
#include "gemm_body.h"

}  // namespace

const GemmKernels* gemm_avx2() { return &kTable; }

}  // namespace sdcpp::kernels::cpu

#else
namespace sdcpp::kernels::cpu {
const GemmKernels* gemm_avx2() { return nullptr; }
}  // namespace sdcpp::kernels::cpu
#endif
