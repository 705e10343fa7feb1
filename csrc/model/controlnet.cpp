#include "controlnet.h"

#include <cstring>

#include "../runtime/error.h"
#include "unet_weights.h"

namespace sdcpp {

namespace {
const std::string kPrefix = "controlnet.";
const std::string kEmbed = kPrefix + "controlnet_cond_embedding.";

// Every weight a ControlNet config needs, in the order its graph uses them; `skip_channels`
// gets the channel counts of the U-Net's skip connections (one residual each).
std::vector<ExpectedWeight> controlnet_weights(const ControlNetConfig& cfg, std::vector<int64_t>& skip_channels) {
    UNetWeightList l(cfg.unet);
    const auto& e = cfg.embedding_channels;
    l.conv(kEmbed + "conv_in", cfg.cond_channels, e[0], 3);
    for (size_t i = 0; i + 1 < e.size(); ++i) {
        l.conv(kEmbed + "blocks." + std::to_string(2 * i), e[i], e[i], 3);
        l.conv(kEmbed + "blocks." + std::to_string(2 * i + 1), e[i], e[i + 1], 3);
    }
    l.conv(kEmbed + "conv_out", e.back(), cfg.unet.block_out_channels[0], 3);
    l.time_embedding(kPrefix);
    const int64_t mid = l.encode(kPrefix, skip_channels);
    for (size_t i = 0; i < skip_channels.size(); ++i)
        l.conv(kPrefix + "controlnet_down_blocks." + std::to_string(i), skip_channels[i], skip_channels[i], 1);
    l.conv(kPrefix + "controlnet_mid_block", mid, mid, 1);
    return l.weights();
}
}  // namespace

ControlNet::ControlNet(std::shared_ptr<const WeightStore> store, ControlNetConfig cfg)
    : store_(std::move(store)), cfg_(std::move(cfg)) {
    SD_CHECK(store_ != nullptr, "ControlNet: no weight store");
    SD_CHECK(store_->allocated(), "ControlNet: the weight store is not allocated");
    cfg_.unet.validate();
    SD_CHECK(cfg_.cond_channels >= 1 && cfg_.cond_channels <= 16, "ControlNet: cond_channels must be 1..16");
    SD_CHECK(!cfg_.embedding_channels.empty() && cfg_.embedding_channels.size() <= 8,
             "ControlNet: embedding_channels must list 1..8 widths");
    for (int c : cfg_.embedding_channels) SD_CHECK(c >= 1 && c <= 65536, "ControlNet: bad embedding channel count");
    // throws on the first missing / misshapen weight
    weights_ = std::make_unique<CheckedWeights>(*store_, controlnet_weights(cfg_, skip_channels_));
    unused_ = weights_->unused(kPrefix);
    runner_ = std::make_unique<GraphRunner>(store_->device(), 32768);
    quantized_ = quantized_attention(*store_, kPrefix);
}

ControlNet::~ControlNet() = default;

std::vector<ggml_tensor*> ControlNet::build(ggml_context* ctx, ggml_tensor* x, ggml_tensor* t_sin, ggml_tensor* context,
                                            ggml_tensor* cond, ggml_tensor* add_in) const {
    UNetBlocks blocks(*weights_, cfg_.unet, ctx, opt_, quantized_);
    // controlnet_cond_embedding: conv_in, SiLU, (3x3 conv, SiLU, stride-2 3x3 conv, SiLU) per
    // width step, conv_out (zero-initialised in training) to block_out_channels[0].
    const auto& e = cfg_.embedding_channels;
    ggml_tensor* h = ggml_silu(ctx, blocks.conv(cond, kEmbed + "conv_in", 1, 1));
    for (size_t i = 0; i + 1 < e.size(); ++i) {
        h = ggml_silu(ctx, blocks.conv(h, kEmbed + "blocks." + std::to_string(2 * i), 1, 1));
        h = ggml_silu(ctx, blocks.conv(h, kEmbed + "blocks." + std::to_string(2 * i + 1), 2, 1));
    }
    ggml_tensor* hint = blocks.conv(h, kEmbed + "conv_out", 1, 1);

    ggml_tensor* temb_act = blocks.time_embedding(kPrefix, t_sin, add_in);
    std::vector<ggml_tensor*> skips;
    ggml_tensor* mid = blocks.encode(kPrefix, x, temb_act, context, hint, skips);
    std::vector<ggml_tensor*> out;
    for (size_t i = 0; i < skips.size(); ++i)
        out.push_back(blocks.conv(skips[i], kPrefix + "controlnet_down_blocks." + std::to_string(i), 1, 0));
    out.push_back(blocks.conv(mid, kPrefix + "controlnet_mid_block", 1, 0));
    return out;
}

std::vector<std::vector<int64_t>> unet_residual_shapes(const UNetConfig& cfg, int64_t H, int64_t W) {
    // conv_in's size, then each stride-2 3x3 conv (pad 1) rounds up, as the U-Net's graph does.
    const auto& ch = cfg.block_out_channels;
    std::vector<std::vector<int64_t>> r;
    r.push_back({ch[0], H, W});
    for (size_t i = 0; i < cfg.down.size(); ++i) {
        const auto& b = cfg.down[i];
        for (int j = 0; j < b.resnets; ++j) r.push_back({ch[i], H, W});
        if (b.resample) {
            H = (H + 1) / 2;
            W = (W + 1) / 2;
            r.push_back({ch[i], H, W});
        }
    }
    r.push_back({ch.back(), H, W});
    return r;
}

std::vector<std::vector<int64_t>> ControlNet::residual_shapes(int64_t H, int64_t W) const {
    return unet_residual_shapes(cfg_.unet, H, W);
}

void ControlNet::check_shapes(int64_t B, int64_t H, int64_t W, int64_t L, bool has_text, bool has_ids) const {
    SD_CHECK(B >= 1 && B <= 4096, "ControlNet: batch size must be 1..4096, got " + std::to_string(B));
    SD_CHECK(H >= 1 && W >= 1 && H <= 65536 && W <= 65536, "ControlNet: latent height/width out of range");
    SD_CHECK(L >= 1 && L <= 65536, "ControlNet: context length must be 1..65536, got " + std::to_string(L));
    if (cfg_.unet.add_time_dim > 0) {
        SD_CHECK(has_text && has_ids, "ControlNet: this model (text_time addition embedding) needs text_embeds [B, " +
                                          std::to_string(cfg_.unet.pooled_dim()) + "] and time_ids [B, 6]");
    } else {
        SD_CHECK(!has_text && !has_ids, "ControlNet: text_embeds / time_ids given but the model has no addition embedding");
    }
}

std::string ControlNet::key(int64_t B, int64_t H, int64_t W, int64_t L) const {
    return std::to_string(B) + "x" + std::to_string(H) + "x" + std::to_string(W) + "x" + std::to_string(L) + "/" +
           UNetBlocks::kernel_key(opt_, *store_->device(), quantized_);
}

void ControlNet::forward(int64_t B, int64_t H, int64_t W, int64_t L, const float* latent, const float* timesteps,
                         const float* context, const float* cond, const float* text_embeds, const float* time_ids,
                         float scale, const std::vector<float*>& out) {
    check_shapes(B, H, W, L, text_embeds != nullptr, time_ids != nullptr);
    SD_CHECK(out.size() == residual_count(), "ControlNet: wrong number of output arrays");
    const UNetConfig& u = cfg_.unet;
    std::vector<float> t_sin(static_cast<size_t>(B) * u.time_proj_dim);
    timestep_sinusoid(timesteps, B, u.time_proj_dim, u.flip_sin_to_cos, u.freq_shift, t_sin.data());
    std::vector<float> add_in;
    if (u.add_time_dim > 0) {
        // [pooled text | sinusoid(time_ids[0]) | ... | sinusoid(time_ids[5])] per row, as the U-Net
        const int P = u.pooled_dim(), T = u.add_time_dim;
        add_in.resize(static_cast<size_t>(B) * u.add_in_dim);
        for (int64_t i = 0; i < B; ++i) {
            float* row = add_in.data() + i * u.add_in_dim;
            std::memcpy(row, text_embeds + i * P, sizeof(float) * P);
            timestep_sinusoid(time_ids + i * 6, 6, T, u.flip_sin_to_cos, u.freq_shift, row + P);
        }
    }
    const int64_t f = cond_factor();
    std::lock_guard<std::mutex> lock(mu_);
    BuiltGraph& g = runner_->get(key(B, H, W, L), [&](ggml_context* ctx, BuiltGraph& gb) {
        ggml_tensor* x = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, W, H, u.in_channels, B);
        ggml_tensor* t = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, u.time_proj_dim, B);
        ggml_tensor* c = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, u.cross_attention_dim, L, B);
        ggml_tensor* h = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, W * f, H * f, cfg_.cond_channels, B);
        gb.inputs["latent"] = x;
        gb.inputs["t_sin"] = t;
        gb.inputs["context"] = c;
        gb.inputs["cond"] = h;
        ggml_tensor* a = nullptr;
        if (u.add_time_dim > 0) {
            a = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, u.add_in_dim, B);
            gb.inputs["add_in"] = a;
        }
        for (ggml_tensor* o : build(ctx, x, t, c, h, a)) gb.outputs.push_back(o);
    });
    std::map<std::string, const void*> in{{"latent", latent}, {"t_sin", t_sin.data()}, {"context", context}, {"cond", cond}};
    if (!add_in.empty()) in["add_in"] = add_in.data();
    runner_->run(g, in);
    const auto shapes = residual_shapes(H, W);
    for (size_t i = 0; i < out.size(); ++i) {
        runner_->read_output(g, i, out[i]);
        if (scale != 1.0f) {
            const size_t n = static_cast<size_t>(B) * shapes[i][0] * shapes[i][1] * shapes[i][2];
            for (size_t k = 0; k < n; ++k) out[i][k] *= scale;
        }
    }
}

void ControlNet::set_options(const UNetOptions& opt) {
    std::lock_guard<std::mutex> lock(mu_);
    opt_ = opt;
}

void ControlNet::clear() {
    std::lock_guard<std::mutex> lock(mu_);
    runner_->clear();
}

}  // namespace sdcpp
