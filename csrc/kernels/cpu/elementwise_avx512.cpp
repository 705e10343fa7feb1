// AVX-512 (F + DQ) variant of the element-wise kernels: 16 lanes, vectorized exp and erf.
#include "elementwise.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#define SD_TARGET __attribute__((target("avx512f,avx512dq,fma")))

namespace sdcpp::kernels::cpu {

namespace {

inline float gelu_erf_scalar(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f)); }
inline float silu_scalar(float x) { return x / (1.0f + std::exp(-x)); }

SD_TARGET inline __m512 exp_ps(__m512 x) {  // e^x, relative error ~2e-7, x clamped to [-104, 88]
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(88.0f));
    const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // f = x - n ln2 in two steps (Cody-Waite) for accuracy, then e^f on [-ln2/2, ln2/2]
    __m512 f = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    f = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), f);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(f, f), _mm512_add_ps(f, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

// erf(x) for all x: Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), odd extension.
SD_TARGET inline __m512 erf_ps(__m512 x) {
    const __m512 ax = _mm512_abs_ps(x);
    const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_fmadd_ps(ax, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.0f)));
    __m512 p = _mm512_set1_ps(1.061405429f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
    p = _mm512_mul_ps(p, t);
    const __m512 e = exp_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), ax), ax));
    const __m512 y = _mm512_fnmadd_ps(p, e, _mm512_set1_ps(1.0f));  // 1 - p e^{-x^2}
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(y),
                                               _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN))));
}

SD_TARGET void geglu_row(float* y, const float* h, const float* g, int64_t n) {
    int64_t i = 0;
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f), rs2 = _mm512_set1_ps(0.70710678118654752f);
    for (; i + 16 <= n; i += 16) {
        const __m512 gv = _mm512_loadu_ps(g + i);
        const __m512 gelu = _mm512_mul_ps(_mm512_mul_ps(half, gv), _mm512_add_ps(one, erf_ps(_mm512_mul_ps(gv, rs2))));
        _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_loadu_ps(h + i), gelu));
    }
    for (; i < n; ++i) y[i] = h[i] * gelu_erf_scalar(g[i]);
}

SD_TARGET void affine_row(float* y, const float* x, float scale, float shift, int64_t n, bool silu) {
    int64_t i = 0;
    const __m512 s = _mm512_set1_ps(scale), b = _mm512_set1_ps(shift), one = _mm512_set1_ps(1.0f);
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), s, b);
        if (silu) v = _mm512_div_ps(v, _mm512_add_ps(one, exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), v))));
        _mm512_storeu_ps(y + i, v);
    }
    for (; i < n; ++i) {
        const float v = x[i] * scale + shift;
        y[i] = silu ? silu_scalar(v) : v;
    }
}

SD_TARGET double row_sum(const float* x, int64_t n) {
    double s = 0;
    int64_t i = 0;
    while (i + 16 <= n) {
        __m512 acc = _mm512_setzero_ps();
        const int64_t end = std::min<int64_t>(n - 15, i + 1024);
        for (; i < end; i += 16) acc = _mm512_add_ps(acc, _mm512_loadu_ps(x + i));
        s += _mm512_reduce_add_ps(acc);
    }
    for (; i < n; ++i) s += x[i];
    return s;
}

SD_TARGET double row_sq(const float* x, float mean, int64_t n) {
    double s = 0;
    const __m512 m = _mm512_set1_ps(mean);
    int64_t i = 0;
    while (i + 16 <= n) {
        __m512 acc = _mm512_setzero_ps();
        const int64_t end = std::min<int64_t>(n - 15, i + 1024);
        for (; i < end; i += 16) {
            const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + i), m);
            acc = _mm512_fmadd_ps(d, d, acc);
        }
        s += _mm512_reduce_add_ps(acc);
    }
    for (; i < n; ++i) s += double(x[i] - mean) * double(x[i] - mean);
    return s;
}

SD_TARGET void layer_norm_row(float* y, const float* x, float mean, float rstd, const float* w, const float* b, int64_t n) {
    const __m512 m = _mm512_set1_ps(mean), r = _mm512_set1_ps(rstd);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), m), r);
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(v, _mm512_loadu_ps(w + i), _mm512_loadu_ps(b + i)));
    }
    for (; i < n; ++i) y[i] = (x[i] - mean) * rstd * w[i] + b[i];
}



SD_TARGET void softmax_panel(float* p, int64_t keys, int nr, float* m, float* l, float* alpha) {
    for (int j = 0; j < nr; j += 16) {
        __m512 mx = _mm512_loadu_ps(m + j);
        for (int64_t k = 0; k < keys; ++k) mx = _mm512_max_ps(mx, _mm512_loadu_ps(p + k * nr + j));
        const __m512 a = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(m + j), mx));
        __m512 sum = _mm512_setzero_ps();
        for (int64_t k = 0; k < keys; ++k) {
            const __m512 e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(p + k * nr + j), mx));
            _mm512_storeu_ps(p + k * nr + j, e);
            sum = _mm512_add_ps(sum, e);
        }
        _mm512_storeu_ps(alpha + j, a);
        _mm512_storeu_ps(l + j, _mm512_fmadd_ps(_mm512_loadu_ps(l + j), a, sum));
        _mm512_storeu_ps(m + j, mx);
    }
}

// 16 x 16 blocks in registers: rows interleaved in pairs and in pairs of pairs within each
// 128-bit lane (u[4 q + j], lane L: column 4 L + j of rows 4 q .. 4 q + 3), then the lanes
// gathered across the four row groups by two rounds of SHUFF32x4. Edge blocks load and store
// under masks (zero rows past `rows`, columns past `cols` neither read nor written).
SD_TARGET void transpose(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, int64_t cols) {
    for (int64_t r0 = 0; r0 < rows; r0 += 16) {
        const int64_t nr = std::min<int64_t>(16, rows - r0);
        const __mmask16 rmask = nr == 16 ? __mmask16(0xffff) : __mmask16((1u << nr) - 1u);
        for (int64_t c0 = 0; c0 < cols; c0 += 16) {
            const int64_t nc = std::min<int64_t>(16, cols - c0);
            const __mmask16 cmask = nc == 16 ? __mmask16(0xffff) : __mmask16((1u << nc) - 1u);
            const float* s = src + r0 * lds + c0;
            __m512 t[16], u[16];
            for (int i = 0; i < 16; i += 2) {
                const __m512 a = i < nr ? _mm512_maskz_loadu_ps(cmask, s + i * lds) : _mm512_setzero_ps();
                const __m512 b = i + 1 < nr ? _mm512_maskz_loadu_ps(cmask, s + (i + 1) * lds) : _mm512_setzero_ps();
                t[i] = _mm512_unpacklo_ps(a, b);
                t[i + 1] = _mm512_unpackhi_ps(a, b);
            }
            for (int g = 0; g < 16; g += 4) {
                u[g + 0] = _mm512_shuffle_ps(t[g], t[g + 2], 0x44);
                u[g + 1] = _mm512_shuffle_ps(t[g], t[g + 2], 0xEE);
                u[g + 2] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0x44);
                u[g + 3] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
            }
            float* d = dst + c0 * ldd + r0;
            for (int j = 0; j < 4; ++j) {
                // lanes 0 and 2 (columns j, 8 + j), lanes 1 and 3 (4 + j, 12 + j) of the four row groups
                const __m512 v02 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88), w02 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
                const __m512 v13 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xDD), w13 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xDD);
                const __m512 out[4] = {_mm512_shuffle_f32x4(v02, w02, 0x88), _mm512_shuffle_f32x4(v13, w13, 0x88),
                                       _mm512_shuffle_f32x4(v02, w02, 0xDD), _mm512_shuffle_f32x4(v13, w13, 0xDD)};
                for (int q = 0; q < 4; ++q) {
                    const int64_t c = 4 * q + j;
                    if (c < nc) _mm512_mask_storeu_ps(d + c * ldd, rmask, out[q]);
                }
            }
        }
    }
}

}  // namespace

const Elementwise* elementwise_avx512() {
    static const Elementwise t{Level::Avx512, geglu_row, affine_row, row_sum, row_sq, layer_norm_row, softmax_panel,
                               transpose};
    return &t;
}

}  // namespace sdcpp::kernels::cpu

#else
namespace sdcpp::kernels::cpu {
const Elementwise* elementwise_avx512() { return nullptr; }
}  // namespace sdcpp::kernels::cpu
#endif
