// Internal to the layer library: the bounded-memory convolution of one image in row strips
// (ConvAlgo::Strips / Direct, conv2d.h) and the row stacking it shares with the chunked
// attention (attention.h).
#pragma once
#include <vector>

#include "conv2d.h"

namespace sdcpp::nn {

// Place `parts` (each [W, rows_i, C, N], rows summing to H) one under the other.
// `allocate_after` (custom ops; or null): the full-size result is allocated once that tensor is
// computed, before the parts, instead of after the first part (conv2d_strips: where ggml-alloc
// then places it).
ggml_tensor* stack_rows(ggml_context* ctx, const std::vector<ggml_tensor*>& parts, bool custom_ops,
                        ggml_tensor* allocate_after = nullptr);

// conv2d() for ConvAlgo::Strips, WinogradStrips and Direct (x [W, H, IC, 1], f32 / f16 / bf16 w).
ggml_tensor* conv2d_strips(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, const ConvGeometry& g,
                           const ConvOptions& opt, ggml_tensor* residual);

}  // namespace sdcpp::nn
