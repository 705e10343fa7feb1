// Fused element-wise ops of the U-Net for the CPU backend (ggml custom ops), each replacing
// several ggml passes over the activations:
//   geglu:      h * gelu(g) for [2F, T, N] -> [F, T, N] (diffusers GEGLU: proj = (h | g)),
//               exact erf GELU with a vectorized erf (|error| < 2e-7) on AVX-512 CPUs.
//   norm_affine: GroupNorm / LayerNorm with the affine weight and bias (and optional SiLU)
//               in one pass after the statistics.
#pragma once
#include "ggml.h"

namespace sdcpp::fused {

// x [2F, T, N] f32 contiguous -> [F, T, N] = x[:F] * gelu_erf(x[F:]).
ggml_tensor* geglu(ggml_context* ctx, ggml_tensor* x);

// GroupNorm over the channels (ne2) of x [W, H, C, N] with `groups` groups, times w [C] plus
// b [C], then SiLU when `silu`. Statistics in double like ggml_group_norm.
ggml_tensor* group_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, int groups, float eps, bool silu);

// LayerNorm over ne0 of x [C, T, N] times w [C] plus b [C].
ggml_tensor* layer_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, float eps);

}  // namespace sdcpp::fused
