// 3x3 stride-1 pad-1 convolution by Winograd F(4x4, 3x3) on the CPU backend, computed in
// horizontal strips of tile rows (the VAE's convolutions).
//
// Per 4x4 output tile: 36 products instead of 144 (4x fewer multiplications than direct or
// im2col + GEMM). The 36 channel sums are 36 batched matrix products [tiles x C] @ [C x OC]
// done by the packed CPU product (kernels/cpu/gemm.h); the input, kernel and output transforms are ggml custom ops whose
// inner loops are the per-ISA kernels of csrc/kernels/cpu/winograd_f43.h. A whole-image
// transform of a 512x512x128 activation is 300 MB, so the image is cut into strips whose
// transformed input and products each stay within `strip_bytes` (cache-sized); every strip's
// output transform writes its rows in place into one output tensor, adding the bias and the
// residual on the way (no second full-size tensor, no copy).
#pragma once
#include <cstddef>

#include "ggml.h"

namespace sdcpp::winograd {

// y [W*up, H*up, OC, N] = conv3x3(x') + b (+ residual), x' = x [W, H, C, N] (f32, contiguous)
// or, with up = 2, its nearest-neighbour 2x upsampling (read through, never materialized).
// w [3, 3, C, OC] f32 / f16 / bf16; b [OC] f32 or null; residual f32 of y's shape, or null.
// The strips run over the tile rows of the whole batch (the VAE: one image; the U-Net: its
// cond + uncond pair, usually one strip).
// `onto_residual`: nothing reads the residual after this convolution, so y is written over it
// (each strip's residual rows are read before they are overwritten; same values, no
// full-size output of its own). `onto_input`: nothing reads x afterwards (one image, no
// residual, no upsampling, OC <= C): y is written over x's first OC channel planes, strip by
// strip, each strip's output only once the next strip's input transform has read the rows it
// shares.
ggml_tensor* conv3x3_f43(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, ggml_tensor* residual, int up,
                         size_t strip_bytes, bool onto_residual = false, bool onto_input = false);

}  // namespace sdcpp::winograd
