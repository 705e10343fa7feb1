#include "blocks.h"

#include "layers.h"

namespace sdcpp::nn {

ggml_tensor* resnet_block(ggml_context* ctx, ggml_tensor* x, const ResnetWeights& w, ggml_tensor* temb_act,
                          const GroupNormSpec& norm, const ConvOptions& conv, bool custom_ops, bool consume_x) {
    const ConvGeometry k3 = ConvGeometry::same(1, 1);
    ggml_tensor* shortcut = w.shortcut_w ? conv2d(ctx, x, w.shortcut_w, w.shortcut_b, ConvGeometry::same(1, 0), conv) : x;
    ggml_tensor* h = consume_x && w.shortcut_w
                         ? group_norm_consuming(ctx, x, w.norm1_w, w.norm1_b, norm.groups, norm.eps, true, custom_ops, shortcut)
                         : group_norm(ctx, x, w.norm1_w, w.norm1_b, norm.groups, norm.eps, true, custom_ops);
    {
        ConvOptions first = conv;  // norm1's output has no other reader: conv1 may write over it
        first.input_dead = consume_x;
        h = conv2d(ctx, h, w.conv1_w, w.conv1_b, k3, first);
    }
    if (temb_act) {
        ggml_tensor* t = linear(ctx, temb_act, w.temb_w, w.temb_b, custom_ops);  // [OC, N]
        h = ggml_add(ctx, h, ggml_reshape_4d(ctx, t, 1, 1, t->ne[0], t->ne[1]));
    }
    h = consume_x ? group_norm_consuming(ctx, h, w.norm2_w, w.norm2_b, norm.groups, norm.eps, true, custom_ops)
                  : group_norm(ctx, h, w.norm2_w, w.norm2_b, norm.groups, norm.eps, true, custom_ops);
    // The residual (the shortcut, or x) has no reader after conv2 when x is consumed.
    ConvOptions last = conv;
    last.residual_dead = consume_x;
    return conv2d(ctx, h, w.conv2_w, w.conv2_b, k3, last, shortcut);
}

ggml_tensor* attention_block(ggml_context* ctx, ggml_tensor* x, const AttentionBlockWeights& w, int heads,
                             const GroupNormSpec& norm, const AttentionOptions& attn, bool f32_weights) {
    const int64_t W = x->ne[0], H = x->ne[1];
    auto proj = [&](ggml_tensor* t, ggml_tensor* wt, ggml_tensor* b) {
        if (f32_weights) {
            wt = to_f32(ctx, wt);
            b = b ? to_f32(ctx, b) : nullptr;
        }
        return linear(ctx, t, wt, b, attn.custom_ops);
    };
    ggml_tensor* h = group_norm(ctx, x, w.norm_w, w.norm_b, norm.groups, norm.eps, false, attn.custom_ops);
    h = image_to_sequence(ctx, h, attn.custom_ops);  // [C, L, N]
    ggml_tensor* q = proj(h, w.q_w, w.q_b);
    ggml_tensor* k = proj(h, w.k_w, w.k_b);
    ggml_tensor* v = proj(h, w.v_w, w.v_b);
    ggml_tensor* o = proj(attention(ctx, q, k, v, heads, attn), w.out_w, w.out_b);  // [C, L, N]
    return ggml_add(ctx, sequence_to_image(ctx, o, W, H, attn.custom_ops), x);
}

}  // namespace sdcpp::nn
