#include "layers.h"

#include "../kernels/cpu/fused_ops.h"
#include "../kernels/cpu/gemm_op.h"

namespace sdcpp::nn {

ggml_tensor* to_f32(ggml_context* ctx, ggml_tensor* t) {
    return t->type == GGML_TYPE_F32 ? t : ggml_cast(ctx, t, GGML_TYPE_F32);
}

ggml_tensor* linear(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, bool custom_ops, bool bf16) {
    if (ggml_n_dims(w) > 2) w = ggml_reshape_2d(ctx, w, w->ne[0] * w->ne[1] * w->ne[2], w->ne[3]);
    ggml_tensor* y = fused::mul_mat(ctx, w, x, custom_ops, bf16);
    if (b) y = ggml_add(ctx, y, b);
    return y;
}

ggml_tensor* linear(ggml_context* ctx, ggml_tensor* x, const Params& p, bool custom_ops) {
    return linear(ctx, x, p.weight(), p.bias(), custom_ops);
}

ggml_tensor* channel_rows(ggml_context* ctx, ggml_tensor* v, int64_t W) {
    const int64_t C = v->ne[0];
    return ggml_repeat_4d(ctx, ggml_reshape_4d(ctx, to_f32(ctx, v), 1, 1, C, 1), W, 1, C, 1);
}

ggml_tensor* group_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, int groups, float eps, bool silu,
                        bool custom_ops) {
    if (custom_ops) return fused::group_norm(ctx, x, to_f32(ctx, w), to_f32(ctx, b), groups, eps, silu);
    ggml_tensor* y = ggml_group_norm(ctx, x, groups, eps);
    y = ggml_mul(ctx, y, channel_rows(ctx, w, x->ne[0]));
    y = ggml_add(ctx, y, channel_rows(ctx, b, x->ne[0]));
    return silu ? ggml_silu(ctx, y) : y;
}

ggml_tensor* group_norm_consuming(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, int groups, float eps,
                                  bool silu, bool custom_ops, ggml_tensor* after) {
    if (custom_ops && ggml_is_contiguous(x) && x->type == GGML_TYPE_F32)
        return fused::group_norm_inplace(ctx, x, to_f32(ctx, w), to_f32(ctx, b), groups, eps, silu, after);
    return group_norm(ctx, x, w, b, groups, eps, silu, custom_ops);
}

ggml_tensor* layer_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, float eps, bool custom_ops) {
    if (custom_ops) return fused::layer_norm(ctx, x, to_f32(ctx, w), to_f32(ctx, b), eps);
    ggml_tensor* y = ggml_norm(ctx, x, eps);
    y = ggml_mul(ctx, y, w);
    return ggml_add(ctx, y, b);
}

ggml_tensor* gelu(ggml_context* ctx, ggml_tensor* x, bool custom_ops) {
    return custom_ops ? fused::gelu(ctx, x) : ggml_gelu_erf(ctx, x);
}

ggml_tensor* quick_gelu(ggml_context* ctx, ggml_tensor* x, bool custom_ops) {
    if (custom_ops) return fused::quick_gelu(ctx, x);
    return ggml_mul(ctx, x, ggml_sigmoid(ctx, ggml_scale(ctx, x, 1.702f)));
}

ggml_tensor* geglu(ggml_context* ctx, ggml_tensor* x, bool custom_ops) {
    // diffusers' GEGLU: proj = (hidden | gate), hidden * gelu(gate) with the exact erf
    return custom_ops ? fused::geglu(ctx, x) : ggml_geglu_erf_swapped(ctx, x);
}

namespace {
// [A, B, ...] -> [B, A, ...] contiguous
ggml_tensor* swap01(ggml_context* ctx, ggml_tensor* x, bool custom_ops) {
    return custom_ops ? fused::transpose(ctx, x) : ggml_cont(ctx, ggml_permute(ctx, x, 1, 0, 2, 3));
}
}  // namespace

ggml_tensor* image_to_sequence(ggml_context* ctx, ggml_tensor* x, bool custom_ops) {
    const int64_t W = x->ne[0], H = x->ne[1], C = x->ne[2], N = x->ne[3];
    return swap01(ctx, ggml_reshape_3d(ctx, x, W * H, C, N), custom_ops);  // [C, WH, N]
}

ggml_tensor* sequence_to_image(ggml_context* ctx, ggml_tensor* x, int64_t w, int64_t h, bool custom_ops) {
    const int64_t C = x->ne[0], N = ggml_nelements(x) / (C * w * h);  // x may be [C, WH * N]
    ggml_tensor* t = swap01(ctx, ggml_reshape_3d(ctx, x, C, w * h, N), custom_ops);  // [WH, C, N]
    return ggml_reshape_4d(ctx, t, w, h, C, N);
}

ggml_tensor* upsample_nearest2x(ggml_context* ctx, ggml_tensor* x) {
    return ggml_upscale(ctx, x, 2, GGML_SCALE_MODE_NEAREST);
}

}  // namespace sdcpp::nn
