// Winograd F(4x4, 3x3) transforms for 3x3 stride-1 convolutions (the VAE's), one table per
// CPU level beside a portable reference (winograd_f43_portable.cpp, _avx2.cpp, _avx512.cpp);
// the table for the active level (cpu_level.h) is picked when a graph op runs.
//
// Points 0, +-1, +-2 (and infinity): per 4x4 output tile the 6x6 input patch d becomes
// V = B^T d B, the kernel g becomes U = G g G^T, and Y = A^T (sum_c U_c * V_c) A. With these
// points B^T and A^T have small integer entries and G's largest is 1/4, so f32 results stay
// within a few ulps of direct convolution times the kernel's magnitude (tests check it).
// The 36 channel sums are matrix products done by ggml (csrc/nn/winograd_f43_strips.cpp).
#pragma once
#include <cstdint>

#include "cpu_level.h"

namespace sdcpp::kernels::cpu {

struct WinogradF43 {
    Level level;
    // Input transform of `ntiles` consecutive tiles of one tile row. `patch` holds the six
    // input rows the tiles read, channels last: patch[(i * (4 * ntiles + 2) + x) * C + c]
    // (zeros already in place of padding). Writes v[p * p_stride + t * C + c], p = 6i + j.
    void (*input_tiles)(const float* patch, int64_t C, int64_t ntiles, float* v, int64_t p_stride);
    // Output transform of `ntiles` consecutive tiles of one tile row, one output channel:
    // m[p * p_stride + t] are the 36 products' channel sums. Writes rows r < rows of
    // out[r * out_stride + x] for x < cols (4 * ntiles or less at the image's right edge),
    // each the transform + bias (+ res[r * res_stride + x] when res is not null).
    void (*output_tiles)(const float* m, int64_t p_stride, int64_t ntiles, int rows, int64_t cols, float bias,
                         const float* res, int64_t res_stride, float* out, int64_t out_stride);
    // Kernel transform U = G g G^T of one output channel's C kernels: g[c * 9 + ky * 3 + kx]
    // (ggml's [3, 3, C, OC] layout) -> u[p * p_stride + c]. It runs every forward pass (no
    // transformed copy of the weights is kept; the U-Net's U is 4x its weights in f32), so it is
    // vectorized over channels and bit-identical at every level (see winograd_f43_body.h).
    void (*kernel)(const float* g, int64_t C, float* u, int64_t p_stride);
};

// The best table for the active level, and for a given level (tests run each variant).
const WinogradF43& winograd_f43();
const WinogradF43& winograd_f43_at(Level level);

// Variant tables; nullptr where the variant is not compiled for this architecture.
const WinogradF43& winograd_f43_portable();
const WinogradF43* winograd_f43_avx2();
const WinogradF43* winograd_f43_avx512();

}  // namespace sdcpp::kernels::cpu
