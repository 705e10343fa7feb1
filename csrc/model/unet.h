// The config-driven U-Net (diffusers UNet2DConditionModel semantics) on ggml.
//
// One implementation covers SD1, SD2, SDXL and the distilled variants (SSD-1B, Segmind Vega,
// BK-SDM tiny/small/base): they differ only in the native config (docs/internals.md §4).
// Weights are bound by canonical names "unet.<diffusers state_dict key>" from a WeightStore.
#pragma once
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../runtime/graph.h"
#include "../runtime/weights.h"
#include "../nn/attention.h"
#include "../nn/conv2d.h"

namespace sdcpp {

class CheckedWeights;  // model/unet_weights.h

// Whether the self-attention projections (`<prefix>...attn1.to_q.weight`) of the model under
// `prefix` are stored quantized (q8_0 / q5_0 / q4_0): what makes "auto" attention take the
// int8 kernel on the CPU (nn::resolve_attention).
bool quantized_attention(const WeightStore& store, const std::string& prefix);

// Winograd: F(2x2, 3x3) on every eligible convolution; WinogradF43: F(4x4, 3x3) on every
// eligible one with f32 products (F(2x2, 3x3) under compute = bf16). Both forced, for tests.
enum class ConvImpl { Auto, Im2col, Winograd, WinogradF43 };

// The arithmetic of the U-Net's linear layers, convolutions and attention with f32 / f16 / bf16 weights.
enum class Compute {
    F32,   // exact f32 products (f16 / bf16 weights widened): the default
    BF16,  // CPU with AMX-BF16: both operands rounded to bf16, f32 sums (kernels/cpu/gemm_bf16.h),
           // the attention too (the fused AMX-BF16 kernel, kernels/cpu/fused_attention.h), about
           // 1e-2 from f32 on the output; elsewhere as F32
};

struct UNetOptions {
    // Attention: Auto = the faster kernel measured for the device (nn::resolve_attention).
    nn::AttentionKernel attention = nn::AttentionKernel::Auto;
    // 3x3 stride-1 convolutions: Auto = Winograd on the CPU backend (custom ops): F(4x4,3x3)
    // on the larger images (kF43MinPixels, f32 products; SDCPP_WINOGRAD_F43=0: never),
    // F(2x2,3x3) on the others from 256 pixels; im2col + GEMM elsewhere.
    ConvImpl conv = ConvImpl::Auto;
    // CPU: GroupNorm(+SiLU), LayerNorm, GEGLU and (with the flash kernel) attention as fused
    // custom ops; false = stock ggml ops only (what other backends run).
    bool fused = true;
    // CPU, weights mapped from the checkpoint (zero copy): give each module's file pages back
    // (WeightStore::release_mapped_range) as soon as its part of the graph has run, so the
    // process holds about one module's weights at a time and reads the rest back from the page
    // cache every step (memory="low"). Values are unchanged; no effect on other weights.
    bool stream_weights = false;
    Compute compute = Compute::F32;
    // mul_mat attention: queries in chunks whose score matrix is at most this many bytes (on a
    // device also at most Device::max_tensor_bytes). SIZE_MAX: whole matrices on the CPU. Lets
    // the tests run the chunked path at small sizes.
    size_t max_attention_bytes = SIZE_MAX;
};

struct UNetBlockConfig {
    int resnets = 0;
    std::vector<int> depths;  // transformer layers after resnet j (0 = no attention)
    int heads = 1;
    bool resample = false;  // downsample (down blocks) / upsample (up blocks)
};

struct UNetConfig {
    int in_channels = 4;
    int out_channels = 4;
    std::vector<int> block_out_channels;
    int norm_groups = 32;
    float norm_eps = 1e-5f;
    int time_proj_dim = 320;
    int time_embed_dim = 1280;
    bool flip_sin_to_cos = true;
    float freq_shift = 0.0f;
    int cross_attention_dim = 768;
    bool use_linear_projection = false;
    std::vector<UNetBlockConfig> down, up;
    std::string mid_type = "cross_attn";  // "cross_attn" | "resnet" | "none"
    int mid_depth = 1;
    int mid_heads = 8;
    // SDXL "text_time" addition embedding (add_time_dim == 0: none).
    int add_time_dim = 0;  // sinusoid width per time id
    int add_in_dim = 0;    // pooled text width + 6 * add_time_dim

    int pooled_dim() const { return add_in_dim - 6 * add_time_dim; }
    int downsamplers() const;
    void validate() const;  // throws InvalidArgument naming the bad field
};

// Sinusoidal timestep embedding with diffusers' get_timestep_embedding formula
// (max_period 10000, float32 arithmetic in the same order): out [n, dim].
void timestep_sinusoid(const float* t, int64_t n, int dim, bool flip_sin_to_cos, float freq_shift, float* out);

class UNet {
   public:
    // Checks every weight the config needs (presence, shape, type; model/unet_weights.h) before
    // anything else.
    UNet(std::shared_ptr<const WeightStore> store, UNetConfig cfg);
    ~UNet();

    const UNetConfig& config() const { return cfg_; }
    // 2^downsamplers. Any H and W work (up blocks resize to the skip's size, as diffusers does);
    // multiples of this need no resizing.
    int64_t spatial_multiple() const { return int64_t(1) << cfg_.downsamplers(); }

    // latent [B, in_channels, H, W], timesteps [B], context [B, L, cross_attention_dim],
    // text_embeds [B, pooled_dim] and time_ids [B, 6] (only with the text_time embedding,
    // else nullptr); out [B, out_channels, H, W]. All host float32, C-contiguous.
    void forward(int64_t B, int64_t H, int64_t W, int64_t L, const float* latent, const float* timesteps,
                 const float* context, const float* text_embeds, const float* time_ids, float* out,
                 const float* const* residuals = nullptr);
    // ControlNet residuals: `residuals` holds skip_count() arrays, one per skip connection
    // (diffusers' down_block_additional_residuals, the skips' shapes), then the mid-block one.
    size_t skip_count() const;

    // Throws InvalidArgument when the shapes cannot be run (called by forward).
    void check_shapes(int64_t B, int64_t H, int64_t W, int64_t L, bool has_text_embeds, bool has_time_ids) const;

    // Kernel choices (cached graphs are dropped when they change).
    void set_options(const UNetOptions& opt);
    const UNetOptions& options() const { return opt_; }
    // The attention kernel "auto" resolves to on this store's device and weight type.
    nn::AttentionKernel resolved_attention() const;
    ConvImpl resolved_conv() const;

    // "unet." weights of the store that this config does not use (a config / checkpoint
    // mismatch when not empty; LCM's time_embedding.cond_proj is not listed).
    const std::vector<std::string>& unused_weights() const { return unused_; }

    // Per-node timing of one forward pass (zero inputs) through a private scheduler that
    // stops after every node: for profiling only (slower than forward()).
    struct NodeTime {
        std::string op, name, shape, src0, src1;
        double us;      // wall time
        double cpu_us;  // CPU time of the calling thread (all of it with 1 thread)
    };
    std::vector<NodeTime> profile(int64_t B, int64_t H, int64_t W, int64_t L);

    // Compute-buffer bytes a forward pass of these shapes needs (GraphRunner::measure).
    size_t measure(int64_t B, int64_t H, int64_t W, int64_t L);
    void clear();  // drop cached graphs and compute buffers
    size_t compute_buffer_size() const;
    int64_t graph_nodes(int64_t B, int64_t H, int64_t W, int64_t L);

    // stream_weights: one module's mapped byte runs (model/unet.cpp; public for its graph node)
    struct StreamSegment;

   private:
    friend class UNetBlocks;
    struct Builder;  // the graph (model/unet.cpp)
    std::shared_ptr<const WeightStore> store_;
    UNetConfig cfg_;
    UNetOptions opt_;
    std::unique_ptr<CheckedWeights> weights_;  // the store, checked against unet_weights(cfg_)
    std::vector<std::string> unused_;
    std::unique_ptr<GraphRunner> runner_;
    std::mutex mu_;
    bool quantized_ = false;  // quantized_attention(store, "unet."), fixed at construction
    // stream_weights: the mapped byte ranges of each module, by module name, made when a graph
    // first needs them and kept (graph nodes point at them) for the model's lifetime.
    mutable std::map<std::string, std::unique_ptr<StreamSegment>> segments_;
    const StreamSegment* segment(const std::string& module) const;
    bool streams() const;  // stream_weights applies: CPU device and mapped weights


    void build(ggml_context* ctx, BuiltGraph& g, int64_t B, int64_t H, int64_t W, int64_t L, bool residuals = false) const;
    std::string key(int64_t B, int64_t H, int64_t W, int64_t L) const;
};

// The U-Net's graph blocks for networks that copy them (ControlNet, model/controlnet.*): the
// same builder and kernel choices over weights under another prefix. Builds only: the weights
// come from a store checked against a list made with UNetWeightList (model/unet_weights.h).
class UNetBlocks {
   public:
    // `quantized`: quantized_attention() of the copying network's weights.
    UNetBlocks(const CheckedWeights& w, const UNetConfig& cfg, ggml_context* ctx, const UNetOptions& opt, bool quantized);
    ~UNetBlocks();
    // SiLU of the time (+ add) embedding [E, N].
    ggml_tensor* time_embedding(const std::string& pfx, ggml_tensor* t_sin, ggml_tensor* add_in) const;
    // conv_in (+ conv_in_add), down blocks, mid block: returns the mid output; `skips` get the
    // U-Net's skip connections in order.
    ggml_tensor* encode(const std::string& pfx, ggml_tensor* x, ggml_tensor* temb_act, ggml_tensor* context,
                        ggml_tensor* conv_in_add, std::vector<ggml_tensor*>& skips) const;
    // The resolved kernel choices, for graph cache keys (a graph built under other choices differs).
    static std::string kernel_key(const UNetOptions& opt, const Device& device, bool quantized);
    // A convolution with the U-Net's kernel choice ("name.weight", "name.bias"), padding `pad`.
    ggml_tensor* conv(ggml_tensor* x, const std::string& name, int stride, int pad) const;

   private:
    std::unique_ptr<UNet::Builder> b_;
};

}  // namespace sdcpp
