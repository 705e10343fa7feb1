#include "unet_ops.h"

#include <cmath>

#include "../runtime/error.h"

namespace sdcpp::unet_ops {

ggml_tensor* linear(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b) {
    if (ggml_n_dims(w) > 2) w = ggml_reshape_2d(ctx, w, w->ne[0] * w->ne[1] * w->ne[2], w->ne[3]);
    ggml_tensor* y = ggml_mul_mat(ctx, w, x);
    if (b) y = ggml_add(ctx, y, b);
    return y;
}

ggml_tensor* conv2d(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, int stride, int pad) {
    const int64_t KW = w->ne[0], KH = w->ne[1], IC = w->ne[2], OC = w->ne[3];
    const int64_t N = x->ne[3];
    ggml_tensor* y;
    if (KW == 1 && KH == 1 && stride == 1 && pad == 0) {
        // 1x1: a matmul over channels.
        const int64_t W = x->ne[0], H = x->ne[1];
        ggml_tensor* xs = nn::image_to_sequence(ctx, x);                                     // [IC, WH, N]
        ggml_tensor* r = ggml_mul_mat(ctx, ggml_reshape_2d(ctx, w, IC, OC), xs);         // [OC, WH, N]
        y = nn::sequence_to_image(ctx, r, W, H);
    } else {
        const ggml_type col_type = w->type == GGML_TYPE_F16 ? GGML_TYPE_F16 : GGML_TYPE_F32;
        ggml_tensor* col = ggml_im2col(ctx, w, x, stride, stride, pad, pad, 1, 1, true, col_type);  // [K, OW, OH, N]
        const int64_t K = col->ne[0], OW = col->ne[1], OH = col->ne[2];
        ggml_tensor* w2 = ggml_reshape_2d(ctx, w, KW * KH * IC, OC);
        if (w->type == GGML_TYPE_F32 || w->type == GGML_TYPE_F16) {
            // col as src0: the product comes out [OW*OH*N, OC], i.e. already planar per channel.
            ggml_tensor* r = ggml_mul_mat(ctx, ggml_reshape_2d(ctx, col, K, OW * OH * N), w2);  // [OW*OH*N, OC]
            if (N == 1) {
                y = ggml_reshape_4d(ctx, r, OW, OH, OC, 1);
            } else {
                r = ggml_reshape_4d(ctx, r, OW, OH, N, OC);
                y = ggml_cont(ctx, ggml_permute(ctx, r, 0, 1, 3, 2));  // [OW, OH, OC, N]
            }
        } else {
            ggml_tensor* r = ggml_mul_mat(ctx, w2, ggml_reshape_2d(ctx, col, K, OW * OH * N));  // [OC, OW*OH*N]
            r = ggml_reshape_4d(ctx, r, OC, OW, OH, N);
            y = ggml_cont(ctx, ggml_permute(ctx, r, 2, 0, 1, 3));  // [OW, OH, OC, N]
        }
    }
    if (b) y = ggml_add(ctx, y, ggml_reshape_4d(ctx, b, 1, 1, OC, 1));
    return y;
}

ggml_tensor* conv2d_matrix(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, int k, int stride,
                           int pad) {
    const int64_t IC = x->ne[2], N = x->ne[3], OC = w->ne[1];
    ggml_tensor* y;
    if (k == 1 && stride == 1 && pad == 0) {
        const int64_t W = x->ne[0], H = x->ne[1];
        ggml_tensor* r = ggml_mul_mat(ctx, w, nn::image_to_sequence(ctx, x));  // [OC, WH, N]
        y = nn::sequence_to_image(ctx, r, W, H);
    } else {
        // ggml_im2col reads only the kernel's shape (KW, KH, IC) from its first operand: a
        // data-less f16 stand-in of that shape (w's ne0 could not hold KW for a quantized type).
        ggml_tensor* kshape = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, k, k, IC, 1);
        ggml_tensor* col = ggml_im2col(ctx, kshape, x, stride, stride, pad, pad, 1, 1, true, GGML_TYPE_F32);  // [K, OW, OH, N]
        const int64_t K = col->ne[0], OW = col->ne[1], OH = col->ne[2];
        ggml_tensor* r = ggml_mul_mat(ctx, w, ggml_reshape_2d(ctx, col, K, OW * OH * N));  // [OC, OW*OH*N]
        r = ggml_reshape_4d(ctx, r, OC, OW, OH, N);
        y = ggml_cont(ctx, ggml_permute(ctx, r, 2, 0, 1, 3));  // [OW, OH, OC, N]
    }
    if (b) y = ggml_add(ctx, y, ggml_reshape_4d(ctx, b, 1, 1, OC, 1));
    return y;
}

ggml_tensor* group_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, int groups, float eps) {
    ggml_tensor* y = ggml_group_norm(ctx, x, groups, eps);
    const int64_t C = x->ne[2];
    if (w) y = ggml_mul(ctx, y, ggml_reshape_4d(ctx, w, 1, 1, C, 1));
    if (b) y = ggml_add(ctx, y, ggml_reshape_4d(ctx, b, 1, 1, C, 1));
    return y;
}

ggml_tensor* layer_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, float eps) {
    ggml_tensor* y = ggml_norm(ctx, x, eps);
    if (w) y = ggml_mul(ctx, y, w);
    if (b) y = ggml_add(ctx, y, b);
    return y;
}

ggml_tensor* attention(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads, AttnKernel kernel,
                       ggml_type type) {
    const int64_t D = q->ne[0], Lq = q->ne[1], N = q->ne[2], Lk = k->ne[1];
    const int64_t d = D / heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    if (kernel == AttnKernel::Flash) type = GGML_TYPE_F32;
    // ggml's fast kernels (llamafile sgemm, the tiled flash-attention) want rows that are a
    // whole number of SIMD blocks (16 f32 / f16, 32 bf16): zero-pad the head dim (SD1's 40 ->
    // 48 or 64). Zero columns change neither q.k nor, after slicing, the output.
    const int64_t blk = type == GGML_TYPE_BF16 ? 32 : 16;
    const int64_t dp = (d + blk - 1) / blk * blk;
    auto split = [&](ggml_tensor* x, int64_t L, bool pad) {  // [D, L, N] -> [dp, heads, L, N]
        ggml_tensor* t = ggml_reshape_4d(ctx, x, d, heads, L, N);
        if (pad && dp != d) t = ggml_pad(ctx, t, static_cast<int>(dp - d), 0, 0, 0);
        return t;
    };
    ggml_tensor* o;  // [dv, heads, Lq, N]
    int64_t dv = dp;
    if (kernel == AttnKernel::Flash) {
        ggml_tensor* qh = ggml_permute(ctx, split(q, Lq, true), 0, 2, 1, 3);  // [dp, Lq, heads, N] (view)
        ggml_tensor* kh = ggml_permute(ctx, split(k, Lk, true), 0, 2, 1, 3);
        ggml_tensor* vh = ggml_permute(ctx, split(v, Lk, true), 0, 2, 1, 3);
        o = ggml_flash_attn_ext(ctx, qh, kh, vh, nullptr, scale, 0.0f, 0.0f);
        ggml_flash_attn_ext_set_prec(o, GGML_PREC_F32);
        if (dp == d) return ggml_reshape_3d(ctx, o, D, Lq, N);  // already contiguous
    } else {
        // q (src1) must be contiguous for the fast path; k (src0) may have strided rows.
        ggml_tensor* qh = ggml_permute(ctx, split(q, Lq, true), 0, 2, 1, 3);
        ggml_tensor* kh = ggml_permute(ctx, split(k, Lk, true), 0, 2, 1, 3);
        qh = type == GGML_TYPE_F32 ? ggml_cont(ctx, qh) : ggml_cast(ctx, qh, type);
        if (type != GGML_TYPE_F32) kh = ggml_cast(ctx, kh, type);
        ggml_tensor* kq = ggml_mul_mat(ctx, kh, qh);  // [Lk, Lq, heads, N] f32
        kq = ggml_soft_max_ext(ctx, kq, nullptr, scale, 0.0f);
        ggml_tensor* vh = ggml_permute(ctx, split(v, Lk, false), 1, 2, 0, 3);  // [Lk, d, heads, N] (view)
        ggml_tensor* vt = type == GGML_TYPE_F32 ? ggml_cont(ctx, vh) : ggml_cast(ctx, vh, type);
        o = ggml_mul_mat(ctx, vt, kq);                 // [d, Lq, heads, N]
        o = ggml_permute(ctx, o, 0, 2, 1, 3);          // [d, heads, Lq, N] (view)
        dv = d;
    }
    if (dv != d) o = ggml_view_4d(ctx, o, d, heads, Lq, N, o->nb[1], o->nb[2], o->nb[3], 0);
    return ggml_reshape_3d(ctx, ggml_cont(ctx, o), D, Lq, N);
}

}  // namespace sdcpp::unet_ops
