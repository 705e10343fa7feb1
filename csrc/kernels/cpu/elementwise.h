// Element-wise row kernels of the fused CPU ops (GroupNorm/LayerNorm affine, SiLU, GEGLU, transposes),
// one table per CPU level. Each variant lives in its own file beside the portable reference
// (elementwise_portable.cpp, _avx2.cpp, _avx512.cpp) and is compiled for its ISA with a
// function target attribute, so every file builds on any machine; the table for the active
// level (cpu_level.h) is picked when an op runs.
#pragma once
#include <cstdint>

#include "cpu_level.h"

namespace sdcpp::kernels::cpu {

struct Elementwise {
    Level level;
    // y = h * gelu(g), exact erf GELU (|erf error| < 2e-7)
    void (*geglu_row)(float* y, const float* h, const float* g, int64_t n);
    // y = x * scale + shift, then SiLU when `silu`
    void (*affine_row)(float* y, const float* x, float scale, float shift, int64_t n, bool silu);
    // sum of x, and sum of (x - mean)^2: f32 lanes over blocks of at most 1024 values, the
    // blocks added in double (ggml's norms sum in double too)
    double (*row_sum)(const float* x, int64_t n);
    double (*row_sq)(const float* x, float mean, int64_t n);
    // y = (x - mean) * rstd * w + b
    void (*layer_norm_row)(float* y, const float* x, float mean, float rstd, const float* w, const float* b, int64_t n);
    // the GEMM-tiled attention's online-softmax step over a score panel p[keys][nr] (nr columns = queries, nr a
    // multiple of 16): per column j, mx = max(m[j], max_k p[k][j]), alpha[j] = e^(m[j] - mx),
    // p[k][j] = e^(p[k][j] - mx), l[j] = l[j] alpha[j] + sum_k p[k][j], m[j] = mx
    void (*softmax_panel)(float* p, int64_t keys, int nr, float* m, float* l, float* alpha);
    // one tile of a transposing copy: dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols
    // (an exact copy: every variant writes the same bits)
    void (*transpose)(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, int64_t cols);
};

// The best table for the active level, and for a given level (tests run each variant).
const Elementwise& elementwise();
const Elementwise& elementwise_at(Level level);

// Variant tables; nullptr where the variant is not compiled for this architecture.
const Elementwise& elementwise_portable();
const Elementwise* elementwise_avx2();
const Elementwise* elementwise_avx512();

// The fused ops' bodies over raw rows, shared by the ggml custom ops (fused_ops.cpp) and
// the test bindings; work unit `ith` of `nth`.
// GroupNorm over channels of x [N][C][HW] with `groups` groups, affine w/b [C], then SiLU.
void group_norm_rows(const Elementwise& k, const float* x, float* y, int64_t N, int64_t C, int64_t HW, int groups,
                     float eps, bool silu, const float* w, const float* b, int ith, int nth);
// LayerNorm over rows of C values.
void layer_norm_rows(const Elementwise& k, const float* x, float* y, int64_t rows, int64_t C, const float* w,
                     const float* b, float eps, int ith, int nth);
// GEGLU over rows of 2F values (h | g) -> rows of F.
void geglu_rows(const Elementwise& k, const float* x, float* y, int64_t rows, int64_t F, int ith, int nth);
// Activations over rows of n values (the CLIP text encoders' MLPs): quick GELU
// x * sigmoid(1.702 x) = silu(1.702 x) / 1.702, and exact erf GELU (GEGLU's kernel with h = 1).
void quick_gelu_rows(const Elementwise& k, const float* x, float* y, int64_t rows, int64_t n, int ith, int nth);
void gelu_rows(const Elementwise& k, const float* x, float* y, int64_t rows, int64_t n, int ith, int nth);
// The last two dimensions swapped: x [batch][R][C] -> y [batch][C][R], in tiles that stay in L1
// (ggml's CONT of a permuted tensor copies value by value, ~3x slower on the U-Net's layouts).
void transpose_rows(const Elementwise& k, const float* x, float* y, int64_t batch, int64_t R, int64_t C, int ith, int nth);

}  // namespace sdcpp::kernels::cpu
