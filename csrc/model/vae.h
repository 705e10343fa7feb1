// The SD VAE (diffusers AutoencoderKL) on ggml: decoder (latent -> image) and encoder
// (image -> moments), driven by the native VAE config (docs/internals.md §4) and bound to
// weights by canonical diffusers names `<prefix>.<AutoencoderKL state_dict key>`. Built from
// the layer library (csrc/nn): nn::conv2d (ConvMode below selects its bounded-memory
// lowerings), the ResnetBlock2D and mid-block attention shared with the U-Net (nn/blocks.h),
// GroupNorm(+SiLU) as one fused pass on the CPU.
//
// Precision: every matrix product runs in f32 whatever the weights' storage type (f16 / bf16
// weights are widened to f32 inside the graph, one tensor at a time), and convolutions use an
// f32 im2col, so activations are never rounded to f16. This is what keeps the SDXL VAE (whose
// activations exceed f16's range) from producing inf/NaN with f16 weights. ComputeType::BF16
// (CPU) rounds the 3x3 convolutions' im2col and kernels to bf16 (f32's range) for speed.
//
// Memory: a 3x3 convolution's im2col at 512x512 with 256 channels is ~2.4 GB in f32. On the
// CPU, convolutions use a custom im2col op (threads over output rows, implicit zero padding)
// and are computed in horizontal strips of output rows, each strip's im2col bounded by
// `max_im2col_bytes`, written in place into one output tensor. ggml_conv_2d_direct (a bounded
// 16 MB work buffer) is available as an alternative. Other devices use ggml_im2col.
// On the CPU the activations are also overwritten once consumed (nn::resnet_block consume_x):
// the GroupNorms over their inputs, conv1 over norm1's output, conv2 over its residual, so the
// untiled 1024x1024 decode holds at most the upsampled 256-channel activation and one
// 128-channel one at a time (compute buffers 1855 MiB; `memory_trace` shows the live set).
// Speed: on the CPU the default ConvMode::Winograd computes the 3x3 stride-1 convolutions
// (all but the encoder's downsamplers) by Winograd F(4x4, 3x3) in row strips, the decoder's
// nearest-2x upsampling read through by the input transform; with ComputeType::BF16 the
// strips' bf16 im2col is used instead.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../runtime/graph.h"
#include "../runtime/weights.h"
#include "ggml.h"

namespace sdcpp::model {

struct VAEConfig {
    std::vector<int64_t> block_out_channels{128, 256, 512, 512};
    int layers_per_block = 2;
    int64_t latent_channels = 4;
    int64_t in_channels = 3;
    int64_t out_channels = 3;
    int norm_groups = 32;
    float norm_eps = 1e-6f;
    bool mid_attention = true;
    bool use_quant_conv = true;
    bool use_post_quant_conv = true;

    void validate() const;  // throws InvalidArgument
    int64_t factor() const { return int64_t(1) << (block_out_channels.size() - 1); }
};

enum class ConvMode {
    Winograd,  // CPU: 3x3 stride-1 convolutions by Winograd F(4x4, 3x3) in cache-sized row strips
               // (nn/winograd_f43_strips.h); the other convolutions (and other devices) as Strips
    Strips,  // f32 im2col + mul_mat, split into row strips when the im2col exceeds the budget
    Im2col,  // f32 im2col of the whole output at once (fastest when memory is plentiful)
    Direct,  // ggml_conv_2d_direct with f32 kernels (bounded work buffer)
};

// The precision of the 3x3 convolutions' products (everything else is always f32).
enum class ComputeType {
    F32,   // exact: f32 activations and kernels
    BF16,  // CPU only: activations and kernels rounded to bf16 (f32's range, so no overflow), f32 sums
};

struct VAEOptions {
    ConvMode conv = ConvMode::Winograd;
    ComputeType compute = ComputeType::F32;
    bool portable = false;  // CPU: build the graph other devices get (stock ggml ops only; for tests)
    size_t max_im2col_bytes = size_t(128) << 20;   // per strip (ConvMode::Strips)
    size_t max_attention_bytes = size_t(256) << 20;  // score matrix per query chunk
    size_t winograd_strip_bytes = size_t(32) << 20;  // transformed input / products per strip (Winograd)
};

class VAE {
   public:
    VAE(std::shared_ptr<WeightStore> store, VAEConfig config, std::string prefix = "vae");

    const VAEConfig& config() const { return cfg_; }
    bool has_encoder() const { return has_encoder_; }
    bool has_decoder() const { return has_decoder_; }

    VAEOptions options() const { return opt_; }
    void set_options(const VAEOptions& o);

    // Shapes checked by the callers (bindings) through these before any graph is built.
    void check_decode_input(int64_t n, int64_t c, int64_t h, int64_t w) const;
    void check_encode_input(int64_t n, int64_t c, int64_t h, int64_t w) const;

    // z: [n, latent, h, w] (already divided by the scaling factor) -> [n, out, h*f, w*f], f = 2^(levels-1).
    void decode(const float* z, int64_t n, int64_t h, int64_t w, float* out);
    // x: [n, in, H, W] in [-1, 1] -> raw moments [n, 2*latent, H/f, W/f] (quant_conv output).
    void encode(const float* x, int64_t n, int64_t H, int64_t W, float* out);

    void clear();                       // drop cached graphs and compute buffers
    size_t compute_buffer_size() const;  // bytes held by the scheduler's buffers now
    // Compute-buffer bytes one image of this size needs (latent h x w to decode, or image
    // h x w to encode), planned without computing (GraphRunner::measure).
    size_t measure(bool decoder, int64_t h, int64_t w);
    int graph_nodes(bool decoder, int64_t h, int64_t w);
    // The intermediate tensors alive together at the graph's peak (runtime/graph_trace.h; diagnostics).
    std::string memory_trace(bool decoder, int64_t h, int64_t w);

   private:
    std::shared_ptr<WeightStore> store_;
    VAEConfig cfg_;
    std::string prefix_;
    VAEOptions opt_;
    bool has_encoder_ = false;
    bool has_decoder_ = false;
    GraphRunner runner_;
    mutable std::mutex mu_;  // one decode/encode at a time (the GIL is released around them)

    void validate_part(const std::string& part);
    BuiltGraph& decoder_graph(int64_t h, int64_t w);
    BuiltGraph& encoder_graph(int64_t H, int64_t W);
};

}  // namespace sdcpp::model
