// The U-Net's weights as a list, apart from its graph: which weights a config needs, with which
// declared shapes and roles (UNetWeightList, a pure function of the config), and a store checked
// against such a list (CheckedWeights). The graph builders (model/unet.cpp, model/controlnet.cpp)
// only build: they take weights by name from a CheckedWeights and never check shapes or types.
#pragma once
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "../runtime/weights.h"
#include "unet.h"

namespace sdcpp {

// What a weight is used as, which decides the checks beyond presence and shape.
enum class WeightRole {
    Vector,      // a norm's scale / shift or a bias: stored f32
    Matrix,      // a linear weight [out, in] (mul_mat src0): quantized rows must be whole blocks
    Conv,        // a convolution kernel [OC, IC, K, K]: f32 / f16 / bf16, or quantized as a matrix
    Projection,  // proj_in / proj_out [C, C] or [C, C, 1, 1] (either layout), used as a linear
};

struct ExpectedWeight {
    std::string name;
    std::vector<int64_t> shape;  // declared (logical) shape, numpy order
    WeightRole role;
};

// The weights of the U-Net's topology in the order its graph uses them (so that the first bad
// one a check reports is the one the graph reaches first). The pieces are public for the
// networks that copy the U-Net's blocks under another prefix (ControlNet: time embedding,
// conv_in, down blocks and mid block). Throws InvalidArgument when the config's channel counts
// cannot work (UNetConfig::validate already rules these out).
class UNetWeightList {
   public:
    explicit UNetWeightList(const UNetConfig& cfg) : cfg_(cfg) {}
    const std::vector<ExpectedWeight>& weights() const { return w_; }

    void linear(const std::string& p, int64_t in, int64_t out, bool bias);
    void conv(const std::string& p, int64_t in, int64_t out, int k);
    void norm(const std::string& p, int64_t c);  // GroupNorm / LayerNorm scale and shift
    void projection(const std::string& p, int64_t c);
    void resnet(const std::string& p, int64_t in, int64_t out);
    void transformer(const std::string& p, int64_t c, int depth);
    void time_embedding(const std::string& pfx);
    // conv_in, down blocks, mid block; `skip_channels` gets the skip connections' channel
    // counts in order. Returns the mid output's channel count.
    int64_t encode(const std::string& pfx, std::vector<int64_t>& skip_channels);
    // Up blocks (popping `skip_channels`), conv_norm_out and conv_out under "unet.".
    void decode(int64_t channels, std::vector<int64_t>& skip_channels);

   private:
    const UNetConfig& cfg_;
    std::vector<ExpectedWeight> w_;
    void add(const std::string& name, std::vector<int64_t> shape, WeightRole role) {
        w_.push_back({name, std::move(shape), role});
    }
};

// Every weight of the whole U-Net ("unet." prefix).
std::vector<ExpectedWeight> unet_weights(const UNetConfig& cfg);

// A store checked against a weight list: the constructor throws InvalidArgument ("U-Net: ...")
// naming the first missing, misshapen or unusable (type) weight of the list, in list order.
// The graph builders take weights only through operator(), so a builder that asks for a weight
// the list lacks fails loudly instead of building with an unchecked tensor.
class CheckedWeights {
   public:
    CheckedWeights(const WeightStore& s, const std::vector<ExpectedWeight>& list);
    // The listed weight `name` (an Error naming it when it is not listed: a builder / list mismatch).
    ggml_tensor* operator()(const std::string& name) const;
    // Store names starting with `prefix` that the list does not name, in store order, except
    // those starting with one of `ignored`.
    std::vector<std::string> unused(const std::string& prefix, const std::vector<std::string>& ignored = {}) const;
    const WeightStore& store() const { return s_; }

   private:
    const WeightStore& s_;
    std::set<std::string> names_;
};

}  // namespace sdcpp
