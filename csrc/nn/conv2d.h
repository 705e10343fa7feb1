// The one 2-D convolution of the layer library. Every model calls nn::conv2d; which lowering
// runs is decided inside it, from the weight's type, the geometry and the caller's options:
//
//   quantized kernel (stored as the matrix [IC*k*k, OC], runtime/weights.h)
//       -> with custom ops where sdcpp's integer product runs (kernels/cpu/gemm_op.h), one op
//          from the image to the output (kernels/cpu/conv_q8.h: receptive fields quantized as
//          gathered, output written in place, 2x upsampling, bias and residual folded in);
//          otherwise an f32 im2col times the matrix as mul_mat's src0 (the integer dot
//          products: ours where custom ops may run, ggml's otherwise). Under ConvAlgo::Winograd
//          3x3 stride-1 ones run Winograd F(2x2, 3x3) with int8 products (winograd_q8.h).
//   ConvAlgo::Im2col   -> ggml_im2col + one GEMM over the whole (batched) output; any backend.
//   ConvAlgo::Winograd -> with custom ops, 3x3 stride-1 pad-1 convolutions of images with at
//          least `winograd_min_pixels` N*H*W pixels (any channel count) by Winograd
//          F(2x2, 3x3) (winograd_f23.h), those with at least `winograd_f43_min_pixels` (and f32
//          products) by F(4x4, 3x3) over the whole batch (winograd_f43_strips.h: 4x fewer
//          multiply-adds than im2col instead of 2.25x); the others as Im2col. (The U-Net's CPU
//          default.)
//   ConvAlgo::Strips   -> bounded memory for one large image (N == 1): im2col + GEMM in
//          horizontal strips of output rows, each strip's im2col within `max_im2col_bytes`;
//          with custom ops the im2col is sdcpp's own op (threads over rows, implicit zero
//          padding, reads through a 2x upsampling), bias and residual added strip by strip.
//   ConvAlgo::WinogradStrips -> with custom ops and f32 products, 3x3 stride-1 pad-1
//          convolutions by Winograd F(4x4, 3x3) in cache-sized row strips (winograd_f43_strips.h),
//          bias, residual and the 2x upsampling folded in; the others as Strips. (The VAE's
//          CPU default.)
//   ConvAlgo::Direct   -> ggml_conv_2d_direct (bounded work buffer; N == 1).
#pragma once
#include <cstddef>
#include <cstdint>

#include "ggml.h"

namespace sdcpp::nn {

enum class ConvAlgo { Im2col, Winograd, Strips, WinogradStrips, Direct };

// The type the products run in.
enum class ConvProducts {
    Native,  // the kernel's own: an f16 kernel takes an f16 im2col (as ggml_conv_2d; with custom
             // ops an f32 im2col times the kernel), f32 an f32 one (exact), bf16 an f32 im2col
             // times the kernel; Winograd operands in that type
    F32,     // kernels widened to f32, activations never rounded (the VAE: SDXL's activations
             // exceed f16's range)
    BF16,    // im2col and kernel rounded to bf16 (f32's range), f32 sums; 3x3 kernels, custom ops
};

struct ConvOptions {
    ConvAlgo algo = ConvAlgo::Im2col;
    bool custom_ops = false;  // nn::custom_ops_allowed()
    ConvProducts products = ConvProducts::Native;
    int64_t winograd_min_pixels = 256;             // ConvAlgo::Winograd
    int64_t winograd_f43_min_pixels = INT64_MAX;   // ConvAlgo::Winograd: F(4x4, 3x3) from here
    // ConvAlgo::Strips / WinogradStrips, per strip; without custom ops (a device), also the
    // largest whole-image im2col of the other algorithms (one image past it goes in strips)
    size_t max_im2col_bytes = SIZE_MAX;
    size_t winograd_strip_bytes = size_t(32) << 20;  // ConvAlgo::WinogradStrips
    // Quantized kernels: the direct op (conv_q8.h) where it applies; false (or SDCPP_CONV_Q8=0)
    // keeps im2col + GEMM, bit for bit the same result (tests, A/B benchmarks).
    bool direct_q8 = true;
    // ConvAlgo::Winograd with custom ops, quantized 3x3 stride-1 kernels (C a multiple of 32, at
    // least winograd_min_pixels): Winograd F(2x2, 3x3) with int8 products (winograd_q8.h)
    // instead of the direct op; false (or SDCPP_WINOGRAD_Q8=0) keeps the direct one.
    bool winograd_q8 = true;
    int64_t winograd_q8_min_pixels = 256;  // and at least this many N*H*W output pixels
    // and from winograd_f43_min_pixels by F(4x4, 3x3): off, far less accurate (winograd_q8.h);
    // for measurements (tests' cpu_conv2d_q8 "winograd_f43")
    bool winograd_q8_f43 = false;
    // Im2col / Winograd with custom ops, f32 / f16 / bf16 kernels: the products in bf16 (operands
    // rounded to bf16, f32 sums: kernels/cpu/gemm_bf16.h) where the CPU has AMX-BF16, the im2col
    // in f32 for it; elsewhere the default products. Opt-in (UNetOptions::compute).
    bool bf16_gemm = false;
    // Nothing reads the residual after this convolution: WinogradStrips (CPU) writes the output
    // over it instead of into a tensor of its own (same values). Ignored elsewhere.
    bool residual_dead = false;
    // Nothing reads x after this convolution: WinogradStrips (CPU) may write the output over it
    // (3x3 without residual or upsampling, OC <= C; same values). Ignored elsewhere.
    bool input_dead = false;
};

// Padding per side, stride, and `up` = 2 to convolve the nearest-neighbour 2x upsampling of x.
struct ConvGeometry {
    int stride = 1;
    int pad_l = 0, pad_r = 0, pad_t = 0, pad_b = 0;
    int up = 1;
    static ConvGeometry same(int stride, int pad) { return {stride, pad, pad, pad, pad, 1}; }
};

// y = conv(x, w) + b (+ residual): x [W, H, IC, N] f32; w [KW, KH, IC, OC] (f32 / f16 / bf16) or
// a quantized [IC*k*k, OC] matrix (square kernel, symmetric padding); b [OC] or null; residual
// of y's shape or null.
ggml_tensor* conv2d(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, const ConvGeometry& g,
                    const ConvOptions& opt, ggml_tensor* residual = nullptr);

}  // namespace sdcpp::nn
