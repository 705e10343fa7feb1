// Quantized 2-D convolution straight from the image: y = conv(x, w) (+ bias) (+ residual) for a
// q8_0 / q5_0 / q4_0 kernel stored as the matrix [C*k*k, OC] (runtime/weights.h).
//
// Why: the im2col path (an f32 im2col of the whole output, the integer GEMM, then a permuting
// copy to [OW, OH, OC, N]) spent about a quarter of the quantized U-Net's time outside the
// products, writing and re-reading K f32 values per output pixel. Here each thread gathers the
// receptive fields of a block of output pixels, a run of channels at a time, into an L1-sized
// f32 buffer, quantizes them from there into the integer product's activation layout
// (gemm_q8.h's quantize_a), runs the product's own block loops (gemm_q8_block) into a cache-sized
// tile and stores that tile transposed, i.e. straight in ggml's [OW, OH, OC, N] layout, adding
// bias and residual on the way.
//
// Numerics: the row of A for output pixel (ox, oy, n) holds, at K = c*k*k + ky*k + kx, the
// input at (ox*stride + kx - pad, oy*stride + ky - pad) or 0 outside, exactly ggml_im2col's row
// (same order, same values), and the product is gemm_q8's own loops, so y is bit for bit the
// im2col + gemm_q8 result (+ bias, + residual as ggml_add computes them).
#pragma once
#include <cstdint>

#include "gemm_q8.h"

namespace sdcpp::kernels::cpu {

constexpr int kConvQ8MaxK = 7;  // kernel sizes above this stay on the im2col path

struct ConvQ8Args {
    const float* x = nullptr;  // [W, H, C, N] f32, x[i + xs1 j + xs2 c + xs3 n]
    int64_t W = 0, H = 0, C = 0, N = 0;
    int64_t xs1 = 0, xs2 = 0, xs3 = 0;
    int up = 1;  // 2: convolve the nearest-neighbour 2x upsampling of x (read through it)
    int k = 1, stride = 1, pad = 0;
    const uint8_t* w = nullptr;  // OC rows of C*k*k / 32 blocks of wtype, ldw bytes apart
    int64_t ldw = 0, OC = 0;
    GemmQB wtype = GemmQB::Q8_0;
    const float* bias = nullptr;      // [OC] or null
    const float* residual = nullptr;  // [OW, OH, OC, N] contiguous, or null
    float* y = nullptr;               // [OW, OH, OC, N] contiguous
    int64_t OW = 0, OH = 0;
};

// Output sizes for input size `in` (before the upsampling): (in*up + 2 pad - k) / stride + 1.
int64_t conv_q8_out_size(int64_t in, int up, int k, int stride, int pad);

// Work unit `ith` of `nth`: all threads together write all of y; scratch is per thread and
// bounded (a block of quantized rows and one output tile), whatever the image size.
void conv_q8(const GemmQ8Kernels& k, const ConvQ8Args& a, int ith, int nth);

}  // namespace sdcpp::kernels::cpu
