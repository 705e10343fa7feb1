// Winograd F(2x2, 3x3) transforms for the U-Net's 3x3 stride-1 convolutions, one table per CPU
// level beside a portable reference (winograd_f23_portable.cpp, _avx2.cpp, _avx512.cpp); the
// table for the active level (cpu_level.h) is picked when a graph op runs.
//
// Points 0, +-1 (and infinity): per 2x2 output tile the 4x4 input patch d becomes V = B^T d B,
// the kernel g becomes U = G g G^T, and Y = A^T (sum_c U_c * V_c) A. B^T and A^T hold only 0
// and +-1 and G only 0, +-1/2 and 1, so the transforms are additions (and exact halvings): every
// variant computes the same operations in the same order and gives bit-identical results (tests
// check it), and the result is direct convolution to f32 rounding. The 16 channel sums are
// matrix products done by the packed product (csrc/nn/winograd_f23.cpp).
#pragma once
#include <cstdint>

#include "cpu_level.h"

namespace sdcpp::kernels::cpu {

struct WinogradF23 {
    Level level;
    // Input transform of `ntiles` consecutive tiles of one tile row. `patch` holds the four
    // input rows the tiles read, channels last: patch[(i * (2 * ntiles + 2) + x) * C + c]
    // (zeros already in place of padding). Writes v[p * p_stride + t * C + c], p = 4i + j.
    void (*input_tiles)(const float* patch, int64_t C, int64_t ntiles, float* v, int64_t p_stride);
    // Output transform of `ntiles` consecutive tiles of one tile row, one output channel:
    // m[p * p_stride + t] are the 16 products' channel sums. Writes rows r < rows (1 or 2) of
    // out[r * out_stride + x] for x < cols (2 * ntiles, or one less at an odd right edge), each
    // the transform + bias.
    void (*output_tiles)(const float* m, int64_t p_stride, int64_t ntiles, int rows, int64_t cols, float bias,
                         float* out, int64_t out_stride);
    // Kernel transform of one output channel's C kernels: g[c * 9 + ky * 3 + kx] (ggml's
    // [3, 3, C, OC] layout) -> u[p * p_stride + c]. It runs every forward pass (no transformed
    // copy of the weights is kept), so it is vectorized too.
    void (*kernel)(const float* g, int64_t C, float* u, int64_t p_stride);
};

// The best table for the active level, and for a given level (tests run each variant).
const WinogradF23& winograd_f23();
const WinogradF23& winograd_f23_at(Level level);

// Variant tables; nullptr where the variant is not compiled for this architecture.
const WinogradF23& winograd_f23_portable();
const WinogradF23* winograd_f23_avx2();
const WinogradF23* winograd_f23_avx512();

}  // namespace sdcpp::kernels::cpu
