#include "unet_weights.h"

#include "../runtime/error.h"

namespace sdcpp {

// ------------------------------------------------------------------------------------------
// The list: the U-Net's topology walked once over channel counts, without a graph.

void UNetWeightList::linear(const std::string& p, int64_t in, int64_t out, bool bias) {
    add(p + ".weight", {out, in}, WeightRole::Matrix);
    if (bias) add(p + ".bias", {out}, WeightRole::Vector);
}

void UNetWeightList::conv(const std::string& p, int64_t in, int64_t out, int k) {
    add(p + ".weight", {out, in, k, k}, WeightRole::Conv);
    add(p + ".bias", {out}, WeightRole::Vector);
}

void UNetWeightList::norm(const std::string& p, int64_t c) {
    add(p + ".weight", {c}, WeightRole::Vector);
    add(p + ".bias", {c}, WeightRole::Vector);
}

void UNetWeightList::projection(const std::string& p, int64_t c) {
    // declared in the layout the config names (what a missing weight's message asks for)
    add(p + ".weight", cfg_.use_linear_projection ? std::vector<int64_t>{c, c} : std::vector<int64_t>{c, c, 1, 1},
        WeightRole::Projection);
    add(p + ".bias", {c}, WeightRole::Vector);
}

void UNetWeightList::resnet(const std::string& p, int64_t in, int64_t out) {
    if (in % cfg_.norm_groups != 0)
        throw InvalidArgument("U-Net: " + p + " input channels " + std::to_string(in) + " are not divisible by norm_groups");
    norm(p + ".norm1", in);
    conv(p + ".conv1", in, out, 3);
    linear(p + ".time_emb_proj", cfg_.time_embed_dim, out, true);
    norm(p + ".norm2", out);
    conv(p + ".conv2", out, out, 3);
    if (in != out) conv(p + ".conv_shortcut", in, out, 1);
}

void UNetWeightList::transformer(const std::string& p, int64_t C, int depth) {
    const int64_t D = cfg_.cross_attention_dim;
    norm(p + ".norm", C);
    projection(p + ".proj_in", C);
    for (int d = 0; d < depth; ++d) {
        const std::string b = p + ".transformer_blocks." + std::to_string(d);
        norm(b + ".norm1", C);
        linear(b + ".attn1.to_q", C, C, false);
        linear(b + ".attn1.to_k", C, C, false);
        linear(b + ".attn1.to_v", C, C, false);
        linear(b + ".attn1.to_out.0", C, C, true);
        norm(b + ".norm2", C);
        linear(b + ".attn2.to_q", C, C, false);
        linear(b + ".attn2.to_k", D, C, false);
        linear(b + ".attn2.to_v", D, C, false);
        linear(b + ".attn2.to_out.0", C, C, true);
        norm(b + ".norm3", C);
        linear(b + ".ff.net.0.proj", C, 8 * C, true);
        linear(b + ".ff.net.2", 4 * C, C, true);
    }
    projection(p + ".proj_out", C);
}

void UNetWeightList::time_embedding(const std::string& pfx) {
    const int64_t E = cfg_.time_embed_dim;
    linear(pfx + "time_embedding.linear_1", cfg_.time_proj_dim, E, true);
    linear(pfx + "time_embedding.linear_2", E, E, true);
    if (cfg_.add_time_dim > 0) {
        linear(pfx + "add_embedding.linear_1", cfg_.add_in_dim, E, true);
        linear(pfx + "add_embedding.linear_2", E, E, true);
    }
}

int64_t UNetWeightList::encode(const std::string& pfx, std::vector<int64_t>& skips) {
    const auto& ch = cfg_.block_out_channels;
    conv(pfx + "conv_in", cfg_.in_channels, ch[0], 3);
    int64_t c = ch[0];
    skips.push_back(c);
    for (size_t i = 0; i < cfg_.down.size(); ++i) {
        const auto& b = cfg_.down[i];
        const std::string p = pfx + "down_blocks." + std::to_string(i);
        for (int j = 0; j < b.resnets; ++j) {
            resnet(p + ".resnets." + std::to_string(j), c, ch[i]);
            c = ch[i];
            if (b.depths[j] > 0) transformer(p + ".attentions." + std::to_string(j), c, b.depths[j]);
            skips.push_back(c);
        }
        if (b.resample) {
            conv(p + ".downsamplers.0.conv", c, ch[i], 3);
            c = ch[i];
            skips.push_back(c);
        }
    }
    if (cfg_.mid_type != "none") {
        resnet(pfx + "mid_block.resnets.0", c, c);
        if (cfg_.mid_type == "cross_attn") {
            transformer(pfx + "mid_block.attentions.0", c, cfg_.mid_depth);
            resnet(pfx + "mid_block.resnets.1", c, c);
        }
    }
    return c;
}

void UNetWeightList::decode(int64_t c, std::vector<int64_t>& skips) {
    const auto& ch = cfg_.block_out_channels;
    const size_t n = ch.size();
    for (size_t i = 0; i < cfg_.up.size(); ++i) {
        const auto& b = cfg_.up[i];
        const int64_t out = ch[n - 1 - i];
        const std::string p = "unet.up_blocks." + std::to_string(i);
        for (int j = 0; j < b.resnets; ++j) {
            const int64_t skip = skips.back();
            skips.pop_back();
            resnet(p + ".resnets." + std::to_string(j), c + skip, out);  // input: [h | skip]
            c = out;
            if (b.depths[j] > 0) transformer(p + ".attentions." + std::to_string(j), c, b.depths[j]);
        }
        if (b.resample) {
            conv(p + ".upsamplers.0.conv", c, out, 3);
            c = out;
        }
    }
    if (c % cfg_.norm_groups != 0) throw InvalidArgument("U-Net: conv_norm_out channels not divisible by norm_groups");
    norm("unet.conv_norm_out", c);
    conv("unet.conv_out", c, cfg_.out_channels, 3);
}

std::vector<ExpectedWeight> unet_weights(const UNetConfig& cfg) {
    UNetWeightList l(cfg);
    l.time_embedding("unet.");
    std::vector<int64_t> skips;
    const int64_t mid = l.encode("unet.", skips);
    l.decode(mid, skips);
    return l.weights();
}

// ------------------------------------------------------------------------------------------
// The check of a store against a list.

namespace {

std::string shape_str(const std::vector<int64_t>& v) {
    std::string r = "(";
    for (size_t i = 0; i < v.size(); ++i) r += (i ? ", " : "") + std::to_string(v[i]);
    return r + ")";
}

// The declared (logical) shape: quantized conv kernels are stored as [OC, IC*KH*KW] matrices
// (runtime/weights.h) but declared, and checked, as [OC, IC, KH, KW]. Leading 1s do not count.
bool same_dims(std::vector<int64_t> a, std::vector<int64_t> b) {
    while (a.size() > 1 && a.front() == 1) a.erase(a.begin());
    while (b.size() > 1 && b.front() == 1) b.erase(b.begin());
    return a == b;
}

ggml_tensor* need(const WeightStore& s, const std::string& name, const std::vector<int64_t>& shape) {
    ggml_tensor* t = s.find(name);
    if (!t) throw InvalidArgument("U-Net: missing weight '" + name + "' (expected shape " + shape_str(shape) + ")");
    if (!same_dims(s.shape(name), shape))
        throw InvalidArgument("U-Net: weight '" + name + "' has shape " + shape_str(s.shape(name)) + ", expected " +
                              shape_str(shape));
    return t;
}

// mul_mat src0 with rows of `k` values: quantized rows must be whole blocks.
void check_rows(const ggml_tensor* t, const std::string& name, int64_t k) {
    if (ggml_is_quantized(t->type) && (k % ggml_blck_size(t->type) != 0 || t->ne[0] != k))
        throw InvalidArgument("U-Net: weight '" + name + "' of type " + ggml_type_name(t->type) +
                              " cannot be used (rows of " + std::to_string(k) + " values)");
}

void check_one(const WeightStore& s, const ExpectedWeight& e) {
    const std::string& name = e.name;
    switch (e.role) {
        case WeightRole::Vector: {
            ggml_tensor* t = need(s, name, e.shape);
            if (t->type != GGML_TYPE_F32)
                throw InvalidArgument("U-Net: weight '" + name + "' must be stored as f32, got " + ggml_type_name(t->type));
            break;
        }
        case WeightRole::Matrix:
            check_rows(need(s, name, e.shape), name, e.shape[1]);
            break;
        case WeightRole::Projection: {
            const int64_t c = e.shape[0];
            ggml_tensor* t = s.find(name);
            // either layout works (some converters store the other one)
            if (!t || !(same_dims(s.shape(name), {c, c}) || same_dims(s.shape(name), {c, c, 1, 1})))
                need(s, name, e.shape);  // throws with the expected shape
            check_rows(t, name, c);
            break;
        }
        case WeightRole::Conv: {
            ggml_tensor* t = need(s, name, e.shape);
            const int64_t out = e.shape[0], kk = e.shape[1] * e.shape[2] * e.shape[3];
            if (ggml_is_quantized(t->type)) {
                // stored as the matrix [OC, IC*KH*KW] (runtime/weights.h)
                if (t->ne[0] != kk || t->ne[1] != out || ggml_n_dims(t) != 2)
                    throw InvalidArgument("U-Net: quantized convolution weight '" + name + "' is not stored as a [" +
                                          std::to_string(out) + ", " + std::to_string(kk) + "] matrix");
            } else if (t->type != GGML_TYPE_F32 && t->type != GGML_TYPE_F16 && t->type != GGML_TYPE_BF16) {
                throw InvalidArgument("U-Net: convolution weight '" + name +
                                      "' must be f32, f16, bf16, q8_0, q5_0 or q4_0, got " + ggml_type_name(t->type));
            }
            break;
        }
    }
}

}  // namespace

CheckedWeights::CheckedWeights(const WeightStore& s, const std::vector<ExpectedWeight>& list) : s_(s) {
    for (const auto& e : list) {
        check_one(s, e);
        names_.insert(e.name);
    }
}

ggml_tensor* CheckedWeights::operator()(const std::string& name) const {
    if (!names_.count(name)) throw Error("U-Net graph: weight '" + name + "' is not in the checked weight list");
    return s_.find(name);
}

std::vector<std::string> CheckedWeights::unused(const std::string& prefix, const std::vector<std::string>& ignored) const {
    std::vector<std::string> r;
    for (const auto& name : s_.names()) {
        if (name.rfind(prefix, 0) != 0 || names_.count(name)) continue;
        bool skip = false;
        for (const auto& i : ignored) skip = skip || name.rfind(i, 0) == 0;
        if (!skip) r.push_back(name);
    }
    return r;
}

}  // namespace sdcpp
