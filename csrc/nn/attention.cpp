#include "attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "../kernels/cpu/fused_attention.h"
#include "../runtime/error.h"
#include "conv2d_strips.h"

namespace sdcpp::nn {

AttentionKernel resolve_attention(AttentionKernel requested, const Device& device, bool quantized_weights) {
    if (requested != AttentionKernel::Auto) return requested;
    if (!device.is_cpu()) return AttentionKernel::MulMat;
    return quantized_weights ? AttentionKernel::Int8 : AttentionKernel::Flash;
}

namespace {

// [D, L, N] -> [dp, heads, L, N], the head dim zero-padded to dp.
ggml_tensor* split_heads(ggml_context* ctx, ggml_tensor* x, int64_t d, int heads, int64_t dp) {
    ggml_tensor* t = ggml_reshape_4d(ctx, x, d, heads, x->ne[1], x->ne[2]);
    if (dp != d) t = ggml_pad(ctx, t, static_cast<int>(dp - d), 0, 0, 0);
    return t;
}

ggml_tensor* flash(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads, float scale) {
    const int64_t D = q->ne[0], Lq = q->ne[1], N = q->ne[2], d = D / heads;
    // ggml's tiled flash attention wants rows that are a whole number of SIMD blocks (16 f32):
    // zero-pad the head dim (SD1's 40 -> 48). Zero columns change neither q.k nor, after
    // slicing, the output.
    const int64_t dp = (d + 15) / 16 * 16;
    ggml_tensor* qh = ggml_permute(ctx, split_heads(ctx, q, d, heads, dp), 0, 2, 1, 3);  // [dp, Lq, heads, N] (view)
    ggml_tensor* kh = ggml_permute(ctx, split_heads(ctx, k, d, heads, dp), 0, 2, 1, 3);
    ggml_tensor* vh = ggml_permute(ctx, split_heads(ctx, v, d, heads, dp), 0, 2, 1, 3);
    ggml_tensor* o = ggml_flash_attn_ext(ctx, qh, kh, vh, nullptr, scale, 0.0f, 0.0f);  // [dp, heads, Lq, N]
    ggml_flash_attn_ext_set_prec(o, GGML_PREC_F32);
    if (dp == d) return ggml_reshape_3d(ctx, o, D, Lq, N);  // already contiguous
    o = ggml_view_4d(ctx, o, d, heads, Lq, N, o->nb[1], o->nb[2], o->nb[3], 0);
    return ggml_reshape_3d(ctx, ggml_cont(ctx, o), D, Lq, N);
}

ggml_tensor* mul_mat(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads, float scale,
                     const AttentionOptions& opt) {
    const int64_t D = q->ne[0], Lq = q->ne[1], N = q->ne[2], Lk = k->ne[1], d = D / heads;
    const ggml_type type = opt.type;
    // ggml's fast kernels (llamafile sgemm) want rows that are a whole number of SIMD blocks
    // (16 f32 / f16, 32 bf16): the head dim of q and k is zero-padded to one.
    const int64_t blk = type == GGML_TYPE_BF16 ? 32 : 16;
    const int64_t dp = (d + blk - 1) / blk * blk;
    const bool one_head = heads == 1 && dp == d;
    ggml_tensor *qh, *kh, *vt;
    if (one_head) {
        // One head (the VAE): q, k, v already are [d, L, 1, N]; no permutes, no copies.
        qh = type == GGML_TYPE_F32 ? q : ggml_cast(ctx, q, type);
        kh = type == GGML_TYPE_F32 ? k : ggml_cast(ctx, k, type);
        ggml_tensor* vtv = ggml_transpose(ctx, v);  // [Lk, d, N] (view)
        vt = type == GGML_TYPE_F32 ? ggml_cont(ctx, vtv) : ggml_cast(ctx, vtv, type);
        qh = ggml_reshape_4d(ctx, qh, d, Lq, 1, N);
        kh = ggml_reshape_4d(ctx, kh, d, Lk, 1, N);
        vt = ggml_reshape_4d(ctx, vt, Lk, d, 1, N);
    } else {
        // q (src1) must be contiguous for the fast path; k (src0) may have strided rows.
        qh = ggml_permute(ctx, split_heads(ctx, q, d, heads, dp), 0, 2, 1, 3);  // [dp, Lq, heads, N]
        kh = ggml_permute(ctx, split_heads(ctx, k, d, heads, dp), 0, 2, 1, 3);
        qh = type == GGML_TYPE_F32 ? ggml_cont(ctx, qh) : ggml_cast(ctx, qh, type);
        if (type != GGML_TYPE_F32) kh = ggml_cast(ctx, kh, type);
        // Other backends get k contiguous: ggml-vulkan otherwise first copies a strided src0
        // into a staging buffer as f16, rounding k.
        else if (!opt.custom_ops) kh = ggml_cont(ctx, kh);
        ggml_tensor* vh = ggml_permute(ctx, split_heads(ctx, v, d, heads, d), 1, 2, 0, 3);  // [Lk, d, heads, N] (view)
        vt = type == GGML_TYPE_F32 ? ggml_cont(ctx, vh) : ggml_cast(ctx, vh, type);
    }
    // Query chunks keep each [Lk, chunk, heads, N] score matrix within the budget (even chunks).
    const size_t row_bytes = size_t(Lk) * heads * N * sizeof(float);
    int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(Lq, int64_t(opt.max_score_bytes / row_bytes)));
    if (chunk < Lq) {
        const int64_t n = (Lq + chunk - 1) / chunk;
        chunk = (Lq + n - 1) / n;
    }
    std::vector<ggml_tensor*> parts;
    for (int64_t i0 = 0; i0 < Lq; i0 += chunk) {
        const int64_t n = std::min(Lq, i0 + chunk) - i0;
        ggml_tensor* qc = chunk == Lq ? qh
                                      : ggml_view_4d(ctx, qh, qh->ne[0], n, qh->ne[2], qh->ne[3], qh->nb[1], qh->nb[2], qh->nb[3],
                                                     size_t(i0) * qh->nb[1]);
        // A chunk is a view of some rows of every head (and image): its rows are packed but its
        // heads are not. ggml-vulkan (0.20.2) takes such a src1 for a packed one (it steps from
        // head to head by ne0*ne1 elements, ignoring nb[2]), so every head after the first read
        // another head's queries (SD1.5's real-size U-Net on lavapipe: 0.12 from diffusers).
        // Other backends get each chunk as a tensor of its own (a copy of 1/n of q).
        if (qc != qh && !opt.custom_ops) qc = ggml_cont(ctx, qc);
        ggml_tensor* kq = ggml_mul_mat(ctx, kh, qc);  // [Lk, n, heads, N] f32
        if (opt.causal) kq = ggml_diag_mask_inf(ctx, kq, static_cast<int>(i0));
        kq = ggml_soft_max_ext(ctx, kq, nullptr, scale, 0.0f);
        parts.push_back(ggml_mul_mat(ctx, vt, kq));  // [d, n, heads, N]
    }
    ggml_tensor* o = stack_rows(ctx, parts, opt.custom_ops);  // [d, Lq, heads, N]
    if (one_head) return ggml_reshape_3d(ctx, o, D, Lq, N);
    o = ggml_permute(ctx, o, 0, 2, 1, 3);  // [d, heads, Lq, N] (view)
    return ggml_reshape_3d(ctx, ggml_cont(ctx, o), D, Lq, N);
}

}  // namespace

ggml_tensor* attention(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads,
                       const AttentionOptions& opt) {
    const int64_t D = q->ne[0];
    SD_CHECK(heads >= 1 && D % heads == 0, "attention width must be divisible by the number of heads");
    const float scale = 1.0f / std::sqrt(static_cast<float>(D / heads));
    if ((opt.kernel == AttentionKernel::Flash || opt.kernel == AttentionKernel::Int8) && !opt.causal) {
        if (opt.custom_ops && opt.kernel == AttentionKernel::Int8 && k->ne[1] >= opt.int8_min_keys)
            return fused_attention::attention_int8(ctx, q, k, v, heads);
        if (opt.custom_ops) {  // the fused CPU kernels, where this CPU level has them
            if (opt.type == GGML_TYPE_BF16 && fused_attention::available_bf16())
                return fused_attention::attention_bf16(ctx, q, k, v, heads);
            if (opt.type != GGML_TYPE_BF16 && fused_attention::available_f32())
                return fused_attention::attention_f32(ctx, q, k, v, heads);
        }
        return flash(ctx, q, k, v, heads, scale);
    }
    return mul_mat(ctx, q, k, v, heads, scale, opt);
}

}  // namespace sdcpp::nn
