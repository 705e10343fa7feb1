// AVX2 + FMA variant of the element-wise kernels: 8 lanes, the same vectorized exp and erf
// as the AVX-512 variant (2^n built in the exponent bits, AVX2 having no scalef).
#include "elementwise.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#define SD_TARGET __attribute__((target("avx2,fma,f16c")))

namespace sdcpp::kernels::cpu {

namespace {

inline float gelu_erf_scalar(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f)); }
inline float silu_scalar(float x) { return x / (1.0f + std::exp(-x)); }

// e^x with relative error ~2e-7. x is clamped to [-87, 88] so that 2^n (n = round(x log2 e)
// in [-126, 127]) is a normal float and can be written into the exponent bits directly.
SD_TARGET inline __m256 exp_ps(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    f = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), f);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(f, f), _mm256_add_ps(f, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// erf(x) for all x: Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), odd extension.
SD_TARGET inline __m256 erf_ps(__m256 x) {
    const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(INT32_MIN));
    const __m256 ax = _mm256_andnot_ps(sign, x);
    const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(ax, _mm256_set1_ps(0.3275911f), _mm256_set1_ps(1.0f)));
    __m256 p = _mm256_set1_ps(1.061405429f);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
    p = _mm256_mul_ps(p, t);
    const __m256 e = exp_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), ax), ax));
    const __m256 y = _mm256_fnmadd_ps(p, e, _mm256_set1_ps(1.0f));  // 1 - p e^{-x^2}
    return _mm256_or_ps(y, _mm256_and_ps(x, sign));
}

SD_TARGET inline float hsum(__m256 v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

SD_TARGET void geglu_row(float* y, const float* h, const float* g, int64_t n) {
    int64_t i = 0;
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f), rs2 = _mm256_set1_ps(0.70710678118654752f);
    for (; i + 8 <= n; i += 8) {
        const __m256 gv = _mm256_loadu_ps(g + i);
        const __m256 gelu = _mm256_mul_ps(_mm256_mul_ps(half, gv), _mm256_add_ps(one, erf_ps(_mm256_mul_ps(gv, rs2))));
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(h + i), gelu));
    }
    for (; i < n; ++i) y[i] = h[i] * gelu_erf_scalar(g[i]);
}

SD_TARGET void affine_row(float* y, const float* x, float scale, float shift, int64_t n, bool silu) {
    int64_t i = 0;
    const __m256 s = _mm256_set1_ps(scale), b = _mm256_set1_ps(shift), one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), s, b);
        if (silu) v = _mm256_div_ps(v, _mm256_add_ps(one, exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), v))));
        _mm256_storeu_ps(y + i, v);
    }
    for (; i < n; ++i) {
        const float v = x[i] * scale + shift;
        y[i] = silu ? silu_scalar(v) : v;
    }
}

SD_TARGET double row_sum(const float* x, int64_t n) {
    double s = 0;
    int64_t i = 0;
    while (i + 8 <= n) {
        __m256 acc = _mm256_setzero_ps();
        const int64_t end = std::min<int64_t>(n - 7, i + 1024);
        for (; i < end; i += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(x + i));
        s += hsum(acc);
    }
    for (; i < n; ++i) s += x[i];
    return s;
}

SD_TARGET double row_sq(const float* x, float mean, int64_t n) {
    double s = 0;
    const __m256 m = _mm256_set1_ps(mean);
    int64_t i = 0;
    while (i + 8 <= n) {
        __m256 acc = _mm256_setzero_ps();
        const int64_t end = std::min<int64_t>(n - 7, i + 1024);
        for (; i < end; i += 8) {
            const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), m);
            acc = _mm256_fmadd_ps(d, d, acc);
        }
        s += hsum(acc);
    }
    for (; i < n; ++i) s += double(x[i] - mean) * double(x[i] - mean);
    return s;
}

SD_TARGET void layer_norm_row(float* y, const float* x, float mean, float rstd, const float* w, const float* b, int64_t n) {
    const __m256 m = _mm256_set1_ps(mean), r = _mm256_set1_ps(rstd);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), m), r);
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(v, _mm256_loadu_ps(w + i), _mm256_loadu_ps(b + i)));
    }
    for (; i < n; ++i) y[i] = (x[i] - mean) * rstd * w[i] + b[i];
}



SD_TARGET void softmax_panel(float* p, int64_t keys, int nr, float* m, float* l, float* alpha) {
    for (int j = 0; j < nr; j += 8) {
        __m256 mx = _mm256_loadu_ps(m + j);
        for (int64_t k = 0; k < keys; ++k) mx = _mm256_max_ps(mx, _mm256_loadu_ps(p + k * nr + j));
        const __m256 a = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(m + j), mx));
        __m256 sum = _mm256_setzero_ps();
        for (int64_t k = 0; k < keys; ++k) {
            const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(p + k * nr + j), mx));
            _mm256_storeu_ps(p + k * nr + j, e);
            sum = _mm256_add_ps(sum, e);
        }
        _mm256_storeu_ps(alpha + j, a);
        _mm256_storeu_ps(l + j, _mm256_fmadd_ps(_mm256_loadu_ps(l + j), a, sum));
        _mm256_storeu_ps(m + j, mx);
    }
}

// 8 x 8 blocks in registers: pairs of rows interleaved, then pairs of pairs, then the 128-bit
// halves exchanged (u[j] holds column j of rows 0-3 in its low half, column 4 + j in its high
// half; u[4 + j] the same for rows 4-7). Partial blocks at the edges go value by value.
SD_TARGET void transpose(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, int64_t cols) {
    int64_t r0 = 0;
    for (; r0 + 8 <= rows; r0 += 8) {
        int64_t c0 = 0;
        for (; c0 + 8 <= cols; c0 += 8) {
            const float* s = src + r0 * lds + c0;
            __m256 t[8], u[8];
            for (int i = 0; i < 8; i += 2) {
                const __m256 a = _mm256_loadu_ps(s + i * lds), b = _mm256_loadu_ps(s + (i + 1) * lds);
                t[i] = _mm256_unpacklo_ps(a, b);
                t[i + 1] = _mm256_unpackhi_ps(a, b);
            }
            for (int g = 0; g < 8; g += 4) {
                u[g + 0] = _mm256_shuffle_ps(t[g], t[g + 2], 0x44);
                u[g + 1] = _mm256_shuffle_ps(t[g], t[g + 2], 0xEE);
                u[g + 2] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0x44);
                u[g + 3] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
            }
            float* d = dst + c0 * ldd + r0;
            for (int j = 0; j < 4; ++j) {
                _mm256_storeu_ps(d + j * ldd, _mm256_permute2f128_ps(u[j], u[4 + j], 0x20));
                _mm256_storeu_ps(d + (4 + j) * ldd, _mm256_permute2f128_ps(u[j], u[4 + j], 0x31));
            }
        }
        for (int64_t r = r0; r < r0 + 8; ++r)
            for (int64_t c = c0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
    }
    for (int64_t r = r0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}

}  // namespace

const Elementwise* elementwise_avx2() {
    static const Elementwise t{Level::Avx2, geglu_row, affine_row, row_sum, row_sq, layer_norm_row, softmax_panel,
                               transpose};
    return &t;
}

}  // namespace sdcpp::kernels::cpu

#else
namespace sdcpp::kernels::cpu {
const Elementwise* elementwise_avx2() { return nullptr; }
}  // namespace sdcpp::kernels::cpu
#endif
