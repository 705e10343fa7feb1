// Fused element-wise ops for the CPU backend (ggml custom ops), each replacing several ggml
// passes over the activations; the row kernels come from elementwise.h for the active CPU
// level, chosen when the op runs:
//   geglu:      h * gelu(g) for [2F, T, N] -> [F, T, N] (diffusers GEGLU: proj = (h | g)),
//               exact erf GELU.
//   quick_gelu / gelu: the CLIP text encoders' MLP activations in one pass.
//   group_norm / layer_norm: the normalization with its affine weight and bias (and an
//               optional SiLU) in one pass after the statistics.
//   transpose:  the first two dimensions swapped, as a tiled copy.
// Graph builders use these only where custom ops may run (the CPU backend).
#pragma once
#include "ggml.h"

namespace sdcpp::fused {

// x [2F, T, N] f32 -> [F, T, N] = x[:F] * gelu_erf(x[F:]).
ggml_tensor* geglu(ggml_context* ctx, ggml_tensor* x);

// GroupNorm over the channels (ne2) of x [W, H, C, N] with `groups` groups, times w [C] plus
// b [C], then SiLU when `silu`. Statistics summed in double like ggml_group_norm.
ggml_tensor* group_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, int groups, float eps, bool silu);
// The same, written over x (x contiguous; bit for bit group_norm's result: each group's
// statistics are read before its values are overwritten). The caller guarantees nothing else
// reads x afterwards; `after` (or null) is a tensor that must be computed first (x's other
// reader, e.g. a ResNet's shortcut), made a source so the graph orders it before.
ggml_tensor* group_norm_inplace(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, int groups, float eps,
                                bool silu, ggml_tensor* after);

// LayerNorm over ne0 of x [C, ...] (every row of every higher dimension) times w [C] plus b [C].
ggml_tensor* layer_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, float eps);

// Activations of x (any shape, f32): x * sigmoid(1.702 x) (CLIP's quick GELU, which ggml's
// GELU_QUICK computes from an f16 table), and exact erf GELU.
ggml_tensor* quick_gelu(ggml_context* ctx, ggml_tensor* x);
ggml_tensor* gelu(ggml_context* ctx, ggml_tensor* x);

// x [A, B, C, D] f32 -> contiguous [B, A, C, D] (ggml_cont(ggml_permute(x, 1, 0, 2, 3))'s values),
// by register-blocked tiles: the U-Net's image <-> token-sequence layout changes.
ggml_tensor* transpose(ggml_context* ctx, ggml_tensor* x);

}  // namespace sdcpp::fused
