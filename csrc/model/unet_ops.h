// Graph primitives of the U-Net with explicit kernel choices (convolution layout, attention
// kernel). Layouts as in nn/layers.h: images [W, H, C, N], sequences [C, L, N],
// linear weights [in, out], conv weights [KW, KH, IC, OC].
#pragma once
#include <string>

#include "../nn/layers.h"
#include "ggml.h"

namespace sdcpp {

enum class AttnKernel { Auto, MulMat, Flash };
enum class ConvImpl { Auto, Im2col, Winograd };

struct UNetOptions {
    // Attention: Auto follows the process-wide switch (_core.set_attention_kernel) and, when
    // that is "auto" too, the faster kernel measured for the device and weight type.
    AttnKernel attention = AttnKernel::Auto;
    // 3x3 stride-1 convolutions: Auto = Winograd F(2x2,3x3) on the CPU backend (custom ops),
    // im2col + GEMM elsewhere.
    ConvImpl conv = ConvImpl::Auto;
    // CPU: GroupNorm(+SiLU), LayerNorm, GEGLU and (with the flash kernel) attention as fused
    // custom ops; false = stock ggml ops only (what other backends run).
    bool fused = true;
};

namespace unet_ops {

// y = x @ W^T + b over ne0; W is [in, out] or a 1x1 conv kernel [1, 1, in, out].
ggml_tensor* linear(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b);

// 2-D convolution of x [W, H, IC, N] with w [KW, KH, IC, OC] (+ bias [OC]); square kernel,
// same stride and padding on both axes. Exact f32 for f32 weights.
ggml_tensor* conv2d(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, int stride, int pad);

// The same convolution with the kernel stored as the matrix w [IC*k*k, OC] (ggml ne; a
// quantized kernel, runtime/weights.h): an f32 im2col times w as mul_mat's src0, so that a
// quantized w runs ggml's integer dot products. 1x1 stride-1 kernels skip the im2col.
ggml_tensor* conv2d_matrix(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, int k, int stride, int pad);

// GroupNorm over the channels (ne2) of x [W, H, C, N] with per-channel affine (w, b may be null).
ggml_tensor* group_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, int groups, float eps);

// LayerNorm over ne0 with affine.
ggml_tensor* layer_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, float eps);

// Multi-head attention on projected q [D, Lq, N], k, v [D, Lk, N]: [D, Lq, N]. With the
// mul_mat kernel, `type` (F32, F16, BF16) is the type q, k, v and the probabilities are
// rounded to for the two products; flash attention always runs in f32.
ggml_tensor* attention(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads, AttnKernel kernel,
                       ggml_type type = GGML_TYPE_F32);

// [W, H, C, N] <-> [C, W*H, N].

}  // namespace unet_ops
}  // namespace sdcpp
