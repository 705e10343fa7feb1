// AVX-512 variant of the store conversions: 16 values per float32 -> half / bf16 step, and
// q8_0 / q4_0 quantizers with ggml's rounding.
#include "lowrank.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include <cstring>

#include "ggml.h"

#define SD_TARGET __attribute__((target("avx512f,fma,f16c")))

namespace sdcpp::kernels::cpu {

namespace {

SD_TARGET void f32_to_f16(const float* x, uint16_t* y, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    if (i < n) ggml_fp32_to_fp16_row(x + i, reinterpret_cast<ggml_fp16_t*>(y + i), n - i);
}

SD_TARGET void f32_to_bf16(const float* x, uint16_t* y, int64_t n) {
    int64_t i = 0;
    const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff), quiet = _mm512_set1_epi32(64);
    const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
    for (; i + 16 <= n; i += 16) {
        const __m512i u = _mm512_castps_si512(_mm512_loadu_ps(x + i));
        const __m512i hi = _mm512_srli_epi32(u, 16);
        const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, bias), _mm512_and_si512(hi, one)), 16);
        const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs_mask), inf);
        const __m512i r = _mm512_mask_blend_epi32(nan, rounded, _mm512_or_si512(hi, quiet));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), _mm512_cvtepi32_epi16(r));
    }
    if (i < n) ggml_fp32_to_bf16_row_ref(x + i, reinterpret_cast<ggml_bf16_t*>(y + i), n - i);
}

// Products and sums rounded one by one, as ggml's scalar quantizers compute them: the explicit
// rounding-mode forms cannot be contracted into FMAs by the compiler (plain _mm512_mul_ps /
// _add_ps can, under -ffp-contract=fast, which would skip a rounding and change the bytes).
SD_TARGET inline __m512 mul(__m512 a, __m512 b) { return _mm512_mul_round_ps(a, b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
SD_TARGET inline __m512 add(__m512 a, __m512 b) { return _mm512_add_round_ps(a, b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

// roundf (halves away from zero) of integral-range floats: truncate, then step away from zero
// where the exact remainder is at least one half.
SD_TARGET inline __m512 round_half_away(__m512 q) {
    const __m512 t = _mm512_roundscale_ps(q, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m512 frac = _mm512_abs_ps(_mm512_sub_round_ps(q, t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __mmask16 up = _mm512_cmp_ps_mask(frac, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    const __m512 one = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(_mm512_set1_ps(1.0f)),
                                                           _mm512_and_si512(_mm512_castps_si512(q), _mm512_set1_epi32(int(0x80000000u)))));
    return _mm512_mask_add_ps(t, up, t, one);
}

SD_TARGET void quantize_q8_0(const float* x, void* y, int64_t n) {
    uint8_t* out = static_cast<uint8_t*>(y);
    constexpr size_t kBlock = sizeof(ggml_fp16_t) + 32;  // ggml's block_q8_0
    for (int64_t b = 0; b < n / 32; ++b, x += 32, out += kBlock) {
        const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
        if (!(amax <= 3.4028234663852886e38f) ||
            _mm512_cmp_ps_mask(x0, x0, _CMP_UNORD_Q) || _mm512_cmp_ps_mask(x1, x1, _CMP_UNORD_Q)) {
            quantize_q8_0_ggml(x, out, 32);  // NaN / infinity: ggml's order of comparisons decides
            continue;
        }
        const float d = amax / 127;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        if (!(id <= 3.4028234663852886e38f)) {  // d subnormal: x * id overflows, ggml's casts decide
            quantize_q8_0_ggml(x, out, 32);
            continue;
        }
        ggml_fp16_t h;
        ggml_fp32_to_fp16_row(&d, &h, 1);
        std::memcpy(out, &h, sizeof(h));
        const __m512 vid = _mm512_set1_ps(id);
        const __m512i q0 = _mm512_cvttps_epi32(round_half_away(mul(x0, vid)));
        const __m512i q1 = _mm512_cvttps_epi32(round_half_away(mul(x1, vid)));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + sizeof(h)), _mm512_cvtsepi32_epi8(q0));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + sizeof(h) + 16), _mm512_cvtsepi32_epi8(q1));
    }
}

SD_TARGET void quantize_q4_0(const float* x, void* y, int64_t n) {
    uint8_t* out = static_cast<uint8_t*>(y);
    constexpr size_t kBlock = sizeof(ggml_fp16_t) + 16;  // ggml's block_q4_0
    for (int64_t b = 0; b < n / 32; ++b, x += 32, out += kBlock) {
        const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
        const __m512 a0 = _mm512_abs_ps(x0), a1 = _mm512_abs_ps(x1);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
        if (!(amax <= 3.4028234663852886e38f) ||
            _mm512_cmp_ps_mask(x0, x0, _CMP_UNORD_Q) || _mm512_cmp_ps_mask(x1, x1, _CMP_UNORD_Q)) {
            quantize_q4_0_ggml(x, out, 32);
            continue;
        }
        // ggml keeps the first value of largest magnitude (a strict < while scanning), and
        // +0 when every value is zero
        float max = 0.0f;
        if (amax > 0.0f) {
            const uint32_t hits = uint32_t(_mm512_cmp_ps_mask(a0, _mm512_set1_ps(amax), _CMP_EQ_OQ)) |
                                  (uint32_t(_mm512_cmp_ps_mask(a1, _mm512_set1_ps(amax), _CMP_EQ_OQ)) << 16);
            max = x[__builtin_ctz(hits)];
        }
        const float d = max / -8;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        if (!(id <= 3.4028234663852886e38f && id >= -3.4028234663852886e38f)) {
            quantize_q4_0_ggml(x, out, 32);
            continue;
        }
        ggml_fp16_t h;
        ggml_fp32_to_fp16_row(&d, &h, 1);
        std::memcpy(out, &h, sizeof(h));
        const __m512 vid = _mm512_set1_ps(id), half = _mm512_set1_ps(8.5f);
        const __m512i fifteen = _mm512_set1_epi32(15);
        // (int8_t)(x * id + 8.5f) rounds the product, then the sum (two roundings, no FMA)
        const __m512i q0 = _mm512_min_epi32(fifteen, _mm512_cvttps_epi32(add(mul(x0, vid), half)));
        const __m512i q1 = _mm512_min_epi32(fifteen, _mm512_cvttps_epi32(add(mul(x1, vid), half)));
        const __m512i packed = _mm512_or_si512(q0, _mm512_slli_epi32(q1, 4));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + sizeof(h)), _mm512_cvtepi32_epi8(packed));
    }
}

}  // namespace

const LowRank* lowrank_avx512() {
    static const LowRank t{Level::Avx512, f32_to_f16, f32_to_bf16, quantize_q8_0,
                           quantize_q4_0};
    return &t;
}

}  // namespace sdcpp::kernels::cpu

#else
namespace sdcpp::kernels::cpu {
const LowRank* lowrank_avx512() { return nullptr; }
}  // namespace sdcpp::kernels::cpu
#endif
