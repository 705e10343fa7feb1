#include "clip.h"

#include <numeric>

#include "../kernels/cpu/fused_ops.h"
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

// x * sigmoid(1.702 x) in f32. ggml's GELU_QUICK on the CPU reads an f16 lookup table
// (inputs rounded to f16), so it is built from precise ops instead.
ggml_tensor* quick_gelu(ggml_context* ctx, ggml_tensor* x) {
    return ggml_mul(ctx, x, ggml_sigmoid(ctx, ggml_scale(ctx, x, 1.702f)));
}

// Entries of the pooled-rows input: B rounded up to 16 int32 (64 bytes).
int64_t padded_rows(int64_t B) { return (B + 15) / 16 * 16; }

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
                            bool pooled) const {
    const int64_t C = cfg_.hidden_size;
    const WeightStore& ws = *store_;
    const nn::Params root{ws, prefix_ + "text_model"};
    // On the CPU, LayerNorm and the MLP activation are single-pass fused ops (kernels/cpu, the
    // active CPU level's row kernels); other backends get stock ggml ops.
    const bool fused = ws.device()->is_cpu();
    auto norm = [&](ggml_tensor* t, const nn::Params& p) {
        if (!fused) return nn::layer_norm(ctx, t, p, cfg_.eps);
        return fused::layer_norm(ctx, t, p.weight(), p.bias(), cfg_.eps);
    };
    auto activation = [&](ggml_tensor* t) {
        if (cfg_.act == ClipActivation::QuickGelu) return fused ? fused::quick_gelu(ctx, t) : quick_gelu(ctx, t);
        return fused ? fused::gelu(ctx, t) : ggml_gelu_erf(ctx, t);
    };

    ggml_tensor* ids = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, L * B);  // row-major [B, L]
    ggml_set_name(ids, "ids");
    g.inputs["ids"] = ids;
    ggml_tensor* pos = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, L);
    ggml_set_name(pos, "positions");
    g.inputs["positions"] = pos;

    ggml_tensor* x = ggml_get_rows(ctx, root.sub("embeddings.token_embedding").weight(), ids);  // [C, L*B]
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
        ggml_tensor* q = nn::linear(ctx, h, at.sub("q_proj"));
        ggml_tensor* k = nn::linear(ctx, h, at.sub("k_proj"));
        ggml_tensor* v = nn::linear(ctx, h, at.sub("v_proj"));
        ggml_tensor* a = nn::attention(ctx, q, k, v, static_cast<int>(cfg_.num_heads), /*causal=*/true);
        x = ggml_add(ctx, x, nn::linear(ctx, a, at.sub("out_proj")));

        h = norm(x, lp.sub("layer_norm2"));
        h = activation(nn::linear(ctx, h, lp.sub("mlp.fc1")));
        x = ggml_add(ctx, x, nn::linear(ctx, h, lp.sub("mlp.fc2")));

        if (i + 1 == layers) hidden = final_norm ? norm(x, root.sub("final_layer_norm")) : x;
    }
    g.outputs.push_back(hidden);

    if (pooled) {
        // b * L + pooled_index[b], padded to 64 bytes: the CPU allocator aligns tensors to 32
        // bytes only, and one odd-sized input shifts every later activation off the 64-byte
        // lines that the AVX-512 matrix kernels load fastest (measured: 25% slower products).
        ggml_tensor* rows = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, padded_rows(B));
        ggml_set_name(rows, "pooled_rows");
        g.inputs["pooled_rows"] = rows;
        // Final LN is per token, so normalising only the pooled rows gives the same values.
        ggml_tensor* p = ggml_get_rows(ctx, ggml_reshape_2d(ctx, x, C, L * B), ggml_view_1d(ctx, rows, B, 0));  // [C, B]
        p = norm(p, root.sub("final_layer_norm"));
        if (cfg_.projection_dim > 0) p = ggml_mul_mat(ctx, ws.get(prefix_ + "text_projection.weight"), p);  // [P, B]
        g.outputs.push_back(p);
    }
}

void ClipTextEncoder::encode(const int32_t* ids, int64_t B, int64_t L, int layers, bool final_norm,
                             const int32_t* pooled_index, float* hidden_out, float* pooled_out) {
    SD_CHECK(ids != nullptr && hidden_out != nullptr, "text encoder: null buffer");
    SD_CHECK(B >= 1, "text encoder: batch size must be >= 1");
    SD_CHECK(L >= 1 && L <= cfg_.max_positions, "text encoder: sequence length " + std::to_string(L) +
                                                    " must be between 1 and " + std::to_string(cfg_.max_positions));
    SD_CHECK(layers >= 1 && layers <= cfg_.num_layers, "text encoder: layers must be between 1 and " +
                                                           std::to_string(cfg_.num_layers) + ", got " +
                                                           std::to_string(layers));
    for (int64_t i = 0; i < B * L; ++i)
        SD_CHECK(ids[i] >= 0 && ids[i] < cfg_.vocab_size,
                 "text encoder: token id " + std::to_string(ids[i]) + " at position " + std::to_string(i % L) +
                     " of row " + std::to_string(i / L) + " is outside [0, " + std::to_string(cfg_.vocab_size) + ")");
    const bool pooled = pooled_index != nullptr;
    std::vector<int32_t> rows;
    if (pooled) {
        SD_CHECK(pooled_out != nullptr, "text encoder: null pooled buffer");
        rows.assign(padded_rows(B), 0);
        for (int64_t b = 0; b < B; ++b) {
            SD_CHECK(pooled_index[b] >= 0 && pooled_index[b] < L,
                     "text encoder: pooled_index[" + std::to_string(b) + "] = " + std::to_string(pooled_index[b]) +
                         " is outside [0, " + std::to_string(L) + ")");
            rows[b] = static_cast<int32_t>(b * L + pooled_index[b]);
        }
    }
    std::vector<int32_t> positions(L);
    std::iota(positions.begin(), positions.end(), 0);

    std::lock_guard<std::mutex> lock(mutex_);
    const std::string key = std::to_string(B) + "x" + std::to_string(L) + "/l" + std::to_string(layers) +
                            (final_norm ? "/n" : "/-") + (pooled ? "/p" : "/-");
    BuiltGraph& g = runner_.get(key, [&](ggml_context* ctx, BuiltGraph& gr) {
        build(ctx, gr, B, L, layers, final_norm, pooled);
    });
    std::map<std::string, const void*> in{{"ids", ids}, {"positions", positions.data()}};
    if (pooled) in["pooled_rows"] = rows.data();
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
