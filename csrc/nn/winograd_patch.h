// What the two Winograd convolutions share (winograd_f23.cpp: the U-Net's F(2x2, 3x3);
// winograd_f43_strips.cpp: the VAE's F(4x4, 3x3) in strips): the channels-last input patch a
// run of tiles reads, and one output channel's kernels as f32, both handed to the transforms of
// kernels/cpu.
#pragma once
#include <cstdint>
#include <vector>

#include "ggml.h"

namespace sdcpp::winograd {

// A per-thread float buffer of at least n values (the ops' work units reuse it).
std::vector<float>& scratch(size_t n);

// patch[(i * cols + k) * C + c] = image n of x [W, H, C, N], seen through nearest upsampling by
// `up` (1 or 2), at row y0 + i and column x0 + k; zero outside the (upsampled) image (the
// convolution's padding). rows x cols x C floats.
void fill_patch(float* patch, int rows, int64_t cols, const ggml_tensor* x, int64_t n, int64_t y0, int64_t x0, int up);

// g[0 .. 9 C) = output channel oc's kernels of w [3, 3, C, OC] (f32 / f16 / bf16) as f32.
void kernel_to_f32(float* g, const ggml_tensor* w, int64_t oc);

}  // namespace sdcpp::winograd
