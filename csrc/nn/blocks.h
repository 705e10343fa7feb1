// The blocks the U-Net and the VAE share, as diffusers' AutoencoderKL reuses the U-Net's
// ResnetBlock2D and Attention: written once here over nn's layers, the weights passed in by
// the model (which checks their presence and shapes).
#pragma once
#include <string>

#include "attention.h"
#include "conv2d.h"
#include "ggml.h"

namespace sdcpp::nn {

struct GroupNormSpec {
    int groups = 32;
    float eps = 1e-6f;
};

// diffusers ResnetBlock2D ("default" time-embedding norm, output scale 1, no dropout).
struct ResnetWeights {
    ggml_tensor *norm1_w = nullptr, *norm1_b = nullptr, *conv1_w = nullptr, *conv1_b = nullptr;
    ggml_tensor *temb_w = nullptr, *temb_b = nullptr;  // time_emb_proj (the U-Net; null in the VAE)
    ggml_tensor *norm2_w = nullptr, *norm2_b = nullptr, *conv2_w = nullptr, *conv2_b = nullptr;
    ggml_tensor *shortcut_w = nullptr, *shortcut_b = nullptr;  // 1x1 conv_shortcut (channels change)

    // The block named `p` as diffusers names its weights ("p.norm1.weight", ...), each taken
    // through `get` (name -> tensor): time_emb_proj when `temb`, conv_shortcut when `shortcut`.
    template <class Get>
    static ResnetWeights named(const std::string& p, Get&& get, bool temb, bool shortcut) {
        ResnetWeights r;
        r.norm1_w = get(p + ".norm1.weight");
        r.norm1_b = get(p + ".norm1.bias");
        r.conv1_w = get(p + ".conv1.weight");
        r.conv1_b = get(p + ".conv1.bias");
        if (temb) {
            r.temb_w = get(p + ".time_emb_proj.weight");
            r.temb_b = get(p + ".time_emb_proj.bias");
        }
        r.norm2_w = get(p + ".norm2.weight");
        r.norm2_b = get(p + ".norm2.bias");
        r.conv2_w = get(p + ".conv2.weight");
        r.conv2_b = get(p + ".conv2.bias");
        if (shortcut) {
            r.shortcut_w = get(p + ".conv_shortcut.weight");
            r.shortcut_b = get(p + ".conv_shortcut.bias");
        }
        return r;
    }
};

// shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + time_emb_proj(temb_act)))) for
// x [W, H, C, N]; temb_act = SiLU(time embedding) [E, N] or null. 3x3 convolutions pad 1.
// The shortcut is computed first (x is then free after norm1, its last reader) and enters
// conv2 as its residual (added strip by strip by the bounded convolutions).
// `consume_x`: nothing outside the block reads x, so (CPU, custom ops) every step may write
// over its consumed input: norm1 over x once the shortcut has read it (when there is one;
// without a shortcut x is the residual and must stay), conv1 over norm1's output, norm2 over
// conv1's, conv2 over its residual (ConvOptions::input_dead / residual_dead: the Winograd
// strips). Same values; the VAE decoder's 1024x1024 stage holds two activations, not four.
ggml_tensor* resnet_block(ggml_context* ctx, ggml_tensor* x, const ResnetWeights& w, ggml_tensor* temb_act,
                          const GroupNormSpec& norm, const ConvOptions& conv, bool custom_ops, bool consume_x = false);

// diffusers Attention over the pixels of an image with its GroupNorm and residual (the VAE's
// mid-block attention): x + to_out(attention(to_q(h), to_k(h), to_v(h))), h = norm(x) as a
// sequence [C, W*H, N].
struct AttentionBlockWeights {
    ggml_tensor *norm_w = nullptr, *norm_b = nullptr;
    ggml_tensor *q_w = nullptr, *q_b = nullptr, *k_w = nullptr, *k_b = nullptr, *v_w = nullptr, *v_b = nullptr;
    ggml_tensor *out_w = nullptr, *out_b = nullptr;  // [C, C] or [C, C, 1, 1]
};

// `f32_weights`: projection weights widened to f32 (activations never rounded).
ggml_tensor* attention_block(ggml_context* ctx, ggml_tensor* x, const AttentionBlockWeights& w, int heads,
                             const GroupNormSpec& norm, const AttentionOptions& attn, bool f32_weights);

}  // namespace sdcpp::nn
