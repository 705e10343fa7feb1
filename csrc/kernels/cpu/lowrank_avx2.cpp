// AVX2 + F16C variant of the store conversions: 8 values per float32 -> half / bf16 step.
#include "lowrank.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include "ggml.h"

#define SD_TARGET __attribute__((target("avx2,fma,f16c")))

namespace sdcpp::kernels::cpu {

namespace {

SD_TARGET void f32_to_f16(const float* x, uint16_t* y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    if (i < n) ggml_fp32_to_fp16_row(x + i, reinterpret_cast<ggml_fp16_t*>(y + i), n - i);
}

SD_TARGET void f32_to_bf16(const float* x, uint16_t* y, int64_t n) {
    int64_t i = 0;
    const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7fff), quiet = _mm256_set1_epi32(64);
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    for (; i + 8 <= n; i += 8) {
        const __m256i u = _mm256_castps_si256(_mm256_loadu_ps(x + i));
        const __m256i hi = _mm256_srli_epi32(u, 16);
        const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, bias), _mm256_and_si256(hi, one)), 16);
        // |u| > inf as signed compare is safe: both sides are below 2^31
        const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf);
        const __m256i r = _mm256_blendv_epi8(rounded, _mm256_or_si256(hi, quiet), nan);
        // 8 values below 2^16 -> 8 uint16: pack within lanes, then put the two lanes' halves together
        const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i), _mm256_castsi256_si128(packed));
    }
    if (i < n) ggml_fp32_to_bf16_row_ref(x + i, reinterpret_cast<ggml_bf16_t*>(y + i), n - i);
}

}  // namespace

const LowRank* lowrank_avx2() {
    static const LowRank t{Level::Avx2, f32_to_f16, f32_to_bf16, quantize_q8_0_ggml,
                           quantize_q4_0_ggml};
    return &t;
}

}  // namespace sdcpp::kernels::cpu

#else
namespace sdcpp::kernels::cpu {
const LowRank* lowrank_avx2() { return nullptr; }
}  // namespace sdcpp::kernels::cpu
#endif
