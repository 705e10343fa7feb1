// CLIP text transformer (transformers' CLIPTextModel / CLIPTextModelWithProjection) on ggml.
//
// Covers OpenAI CLIP ViT-L/14 (SD1, SDXL encoder 1: quick_gelu), OpenCLIP ViT-H/14 (SD2: gelu)
// and OpenCLIP ViT-bigG/14 (SDXL encoder 2: gelu + text_projection). Weights are bound by
// canonical transformers names under a prefix ("text_encoder." / "text_encoder_2."):
//   text_model.embeddings.{token,position}_embedding.weight
//   text_model.encoder.layers.{i}.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1, mlp.fc2}
//   text_model.final_layer_norm, text_projection.weight (only when projection_dim > 0)
// Pre-LN blocks, causal self-attention with scale 1/sqrt(head_dim).
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../runtime/device.h"
#include "../runtime/graph.h"
#include "../runtime/weights.h"

namespace sdcpp::model {

enum class ClipActivation { QuickGelu, Gelu };

// The native text-encoder config (docs/internals.md §4).
struct ClipTextConfig {
    int64_t hidden_size = 768;
    int64_t intermediate_size = 3072;
    int64_t num_heads = 12;
    int64_t num_layers = 12;
    int64_t vocab_size = 49408;
    int64_t max_positions = 77;
    ClipActivation act = ClipActivation::QuickGelu;
    float eps = 1e-5f;
    int64_t projection_dim = 0;  // 0 = no text_projection

    void validate() const;  // throws InvalidArgument on nonsense values
};

ClipActivation parse_clip_activation(const std::string& name);  // "quick_gelu" | "gelu"

class ClipTextEncoder {
   public:
    // Checks that every weight the config needs is in the store with the right shape
    // (and that vectors are f32) before any graph is built.
    ClipTextEncoder(std::shared_ptr<WeightStore> store, std::string prefix, ClipTextConfig cfg);

    const ClipTextConfig& config() const { return cfg_; }
    const std::string& prefix() const { return prefix_; }
    int64_t pooled_dim() const { return cfg_.projection_dim > 0 ? cfg_.projection_dim : cfg_.hidden_size; }

    // ids: int32 [B, L] row-major, 1 <= L <= max_positions, every id in [0, vocab_size + n_extra).
    // layers: transformer layers whose output is returned (1..num_layers).
    // final_norm: apply final_layer_norm to the returned hidden states.
    // pooled_index: nullptr (no pooled output) or int32 [B], each in [0, L): the position whose
    //   final-LN output of the LAST layer is pooled (and projected when projection_dim > 0).
    // hidden_out: [B, L, hidden_size] f32; pooled_out: [B, pooled_dim()] f32 (when pooled_index).
    // extra: nullptr or f32 [n_extra, hidden_size]: input embeddings for ids vocab_size + i
    //   (textual-inversion vectors), used in place of token_embedding rows.
    // Validates everything before touching ggml; thread-safe (one call at a time).
    void encode(const int32_t* ids, int64_t batch, int64_t length, int layers, bool final_norm,
                const int32_t* pooled_index, float* hidden_out, float* pooled_out, const float* extra = nullptr,
                int64_t n_extra = 0);

    void clear();  // drop cached graphs and compute buffers
    size_t compute_buffer_size() const;

   private:
    std::string name(const std::string& rel) const { return prefix_ + rel; }
    void check_weights() const;
    void build(ggml_context* ctx, BuiltGraph& g, int64_t batch, int64_t length, int layers, bool final_norm,
               bool pooled, int64_t n_extra) const;

    std::shared_ptr<WeightStore> store_;
    std::string prefix_;
    ClipTextConfig cfg_;
    GraphRunner runner_;
    mutable std::mutex mutex_;
};

}  // namespace sdcpp::model
