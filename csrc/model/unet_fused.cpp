#include "unet_fused.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SD_FUSED_AVX512 1
#include <immintrin.h>
#endif

namespace sdcpp::fused {

namespace {

// custom-op parameters packed into the userdata pointer (no allocation to outlive the graph)
void* pack_params(float eps, uint32_t small) {
    uint32_t bits;
    std::memcpy(&bits, &eps, 4);
    return reinterpret_cast<void*>(static_cast<uintptr_t>((static_cast<uint64_t>(bits) << 32) | small));
}
float param_eps(void* ud) {
    const uint32_t bits = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(ud) >> 32);
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
uint32_t param_small(void* ud) { return static_cast<uint32_t>(reinterpret_cast<uintptr_t>(ud) & 0xffffffffu); }

inline float gelu_erf_scalar(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f)); }
inline float silu_scalar(float x) { return x / (1.0f + std::exp(-x)); }

#ifdef SD_FUSED_AVX512
#define SD_TARGET __attribute__((target("avx512f,avx512dq,fma")))

bool has_avx512() {
    static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
    return ok;
}

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
    // copy the sign of x
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(y),
                                               _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN))));
}

SD_TARGET void geglu_row_avx512(float* y, const float* h, const float* g, int64_t n) {
    int64_t i = 0;
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f), rs2 = _mm512_set1_ps(0.70710678118654752f);
    for (; i + 16 <= n; i += 16) {
        const __m512 gv = _mm512_loadu_ps(g + i);
        const __m512 gelu = _mm512_mul_ps(_mm512_mul_ps(half, gv), _mm512_add_ps(one, erf_ps(_mm512_mul_ps(gv, rs2))));
        _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_loadu_ps(h + i), gelu));
    }
    for (; i < n; ++i) y[i] = h[i] * gelu_erf_scalar(g[i]);
}

// y = x * scale + shift (then SiLU)
SD_TARGET void affine_row_avx512(float* y, const float* x, float scale, float shift, int64_t n, bool silu) {
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

// sum and sum of squares of (x - mean): f32 vector lanes over blocks of 1024 values, blocks
// added in double (as ggml's norms, which sum in double)
SD_TARGET double row_sum_avx512(const float* x, int64_t n) {
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
SD_TARGET double row_sq_avx512(const float* x, float mean, int64_t n) {
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
// y = (x - mean) * rstd * w + b
SD_TARGET void layer_norm_row_avx512(float* y, const float* x, float mean, float rstd, const float* w, const float* b, int64_t n) {
    const __m512 m = _mm512_set1_ps(mean), r = _mm512_set1_ps(rstd);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), m), r);
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(v, _mm512_loadu_ps(w + i), _mm512_loadu_ps(b + i)));
    }
    for (; i < n; ++i) y[i] = (x[i] - mean) * rstd * w[i] + b[i];
}
#else
bool has_avx512() { return false; }
#endif

void geglu_row(float* y, const float* h, const float* g, int64_t n) {
#ifdef SD_FUSED_AVX512
    if (has_avx512()) return geglu_row_avx512(y, h, g, n);
#endif
    for (int64_t i = 0; i < n; ++i) y[i] = h[i] * gelu_erf_scalar(g[i]);
}
void affine_row(float* y, const float* x, float scale, float shift, int64_t n, bool silu) {
#ifdef SD_FUSED_AVX512
    if (has_avx512()) return affine_row_avx512(y, x, scale, shift, n, silu);
#endif
    for (int64_t i = 0; i < n; ++i) {
        const float v = x[i] * scale + shift;
        y[i] = silu ? silu_scalar(v) : v;
    }
}
double row_sum(const float* x, int64_t n) {
#ifdef SD_FUSED_AVX512
    if (has_avx512()) return row_sum_avx512(x, n);
#endif
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += x[i];
    return s;
}
void layer_norm_row(float* y, const float* x, float mean, float rstd, const float* w, const float* b, int64_t n) {
#ifdef SD_FUSED_AVX512
    if (has_avx512()) return layer_norm_row_avx512(y, x, mean, rstd, w, b, n);
#endif
    for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * rstd * w[i] + b[i];
}
double row_sq(const float* x, float mean, int64_t n) {
#ifdef SD_FUSED_AVX512
    if (has_avx512()) return row_sq_avx512(x, mean, n);
#endif
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += double(x[i] - mean) * double(x[i] - mean);
    return s;
}

void geglu_op(ggml_tensor* dst, int ith, int nth, void*) {
    const ggml_tensor* x = dst->src[0];
    const int64_t F = dst->ne[0], rows = dst->ne[1] * dst->ne[2] * dst->ne[3];
    for (int64_t r = ith; r < rows; r += nth) {
        const float* xr = reinterpret_cast<const float*>(static_cast<const char*>(x->data) + r * x->nb[1]);
        float* yr = reinterpret_cast<float*>(static_cast<char*>(dst->data) + r * dst->nb[1]);
        geglu_row(yr, xr, xr + F, F);
    }
}

void group_norm_op(ggml_tensor* dst, int ith, int nth, void* ud) {
    const ggml_tensor* x = dst->src[0];
    const float* w = static_cast<const float*>(dst->src[1]->data);
    const float* b = static_cast<const float*>(dst->src[2]->data);
    const float eps = param_eps(ud);
    const uint32_t small = param_small(ud);
    const int groups = static_cast<int>(small >> 1);
    const bool silu = small & 1u;
    const int64_t W = x->ne[0], H = x->ne[1], C = x->ne[2], N = x->ne[3], HW = W * H;
    const int64_t cpg = C / groups;
    for (int64_t unit = ith; unit < N * groups; unit += nth) {
        const int64_t n = unit / groups, g = unit % groups;
        const float* xs = reinterpret_cast<const float*>(static_cast<const char*>(x->data) + n * x->nb[3]) + g * cpg * HW;
        float* ys = reinterpret_cast<float*>(static_cast<char*>(dst->data) + n * dst->nb[3]) + g * cpg * HW;
        const int64_t count = cpg * HW;
        const float mean = static_cast<float>(row_sum(xs, count) / count);
        const float var = static_cast<float>(row_sq(xs, mean, count) / count);
        const float rstd = 1.0f / std::sqrt(var + eps);
        for (int64_t c = 0; c < cpg; ++c) {
            const int64_t ch = g * cpg + c;
            const float scale = rstd * w[ch];
            affine_row(ys + c * HW, xs + c * HW, scale, b[ch] - mean * scale, HW, silu);
        }
    }
}

void layer_norm_op(ggml_tensor* dst, int ith, int nth, void* ud) {
    const ggml_tensor* x = dst->src[0];
    const float* w = static_cast<const float*>(dst->src[1]->data);
    const float* b = static_cast<const float*>(dst->src[2]->data);
    const float eps = param_eps(ud);
    const int64_t C = x->ne[0], rows = x->ne[1] * x->ne[2];
    for (int64_t r = ith; r < rows; r += nth) {
        const float* xr = reinterpret_cast<const float*>(static_cast<const char*>(x->data) + r * x->nb[1]);
        float* yr = reinterpret_cast<float*>(static_cast<char*>(dst->data) + r * dst->nb[1]);
        const float mean = static_cast<float>(row_sum(xr, C) / C);
        const float var = static_cast<float>(row_sq(xr, mean, C) / C);
        const float rstd = 1.0f / std::sqrt(var + eps);
        layer_norm_row(yr, xr, mean, rstd, w, b, C);
    }
}

}  // namespace

ggml_tensor* geglu(ggml_context* ctx, ggml_tensor* x) {
    if (!ggml_is_contiguous(x)) x = ggml_cont(ctx, x);
    ggml_tensor* a[1] = {x};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, x->ne[0] / 2, x->ne[1], x->ne[2], x->ne[3], a, 1, geglu_op, GGML_N_TASKS_MAX,
                          nullptr);
}

ggml_tensor* group_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, int groups, float eps, bool silu) {
    if (!ggml_is_contiguous(x)) x = ggml_cont(ctx, x);
    ggml_tensor* a[3] = {x, w, b};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, x->ne[0], x->ne[1], x->ne[2], x->ne[3], a, 3, group_norm_op, GGML_N_TASKS_MAX,
                          pack_params(eps, (static_cast<uint32_t>(groups) << 1) | (silu ? 1u : 0u)));
}

ggml_tensor* layer_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, float eps) {
    if (!ggml_is_contiguous(x)) x = ggml_cont(ctx, x);
    ggml_tensor* a[3] = {x, w, b};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, x->ne[0], x->ne[1], x->ne[2], x->ne[3], a, 3, layer_norm_op, GGML_N_TASKS_MAX,
                          pack_params(eps, 0));
}

}  // namespace sdcpp::fused
