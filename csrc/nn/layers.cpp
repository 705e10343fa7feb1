#include "layers.h"

#include <atomic>
#include <cmath>

#include "../runtime/error.h"

namespace sdcpp::nn {

namespace {
std::atomic<int> g_attention_kernel{static_cast<int>(AttentionKernel::Auto)};
}

void set_attention_kernel(AttentionKernel k) { g_attention_kernel = static_cast<int>(k); }
AttentionKernel attention_kernel() { return static_cast<AttentionKernel>(g_attention_kernel.load()); }

ggml_tensor* linear(ggml_context* ctx, ggml_tensor* x, const Params& p) {
    ggml_tensor* w = p.weight();
    if (ggml_n_dims(w) > 2) w = ggml_reshape_2d(ctx, w, w->ne[0] * w->ne[1] * w->ne[2], w->ne[3]);
    ggml_tensor* y = ggml_mul_mat(ctx, w, x);
    if (ggml_tensor* b = p.bias()) y = ggml_add(ctx, y, b);
    return y;
}

ggml_tensor* conv2d(ggml_context* ctx, ggml_tensor* x, const Params& p, int stride, int padding) {
    ggml_tensor* w = p.weight();  // [KW, KH, IC, OC]
    const int64_t OC = w->ne[3];
    ggml_tensor* y;
    if (w->ne[0] == 1 && w->ne[1] == 1 && stride == 1 && padding == 0) {
        // 1x1 convolution: a matmul over channels, no im2col.
        const int64_t W = x->ne[0], H = x->ne[1], C = x->ne[2], N = x->ne[3];
        ggml_tensor* xs = ggml_cont(ctx, ggml_permute(ctx, ggml_reshape_3d(ctx, x, W * H, C, N), 1, 0, 2, 3));  // [C, WH, N]
        ggml_tensor* w2 = ggml_reshape_2d(ctx, w, C, OC);
        ggml_tensor* r = ggml_mul_mat(ctx, w2, xs);                                          // [OC, WH, N]
        y = ggml_reshape_4d(ctx, ggml_cont(ctx, ggml_permute(ctx, r, 1, 0, 2, 3)), W, H, OC, N);
    } else if (w->type == GGML_TYPE_F32 || w->type == GGML_TYPE_F16) {
        ggml_tensor* col = ggml_im2col(ctx, w, x, stride, stride, padding, padding, 1, 1, true, w->type);  // [N, OH, OW, IC*KH*KW]
        ggml_tensor* r = ggml_mul_mat(ctx, ggml_reshape_2d(ctx, col, col->ne[0], col->ne[3] * col->ne[2] * col->ne[1]),
                                      ggml_reshape_2d(ctx, w, w->ne[0] * w->ne[1] * w->ne[2], OC));  // [N*OH*OW, OC]
        r = ggml_reshape_4d(ctx, r, col->ne[1], col->ne[2], col->ne[3], OC);                        // [OW, OH, N, OC]
        y = ggml_cont(ctx, ggml_permute(ctx, r, 0, 1, 3, 2));                                       // [OW, OH, OC, N]
    } else {
        ggml_tensor* col = ggml_im2col(ctx, w, x, stride, stride, padding, padding, 1, 1, true, GGML_TYPE_F32);
        const int64_t OW = col->ne[1], OH = col->ne[2], N = col->ne[3];
        ggml_tensor* r = ggml_mul_mat(ctx, ggml_reshape_2d(ctx, w, w->ne[0] * w->ne[1] * w->ne[2], OC),
                                      ggml_reshape_2d(ctx, col, col->ne[0], OW * OH * N));          // [OC, OW*OH*N]
        r = ggml_reshape_4d(ctx, r, OC, OW, OH, N);
        y = ggml_cont(ctx, ggml_permute(ctx, r, 2, 0, 1, 3));                                       // [OW, OH, OC, N]
    }
    if (ggml_tensor* b = p.bias()) y = ggml_add(ctx, y, ggml_reshape_4d(ctx, b, 1, 1, OC, 1));
    return y;
}

ggml_tensor* group_norm(ggml_context* ctx, ggml_tensor* x, const Params& p, int groups, float eps) {
    ggml_tensor* y = ggml_group_norm(ctx, x, groups, eps);
    const int64_t C = x->ne[2];
    if (ggml_tensor* w = p.store.find(p.prefix + ".weight")) y = ggml_mul(ctx, y, ggml_reshape_4d(ctx, w, 1, 1, C, 1));
    if (ggml_tensor* b = p.bias()) y = ggml_add(ctx, y, ggml_reshape_4d(ctx, b, 1, 1, C, 1));
    return y;
}

ggml_tensor* layer_norm(ggml_context* ctx, ggml_tensor* x, const Params& p, float eps) {
    ggml_tensor* y = ggml_norm(ctx, x, eps);
    if (ggml_tensor* w = p.store.find(p.prefix + ".weight")) y = ggml_mul(ctx, y, w);
    if (ggml_tensor* b = p.bias()) y = ggml_add(ctx, y, b);
    return y;
}

ggml_tensor* attention(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads, bool causal) {
    const int64_t D = q->ne[0], Lq = q->ne[1], N = q->ne[2], Lk = k->ne[1];
    SD_CHECK(D % heads == 0, "attention width must be divisible by the number of heads");
    const int64_t d = D / heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    // [D, L, N] -> [d, L, heads, N]
    ggml_tensor* qh = ggml_permute(ctx, ggml_reshape_4d(ctx, q, d, heads, Lq, N), 0, 2, 1, 3);
    ggml_tensor* kh = ggml_permute(ctx, ggml_reshape_4d(ctx, k, d, heads, Lk, N), 0, 2, 1, 3);
    ggml_tensor* vh = ggml_permute(ctx, ggml_reshape_4d(ctx, v, d, heads, Lk, N), 0, 2, 1, 3);

    const bool flash = attention_kernel() == AttentionKernel::Flash && !causal;
    if (flash) {
        ggml_tensor* kf = ggml_cast(ctx, kh, GGML_TYPE_F16);
        ggml_tensor* vf = ggml_cast(ctx, vh, GGML_TYPE_F16);
        ggml_tensor* o = ggml_flash_attn_ext(ctx, qh, kf, vf, nullptr, scale, 0.0f, 0.0f);  // [d, heads, Lq, N]
        ggml_flash_attn_ext_set_prec(o, GGML_PREC_F32);
        return ggml_reshape_3d(ctx, o, D, Lq, N);
    }
    ggml_tensor* kq = ggml_mul_mat(ctx, kh, qh);  // [Lk, Lq, heads, N]
    if (causal) kq = ggml_diag_mask_inf(ctx, kq, 0);
    kq = ggml_soft_max_ext(ctx, kq, nullptr, scale, 0.0f);
    ggml_tensor* vt = ggml_cont(ctx, ggml_permute(ctx, vh, 1, 0, 2, 3));  // [Lk, d, heads, N]
    ggml_tensor* o = ggml_mul_mat(ctx, vt, kq);                          // [d, Lq, heads, N]
    o = ggml_cont(ctx, ggml_permute(ctx, o, 0, 2, 1, 3));                // [d, heads, Lq, N]
    return ggml_reshape_3d(ctx, o, D, Lq, N);
}

ggml_tensor* image_to_sequence(ggml_context* ctx, ggml_tensor* x) {
    const int64_t W = x->ne[0], H = x->ne[1], C = x->ne[2], N = x->ne[3];
    return ggml_cont(ctx, ggml_permute(ctx, ggml_reshape_3d(ctx, x, W * H, C, N), 1, 0, 2, 3));  // [C, WH, N]
}

ggml_tensor* sequence_to_image(ggml_context* ctx, ggml_tensor* x, int64_t w, int64_t h) {
    const int64_t C = x->ne[0], N = x->ne[2];
    ggml_tensor* t = ggml_cont(ctx, ggml_permute(ctx, x, 1, 0, 2, 3));  // [WH, C, N]
    return ggml_reshape_4d(ctx, t, w, h, C, N);
}

ggml_tensor* upsample_nearest2x(ggml_context* ctx, ggml_tensor* x) {
    return ggml_upscale(ctx, x, 2, GGML_SCALE_MODE_NEAREST);
}

}  // namespace sdcpp::nn
