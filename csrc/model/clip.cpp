#include "clip.h"

#include <algorithm>
#include <numeric>

#include "../nn/attention.h"
#include "../nn/layers.h"
#include "../runtime/error.h"
#include "ggml.h"

namespace sdcpp::model {

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
    std::string out = "(";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + (s.size() == 1 ? ",)" : ")");
}

// Every 1-D graph input holds a multiple of 16 four-byte entries (64 bytes): ggml's CPU
// allocator aligns tensors to 32 bytes only, and one odd-sized input shifts every later
// activation off the 64-byte lines that the AVX-512 matrix kernels load fastest (measured:
// 25% slower products). The graph reads a view of the first n entries.
int64_t padded(int64_t n) { return (n + 15) / 16 * 16; }

ggml_tensor* input_1d(ggml_context* ctx, BuiltGraph& g, const char* name, ggml_type type, int64_t n) {
    ggml_tensor* t = ggml_new_tensor_1d(ctx, type, padded(n));
    ggml_set_name(t, name);
    g.inputs[name] = t;
    return ggml_view_1d(ctx, t, n, 0);
}

}  // namespace

void ClipTextConfig::validate() const {
    SD_CHECK(hidden_size > 0, "text encoder config: hidden_size must be positive");
    SD_CHECK(intermediate_size > 0, "text encoder config: intermediate_size must be positive");
    SD_CHECK(num_heads > 0, "text encoder config: num_heads must be positive");
    SD_CHECK(hidden_size % num_heads == 0, "text encoder config: hidden_size " + std::to_string(hidden_size) +
                                               " is not divisible by num_heads " + std::to_string(num_heads));
    SD_CHECK(num_layers > 0, "text encoder config: num_layers must be positive");
    SD_CHECK(vocab_size > 0 && vocab_size <= INT32_MAX, "text encoder config: vocab_size out of range");
    SD_CHECK(max_positions > 0, "text encoder config: max_positions must be positive");
    SD_CHECK(eps > 0.0f, "text encoder config: eps must be positive");
    SD_CHECK(projection_dim >= 0, "text encoder config: projection_dim must be >= 0");
}

ClipActivation parse_clip_activation(const std::string& name) {
    if (name == "quick_gelu") return ClipActivation::QuickGelu;
    if (name == "gelu") return ClipActivation::Gelu;
    throw InvalidArgument("text encoder config: act must be 'quick_gelu' or 'gelu', got '" + name + "'");
}

ClipTextEncoder::ClipTextEncoder(std::shared_ptr<WeightStore> store, std::string prefix, ClipTextConfig cfg)
    : store_(std::move(store)), prefix_(std::move(prefix)), cfg_(cfg), runner_(store_ ? store_->device() : nullptr) {
    SD_CHECK(store_ != nullptr, "text encoder: no weight store");
    SD_CHECK(store_->allocated(), "text encoder: the weight store is not allocated/filled yet");
    cfg_.validate();
    check_weights();
}

void ClipTextEncoder::check_weights() const {
    const int64_t C = cfg_.hidden_size, F = cfg_.intermediate_size;
    auto expect = [&](const std::string& rel, const std::vector<int64_t>& shape) {
        const std::string n = name(rel);
        ggml_tensor* t = store_->find(n);
        SD_CHECK(t != nullptr, "text encoder: missing weight '" + n + "'");
        const auto got = store_->shape(n);
        SD_CHECK(got == shape, "text encoder: weight '" + n + "' has shape " + shape_str(got) + ", expected " +
                                   shape_str(shape) + " for this config");
        if (shape.size() == 1)
            SD_CHECK(t->type == GGML_TYPE_F32, "text encoder: weight '" + n + "' must be stored as f32 (it is " +
                                                   ggml_type_name(t->type) + ")");
    };
    auto linear = [&](const std::string& rel, int64_t in, int64_t out, bool bias) {
        expect(rel + ".weight", {out, in});
        if (bias) expect(rel + ".bias", {out});
    };
    auto norm = [&](const std::string& rel) {
        expect(rel + ".weight", {C});
        expect(rel + ".bias", {C});
    };
    expect("text_model.embeddings.token_embedding.weight", {cfg_.vocab_size, C});
    expect("text_model.embeddings.position_embedding.weight", {cfg_.max_positions, C});
    for (int64_t i = 0; i < cfg_.num_layers; ++i) {
        const std::string p = "text_model.encoder.layers." + std::to_string(i) + ".";
        norm(p + "layer_norm1");
        for (const char* proj : {"q_proj", "k_proj", "v_proj", "out_proj"}) linear(p + "self_attn." + proj, C, C, true);
        norm(p + "layer_norm2");
        linear(p + "mlp.fc1", C, F, true);
        linear(p + "mlp.fc2", F, C, true);
    }
    norm("text_model.final_layer_norm");
    if (cfg_.projection_dim > 0) expect("text_projection.weight", {cfg_.projection_dim, C});
}

void ClipTextEncoder::build(ggml_context* ctx, BuiltGraph& g, int64_t B, int64_t L, int layers, bool final_norm,
                            bool pooled, int64_t n_extra) const {
    const int64_t C = cfg_.hidden_size;
    const WeightStore& ws = *store_;
    const nn::Params root{ws, prefix_ + "text_model"};
    // On the CPU, LayerNorm and the MLP activation are single-pass fused ops (kernels/cpu, the
    // active CPU level's row kernels); other backends get stock ggml ops.
    const bool custom_ops = nn::custom_ops_allowed(*ws.device());
    auto norm = [&](ggml_tensor* t, const nn::Params& p) { return nn::layer_norm(ctx, t, p.weight(), p.bias(), cfg_.eps, custom_ops); };
    auto activation = [&](ggml_tensor* t) {
        if (cfg_.act == ClipActivation::QuickGelu) return nn::quick_gelu(ctx, t, custom_ops);
        return nn::gelu(ctx, t, custom_ops);
    };
    nn::AttentionOptions attn;  // causal: mul_mat + soft_max in f32
    attn.causal = true;
    attn.custom_ops = custom_ops;

    ggml_tensor* ids = input_1d(ctx, g, "ids", GGML_TYPE_I32, L * B);  // row-major [B, L]
    ggml_tensor* pos = input_1d(ctx, g, "positions", GGML_TYPE_I32, L);

    ggml_tensor* x = ggml_get_rows(ctx, root.sub("embeddings.token_embedding").weight(), ids);  // [C, L*B]
    if (n_extra > 0) {
        // Extra (textual-inversion) vectors: vocabulary rows masked to zero where an extra id
        // stands, plus rows of [0 | extra] (row 0 zero for vocabulary tokens): exact in f32.
        ggml_tensor* mask = input_1d(ctx, g, "vocab_mask", GGML_TYPE_F32, L * B);
        ggml_tensor* extra_ids = input_1d(ctx, g, "extra_ids", GGML_TYPE_I32, L * B);
        ggml_tensor* extra = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, C, n_extra + 1);
        ggml_set_name(extra, "extra");
        g.inputs["extra"] = extra;
        x = ggml_mul(ctx, x, ggml_reshape_2d(ctx, mask, 1, L * B));
        x = ggml_add(ctx, x, ggml_get_rows(ctx, extra, extra_ids));
    }
    x = ggml_reshape_3d(ctx, x, C, L, B);
    ggml_tensor* pe = ggml_get_rows(ctx, root.sub("embeddings.position_embedding").weight(), pos);  // [C, L]
    x = ggml_add(ctx, x, pe);

    // The pooled vector comes from the last layer, so all layers run when it is wanted.
    const int run = pooled ? static_cast<int>(cfg_.num_layers) : layers;
    ggml_tensor* hidden = nullptr;
    for (int i = 0; i < run; ++i) {
        const nn::Params lp = root.sub("encoder.layers." + std::to_string(i));
        ggml_tensor* h = norm(x, lp.sub("layer_norm1"));
        const nn::Params at = lp.sub("self_attn");
        ggml_tensor* q = nn::linear(ctx, h, at.sub("q_proj"), custom_ops);
        ggml_tensor* k = nn::linear(ctx, h, at.sub("k_proj"), custom_ops);
        ggml_tensor* v = nn::linear(ctx, h, at.sub("v_proj"), custom_ops);
        ggml_tensor* a = nn::attention(ctx, q, k, v, static_cast<int>(cfg_.num_heads), attn);
        x = ggml_add(ctx, x, nn::linear(ctx, a, at.sub("out_proj"), custom_ops));

        h = norm(x, lp.sub("layer_norm2"));
        h = activation(nn::linear(ctx, h, lp.sub("mlp.fc1"), custom_ops));
        x = ggml_add(ctx, x, nn::linear(ctx, h, lp.sub("mlp.fc2"), custom_ops));

        if (i + 1 == layers) hidden = final_norm ? norm(x, root.sub("final_layer_norm")) : x;
    }
    g.outputs.push_back(hidden);

    if (pooled) {
        ggml_tensor* rows = input_1d(ctx, g, "pooled_rows", GGML_TYPE_I32, B);  // b * L + pooled_index[b]
        // Final LN is per token, so normalising only the pooled rows gives the same values.
        ggml_tensor* p = ggml_get_rows(ctx, ggml_reshape_2d(ctx, x, C, L * B), rows);  // [C, B]
        p = norm(p, root.sub("final_layer_norm"));
        if (cfg_.projection_dim > 0) p = ggml_mul_mat(ctx, ws.get(prefix_ + "text_projection.weight"), p);  // [P, B]
        g.outputs.push_back(p);
    }
}

void ClipTextEncoder::encode(const int32_t* ids, int64_t B, int64_t L, int layers, bool final_norm,
                             const int32_t* pooled_index, float* hidden_out, float* pooled_out, const float* extra,
                             int64_t n_extra) {
    SD_CHECK(ids != nullptr && hidden_out != nullptr, "text encoder: null buffer");
    SD_CHECK(B >= 1, "text encoder: batch size must be >= 1");
    SD_CHECK(L >= 1 && L <= cfg_.max_positions, "text encoder: sequence length " + std::to_string(L) +
                                                    " must be between 1 and " + std::to_string(cfg_.max_positions));
    SD_CHECK(layers >= 1 && layers <= cfg_.num_layers, "text encoder: layers must be between 1 and " +
                                                           std::to_string(cfg_.num_layers) + ", got " +
                                                           std::to_string(layers));
    SD_CHECK(n_extra >= 0 && (n_extra == 0 || extra != nullptr), "text encoder: extra embeddings without data");
    const int64_t V = cfg_.vocab_size;
    for (int64_t i = 0; i < B * L; ++i)
        SD_CHECK(ids[i] >= 0 && ids[i] < V + n_extra,
                 "text encoder: token id " + std::to_string(ids[i]) + " at position " + std::to_string(i % L) +
                     " of row " + std::to_string(i / L) + " is outside [0, " + std::to_string(V + n_extra) + ")");
    const bool pooled = pooled_index != nullptr;
    std::vector<int32_t> rows;
    if (pooled) {
        SD_CHECK(pooled_out != nullptr, "text encoder: null pooled buffer");
        rows.assign(padded(B), 0);
        for (int64_t b = 0; b < B; ++b) {
            SD_CHECK(pooled_index[b] >= 0 && pooled_index[b] < L,
                     "text encoder: pooled_index[" + std::to_string(b) + "] = " + std::to_string(pooled_index[b]) +
                         " is outside [0, " + std::to_string(L) + ")");
            rows[b] = static_cast<int32_t>(b * L + pooled_index[b]);
        }
    }
    // Host copies of the (padded) 1-D inputs.
    std::vector<int32_t> positions(padded(L), 0);
    std::iota(positions.begin(), positions.begin() + L, 0);
    std::vector<int32_t> vocab_ids(padded(B * L), 0), extra_ids;
    std::vector<float> mask, extra_rows;
    for (int64_t i = 0; i < B * L; ++i) vocab_ids[i] = ids[i] < V ? ids[i] : 0;
    if (n_extra > 0) {
        mask.assign(padded(B * L), 0.0f);
        extra_ids.assign(padded(B * L), 0);
        for (int64_t i = 0; i < B * L; ++i) {
            mask[i] = ids[i] < V ? 1.0f : 0.0f;
            extra_ids[i] = ids[i] < V ? 0 : static_cast<int32_t>(ids[i] - V + 1);
        }
        const int64_t C = cfg_.hidden_size;
        extra_rows.assign((n_extra + 1) * C, 0.0f);
        std::copy(extra, extra + n_extra * C, extra_rows.begin() + C);
    }

    std::lock_guard<std::mutex> lock(mutex_);
    const std::string key = std::to_string(B) + "x" + std::to_string(L) + "/l" + std::to_string(layers) +
                            (final_norm ? "/n" : "/-") + (pooled ? "/p" : "/-") + "/e" + std::to_string(n_extra);
    BuiltGraph& g = runner_.get(key, [&](ggml_context* ctx, BuiltGraph& gr) {
        build(ctx, gr, B, L, layers, final_norm, pooled, n_extra);
    });
    std::map<std::string, const void*> in{{"ids", vocab_ids.data()}, {"positions", positions.data()}};
    if (pooled) in["pooled_rows"] = rows.data();
    if (n_extra > 0) {
        in["vocab_mask"] = mask.data();
        in["extra_ids"] = extra_ids.data();
        in["extra"] = extra_rows.data();
    }
    runner_.run(g, in);
    runner_.read_output(g, 0, hidden_out);
    if (pooled) runner_.read_output(g, 1, pooled_out);
}

void ClipTextEncoder::clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    runner_.clear();
}

size_t ClipTextEncoder::compute_buffer_size() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return runner_.compute_buffer_size();
}

}  // namespace sdcpp::model
