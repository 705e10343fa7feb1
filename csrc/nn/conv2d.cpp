#include "conv2d.h"

#include <cmath>
#include <cstdint>

#include "../runtime/error.h"
#include "../kernels/cpu/conv_q8_op.h"
#include "../kernels/cpu/gemm_op.h"
#include "conv2d_strips.h"
#include "layers.h"
#include "winograd_f23.h"
#include "winograd_q8.h"
#include "winograd_f43_strips.h"

namespace sdcpp::nn {

namespace {

ggml_tensor* add_bias(ggml_context* ctx, ggml_tensor* y, ggml_tensor* b) {
    return b ? ggml_add(ctx, y, ggml_reshape_4d(ctx, b, 1, 1, b->ne[0], 1)) : y;
}

// Whole-output im2col + GEMM, any batch, any backend.
ggml_tensor* conv2d_im2col(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, int stride, int pad, bool custom_ops,
                           bool bf16) {
    const int64_t KW = w->ne[0], KH = w->ne[1], IC = w->ne[2], OC = w->ne[3];
    const int64_t N = x->ne[3];
    if (KW == 1 && KH == 1 && stride == 1 && pad == 0) {
        // 1x1: a matmul over channels.
        const int64_t W = x->ne[0], H = x->ne[1];
        ggml_tensor* r = fused::mul_mat(ctx, ggml_reshape_2d(ctx, w, IC, OC), image_to_sequence(ctx, x, custom_ops), custom_ops, bf16);  // [OC, WH, N]
        return sequence_to_image(ctx, r, W, H, custom_ops);
    }
    // With custom ops, f16 / bf16 kernels (and any kernel when bf16 products run) take an f32 im2col
    // against the kernel as the packed product's B, converted (or rounded to bf16) while packed, as
    // conv2d_matrix: ggml's f16 im2col converts value by value and its f16 product is slow on short
    // rows (BK-SDM-tiny's stride-2 downsamplers, f16, batch 2, 64x64, 1 thread, AVX2: 74 -> 52 and
    // 68 -> 53 ms; bench/README.md, "Small-channel and strided convolutions").
    const bool kernel_as_b = custom_ops && (w->type == GGML_TYPE_F16 || w->type == GGML_TYPE_BF16 ||
                                            (bf16 && fused::bf16_products()));
    const ggml_type col_type = !kernel_as_b && w->type == GGML_TYPE_F16 ? GGML_TYPE_F16 : GGML_TYPE_F32;
    ggml_tensor* col = ggml_im2col(ctx, w, x, stride, stride, pad, pad, 1, 1, true, col_type);  // [K, OW, OH, N]
    const int64_t K = col->ne[0], OW = col->ne[1], OH = col->ne[2];
    ggml_tensor* w2 = ggml_reshape_2d(ctx, w, KW * KH * IC, OC);
    ggml_tensor* col2 = ggml_reshape_2d(ctx, col, K, OW * OH * N);
    if (!kernel_as_b && (w->type == GGML_TYPE_F32 || w->type == GGML_TYPE_F16)) {
        // col as src0: the product comes out [OW*OH*N, OC], i.e. already planar per channel.
        ggml_tensor* r = fused::mul_mat(ctx, col2, w2, custom_ops);  // [OW*OH*N, OC]
        if (N == 1) return ggml_reshape_4d(ctx, r, OW, OH, OC, 1);
        r = ggml_reshape_4d(ctx, r, OW, OH, N, OC);
        return ggml_cont(ctx, ggml_permute(ctx, r, 0, 1, 3, 2));  // [OW, OH, OC, N]
    }
    ggml_tensor* r = fused::mul_mat(ctx, w2, col2, custom_ops, bf16);  // [OC, OW*OH*N]
    return sequence_to_image(ctx, r, OW, OH, custom_ops);  // [OW, OH, OC, N]
}

// The kernel size k of a quantized kernel stored as the matrix w [IC*k*k, OC].
int quantized_kernel_size(const ggml_tensor* x, const ggml_tensor* w) {
    const int64_t IC = x->ne[2];
    SD_CHECK(IC > 0 && w->ne[0] % IC == 0, "conv2d: quantized kernel rows do not match the input channels");
    const int k = static_cast<int>(std::lround(std::sqrt(static_cast<double>(w->ne[0] / IC))));
    SD_CHECK(int64_t(k) * k * IC == w->ne[0], "conv2d: quantized kernel is not square");
    return k;
}

// A quantized kernel stored as the matrix w [IC*k*k, OC]: an f32 im2col times w as mul_mat's
// src0, so that the integer dot products run (ours for q8_0 where custom ops may, kernels/cpu/
// gemm_q8.h; ggml's otherwise). 1x1 stride-1 kernels skip the im2col.
ggml_tensor* conv2d_matrix(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, int k, int stride, int pad, bool custom_ops) {
    const int64_t IC = x->ne[2], N = x->ne[3];
    if (k == 1 && stride == 1 && pad == 0) {
        const int64_t W = x->ne[0], H = x->ne[1];
        ggml_tensor* r = fused::mul_mat(ctx, w, image_to_sequence(ctx, x, custom_ops), custom_ops);  // [OC, WH, N]
        return sequence_to_image(ctx, r, W, H, custom_ops);
    }
    // ggml_im2col reads only the kernel's shape (KW, KH, IC) from its first operand: a
    // data-less f16 stand-in of that shape (w's ne0 could not hold KW for a quantized type).
    ggml_tensor* kshape = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, k, k, IC, 1);
    ggml_tensor* col = ggml_im2col(ctx, kshape, x, stride, stride, pad, pad, 1, 1, true, GGML_TYPE_F32);  // [K, OW, OH, N]
    const int64_t K = col->ne[0], OW = col->ne[1], OH = col->ne[2];
    ggml_tensor* r = fused::mul_mat(ctx, w, ggml_reshape_2d(ctx, col, K, OW * OH * N), custom_ops);  // [OC, OW*OH*N]
    return sequence_to_image(ctx, r, OW, OH, custom_ops);  // [OW, OH, OC, N]
}

}  // namespace

ggml_tensor* conv2d(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, const ConvGeometry& g,
                    const ConvOptions& opt, ggml_tensor* residual) {
    const bool quantized = ggml_is_quantized(w->type);
    const bool bounded = opt.algo == ConvAlgo::Strips || opt.algo == ConvAlgo::WinogradStrips || opt.algo == ConvAlgo::Direct;
    if (bounded && !quantized && x->ne[3] == 1) return conv2d_strips(ctx, x, w, b, g, opt, residual);
    if (!opt.custom_ops && !quantized && x->ne[3] == 1 && opt.max_im2col_bytes != SIZE_MAX) {
        // On a device, a whole-image im2col larger than the device takes (max_im2col_bytes =
        // Device::max_tensor_bytes) would run on the CPU: that image in row strips instead.
        const int64_t W = x->ne[0] * g.up, H = x->ne[1] * g.up;
        const int64_t OW = (W + g.pad_l + g.pad_r - w->ne[0]) / g.stride + 1;
        const int64_t OH = (H + g.pad_t + g.pad_b - w->ne[1]) / g.stride + 1;
        const double bytes = double(OW) * OH * w->ne[0] * w->ne[1] * w->ne[2] * sizeof(float);
        if (bytes > double(opt.max_im2col_bytes)) {
            ConvOptions strips = opt;
            strips.algo = ConvAlgo::Strips;
            return conv2d_strips(ctx, x, w, b, g, strips, residual);
        }
    }

    SD_CHECK(g.pad_l == g.pad_r && g.pad_l == g.pad_t && g.pad_l == g.pad_b,
             "conv2d: asymmetric padding needs ConvAlgo::Strips or Direct");
    const int stride = g.stride, pad = g.pad_l;
    if (quantized) {
        const int k = quantized_kernel_size(x, w);
        const int64_t qpixels = x->ne[0] * x->ne[1] * x->ne[3] * g.up * g.up;
        if (opt.algo == ConvAlgo::Winograd && opt.custom_ops && opt.winograd_q8 && winograd::q8_enabled() && k == 3 &&
            stride == 1 && pad == 1 && qpixels >= opt.winograd_min_pixels && qpixels >= opt.winograd_q8_min_pixels &&
            winograd::conv3x3_q8_applies(x, w)) {
            // Winograd F(2x2, 3x3) with int8 products: 4 multiply-adds per channel and output
            // pixel instead of the direct op's 9 (winograd_q8.h).
            const bool f43 = opt.winograd_q8_f43 && qpixels >= opt.winograd_f43_min_pixels;
            ggml_tensor* y = winograd::conv3x3_q8(ctx, x, w, b, g.up, f43);
            return residual ? ggml_add(ctx, residual, y) : y;
        }
        if (opt.custom_ops && opt.direct_q8 && fused::conv_q8_enabled()) {
            // One op from the image (upsampling, bias and residual folded in) where it applies.
            if (fused::conv_q8_applies(x, w, k, stride, pad, g.up, b, residual))
                return fused::conv2d_q8(ctx, x, w, k, stride, pad, g.up, b, residual);
            if (fused::conv_q8_applies(x, w, k, stride, pad, g.up, nullptr, nullptr)) {
                ggml_tensor* y = add_bias(ctx, fused::conv2d_q8(ctx, x, w, k, stride, pad, g.up, nullptr, nullptr), b);
                return residual ? ggml_add(ctx, residual, y) : y;
            }
        }
        if (g.up != 1) x = ggml_upscale(ctx, x, g.up, GGML_SCALE_MODE_NEAREST);
        // Winograd would need the kernel transformed (and so dequantized) every pass.
        ggml_tensor* y = add_bias(ctx, conv2d_matrix(ctx, x, w, k, stride, pad, opt.custom_ops), b);
        return residual ? ggml_add(ctx, residual, y) : y;
    }
    // Any channel count: the U-Net's conv_in (4 -> C) and conv_out (C -> 4) cost 27 and 86 ms of
    // a BK-SDM-tiny pass by an f16 im2col (f16, batch 2, 64x64, 1 thread, AVX2; conv_out's
    // im2col is 47 MB), 21 and 50 by the f32 one below, 15 and 8 by F(4x4, 3x3).
    const bool winograd = opt.algo == ConvAlgo::Winograd && opt.custom_ops && w->ne[0] == 3 && w->ne[1] == 3 &&
                          stride == 1 && pad == 1;
    const int64_t pixels = x->ne[0] * x->ne[1] * x->ne[3] * g.up * g.up;
    if (winograd && pixels >= opt.winograd_f43_min_pixels && !opt.bf16_gemm && opt.products != ConvProducts::BF16 &&
        x->type == GGML_TYPE_F32) {
        // F(4x4, 3x3): f32 products whatever the kernel's type (f16 / bf16 kernels widened by
        // the per-pass kernel transform, U = 36/9 of the weights in f32, transient); bias,
        // residual and the 2x upsampling folded into its output / input transforms.
        return winograd::conv3x3_f43(ctx, x, w, b ? to_f32(ctx, b) : nullptr, residual, g.up,
                                     opt.winograd_strip_bytes);
    }
    if (g.up != 1) x = ggml_upscale(ctx, x, g.up, GGML_SCALE_MODE_NEAREST);
    if (opt.products == ConvProducts::F32) w = to_f32(ctx, w);
    ggml_tensor* y;
    if (winograd && pixels >= opt.winograd_min_pixels) {
        // Winograd pays a per-call kernel transform (16/9 of the weights): worth it from about
        // 256 output pixels (measured; below that im2col + GEMM is as fast). The transformed
        // operands are f32 (f16 / bf16 kernels are widened by the kernel transform) so that the
        // products run through the packed CPU product (kernels/cpu/gemm.h) at f32 speed.
        y = winograd::conv3x3(ctx, x, w, b, opt.bf16_gemm);
    } else {
        y = add_bias(ctx, conv2d_im2col(ctx, x, w, stride, pad, opt.custom_ops, opt.bf16_gemm), b);
    }
    // The residual as the first operand: ggml orders a node's sources depth first, so the
    // residual's producer (a ResNet's shortcut) runs before this convolution's input chain and
    // its input can be freed early.
    return residual ? ggml_add(ctx, residual, y) : y;
}

}  // namespace sdcpp::nn
