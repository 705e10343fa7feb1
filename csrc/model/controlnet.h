// ControlNet (diffusers ControlNetModel semantics) on ggml: the U-Net's time embedding, conv_in,
// down blocks and mid block (the same config-driven blocks, model/unet.h UNetBlocks) over
// weights "controlnet.<diffusers ControlNetModel state_dict key>", plus the conditioning
// embedding of the control image (a conv stack with SiLU at pixel resolution, added after
// conv_in) and the zero 1x1 convolutions whose outputs the U-Net adds to its skip connections
// and mid-block output (UNet::forward's residuals).
#pragma once
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../runtime/graph.h"
#include "../runtime/weights.h"
#include "unet.h"

namespace sdcpp {

struct ControlNetConfig {
    UNetConfig unet;                            // the encoder half (the up blocks are unused)
    int cond_channels = 3;                      // control image channels
    std::vector<int> embedding_channels;        // conditioning_embedding_out_channels
};

// [C, h, w] of the U-Net's skip connections for a latent of H x W, in order, then the mid
// block output's: the shapes of ControlNet residuals (UNet::forward's `residuals`).
std::vector<std::vector<int64_t>> unet_residual_shapes(const UNetConfig& cfg, int64_t H, int64_t W);

class ControlNet {
   public:
    // Checks every weight the config needs before anything else.
    ControlNet(std::shared_ptr<const WeightStore> store, ControlNetConfig cfg);
    ~ControlNet();

    const ControlNetConfig& config() const { return cfg_; }
    // Pixels per latent cell the conditioning embedding reduces by (2^(stride-2 convs)).
    int64_t cond_factor() const { return int64_t(1) << (cfg_.embedding_channels.size() - 1); }
    // Number of residuals: one per U-Net skip connection, then the mid block's.
    size_t residual_count() const { return skip_channels_.size() + 1; }
    // [C, h, w] of each residual for a latent of H x W.
    std::vector<std::vector<int64_t>> residual_shapes(int64_t H, int64_t W) const;

    // latent [B, C, H, W], timesteps [B], context [B, L, D], cond [B, cond_channels, H*f, W*f]
    // (f = cond_factor()), text_embeds / time_ids as UNet::forward. out[i] receives residual i
    // (residual_shapes), each multiplied by `scale`.
    void forward(int64_t B, int64_t H, int64_t W, int64_t L, const float* latent, const float* timesteps,
                 const float* context, const float* cond, const float* text_embeds, const float* time_ids, float scale,
                 const std::vector<float*>& out);
    void check_shapes(int64_t B, int64_t H, int64_t W, int64_t L, bool has_text_embeds, bool has_time_ids) const;

    // The U-Net's options (attention, convolution, fused ops, compute): the encoder is built by the
    // U-Net's own lowering, so compute BF16 means here what it means for the U-Net.
    void set_options(const UNetOptions& opt);
    const UNetOptions& options() const { return opt_; }
    const std::vector<std::string>& unused_weights() const { return unused_; }
    void clear();

   private:
    std::shared_ptr<const WeightStore> store_;
    ControlNetConfig cfg_;
    UNetOptions opt_;
    std::unique_ptr<CheckedWeights> weights_;  // the store, checked against the config's weight list
    std::vector<int64_t> skip_channels_;       // from the weight list
    std::vector<std::string> unused_;
    std::unique_ptr<GraphRunner> runner_;
    std::mutex mu_;
    bool quantized_ = false;  // quantized_attention(store, "controlnet."): "auto" attention takes int8 on the CPU

    // The whole graph over the checked weights; returns the residuals.
    std::vector<ggml_tensor*> build(ggml_context* ctx, ggml_tensor* x, ggml_tensor* t_sin, ggml_tensor* context,
                                    ggml_tensor* cond, ggml_tensor* add_in) const;
    std::string key(int64_t B, int64_t H, int64_t W, int64_t L) const;
};

}  // namespace sdcpp
