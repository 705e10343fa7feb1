// The parts of Winograd F(2x2, 3x3) / F(4x4, 3x3) with int8 products (csrc/nn/winograd_q8.cpp)
// that the f32 paths (winograd_f23.h, winograd_f43.h) lack: the quantization of a transformed
// kernel into the product's q8_0 blocks, and the output transforms from the product's
// [tiles][OC] rows.
//
// Why int8 products: the direct quantized convolution (conv_q8.h) does 9 multiply-adds per input
// channel and output pixel, Winograd F(2x2, 3x3) 4 and F(4x4, 3x3) 2.25; on an AVX2 CPU the int8
// product runs at about twice the f32 rate, so the direct q8_0 conv cost more than the f16 one
// (Winograd, f32). Here the P Winograd-domain matrices U_p [OC x C] (P = 16 or 36 tile
// positions) are quantized along C in q8_0 blocks, V_p's rows [tiles x C] likewise (by the
// product itself, gemm_q8.h), and the P products run through the q8 product (every ISA variant
// of it).
//
// Numerics: U = G g G^T from the dequantized kernel, in f32 with the f32 paths' own kernel
// transforms (bit-identical at every level), each 32 values along C quantized as gemm_q8's
// activations (d = f16(amax / 127), q = round-half-even(u 127 / amax)), bit for bit. The output
// transforms are the f32 paths' operations in the same order (portable generic vectors: they
// are a small share of the work beside the products), so every level gives the same bits.
#pragma once
#include <cstdint>

namespace sdcpp::kernels::cpu {

// u[p * C + c] for p < P (one output channel's transformed kernels, f32) -> P rows of C / 32
// q8_0 blocks (34 bytes: f16 d, 32 int8) at dst + p * p_stride bytes. C a multiple of 32.
void winograd_q8_quantize(const float* u, int P, int64_t C, uint8_t* dst, int64_t p_stride);

// Output transform of `ntiles` consecutive tiles of one tile row, output channels oc0 .. oc1:
// m[p * p_stride + t * OC + oc] are the products (the q8 product's rows: one per tile, output
// channels contiguous). Writes rows r < rows and columns x < cols of channel oc at
// out[oc * plane + r * out_stride + x], plus bias[oc] (bias may be null). F(2x2, 3x3): rows <= 2,
// 16 positions; F(4x4, 3x3): rows <= 4, 36 positions.
void winograd_f23_q8_output(const float* m, int64_t p_stride, int64_t OC, int64_t oc0, int64_t oc1, int64_t ntiles,
                            int rows, int64_t cols, const float* bias, float* out, int64_t out_stride, int64_t plane);
void winograd_f43_q8_output(const float* m, int64_t p_stride, int64_t OC, int64_t oc0, int64_t oc1, int64_t ntiles,
                            int rows, int64_t cols, const float* bias, float* out, int64_t out_stride, int64_t plane);

}  // namespace sdcpp::kernels::cpu
