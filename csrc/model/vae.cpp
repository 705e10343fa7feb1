#include "vae.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>

#include "../runtime/error.h"
#include "../runtime/graph_trace.h"
#include "../nn/blocks.h"
#include "../nn/layers.h"

namespace sdcpp::model {

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
    std::string out = "(";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + ")";
}

// ggml's ne of `t` equals the numpy shape `s` reversed (trailing unit dims are implicit in ggml).
bool same_shape(const ggml_tensor* t, const std::vector<int64_t>& s) {
    if (s.size() > 4) return false;
    for (int i = 0; i < 4; ++i) {
        const int64_t want = i < int(s.size()) ? s[s.size() - 1 - i] : 1;
        if (t->ne[i] != want) return false;
    }
    return true;
}

// ---------------------------------------------------------------------------------------------
// The list of weights a part needs, with their numpy shapes (built from the config).

struct Expected {
    std::string name;
    std::vector<int64_t> shape;
    bool linear_or_1x1 = false;  // attention projections: [C, C] or [C, C, 1, 1]
};

void add_conv(std::vector<Expected>& e, const std::string& n, int64_t out, int64_t in, int64_t k) {
    e.push_back({n + ".weight", {out, in, k, k}});
    e.push_back({n + ".bias", {out}});
}
void add_norm(std::vector<Expected>& e, const std::string& n, int64_t c) {
    e.push_back({n + ".weight", {c}});
    e.push_back({n + ".bias", {c}});
}
void add_resnet(std::vector<Expected>& e, const std::string& n, int64_t in, int64_t out) {
    add_norm(e, n + ".norm1", in);
    add_conv(e, n + ".conv1", out, in, 3);
    add_norm(e, n + ".norm2", out);
    add_conv(e, n + ".conv2", out, out, 3);
    if (in != out) add_conv(e, n + ".conv_shortcut", out, in, 1);
}
void add_mid(std::vector<Expected>& e, const std::string& n, int64_t c, bool attention) {
    add_resnet(e, n + ".resnets.0", c, c);
    if (attention) {
        const std::string a = n + ".attentions.0";
        add_norm(e, a + ".group_norm", c);
        for (const char* p : {".to_q", ".to_k", ".to_v", ".to_out.0"}) {
            e.push_back({a + p + ".weight", {c, c}, true});
            e.push_back({a + p + ".bias", {c}});
        }
    }
    add_resnet(e, n + ".resnets.1", c, c);
}

std::vector<Expected> encoder_weights(const VAEConfig& c) {
    std::vector<Expected> e;
    const auto& ch = c.block_out_channels;
    const size_t L = ch.size();
    add_conv(e, "encoder.conv_in", ch[0], c.in_channels, 3);
    int64_t prev = ch[0];
    for (size_t i = 0; i < L; ++i) {
        const std::string b = "encoder.down_blocks." + std::to_string(i);
        for (int j = 0; j < c.layers_per_block; ++j) {
            add_resnet(e, b + ".resnets." + std::to_string(j), j == 0 ? prev : ch[i], ch[i]);
        }
        if (i + 1 < L) add_conv(e, b + ".downsamplers.0.conv", ch[i], ch[i], 3);
        prev = ch[i];
    }
    add_mid(e, "encoder.mid_block", ch[L - 1], c.mid_attention);
    add_norm(e, "encoder.conv_norm_out", ch[L - 1]);
    add_conv(e, "encoder.conv_out", 2 * c.latent_channels, ch[L - 1], 3);
    if (c.use_quant_conv) add_conv(e, "quant_conv", 2 * c.latent_channels, 2 * c.latent_channels, 1);
    return e;
}

std::vector<Expected> decoder_weights(const VAEConfig& c) {
    std::vector<Expected> e;
    const auto& ch = c.block_out_channels;
    const size_t L = ch.size();
    if (c.use_post_quant_conv) add_conv(e, "post_quant_conv", c.latent_channels, c.latent_channels, 1);
    add_conv(e, "decoder.conv_in", ch[L - 1], c.latent_channels, 3);
    add_mid(e, "decoder.mid_block", ch[L - 1], c.mid_attention);
    int64_t prev = ch[L - 1];
    for (size_t i = 0; i < L; ++i) {
        const int64_t out = ch[L - 1 - i];
        const std::string b = "decoder.up_blocks." + std::to_string(i);
        for (int j = 0; j <= c.layers_per_block; ++j) {
            add_resnet(e, b + ".resnets." + std::to_string(j), j == 0 ? prev : out, out);
        }
        if (i + 1 < L) add_conv(e, b + ".upsamplers.0.conv", out, out, 3);
        prev = out;
    }
    add_norm(e, "decoder.conv_norm_out", ch[0]);
    add_conv(e, "decoder.conv_out", c.out_channels, ch[0], 3);
    return e;
}

// ---------------------------------------------------------------------------------------------
// Graph building: diffusers' Encoder / Decoder over the layer library's blocks (nn/blocks.h).

struct Builder {
    ggml_context* ctx;
    const WeightStore& store;
    const std::string& prefix;
    const VAEConfig& cfg;
    const VAEOptions& opt;

    ggml_tensor* weight(const std::string& name) const { return store.get(prefix + "." + name); }
    ggml_tensor* weight_if(const std::string& name) const { return store.find(prefix + "." + name); }

    // The CPU-only custom ops (fast im2col, strip placement, fused norms), unless the portable
    // graph (stock ggml ops only, as used on GPUs) is asked for.
    bool custom_ops() const { return nn::custom_ops_allowed(*store.device(), opt.portable); }

    nn::GroupNormSpec norm() const { return {cfg.norm_groups, cfg.norm_eps}; }

    // Every product in f32 (or bf16 for ComputeType::BF16), one image in bounded row strips.
    nn::ConvOptions conv_options() const {
        nn::ConvOptions o;
        switch (opt.conv) {
            case ConvMode::Winograd: o.algo = nn::ConvAlgo::WinogradStrips; break;
            case ConvMode::Strips: o.algo = nn::ConvAlgo::Strips; break;
            case ConvMode::Im2col: o.algo = nn::ConvAlgo::Strips; break;  // one strip: no budget
            case ConvMode::Direct: o.algo = nn::ConvAlgo::Direct; break;
        }
        o.custom_ops = custom_ops();
        o.products = opt.compute == ComputeType::BF16 ? nn::ConvProducts::BF16 : nn::ConvProducts::F32;
        o.max_im2col_bytes = opt.conv == ConvMode::Im2col ? SIZE_MAX : opt.max_im2col_bytes;
        // On a device every strip's im2col must be one the device takes (else it and its
        // product fall back to the CPU): Im2col mode, too, becomes strips past that size.
        o.max_im2col_bytes = std::min(o.max_im2col_bytes, store.device()->max_tensor_bytes());
        o.winograd_strip_bytes = opt.winograd_strip_bytes;
        return o;
    }

    // The convolution `name` with padding (left, right, top, bottom); `up` = 2 convolves the
    // nearest-neighbour 2x upsampling of x (diffusers' Upsample2D).
    ggml_tensor* conv(ggml_tensor* x, const std::string& name, int stride, int pl, int pr, int pt, int pb, int up = 1) const {
        return nn::conv2d(ctx, x, weight(name + ".weight"), weight(name + ".bias"), {stride, pl, pr, pt, pb, up},
                          conv_options());
    }
    ggml_tensor* conv3x3(ggml_tensor* x, const std::string& name) const { return conv(x, name, 1, 1, 1, 1, 1); }
    ggml_tensor* conv1x1(ggml_tensor* x, const std::string& name) const { return conv(x, name, 1, 0, 0, 0, 0); }

    // Every activation the encoder and decoder pass on has one reader, the next block (the
    // attention block keeps its own input for its residual): the GroupNorms of the ResNets and
    // of conv_norm_out may overwrite their inputs (CPU), which is what keeps the 1024x1024
    // decode's peak at two 256-channel activations' worth (bench/README.md, memory).
    ggml_tensor* norm_silu(ggml_tensor* x, const std::string& name) const {
        return nn::group_norm_consuming(ctx, x, weight(name + ".weight"), weight(name + ".bias"), cfg.norm_groups,
                                        cfg.norm_eps, true, custom_ops());
    }

    ggml_tensor* resnet(ggml_tensor* x, const std::string& name) const {
        const bool shortcut = weight_if(name + ".conv_shortcut.weight") != nullptr;
        const nn::ResnetWeights w = nn::ResnetWeights::named(
            name, [this](const std::string& n) { return weight(n); }, /*temb=*/false, shortcut);
        return nn::resnet_block(ctx, x, w, nullptr, norm(), conv_options(), custom_ops(), /*consume_x=*/true);
    }

    // Single-head self-attention over the H*W positions, with residual; mul_mat + soft_max in
    // f32, queries in chunks whose score matrix stays within max_attention_bytes.
    ggml_tensor* attention(ggml_tensor* x, const std::string& name) const {
        nn::AttentionBlockWeights w;
        w.norm_w = weight(name + ".group_norm.weight");
        w.norm_b = weight(name + ".group_norm.bias");
        w.q_w = weight(name + ".to_q.weight");
        w.q_b = weight(name + ".to_q.bias");
        w.k_w = weight(name + ".to_k.weight");
        w.k_b = weight(name + ".to_k.bias");
        w.v_w = weight(name + ".to_v.weight");
        w.v_b = weight(name + ".to_v.bias");
        w.out_w = weight(name + ".to_out.0.weight");
        w.out_b = weight(name + ".to_out.0.bias");
        nn::AttentionOptions a;
        a.kernel = nn::AttentionKernel::MulMat;
        a.custom_ops = custom_ops();
        a.max_score_bytes = std::min(opt.max_attention_bytes, store.device()->max_tensor_bytes());
        return nn::attention_block(ctx, x, w, 1, norm(), a, /*f32_weights=*/true);
    }

    ggml_tensor* mid_block(ggml_tensor* x, const std::string& name) const {
        x = resnet(x, name + ".resnets.0");
        if (cfg.mid_attention) x = attention(x, name + ".attentions.0");
        return resnet(x, name + ".resnets.1");
    }

    ggml_tensor* decoder(ggml_tensor* z) const {
        const size_t L = cfg.block_out_channels.size();
        if (cfg.use_post_quant_conv) z = conv1x1(z, "post_quant_conv");
        ggml_tensor* h = conv3x3(z, "decoder.conv_in");
        h = mid_block(h, "decoder.mid_block");
        for (size_t i = 0; i < L; ++i) {
            const std::string b = "decoder.up_blocks." + std::to_string(i);
            for (int j = 0; j <= cfg.layers_per_block; ++j) h = resnet(h, b + ".resnets." + std::to_string(j));
            if (i + 1 < L) {
                h = conv(h, b + ".upsamplers.0.conv", 1, 1, 1, 1, 1, 2);  // nearest 2x, then 3x3
            }
        }
        h = norm_silu(h, "decoder.conv_norm_out");
        return conv3x3(h, "decoder.conv_out");
    }

    ggml_tensor* encoder(ggml_tensor* x) const {
        const size_t L = cfg.block_out_channels.size();
        ggml_tensor* h = conv3x3(x, "encoder.conv_in");
        for (size_t i = 0; i < L; ++i) {
            const std::string b = "encoder.down_blocks." + std::to_string(i);
            for (int j = 0; j < cfg.layers_per_block; ++j) h = resnet(h, b + ".resnets." + std::to_string(j));
            if (i + 1 < L) h = conv(h, b + ".downsamplers.0.conv", 2, 0, 1, 0, 1);  // pad right/bottom by 1
        }
        h = mid_block(h, "encoder.mid_block");
        h = norm_silu(h, "encoder.conv_norm_out");
        h = conv3x3(h, "encoder.conv_out");
        if (cfg.use_quant_conv) h = conv1x1(h, "quant_conv");
        return h;
    }
};

}  // namespace

void VAEConfig::validate() const {
    SD_CHECK(!block_out_channels.empty() && block_out_channels.size() <= 8,
             "VAE config: block_out_channels must list 1 to 8 widths");
    SD_CHECK(layers_per_block >= 1 && layers_per_block <= 16, "VAE config: layers_per_block must be in 1..16");
    SD_CHECK(norm_groups >= 1, "VAE config: norm_groups must be positive");
    SD_CHECK(std::isfinite(norm_eps) && norm_eps > 0, "VAE config: norm_eps must be positive");
    SD_CHECK(latent_channels >= 1 && in_channels >= 1 && out_channels >= 1, "VAE config: channel counts must be positive");
    for (int64_t c : block_out_channels) {
        SD_CHECK(c >= 1, "VAE config: block_out_channels must be positive");
        SD_CHECK(c % norm_groups == 0, "VAE config: every width in block_out_channels must be divisible by norm_groups (" +
                                           std::to_string(c) + " % " + std::to_string(norm_groups) + ")");
    }
}

VAE::VAE(std::shared_ptr<WeightStore> store, VAEConfig config, std::string prefix)
    : store_(std::move(store)), cfg_(std::move(config)), prefix_(std::move(prefix)), runner_(store_ ? store_->device() : nullptr, 32768) {
    SD_CHECK(store_ != nullptr, "VAE needs a weight store");
    SD_CHECK(store_->allocated(), "the weight store is not allocated yet");
    cfg_.validate();
    has_encoder_ = store_->has(prefix_ + ".encoder.conv_in.weight");
    has_decoder_ = store_->has(prefix_ + ".decoder.conv_in.weight");
    SD_CHECK(has_encoder_ || has_decoder_,
             "no VAE weights found: neither '" + prefix_ + ".encoder.conv_in.weight' nor '" + prefix_ + ".decoder.conv_in.weight'");
    if (has_encoder_) validate_part("encoder");
    if (has_decoder_) validate_part("decoder");
}

void VAE::validate_part(const std::string& part) {
    const auto expected = part == "encoder" ? encoder_weights(cfg_) : decoder_weights(cfg_);
    for (const Expected& e : expected) {
        const std::string full = prefix_ + "." + e.name;
        ggml_tensor* t = store_->find(full);
        SD_CHECK(t != nullptr, "VAE " + part + ": missing weight '" + full + "'");
        SD_CHECK(t->type == GGML_TYPE_F32 || t->type == GGML_TYPE_F16 || t->type == GGML_TYPE_BF16,
                 "VAE weight '" + full + "' is stored as " + ggml_type_name(t->type) + "; the VAE takes f32, f16 or bf16");
        const auto got = store_->shape(full);
        bool ok = same_shape(t, e.shape);
        if (!ok && e.linear_or_1x1) ok = same_shape(t, {e.shape[0], e.shape[1], 1, 1});
        SD_CHECK(ok, "VAE weight '" + full + "' has shape " + shape_str(got) + ", expected " + shape_str(e.shape));
    }
}

void VAE::set_options(const VAEOptions& o) {
    SD_CHECK(o.max_im2col_bytes >= (size_t(1) << 20), "max_im2col_bytes must be at least 1 MiB");
    SD_CHECK(o.max_attention_bytes >= (size_t(1) << 20), "max_attention_bytes must be at least 1 MiB");
    std::lock_guard<std::mutex> lock(mu_);
    opt_ = o;
    runner_.clear();
}

void VAE::check_decode_input(int64_t n, int64_t c, int64_t h, int64_t w) const {
    SD_CHECK(has_decoder_, "this VAE has no decoder weights ('" + prefix_ + ".decoder.*')");
    SD_CHECK(n >= 1, "latent batch must be at least 1");
    SD_CHECK(c == cfg_.latent_channels, "latent must have " + std::to_string(cfg_.latent_channels) + " channels, got " +
                                             std::to_string(c));
    SD_CHECK(h >= 1 && w >= 1, "latent height and width must be positive");
    const int64_t f = cfg_.factor();
    SD_CHECK(h * f <= 32768 && w * f <= 32768, "latent is too large (the image side would exceed 32768)");
}

void VAE::check_encode_input(int64_t n, int64_t c, int64_t h, int64_t w) const {
    SD_CHECK(has_encoder_, "this VAE has no encoder weights ('" + prefix_ + ".encoder.*')");
    SD_CHECK(n >= 1, "image batch must be at least 1");
    SD_CHECK(c == cfg_.in_channels, "image must have " + std::to_string(cfg_.in_channels) + " channels, got " + std::to_string(c));
    const int64_t f = cfg_.factor();
    SD_CHECK(h >= f && w >= f && h % f == 0 && w % f == 0,
             "image height and width must be positive multiples of " + std::to_string(f) + ", got " + std::to_string(h) + "x" +
                 std::to_string(w));
    SD_CHECK(h <= 32768 && w <= 32768, "image is too large");
}

BuiltGraph& VAE::decoder_graph(int64_t h, int64_t w) {
    const std::string key = "dec:" + std::to_string(h) + "x" + std::to_string(w);
    return runner_.get(key, [&](ggml_context* ctx, BuiltGraph& g) {
        ggml_tensor* z = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, w, h, cfg_.latent_channels, 1);
        g.inputs["z"] = z;
        Builder b{ctx, *store_, prefix_, cfg_, opt_};
        g.outputs.push_back(b.decoder(z));
    });
}

BuiltGraph& VAE::encoder_graph(int64_t H, int64_t W) {
    const std::string key = "enc:" + std::to_string(H) + "x" + std::to_string(W);
    return runner_.get(key, [&](ggml_context* ctx, BuiltGraph& g) {
        ggml_tensor* x = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, W, H, cfg_.in_channels, 1);
        g.inputs["x"] = x;
        Builder b{ctx, *store_, prefix_, cfg_, opt_};
        g.outputs.push_back(b.encoder(x));
    });
}

void VAE::decode(const float* z, int64_t n, int64_t h, int64_t w, float* out) {
    check_decode_input(n, cfg_.latent_channels, h, w);
    std::lock_guard<std::mutex> lock(mu_);
    BuiltGraph& g = decoder_graph(h, w);
    const int64_t f = cfg_.factor();
    const size_t in_elems = size_t(cfg_.latent_channels) * h * w;
    const size_t out_elems = size_t(cfg_.out_channels) * h * f * w * f;
    SD_CHECK(g.outputs[0]->ne[0] == w * f && g.outputs[0]->ne[1] == h * f, "internal: decoder output shape");
    // One image at a time: the same graph, memory bounded by a single image.
    for (int64_t i = 0; i < n; ++i) {
        runner_.run(g, {{"z", z + i * in_elems}});
        runner_.read_output(g, 0, out + i * out_elems);
    }
}

void VAE::encode(const float* x, int64_t n, int64_t H, int64_t W, float* out) {
    check_encode_input(n, cfg_.in_channels, H, W);
    std::lock_guard<std::mutex> lock(mu_);
    BuiltGraph& g = encoder_graph(H, W);
    const int64_t f = cfg_.factor();
    const size_t in_elems = size_t(cfg_.in_channels) * H * W;
    const size_t out_elems = size_t(2 * cfg_.latent_channels) * (H / f) * (W / f);
    SD_CHECK(g.outputs[0]->ne[0] == W / f && g.outputs[0]->ne[1] == H / f, "internal: encoder output shape");
    for (int64_t i = 0; i < n; ++i) {
        runner_.run(g, {{"x", x + i * in_elems}});
        runner_.read_output(g, 0, out + i * out_elems);
    }
}

void VAE::clear() {
    std::lock_guard<std::mutex> lock(mu_);
    runner_.clear();
}

size_t VAE::compute_buffer_size() const { return runner_.compute_buffer_size(); }

size_t VAE::measure(bool decoder, int64_t h, int64_t w) {
    if (decoder) check_decode_input(1, cfg_.latent_channels, h, w);
    else check_encode_input(1, cfg_.in_channels, h, w);
    std::lock_guard<std::mutex> lock(mu_);
    return runner_.measure(decoder ? decoder_graph(h, w) : encoder_graph(h, w));
}

std::string VAE::memory_trace(bool decoder, int64_t h, int64_t w) {
    if (decoder) check_decode_input(1, cfg_.latent_channels, h, w);
    else check_encode_input(1, cfg_.in_channels, h, w);
    std::lock_guard<std::mutex> lock(mu_);
    BuiltGraph& g = decoder ? decoder_graph(h, w) : encoder_graph(h, w);
    return live_set_report(g.graph) + placement_report(g.graph, g.ctx, size_t(32) << 20);
}

int VAE::graph_nodes(bool decoder, int64_t h, int64_t w) {
    if (decoder) check_decode_input(1, cfg_.latent_channels, h, w);
    else check_encode_input(1, cfg_.in_channels, h, w);
    std::lock_guard<std::mutex> lock(mu_);
    BuiltGraph& g = decoder ? decoder_graph(h, w) : encoder_graph(h, w);
    return ggml_graph_n_nodes(g.graph);
}

}  // namespace sdcpp::model
