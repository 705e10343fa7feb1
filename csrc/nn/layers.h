// The layer library every model graph uses (CLIP, U-Net, VAE, TAESD): each function takes the
// graph context, the activations and the weights and returns a new graph node; where a layer
// has several lowerings (stock ggml ops, sdcpp's CPU custom ops), the choice is made here, from
// the caller's `custom_ops` flag, never at the call sites. Convolutions are in conv2d.h,
// attention in attention.h, the shared ResNet / attention blocks in blocks.h.
// Layout conventions (ggml ne order):
//   images      [W, H, C, N]   (numpy NCHW as is)
//   sequences   [C, L, N]      (numpy N, L, C as is)
//   linear W    [in, out]      (numpy/torch [out, in] as is); mul_mat(W, x) = x @ W^T
//   conv W      [KW, KH, IC, OC], or the matrix [IC*KH*KW, OC] when quantized (runtime/weights.h)
#pragma once
#include <string>

#include "../runtime/device.h"
#include "../runtime/weights.h"
#include "ggml.h"

namespace sdcpp::nn {

// The one predicate for "this graph may use sdcpp's CPU custom ops" (fused norms and
// activations, Winograd transforms, the fused attention, the strip im2col): a ggml custom op
// is a host function that only the CPU backend runs. `portable` asks for the graph of stock
// ggml ops that other backends get (an option, used by tests to check that graph on the CPU).
inline bool custom_ops_allowed(const Device& device, bool portable = false) { return device.is_cpu() && !portable; }

// Weights of one module: `prefix` + ".weight" / ".bias" from a store.
struct Params {
    const WeightStore& store;
    std::string prefix;
    ggml_tensor* weight() const { return store.get(prefix + ".weight"); }
    ggml_tensor* bias() const { return store.find(prefix + ".bias"); }
    Params sub(const std::string& name) const { return {store, prefix.empty() ? name : prefix + "." + name}; }
};

// t as f32 (a cast node when stored as f16 / bf16).
ggml_tensor* to_f32(ggml_context* ctx, ggml_tensor* t);

// y = x @ W^T + b over ne0 (b may be null). Accepts 2-D [in, out] weights and 1x1-conv
// [1, 1, in, out] weights. custom_ops: f32/f16/bf16 weights go through the packed CPU product
// (kernels/cpu/gemm_op.h); quantized weights and other backends keep ggml_mul_mat. bf16 (with
// custom_ops): the product in bf16 where the CPU has AMX-BF16 (fused::matmul).
ggml_tensor* linear(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, bool custom_ops = false,
                    bool bf16 = false);
ggml_tensor* linear(ggml_context* ctx, ggml_tensor* x, const Params& p, bool custom_ops = false);

// GroupNorm over the channels (ne2) of x [W, H, C, N] times w [C] plus b [C], then SiLU when
// `silu`. With custom ops one fused pass after the statistics (kernels/cpu/fused_ops.h), else
// ggml_group_norm, mul, add (and silu).
ggml_tensor* group_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, int groups, float eps, bool silu,
                        bool custom_ops);
// The same for an x that nothing reads afterwards except `after` (computed first; or null):
// with custom ops written over x (no second tensor of x's size; the same values), else as
// group_norm. The bounded-memory VAE's way to keep its 1024x1024 activations few.
ggml_tensor* group_norm_consuming(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, int groups, float eps,
                                  bool silu, bool custom_ops, ggml_tensor* after = nullptr);

// LayerNorm over ne0 times w plus b (fused on the CPU with custom ops).
ggml_tensor* layer_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, float eps, bool custom_ops);

// Activations of f32 x. gelu is the exact erf GELU; quick_gelu is x * sigmoid(1.702 x) in f32
// (ggml's GELU_QUICK reads an f16 table on the CPU); geglu: x [2F, ...] -> x[:F] * gelu(x[F:]).
ggml_tensor* gelu(ggml_context* ctx, ggml_tensor* x, bool custom_ops);
ggml_tensor* quick_gelu(ggml_context* ctx, ggml_tensor* x, bool custom_ops);
ggml_tensor* geglu(ggml_context* ctx, ggml_tensor* x, bool custom_ops);

// [W,H,C,N] -> [C, W*H, N] and back (for transformer blocks working on sequences); with custom
// ops by fused::transpose's tiled copy, else ggml's CONT of the permuted view.
ggml_tensor* image_to_sequence(ggml_context* ctx, ggml_tensor* x, bool custom_ops);
ggml_tensor* sequence_to_image(ggml_context* ctx, ggml_tensor* x, int64_t w, int64_t h, bool custom_ops);

// A per-channel vector v [C] as [W, 1, C, 1]: broadcasting it over rows keeps ggml's binary ops
// vectorized (a [1, 1, C, 1] operand makes them add one scalar at a time).
ggml_tensor* channel_rows(ggml_context* ctx, ggml_tensor* v, int64_t W);

// Nearest-neighbour 2x upsampling of [W,H,C,N].
ggml_tensor* upsample_nearest2x(ggml_context* ctx, ggml_tensor* x);

}  // namespace sdcpp::nn
