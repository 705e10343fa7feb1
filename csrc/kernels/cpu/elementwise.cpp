#include "elementwise.h"

#include <algorithm>
#include <vector>

#include <cmath>

namespace sdcpp::kernels::cpu {

const Elementwise& elementwise_at(Level level) {
    if (const Elementwise* t = elementwise_avx512(); t && runs(level, t->level)) return *t;
    if (const Elementwise* t = elementwise_avx2(); t && runs(level, t->level)) return *t;
    return elementwise_portable();
}

const Elementwise& elementwise() { return elementwise_at(active_level()); }

void group_norm_rows(const Elementwise& k, const float* x, float* y, int64_t N, int64_t C, int64_t HW, int groups,
                     float eps, bool silu, const float* w, const float* b, int ith, int nth) {
    const int64_t cpg = C / groups;
    const int64_t count = cpg * HW;
    for (int64_t unit = ith; unit < N * groups; unit += nth) {
        const int64_t n = unit / groups, g = unit % groups;
        const float* xs = x + (n * C + g * cpg) * HW;
        float* ys = y + (n * C + g * cpg) * HW;
        const float mean = static_cast<float>(k.row_sum(xs, count) / count);
        const float var = static_cast<float>(k.row_sq(xs, mean, count) / count);
        const float rstd = 1.0f / std::sqrt(var + eps);
        for (int64_t c = 0; c < cpg; ++c) {
            const int64_t ch = g * cpg + c;
            const float scale = rstd * w[ch];
            k.affine_row(ys + c * HW, xs + c * HW, scale, b[ch] - mean * scale, HW, silu);
        }
    }
}

void layer_norm_rows(const Elementwise& k, const float* x, float* y, int64_t rows, int64_t C, const float* w,
                     const float* b, float eps, int ith, int nth) {
    for (int64_t r = ith; r < rows; r += nth) {
        const float* xr = x + r * C;
        const float mean = static_cast<float>(k.row_sum(xr, C) / C);
        const float var = static_cast<float>(k.row_sq(xr, mean, C) / C);
        k.layer_norm_row(y + r * C, xr, mean, 1.0f / std::sqrt(var + eps), w, b, C);
    }
}

void geglu_rows(const Elementwise& k, const float* x, float* y, int64_t rows, int64_t F, int ith, int nth) {
    for (int64_t r = ith; r < rows; r += nth) {
        const float* xr = x + r * 2 * F;
        k.geglu_row(y + r * F, xr, xr + F, F);
    }
}

void quick_gelu_rows(const Elementwise& k, const float* x, float* y, int64_t rows, int64_t n, int ith, int nth) {
    constexpr float kAlpha = 1.702f;
    constexpr float kInv = 1.0f / kAlpha;
    for (int64_t r = ith; r < rows; r += nth) {
        float* yr = y + r * n;
        k.affine_row(yr, x + r * n, kAlpha, 0.0f, n, /*silu=*/true);  // the row stays in L1 for the rescale
        for (int64_t i = 0; i < n; ++i) yr[i] *= kInv;
    }
}

void gelu_rows(const Elementwise& k, const float* x, float* y, int64_t rows, int64_t n, int ith, int nth) {
    thread_local std::vector<float> ones;
    if (static_cast<int64_t>(ones.size()) < n) ones.assign(static_cast<size_t>(n), 1.0f);
    for (int64_t r = ith; r < rows; r += nth) k.geglu_row(y + r * n, ones.data(), x + r * n, n);
}

void transpose_rows(const Elementwise& k, const float* x, float* y, int64_t batch, int64_t R, int64_t C, int ith, int nth) {
    // 64 x 64 tiles (16 KiB read, 16 KiB written): whole cache lines on both sides, within L1
    constexpr int64_t T = 64;
    const int64_t tr = (R + T - 1) / T, tc = (C + T - 1) / T, per = tr * tc;
    for (int64_t u = ith; u < batch * per; u += nth) {
        const int64_t b = u / per, r0 = (u % per) / tc * T, c0 = (u % tc) * T;
        k.transpose(x + b * R * C + r0 * C + c0, C, y + b * R * C + c0 * R + r0, R, std::min(T, R - r0), std::min(T, C - c0));
    }
}

}  // namespace sdcpp::kernels::cpu
