#include "unet.h"

#include <cstdlib>

#include <functional>

#include <cmath>
#include <chrono>
#include <ctime>
#include <cstring>
#include <utility>

#include "../runtime/error.h"
#include "../kernels/cpu/cpu_level.h"
#include "../kernels/cpu/fused_attention.h"
#include "../nn/blocks.h"
#include "../nn/layers.h"
#include "../nn/winograd_q8.h"
#include "unet_weights.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"

namespace sdcpp {

// ------------------------------------------------------------------------------------------
// config

int UNetConfig::downsamplers() const {
    int n = 0;
    for (const auto& b : down) n += b.resample ? 1 : 0;
    return n;
}

void UNetConfig::validate() const {
    auto pos = [](int v, const char* what) {
        SD_CHECK(v > 0, std::string("U-Net config: ") + what + " must be positive, got " + std::to_string(v));
    };
    pos(in_channels, "in_channels");
    pos(out_channels, "out_channels");
    pos(norm_groups, "norm_groups");
    pos(time_proj_dim, "time_proj_dim");
    pos(time_embed_dim, "time_embed_dim");
    pos(cross_attention_dim, "cross_attention_dim");
    SD_CHECK(norm_eps > 0.0f && std::isfinite(norm_eps), "U-Net config: norm_eps must be positive");
    SD_CHECK(std::isfinite(freq_shift) && freq_shift < time_proj_dim / 2,
             "U-Net config: freq_shift must be smaller than time_proj_dim / 2");
    SD_CHECK(!block_out_channels.empty(), "U-Net config: block_out_channels is empty");
    SD_CHECK(down.size() == block_out_channels.size(),
             "U-Net config: 'down' must have one entry per block_out_channels entry");
    SD_CHECK(up.size() == block_out_channels.size(),
             "U-Net config: 'up' must have one entry per block_out_channels entry");
    for (int c : block_out_channels) {
        pos(c, "block_out_channels[i]");
        SD_CHECK(c % norm_groups == 0, "U-Net config: block_out_channels " + std::to_string(c) +
                                           " is not divisible by norm_groups " + std::to_string(norm_groups));
    }
    SD_CHECK(downsamplers() <= 6, "U-Net config: at most 6 downsamplers");
    auto check_block = [&](const UNetBlockConfig& b, const std::string& where, int channels) {
        SD_CHECK(b.resnets >= 1 && b.resnets <= 64, "U-Net config: " + where + ".resnets must be 1..64");
        SD_CHECK(static_cast<int>(b.depths.size()) == b.resnets,
                 "U-Net config: " + where + ".depths must have one entry per resnet");
        bool attn = false;
        for (int d : b.depths) {
            SD_CHECK(d >= 0 && d <= 256, "U-Net config: " + where + ".depths entries must be 0..256");
            attn = attn || d > 0;
        }
        if (attn) {
            SD_CHECK(b.heads >= 1 && channels % b.heads == 0,
                     "U-Net config: " + where + ".heads (" + std::to_string(b.heads) + ") must divide the channels (" +
                         std::to_string(channels) + ")");
        }
    };
    const size_t n = block_out_channels.size();
    size_t skips = 1;
    for (size_t i = 0; i < n; ++i) {
        check_block(down[i], "down[" + std::to_string(i) + "]", block_out_channels[i]);
        skips += down[i].resnets + (down[i].resample ? 1 : 0);
    }
    size_t pops = 0;
    int ups = 0;
    for (size_t i = 0; i < n; ++i) {
        check_block(up[i], "up[" + std::to_string(i) + "]", block_out_channels[n - 1 - i]);
        pops += up[i].resnets;
        ups += up[i].resample ? 1 : 0;
    }
    SD_CHECK(skips == pops, "U-Net config: the up blocks take " + std::to_string(pops) +
                                " skip connections but the down path makes " + std::to_string(skips));
    SD_CHECK(ups == downsamplers(), "U-Net config: the number of upsamplers (" + std::to_string(ups) +
                                        ") differs from the number of downsamplers (" + std::to_string(downsamplers()) + ")");
    SD_CHECK(mid_type == "cross_attn" || mid_type == "resnet" || mid_type == "none",
             "U-Net config: mid.type must be 'cross_attn', 'resnet' or 'none', got '" + mid_type + "'");
    if (mid_type == "cross_attn") {
        SD_CHECK(mid_depth >= 1 && mid_depth <= 256, "U-Net config: mid.depth must be 1..256");
        SD_CHECK(mid_heads >= 1 && block_out_channels.back() % mid_heads == 0,
                 "U-Net config: mid.heads must divide the last block's channels");
    }
    if (add_time_dim != 0) {
        pos(add_time_dim, "addition_embed.time_embed_dim");
        SD_CHECK(add_in_dim > 6 * add_time_dim,
                 "U-Net config: addition_embed.in_dim must exceed 6 * addition_embed.time_embed_dim");
    }
}

void timestep_sinusoid(const float* t, int64_t n, int dim, bool flip, float shift, float* out) {
    // diffusers: exponent = -ln(10000) * arange(half) / (half - shift); emb = t * exp(exponent);
    // [sin, cos] (or [cos, sin] when flipped); zero pad for odd dims. Float32 throughout.
    const int half = dim / 2;
    std::vector<float> freq(half);
    const float neg_log = -static_cast<float>(std::log(10000.0));
    for (int j = 0; j < half; ++j) {
        float e = neg_log * static_cast<float>(j);
        e = e / (static_cast<float>(half) - shift);
        freq[j] = static_cast<float>(std::exp(static_cast<double>(e)));  // correctly rounded, as torch's exp
    }
    for (int64_t i = 0; i < n; ++i) {
        float* row = out + i * dim;
        for (int j = 0; j < half; ++j) {
            const float a = t[i] * freq[j];
            const float s = static_cast<float>(std::sin(static_cast<double>(a)));
            const float c = static_cast<float>(std::cos(static_cast<double>(a)));
            row[j] = flip ? c : s;
            row[half + j] = flip ? s : c;
        }
        if (dim % 2) row[dim - 1] = 0.0f;
    }
}

// ------------------------------------------------------------------------------------------
// The graph of the topology. Only builds: the weights were checked against the config's list
// (model/unet_weights.h) when the model was made, and are taken from it by name.

struct UNet::Builder {
    // The layer library's choices for UNetOptions on a device.
    struct Lowering {
        nn::AttentionKernel attn = nn::AttentionKernel::MulMat;
        bool custom_ops = false;  // nn::custom_ops_allowed (fused norms / GEGLU / attention)
        nn::ConvOptions conv_opt;  // how nn::conv2d lowers the convolutions
        bool bf16 = false;         // linear layers' products in bf16 (UNetOptions::compute)
        // attention in bf16 too: compute bf16 where the fused kernel is the AMX-BF16 one (with
        // the AVX512-BF16 one it would be slower than the f32 kernel; elsewhere compute bf16
        // changes nothing)
        bool bf16_attention = false;
        size_t max_score_bytes = SIZE_MAX;  // MulMat attention: score matrix per query chunk
    };
    // The one place that turns UNetOptions into a Lowering.
    static Lowering lowering(const UNetOptions& opt, const Device& device, bool quantized);

    const CheckedWeights& w;
    const UNetConfig& cfg;
    ggml_context* ctx;
    Lowering low;
    // Called with each module's output and name once the module is built (stream_weights puts
    // a node there that gives the module's weight pages back); none: the output as it is.
    std::function<ggml_tensor*(ggml_tensor*, const std::string&)> after_module;

    ggml_tensor* done(ggml_tensor* h, const std::string& module) const { return after_module ? after_module(h, module) : h; }

    // Channels of an activation [W, H, C, N].
    static int64_t channels(const ggml_tensor* x) { return x->ne[2]; }

    // --- layers ----------------------------------------------------------------------------
    // Linear, and proj_in / proj_out (a Linear [C, C] or a 1x1 conv [C, C, 1, 1], both used as a linear).
    ggml_tensor* linear(ggml_tensor* x, const std::string& p, bool bias) const {
        return nn::linear(ctx, x, w(p + ".weight"), bias ? w(p + ".bias") : nullptr, low.custom_ops, low.bf16);
    }
    ggml_tensor* conv(ggml_tensor* x, const std::string& p, int stride, int pad) const {
        return nn::conv2d(ctx, x, w(p + ".weight"), w(p + ".bias"), nn::ConvGeometry::same(stride, pad), low.conv_opt);
    }
    ggml_tensor* group_norm(ggml_tensor* x, const std::string& p, float eps, bool then_silu = false) const {
        return nn::group_norm(ctx, x, w(p + ".weight"), w(p + ".bias"), cfg.norm_groups, eps, then_silu, low.custom_ops);
    }
    ggml_tensor* layer_norm(ggml_tensor* x, const std::string& p) const {
        return nn::layer_norm(ctx, x, w(p + ".weight"), w(p + ".bias"), 1e-5f, low.custom_ops);
    }
    // Products in `at` (the weights' f32 / f16 / bf16) with mul_mat or the fused bf16 kernel;
    // ggml's flash attention runs in f32.
    ggml_tensor* attention(ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads, ggml_type at) const {
        nn::AttentionOptions o;
        o.kernel = low.attn;
        o.custom_ops = low.custom_ops;
        o.type = at;
        o.max_score_bytes = low.max_score_bytes;
        return nn::attention(ctx, q, k, v, heads, o);
    }

    // --- blocks ----------------------------------------------------------------------------
    // ResnetBlock2D (nn/blocks.h) to `out` channels; temb_act = SiLU(time embedding) [E, N].
    ggml_tensor* resnet(ggml_tensor* x, const std::string& p, int64_t out, ggml_tensor* temb_act) const {
        const nn::ResnetWeights r = nn::ResnetWeights::named(p, w, /*temb=*/true, /*shortcut=*/channels(x) != out);
        return nn::resnet_block(ctx, x, r, temb_act, {cfg.norm_groups, cfg.norm_eps}, low.conv_opt, low.custom_ops);
    }

    // BasicTransformerBlock on a sequence x [C, T, N]; context [D, L, N].
    ggml_tensor* transformer_block(ggml_tensor* x, const std::string& p, int heads, ggml_tensor* context) const {
        // self-attention
        ggml_tensor* n = layer_norm(x, p + ".norm1");
        ggml_tensor* q = linear(n, p + ".attn1.to_q", false);
        ggml_tensor* k = linear(n, p + ".attn1.to_k", false);
        ggml_tensor* v = linear(n, p + ".attn1.to_v", false);
        // attention products in the precision of the weights (f32, f16 or bf16), or in bf16
        // with compute bf16 where that is the fused AMX-BF16 kernel (Lowering::bf16_attention)
        const ggml_type wt = w(p + ".attn1.to_q.weight")->type;
        const ggml_type at = low.bf16_attention                              ? GGML_TYPE_BF16
                             : wt == GGML_TYPE_F16 || wt == GGML_TYPE_BF16 ? wt
                                                                           : GGML_TYPE_F32;
        ggml_tensor* a = attention(q, k, v, heads, at);
        x = ggml_add(ctx, x, linear(a, p + ".attn1.to_out.0", true));
        // cross-attention
        n = layer_norm(x, p + ".norm2");
        q = linear(n, p + ".attn2.to_q", false);
        k = linear(context, p + ".attn2.to_k", false);
        v = linear(context, p + ".attn2.to_v", false);
        a = attention(q, k, v, heads, at);
        x = ggml_add(ctx, x, linear(a, p + ".attn2.to_out.0", true));
        // GEGLU feed-forward: proj -> [8C] = (hidden | gate); hidden * gelu(gate) (exact erf)
        n = layer_norm(x, p + ".norm3");
        ggml_tensor* f = nn::geglu(ctx, linear(n, p + ".ff.net.0.proj", true), low.custom_ops);
        return ggml_add(ctx, x, linear(f, p + ".ff.net.2", true));
    }

    // Transformer2DModel on an image x [W, H, C, N].
    ggml_tensor* transformer(ggml_tensor* x, const std::string& p, int depth, int heads, ggml_tensor* context) const {
        ggml_tensor* h = nn::image_to_sequence(ctx, group_norm(x, p + ".norm", 1e-6f), low.custom_ops);  // [C, WH, N]
        h = linear(h, p + ".proj_in", true);
        for (int d = 0; d < depth; ++d) h = transformer_block(h, p + ".transformer_blocks." + std::to_string(d), heads, context);
        h = linear(h, p + ".proj_out", true);
        return ggml_add(ctx, nn::sequence_to_image(ctx, h, x->ne[0], x->ne[1], low.custom_ops), x);
    }

    // SiLU(time embedding [+ SDXL add embedding]) of the weights under `pfx` ("unet." or a
    // ControlNet's "controlnet.", which copies these layers).
    ggml_tensor* time_embedding(const std::string& pfx, ggml_tensor* t_sin, ggml_tensor* add_in) const {
        ggml_tensor* temb = linear(t_sin, pfx + "time_embedding.linear_1", true);
        temb = linear(ggml_silu(ctx, temb), pfx + "time_embedding.linear_2", true);
        if (cfg.add_time_dim > 0) {
            ggml_tensor* a = linear(add_in, pfx + "add_embedding.linear_1", true);
            a = linear(ggml_silu(ctx, a), pfx + "add_embedding.linear_2", true);
            temb = ggml_add(ctx, temb, a);
        }
        return ggml_silu(ctx, temb);
    }

    // conv_in (+ conv_in_add, a ControlNet's conditioning embedding), the down blocks and the mid
    // block; `skips` receives diffusers' down_block_res_samples in order. Returns the mid output.
    ggml_tensor* encode(const std::string& pfx, ggml_tensor* x_in, ggml_tensor* temb_act, ggml_tensor* context,
                        ggml_tensor* conv_in_add, std::vector<ggml_tensor*>& skips) const {
        const auto& ch = cfg.block_out_channels;
        ggml_tensor* h = conv(x_in, pfx + "conv_in", 1, 1);
        if (conv_in_add) h = ggml_add(ctx, h, conv_in_add);
        skips.push_back(h);
        for (size_t i = 0; i < cfg.down.size(); ++i) {
            const auto& b = cfg.down[i];
            const std::string p = pfx + "down_blocks." + std::to_string(i);
            for (int j = 0; j < b.resnets; ++j) {
                const std::string r = p + ".resnets." + std::to_string(j), a = p + ".attentions." + std::to_string(j);
                h = done(resnet(h, r, ch[i], temb_act), r);
                if (b.depths[j] > 0) h = done(transformer(h, a, b.depths[j], b.heads, context), a);
                skips.push_back(h);
            }
            if (b.resample) {
                h = done(conv(h, p + ".downsamplers.0.conv", 2, 1), p + ".downsamplers.0");
                skips.push_back(h);
            }
        }
        if (cfg.mid_type != "none") {
            h = done(resnet(h, pfx + "mid_block.resnets.0", channels(h), temb_act), pfx + "mid_block.resnets.0");
            if (cfg.mid_type == "cross_attn") {
                h = done(transformer(h, pfx + "mid_block.attentions.0", cfg.mid_depth, cfg.mid_heads, context),
                         pfx + "mid_block.attentions.0");
                h = done(resnet(h, pfx + "mid_block.resnets.1", channels(h), temb_act), pfx + "mid_block.resnets.1");
            }
        }
        return h;
    }

    // The whole network. `residuals` (ControlNet): when given, one new f32 input per skip and one
    // for the mid output is created, added there (diffusers' down_block / mid_block_additional_residuals)
    // and appended to it.
    ggml_tensor* forward(ggml_tensor* x_in, ggml_tensor* t_sin, ggml_tensor* context, ggml_tensor* add_in,
                         std::vector<ggml_tensor*>* residuals = nullptr) const {
        ggml_tensor* temb_act = time_embedding("unet.", t_sin, add_in);
        const auto& ch = cfg.block_out_channels;
        std::vector<ggml_tensor*> skips;
        ggml_tensor* h = encode("unet.", x_in, temb_act, context, nullptr, skips);
        if (residuals) {
            for (ggml_tensor*& sk : skips) {
                residuals->push_back(ggml_new_tensor(ctx, GGML_TYPE_F32, 4, sk->ne));
                sk = ggml_add(ctx, sk, residuals->back());
            }
            residuals->push_back(ggml_new_tensor(ctx, GGML_TYPE_F32, 4, h->ne));
            h = ggml_add(ctx, h, residuals->back());
        }
        const size_t n = ch.size();
        for (size_t i = 0; i < cfg.up.size(); ++i) {
            const auto& b = cfg.up[i];
            const int64_t out = ch[n - 1 - i];
            const std::string p = "unet.up_blocks." + std::to_string(i);
            for (int j = 0; j < b.resnets; ++j) {
                ggml_tensor* skip = skips.back();
                skips.pop_back();
                const std::string r = p + ".resnets." + std::to_string(j), a = p + ".attentions." + std::to_string(j);
                h = done(resnet(ggml_concat(ctx, h, skip, 2), r, out, temb_act), r);
                if (b.depths[j] > 0) h = done(transformer(h, a, b.depths[j], b.heads, context), a);
            }
            if (b.resample) {
                // Upsample to the size of the skip the next block concatenates: exactly 2x for
                // latents divisible by 2^downsamplers, otherwise the odd size a stride-2 conv
                // rounded up (diffusers' forward_upsample_size), with nearest sampling as torch.
                ggml_tensor* next = skips.empty() ? nullptr : skips.back();
                const int64_t tw = next ? next->ne[0] : 2 * h->ne[0];
                const int64_t th = next ? next->ne[1] : 2 * h->ne[1];
                if (tw == 2 * h->ne[0] && th == 2 * h->ne[1])
                    h = ggml_upscale(ctx, h, 2, GGML_SCALE_MODE_NEAREST);
                else
                    h = ggml_interpolate(ctx, h, tw, th, h->ne[2], h->ne[3], GGML_SCALE_MODE_NEAREST);
                h = done(conv(h, p + ".upsamplers.0.conv", 1, 1), p + ".upsamplers.0");
            }
        }
        h = group_norm(h, "unet.conv_norm_out", cfg.norm_eps, true);
        return conv(h, "unet.conv_out", 1, 1);
    }
};

// ------------------------------------------------------------------------------------------
// UNet

// stream_weights: the mapped byte runs of one module's weights, for the node that releases them.
struct UNet::StreamSegment {
    const WeightStore* store = nullptr;
    std::vector<std::pair<const char*, const char*>> runs;  // merged [lo, hi) byte runs
};

UNet::UNet(std::shared_ptr<const WeightStore> store, UNetConfig cfg) : store_(std::move(store)), cfg_(std::move(cfg)) {
    SD_CHECK(store_ != nullptr, "U-Net: no weight store");
    SD_CHECK(store_->allocated(), "U-Net: the weight store is not allocated");
    cfg_.validate();
    weights_ = std::make_unique<CheckedWeights>(*store_, unet_weights(cfg_));  // throws on the first bad weight
    unused_ = weights_->unused("unet.", {"unet.time_embedding.cond_proj."});   // LCM's guidance embedding is not unused
    runner_ = std::make_unique<GraphRunner>(store_->device(), 32768);
    quantized_ = quantized_attention(*store_, "unet.");
}

UNet::~UNet() = default;

bool quantized_attention(const WeightStore& store, const std::string& prefix) {
    static const std::string suffix = ".attn1.to_q.weight";
    for (const std::string& n : store.names()) {
        if (n.size() < prefix.size() + suffix.size() || n.compare(0, prefix.size(), prefix) != 0 ||
            n.compare(n.size() - suffix.size(), suffix.size(), suffix) != 0)
            continue;
        if (ggml_is_quantized(store.type(n))) return true;
    }
    return false;
}

namespace {
ConvImpl resolve_conv(const UNetOptions& opt, const Device& device) {
    if (opt.conv != ConvImpl::Auto) return opt.conv;
    return nn::custom_ops_allowed(device, !opt.fused) ? ConvImpl::Winograd : ConvImpl::Im2col;
}

// Auto: F(4x4, 3x3) from this many N*H*W output pixels (measured, bench/README.md "Winograd
// F(4x4, 3x3) in the U-Net"): below it the per-pass kernel transform (36 values per 3x3 kernel)
// and the edge tiles outweigh the 36-vs-64 products per 4x4 outputs. SDCPP_WINOGRAD_F43=0
// keeps F(2x2, 3x3) everywhere (A/B runs); another number sets the threshold (measurements).
constexpr int64_t kF43MinPixels = 2 * 32 * 32;

// Auto with SDCPP_WINOGRAD_Q8=1 (off by default, winograd::q8_min_pixels): quantized 3x3 kernels by
// Winograd F(2x2, 3x3) with int8 products (nn/winograd_q8.h) from this many N*H*W output pixels
// (the 64x64 latent level of a cond + uncond pair), the direct int8 convolution below.
// Fidelity sets it: int8 Winograd on every level put BK-SDM-tiny's real-width final latents at
// 3.33e-2 from diffusers fp32 (bound 3e-2; direct 2.40e-2), the 64x64 level alone at 2.92e-2
// (bench/README.md "Winograd with int8 products").
constexpr int64_t kQ8MinPixels = 8192;

int64_t f43_min_pixels() {
    static const int64_t v = [] {
        const char* env = std::getenv("SDCPP_WINOGRAD_F43");
        if (!env || !*env) return kF43MinPixels;
        const long long n = std::atoll(env);
        return n <= 0 ? INT64_MAX : int64_t(n);
    }();
    return v;
}
}  // namespace

UNet::Builder::Lowering UNet::Builder::lowering(const UNetOptions& opt, const Device& device, bool quantized) {
    Lowering l;
    l.attn = nn::resolve_attention(opt.attention, device, quantized);
    l.custom_ops = nn::custom_ops_allowed(device, !opt.fused);
    const ConvImpl conv = resolve_conv(opt, device);
    l.conv_opt.algo = conv == ConvImpl::Im2col ? nn::ConvAlgo::Im2col : nn::ConvAlgo::Winograd;
    l.conv_opt.custom_ops = nn::custom_ops_allowed(device);
    if (opt.conv != ConvImpl::Auto) l.conv_opt.winograd_min_pixels = 0;  // forced: every eligible conv
    l.conv_opt.winograd_q8_min_pixels = opt.conv == ConvImpl::Auto ? winograd::q8_min_pixels(kQ8MinPixels) : 0;
    if (opt.conv == ConvImpl::WinogradF43) l.conv_opt.winograd_f43_min_pixels = 0;
    else if (opt.conv == ConvImpl::Auto) l.conv_opt.winograd_f43_min_pixels = f43_min_pixels();
    l.bf16 = opt.compute == Compute::BF16 && l.custom_ops;
    l.conv_opt.bf16_gemm = l.bf16;
    l.bf16_attention = l.bf16 && l.attn == nn::AttentionKernel::Flash && fused_attention::available_bf16_amx();
    // Whole score matrices on the CPU; on a device, query chunks of at most the largest tensor
    // it takes (SD1's 4096-token self-attention has 512 MiB of scores per image, past
    // lavapipe's 128 MiB).
    l.max_score_bytes = std::min(opt.max_attention_bytes, device.max_tensor_bytes());
    // and convolutions whose im2col is past it in row strips (SD1.5's 960-channel 3x3 at 64x64:
    // 135 MiB)
    l.conv_opt.max_im2col_bytes = device.max_tensor_bytes();
    return l;
}

nn::AttentionKernel UNet::resolved_attention() const {
    return nn::resolve_attention(opt_.attention, *store_->device(), quantized_);
}

ConvImpl UNet::resolved_conv() const { return resolve_conv(opt_, *store_->device()); }

bool UNet::streams() const {
    return opt_.stream_weights && store_->device()->is_cpu() && store_->mapped_nbytes() + store_->spilled_nbytes() > 0;
}

void UNet::set_options(const UNetOptions& opt) {
    std::lock_guard<std::mutex> lock(mu_);
    opt_ = opt;
}

std::string UNet::key(int64_t B, int64_t H, int64_t W, int64_t L) const {
    return std::to_string(B) + "x" + std::to_string(H) + "x" + std::to_string(W) + "x" + std::to_string(L) + "/a" +
           std::to_string(static_cast<int>(resolved_attention())) + "/c" + std::to_string(static_cast<int>(resolved_conv())) +
           (opt_.fused ? "/f" : "") + (streams() ? "/s" : "") + (opt_.compute == Compute::BF16 ? "/bf16" : "") + "/q" + std::to_string(opt_.max_attention_bytes) + "/" +
           kernels::cpu::level_name(kernels::cpu::active_level());
}

void UNet::check_shapes(int64_t B, int64_t H, int64_t W, int64_t L, bool has_text, bool has_ids) const {
    SD_CHECK(B >= 1 && B <= 4096, "U-Net: batch size must be 1..4096, got " + std::to_string(B));
    // Any latent size works (odd sizes are rounded up by the stride-2 convs and matched again
    // on the way up), as in diffusers; spatial_multiple() is only the size that needs no resizing.
    SD_CHECK(H >= 1 && W >= 1 && H <= 65536 && W <= 65536, "U-Net: latent height/width out of range");
    SD_CHECK(L >= 1 && L <= 65536, "U-Net: context length must be 1..65536, got " + std::to_string(L));
    if (cfg_.add_time_dim > 0) {
        SD_CHECK(has_text, "U-Net: this model (text_time addition embedding) needs text_embeds [B, " +
                               std::to_string(cfg_.pooled_dim()) + "]");
        SD_CHECK(has_ids, "U-Net: this model (text_time addition embedding) needs time_ids [B, 6]");
    } else {
        SD_CHECK(!has_text && !has_ids, "U-Net: text_embeds / time_ids given but the model has no addition embedding");
    }
}

const UNet::StreamSegment* UNet::segment(const std::string& module) const {
    auto it = segments_.find(module);
    if (it != segments_.end()) return it->second.get();
    auto seg = std::make_unique<StreamSegment>();
    seg->store = store_.get();
    const std::string pfx = module + ".";
    std::vector<std::pair<const char*, const char*>> r;
    for (const std::string& n : store_->names()) {
        if (n.compare(0, pfx.size(), pfx) != 0 || !store_->is_paged(n)) continue;
        const ggml_tensor* t = store_->get(n);
        const char* p = static_cast<const char*>(t->data);
        r.emplace_back(p, p + ggml_nbytes(t));
    }
    std::sort(r.begin(), r.end());
    for (const auto& x : r) {  // a checkpoint keeps a module's tensors together: few runs
        if (!seg->runs.empty() && x.first <= seg->runs.back().second + 4096)
            seg->runs.back().second = std::max(seg->runs.back().second, x.second);
        else
            seg->runs.push_back(x);
    }
    return segments_.emplace(module, std::move(seg)).first->second.get();
}

namespace {
// The release node: one thread gives the module's unwritten mapped pages back; the output is
// the input itself (an in-place view), so the next module depends on it and runs after it.
void release_segment(ggml_tensor* dst, const ggml_tensor* a, int ith, int nth, void* userdata) {
    (void)dst, (void)a, (void)nth;
    if (ith != 0) return;
    const auto* seg = static_cast<const UNet::StreamSegment*>(userdata);
    for (const auto& r : seg->runs) seg->store->release_mapped_range(r.first, r.second);
}
}  // namespace

void UNet::build(ggml_context* ctx, BuiltGraph& g, int64_t B, int64_t H, int64_t W, int64_t L, bool residuals) const {
    Builder w{*weights_, cfg_, ctx, Builder::lowering(opt_, *store_->device(), quantized_), {}};
    if (streams()) {
        w.after_module = [this, ctx](ggml_tensor* h, const std::string& module) {
            const StreamSegment* seg = segment(module);
            if (seg->runs.empty()) return h;
            return ggml_map_custom1_inplace(ctx, h, release_segment, 1, const_cast<StreamSegment*>(seg));
        };
    }
    ggml_tensor* x = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, W, H, cfg_.in_channels, B);
    ggml_tensor* t = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, cfg_.time_proj_dim, B);
    ggml_tensor* c = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, cfg_.cross_attention_dim, L, B);
    g.inputs["latent"] = x;
    g.inputs["t_sin"] = t;
    g.inputs["context"] = c;
    ggml_tensor* a = nullptr;
    if (cfg_.add_time_dim > 0) {
        a = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, cfg_.add_in_dim, B);
        g.inputs["add_in"] = a;
    }
    std::vector<ggml_tensor*> res;
    g.outputs.push_back(w.forward(x, t, c, a, residuals ? &res : nullptr));
    for (size_t i = 0; i < res.size(); ++i) g.inputs["res" + std::to_string(i)] = res[i];
}

void UNet::forward(int64_t B, int64_t H, int64_t W, int64_t L, const float* latent, const float* timesteps,
                   const float* context, const float* text_embeds, const float* time_ids, float* out,
                   const float* const* residuals) {
    check_shapes(B, H, W, L, text_embeds != nullptr, time_ids != nullptr);
    std::vector<float> t_sin(static_cast<size_t>(B) * cfg_.time_proj_dim);
    timestep_sinusoid(timesteps, B, cfg_.time_proj_dim, cfg_.flip_sin_to_cos, cfg_.freq_shift, t_sin.data());
    std::vector<float> add_in;
    if (cfg_.add_time_dim > 0) {
        // [pooled text | sinusoid(time_ids[0]) | ... | sinusoid(time_ids[5])] per row
        const int P = cfg_.pooled_dim(), T = cfg_.add_time_dim;
        add_in.resize(static_cast<size_t>(B) * cfg_.add_in_dim);
        std::vector<float> ids_sin(static_cast<size_t>(6) * T);
        for (int64_t i = 0; i < B; ++i) {
            float* row = add_in.data() + i * cfg_.add_in_dim;
            std::memcpy(row, text_embeds + i * P, sizeof(float) * P);
            timestep_sinusoid(time_ids + i * 6, 6, T, cfg_.flip_sin_to_cos, cfg_.freq_shift, ids_sin.data());
            std::memcpy(row + P, ids_sin.data(), sizeof(float) * 6 * T);
        }
    }
    std::lock_guard<std::mutex> lock(mu_);
    const bool res = residuals != nullptr;
    BuiltGraph& g = runner_->get(key(B, H, W, L) + (res ? "/res" : ""),
                                 [&](ggml_context* ctx, BuiltGraph& gb) { build(ctx, gb, B, H, W, L, res); });
    std::map<std::string, const void*> in{{"latent", latent}, {"t_sin", t_sin.data()}, {"context", context}};
    if (!add_in.empty()) in["add_in"] = add_in.data();
    if (res)
        for (size_t i = 0; i < skip_count() + 1; ++i) in["res" + std::to_string(i)] = residuals[i];
    runner_->run(g, in);
    runner_->read_output(g, 0, out);
}

size_t UNet::skip_count() const {
    size_t n = 1;
    for (const auto& b : cfg_.down) n += b.resnets + (b.resample ? 1 : 0);
    return n;
}

size_t UNet::measure(int64_t B, int64_t H, int64_t W, int64_t L) {
    check_shapes(B, H, W, L, cfg_.add_time_dim > 0, cfg_.add_time_dim > 0);
    std::lock_guard<std::mutex> lock(mu_);
    BuiltGraph& g = runner_->get(key(B, H, W, L), [&](ggml_context* ctx, BuiltGraph& gb) { build(ctx, gb, B, H, W, L); });
    return runner_->measure(g);
}

// ------------------------------------------------------------------------------------------
// UNetBlocks: the builder's blocks for networks that copy them (model/controlnet.*).

UNetBlocks::UNetBlocks(const CheckedWeights& w, const UNetConfig& cfg, ggml_context* ctx, const UNetOptions& opt,
                       bool quantized) {
    SD_CHECK(ctx != nullptr, "UNetBlocks: no ggml context");
    b_ = std::make_unique<UNet::Builder>(
        UNet::Builder{w, cfg, ctx, UNet::Builder::lowering(opt, *w.store().device(), quantized), {}});
}

UNetBlocks::~UNetBlocks() = default;

ggml_tensor* UNetBlocks::time_embedding(const std::string& pfx, ggml_tensor* t_sin, ggml_tensor* add_in) const {
    return b_->time_embedding(pfx, t_sin, add_in);
}

ggml_tensor* UNetBlocks::encode(const std::string& pfx, ggml_tensor* x, ggml_tensor* temb_act, ggml_tensor* context,
                                ggml_tensor* conv_in_add, std::vector<ggml_tensor*>& skips) const {
    return b_->encode(pfx, x, temb_act, context, conv_in_add, skips);
}

std::string UNetBlocks::kernel_key(const UNetOptions& opt, const Device& device, bool quantized) {
    UNet::Builder::Lowering l = UNet::Builder::lowering(opt, device, quantized);
    return "a" + std::to_string(static_cast<int>(l.attn)) + "/c" + std::to_string(static_cast<int>(l.conv_opt.algo)) +
           std::to_string(l.conv_opt.winograd_min_pixels) + "/" + std::to_string(l.conv_opt.winograd_f43_min_pixels) +
           (l.custom_ops ? "/f" : "") + (l.bf16 ? "/bf16" : "") + "/q" + std::to_string(l.max_score_bytes) + "/" +
           kernels::cpu::level_name(kernels::cpu::active_level());
}

ggml_tensor* UNetBlocks::conv(ggml_tensor* x, const std::string& name, int stride, int pad) const {
    return b_->conv(x, name, stride, pad);
}

void UNet::clear() {
    std::lock_guard<std::mutex> lock(mu_);
    runner_->clear();
}

size_t UNet::compute_buffer_size() const { return runner_->compute_buffer_size(); }

int64_t UNet::graph_nodes(int64_t B, int64_t H, int64_t W, int64_t L) {
    check_shapes(B, H, W, L, cfg_.add_time_dim > 0, cfg_.add_time_dim > 0);
    std::lock_guard<std::mutex> lock(mu_);
    BuiltGraph& g = runner_->get(key(B, H, W, L), [&](ggml_context* ctx, BuiltGraph& gb) { build(ctx, gb, B, H, W, L); });
    return ggml_graph_n_nodes(g.graph);
}

}  // namespace sdcpp

namespace sdcpp {

namespace {
std::string ne_str(const ggml_tensor* t) {
    if (!t) return "";
    std::string r = ggml_type_name(t->type);
    r += "[";
    for (int i = 0; i < ggml_n_dims(t); ++i) r += (i ? "," : "") + std::to_string(t->ne[i]);
    r += "]";
    if (!ggml_is_contiguous(t)) r += "(nc)";
    return r;
}
// CPU time of the calling thread where POSIX offers it; the process's CPU time elsewhere (MSVC).
double thread_cpu_us() {
#if defined(CLOCK_THREAD_CPUTIME_ID)
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec * 1e-3;
#else
    return static_cast<double>(std::clock()) * 1e6 / CLOCKS_PER_SEC;
#endif
}
struct ProfileState {
    std::vector<UNet::NodeTime>* out;
    std::chrono::steady_clock::time_point last;
    double last_cpu;
};
bool profile_cb(ggml_tensor* t, bool ask, void* ud) {
    auto* st = static_cast<ProfileState*>(ud);
    if (ask) return true;
    auto now = std::chrono::steady_clock::now();
    double us = std::chrono::duration<double, std::micro>(now - st->last).count();
    const double cpu = thread_cpu_us();
    st->out->push_back({ggml_op_desc(t), t->name, ne_str(t), ne_str(t->src[0]), ne_str(t->src[1]), us, cpu - st->last_cpu});
    st->last = std::chrono::steady_clock::now();
    st->last_cpu = thread_cpu_us();
    return true;
}
}  // namespace

std::vector<UNet::NodeTime> UNet::profile(int64_t B, int64_t H, int64_t W, int64_t L) {
    check_shapes(B, H, W, L, cfg_.add_time_dim > 0, cfg_.add_time_dim > 0);
    std::lock_guard<std::mutex> lock(mu_);
    const size_t max_nodes = 32768;
    BuiltGraph g;
    ggml_init_params params{};
    params.mem_size = ggml_tensor_overhead() * max_nodes + ggml_graph_overhead_custom(max_nodes, false);
    params.no_alloc = true;
    g.ctx = ggml_init(params);
    g.graph = ggml_new_graph_custom(g.ctx, max_nodes, false);
    build(g.ctx, g, B, H, W, L);
    for (auto& kv : g.inputs) ggml_set_input(kv.second);
    for (ggml_tensor* o : g.outputs) {
        ggml_set_output(o);
        ggml_build_forward_expand(g.graph, o);
    }
    const auto& dev = store_->device();
    std::vector<ggml_backend_t> backends{dev->backend()};
    if (!dev->is_cpu()) backends.push_back(dev->cpu());
    ggml_backend_sched_t sched = ggml_backend_sched_new(backends.data(), nullptr, static_cast<int>(backends.size()),
                                                        max_nodes, false, true);
    if (!sched) throw Error("failed to create the ggml scheduler");
    std::vector<NodeTime> out;
    try {
        if (!ggml_backend_sched_alloc_graph(sched, g.graph)) throw Error("out of memory allocating the profile graph");
        for (auto& kv : g.inputs) {
            std::vector<uint8_t> zeros(ggml_nbytes(kv.second), 0);
            ggml_backend_tensor_set(kv.second, zeros.data(), 0, zeros.size());
        }
        ProfileState st{&out, std::chrono::steady_clock::now(), thread_cpu_us()};
        ggml_backend_sched_set_eval_callback(sched, profile_cb, &st);
        ggml_backend_sched_graph_compute(sched, g.graph);
    } catch (...) {
        ggml_backend_sched_free(sched);
        throw;
    }
    ggml_backend_sched_free(sched);
    return out;
}

}  // namespace sdcpp
