#include "taesd.h"

#include "../nn/conv2d.h"
#include "../nn/layers.h"
#include "../runtime/error.h"
#include "ggml.h"

namespace sdcpp::model {

TinyAutoencoder::TinyAutoencoder(std::shared_ptr<WeightStore> store, std::string prefix, std::vector<TinyOp> decoder,
                                 std::vector<TinyOp> encoder, int64_t latent_channels)
    : store_(std::move(store)),
      prefix_(std::move(prefix)),
      decoder_(std::move(decoder)),
      encoder_(std::move(encoder)),
      latent_channels_(latent_channels),
      runner_(store_ ? store_->device() : nullptr) {
    SD_CHECK(store_ != nullptr && store_->allocated(), "tiny autoencoder: no allocated weight store");
    SD_CHECK(latent_channels_ > 0, "tiny autoencoder: latent_channels must be positive");
    SD_CHECK(has_decoder() || has_encoder(), "tiny autoencoder: neither a decoder nor an encoder");
    check_ops(decoder_);
    check_ops(encoder_);
}

void TinyAutoencoder::check_ops(const std::vector<TinyOp>& ops) const {
    for (const TinyOp& op : ops) {
        if (op.kind == "conv") {
            SD_CHECK(store_->has(prefix_ + op.name + ".weight"), "tiny autoencoder: missing weight '" + prefix_ + op.name + ".weight'");
            SD_CHECK(op.stride == 1 || op.stride == 2, "tiny autoencoder: stride must be 1 or 2");
        } else if (op.kind == "block") {
            for (const char* c : {".conv.0.weight", ".conv.2.weight", ".conv.4.weight"})
                SD_CHECK(store_->has(prefix_ + op.name + c), "tiny autoencoder: missing weight '" + prefix_ + op.name + c + "'");
        } else {
            SD_CHECK(op.kind == "relu" || op.kind == "up", "tiny autoencoder: unknown op '" + op.kind + "'");
        }
    }
}

int64_t TinyAutoencoder::factor() const {
    int64_t f = 1;
    for (const TinyOp& op : decoder_.empty() ? encoder_ : decoder_)
        if (op.kind == "up" || (op.kind == "conv" && op.stride == 2)) f *= 2;
    return f;
}

ggml_tensor* TinyAutoencoder::run_ops(ggml_context* ctx, ggml_tensor* x, const std::vector<TinyOp>& ops) const {
    // Plain im2col + GEMM convolutions in the weights' own precision (nn/conv2d.h).
    const nn::ConvOptions conv_opt;
    auto conv = [&](ggml_tensor* t, const std::string& name, int stride) {
        ggml_tensor* w = store_->get(prefix_ + name + ".weight");
        const int pad = static_cast<int>(w->ne[0] / 2);
        return nn::conv2d(ctx, t, w, store_->find(prefix_ + name + ".bias"), nn::ConvGeometry::same(stride, pad), conv_opt);
    };
    for (const TinyOp& op : ops) {
        if (op.kind == "conv") {
            x = conv(x, op.name, op.stride);
        } else if (op.kind == "relu") {
            x = ggml_relu(ctx, x);
        } else if (op.kind == "up") {
            x = nn::upsample_nearest2x(ctx, x);
        } else {  // block
            ggml_tensor* h = ggml_relu(ctx, conv(x, op.name + ".conv.0", 1));
            h = ggml_relu(ctx, conv(h, op.name + ".conv.2", 1));
            h = conv(h, op.name + ".conv.4", 1);
            ggml_tensor* skip = store_->has(prefix_ + op.name + ".skip.weight") ? conv(x, op.name + ".skip", 1) : x;
            x = ggml_relu(ctx, ggml_add(ctx, h, skip));
        }
    }
    return x;
}

void TinyAutoencoder::decode(const float* z, int64_t n, int64_t h, int64_t w, float* out) {
    SD_CHECK(has_decoder(), "this tiny autoencoder has no decoder weights");
    SD_CHECK(n >= 1 && h >= 1 && w >= 1 && h <= 4096 && w <= 4096, "tiny autoencoder: bad latent size");
    std::lock_guard<std::mutex> lock(mu_);
    const std::string key = "dec:" + std::to_string(h) + "x" + std::to_string(w);
    BuiltGraph& g = runner_.get(key, [&](ggml_context* ctx, BuiltGraph& gb) {
        ggml_tensor* x = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, w, h, latent_channels_, 1);
        gb.inputs["z"] = x;
        ggml_tensor* y = ggml_scale(ctx, ggml_tanh(ctx, ggml_scale(ctx, x, 1.0f / 3.0f)), 3.0f);
        y = run_ops(ctx, y, decoder_);
        gb.outputs.push_back(ggml_scale_bias(ctx, y, 2.0f, -1.0f));
    });
    const ggml_tensor* o = g.outputs[0];
    SD_CHECK(o->ne[2] == 3, "tiny autoencoder: the decoder does not end in 3 channels");
    const size_t in_elems = size_t(latent_channels_) * h * w, out_elems = size_t(ggml_nelements(o));
    for (int64_t i = 0; i < n; ++i) {
        runner_.run(g, {{"z", z + i * in_elems}});
        runner_.read_output(g, 0, out + i * out_elems);
    }
}

void TinyAutoencoder::encode(const float* x, int64_t n, int64_t H, int64_t W, float* out) {
    SD_CHECK(has_encoder(), "this tiny autoencoder has no encoder weights");
    const int64_t f = factor();
    SD_CHECK(n >= 1 && H >= f && W >= f && H % f == 0 && W % f == 0 && H <= 32768 && W <= 32768,
             "tiny autoencoder: image sides must be positive multiples of " + std::to_string(f));
    std::lock_guard<std::mutex> lock(mu_);
    const std::string key = "enc:" + std::to_string(H) + "x" + std::to_string(W);
    BuiltGraph& g = runner_.get(key, [&](ggml_context* ctx, BuiltGraph& gb) {
        ggml_tensor* t = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, W, H, 3, 1);
        gb.inputs["x"] = t;
        gb.outputs.push_back(run_ops(ctx, ggml_scale_bias(ctx, t, 0.5f, 0.5f), encoder_));
    });
    const ggml_tensor* o = g.outputs[0];
    SD_CHECK(o->ne[2] == latent_channels_, "tiny autoencoder: the encoder does not end in the latent channels");
    const size_t in_elems = size_t(3) * H * W, out_elems = size_t(ggml_nelements(o));
    for (int64_t i = 0; i < n; ++i) {
        runner_.run(g, {{"x", x + i * in_elems}});
        runner_.read_output(g, 0, out + i * out_elems);
    }
}

void TinyAutoencoder::clear() {
    std::lock_guard<std::mutex> lock(mu_);
    runner_.clear();
}

}  // namespace sdcpp::model
