// Building blocks shared by the CLIP, U-Net and VAE graphs. Each takes the graph context,
// the activations and the weights (looked up by canonical name in a WeightStore) and
// returns a new graph node. Layout conventions (ggml ne order):
//   images      [W, H, C, N]   (numpy NCHW as is)
//   sequences   [C, L, N]      (numpy N, L, C as is)
//   linear W    [in, out]      (numpy/torch [out, in] as is); mul_mat(W, x) = x @ W^T
//   conv W      [KW, KH, IC, OC]
#pragma once
#include <string>

#include "../runtime/weights.h"
#include "ggml.h"

namespace sdcpp::nn {

// Weights of one module: `prefix` + ".weight" / ".bias" from a store.
struct Params {
    const WeightStore& store;
    std::string prefix;
    ggml_tensor* weight() const { return store.get(prefix + ".weight"); }
    ggml_tensor* bias() const { return store.find(prefix + ".bias"); }
    Params sub(const std::string& name) const { return {store, prefix.empty() ? name : prefix + "." + name}; }
    bool has(const std::string& name) const { return store.has(prefix + "." + name); }
};

// y = x @ W^T + b over ne0. Accepts 2-D [in,out] weights and 1x1-conv [1,1,in,out] weights.
ggml_tensor* linear(ggml_context* ctx, ggml_tensor* x, const Params& p);

// 2-D convolution, NCHW. f32 weights take an f32 im2col (exact); f16 weights an f16 im2col
// (as ggml_conv_2d); other types (bf16, quantized) an f32 im2col times the weight.
ggml_tensor* conv2d(ggml_context* ctx, ggml_tensor* x, const Params& p, int stride = 1, int padding = 0);

// GroupNorm over channels (ne2) of [W,H,C,N] with affine weight/bias.
ggml_tensor* group_norm(ggml_context* ctx, ggml_tensor* x, const Params& p, int groups, float eps);

// LayerNorm over ne0 with affine weight/bias.
ggml_tensor* layer_norm(ggml_context* ctx, ggml_tensor* x, const Params& p, float eps);

enum class AttentionKernel { Auto, MulMat, Flash };
void set_attention_kernel(AttentionKernel k);  // process-wide switch (tests/benchmarks)
AttentionKernel attention_kernel();

// Multi-head attention on projected q [D, Lq, N], k, v [D, Lk, N] with `heads` heads;
// returns [D, Lq, N]. `causal` masks future positions (CLIP).
ggml_tensor* attention(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads, bool causal);

// [W,H,C,N] -> [C, W*H, N] and back (for transformer blocks working on sequences).
ggml_tensor* image_to_sequence(ggml_context* ctx, ggml_tensor* x);
ggml_tensor* sequence_to_image(ggml_context* ctx, ggml_tensor* x, int64_t w, int64_t h);

// Nearest-neighbour 2x upsampling of [W,H,C,N].
ggml_tensor* upsample_nearest2x(ggml_context* ctx, ggml_tensor* x);

// A new f32 input tensor registered in the graph's input map.
}  // namespace sdcpp::nn
