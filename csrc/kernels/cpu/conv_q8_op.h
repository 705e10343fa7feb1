// The quantized convolution (conv_q8.h) as a ggml custom op for the CPU backend. Graph builders
// (nn::conv2d) call it only where custom ops may run and `conv_q8_applies` says so; otherwise
// they keep the im2col + mul_mat path (ggml's products on other backends, at the portable level
// or with SDCPP_INT8_GEMM=0). SDCPP_CONV_Q8=0 keeps that im2col path with sdcpp's integer
// product too (A/B benchmarks; the results are bit for bit the same).
#pragma once
#include "ggml.h"

namespace sdcpp::fused {

// x [W, H, C, N] f32 (contiguous values along W), w the quantized kernel matrix [C*k*k, OC]
// (q8_0 / q5_0 / q4_0 in a host buffer, where the integer product runs), up 1 or 2, bias [OC]
// f32 or null, residual f32 contiguous of the output's shape or null.
bool conv_q8_applies(const ggml_tensor* x, const ggml_tensor* w, int k, int stride, int pad, int up,
                     const ggml_tensor* bias, const ggml_tensor* residual);

// SDCPP_CONV_Q8=0 (read once): the builders keep the im2col path.
bool conv_q8_enabled();

// conv(upsample(x, up), w) + bias + residual -> [OW, OH, OC, N] f32, in one op.
ggml_tensor* conv2d_q8(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, int k, int stride, int pad, int up,
                       ggml_tensor* bias, ggml_tensor* residual);

}  // namespace sdcpp::fused
