// The tiny autoencoder (TAESD / TAESDXL; diffusers AutoencoderTiny) on ggml.
//
// Both halves are plain sequences of 3x3 convolutions, ReLUs, residual blocks and 2x
// upsamplings, so the model is an interpreter of a short op list that Python derives from the
// config (sdcpp/engine/taesd.py), each op naming its weights `<prefix>.<diffusers name>`:
//   conv    conv2d (3x3, padding 1, the op's stride; bias when the store has one)
//   relu    ReLU
//   block   AutoencoderTinyBlock: relu(conv.4(relu(conv.2(relu(conv.0(x))))) + skip(x)), skip a
//           1x1 conv when `<name>.skip.weight` exists, else the identity
//   up      nearest 2x upsampling
// decode(): z -> tanh(z / 3) * 3 -> ops -> 2x - 1 (an image in [-1, 1]);
// encode(): image in [-1, 1] -> (x + 1) / 2 -> ops -> latents. Activations in f32.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../runtime/graph.h"
#include "../runtime/weights.h"

namespace sdcpp::model {

struct TinyOp {
    std::string kind;  // "conv" | "relu" | "block" | "up"
    std::string name;  // weights (conv, block)
    int stride = 1;
};

class TinyAutoencoder {
   public:
    // Checks that every op's weights are in the store (decoder and/or encoder may be empty).
    TinyAutoencoder(std::shared_ptr<WeightStore> store, std::string prefix, std::vector<TinyOp> decoder,
                    std::vector<TinyOp> encoder, int64_t latent_channels);

    bool has_decoder() const { return !decoder_.empty(); }
    bool has_encoder() const { return !encoder_.empty(); }
    int64_t factor() const;  // pixels per latent (2 ** upsamplings)

    // z [n, latent_channels, h, w] -> out [n, 3, h * factor, w * factor]; one image at a time.
    void decode(const float* z, int64_t n, int64_t h, int64_t w, float* out);
    // x [n, 3, H, W] in [-1, 1] -> out [n, latent_channels, H / factor, W / factor].
    void encode(const float* x, int64_t n, int64_t H, int64_t W, float* out);

    void clear();
    size_t compute_buffer_size() const { return runner_.compute_buffer_size(); }

   private:
    ggml_tensor* run_ops(ggml_context* ctx, ggml_tensor* x, const std::vector<TinyOp>& ops) const;
    void check_ops(const std::vector<TinyOp>& ops) const;

    std::shared_ptr<WeightStore> store_;
    std::string prefix_;
    std::vector<TinyOp> decoder_, encoder_;
    int64_t latent_channels_;
    GraphRunner runner_;
    mutable std::mutex mu_;
};

}  // namespace sdcpp::model
