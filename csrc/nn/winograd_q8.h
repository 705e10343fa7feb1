// 3x3 stride-1 pad-1 convolution with a quantized kernel (q8_0 / q5_0 / q4_0, the matrix
// [9 C, OC] of runtime/weights.h) by Winograd F(2x2, 3x3) or F(4x4, 3x3) with int8 products, on
// the CPU backend (kernels/cpu/winograd_q8.h says why and the numerics).
//
// Graph: the f32 input transform (kernels/cpu/winograd_f23.h / winograd_f43.h) into V [C, T, P]
// (P = 16 or 36 tile positions, T tiles); the kernel transform, every pass, into a q8_0 tensor
// U [C, OC, P] (P/9 of a q8_0 kernel's bytes, transient in the compute buffer: no transformed
// copy of the weights is kept); the P products V_p U_p^T by the integer product (gemm_op.h's
// matmul: V's rows quantized to q8_0 there) into M [OC, T, P]; the output transform (+ bias).
// The 2x upsampling is read through by the input transform.
#pragma once
#include "ggml.h"

namespace sdcpp::winograd {

// SDCPP_WINOGRAD_Q8=0 (read once): quantized kernels keep the direct convolution (A/B runs).
bool q8_enabled();
// SDCPP_WINOGRAD_Q8_SMOOTH=1 (read once; off by default): per-channel power-of-two scales
// between the two operands before they are rounded (winograd_q8.cpp's scales_op). It helps where
// channel ranges differ widely (one conv of such random data: 1.8e-2 -> 1.2e-2 rel. RMS) but not
// on BK-SDM-tiny's real-width U-Net (final latents 2.92e-2 -> 3.00e-2 vs diffusers fp32).
bool q8_smooth();

// The U-Net's automatic choice: Winograd with int8 products from `fallback` N*H*W output pixels
// where the integer product runs at the AVX2 level, never elsewhere; SDCPP_WINOGRAD_Q8=<n> > 1
// sets the threshold at any level (measurements), 1 is `fallback` at any level, 0 never.
int64_t q8_min_pixels(int64_t fallback);

// Whether conv3x3_q8 takes this convolution: a quantized kernel the integer product runs (host
// buffer, not the portable level), x f32 [W, H, C, N] with C a multiple of 32, OC >= 32.
bool conv3x3_q8_applies(const ggml_tensor* x, const ggml_tensor* w);

// y [W up, H up, OC, N] = conv3x3(upsample(x, up), w) + b; w [9 C, OC] quantized, b [OC] f32 or
// null; f43: F(4x4, 3x3), else F(2x2, 3x3).
//
// F(4x4, 3x3) is not used by the models: with its transformed operands rounded to q8_0 it is
// far less accurate (one 320-channel conv of random data: 8.7e-2 rel. RMS against the exact
// convolution, where F(2x2, 3x3) gives 1.3e-2 and the direct op 5.3e-3): its output transform
// sums 36 products with coefficients up to 64, and their rounding errors do not cancel.
ggml_tensor* conv3x3_q8(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, int up = 1, bool f43 = false);

}  // namespace sdcpp::winograd
