// WeightStore: every model weight as a named ggml tensor in one backend buffer on the device.
//
// Two phases, because a backend buffer is allocated once for all tensors:
//   declare(name, numpy_shape, type) for every tensor, allocate(), then set(name, data).
// Graphs look weights up by canonical name (docs/internals.md §3); nothing is copied per step.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "device.h"
#include "ggml.h"

namespace sdcpp {

class WeightStore {
   public:
    explicit WeightStore(DevicePtr device);
    ~WeightStore();
    WeightStore(const WeightStore&) = delete;
    WeightStore& operator=(const WeightStore&) = delete;

    // shape in numpy order (d0..dn-1, at most 4 dims); stored as ggml ne (dn-1..d0).
    void declare(const std::string& name, const std::vector<int64_t>& shape, ggml_type type);
    void allocate();
    bool allocated() const { return buffer_ != nullptr; }

    // Copy `count` elements of `src_type` (F32, F16 or BF16, C-contiguous) into the tensor,
    // converting to its storage type (F32, F16, BF16 or a ggml quantized type).
    void set(const std::string& name, const void* data, ggml_type src_type, size_t count);
    // The tensor's values as float32 (dequantized), numpy order.
    std::vector<float> get_f32(const std::string& name) const;

    ggml_tensor* get(const std::string& name) const;   // throws naming the missing tensor
    ggml_tensor* find(const std::string& name) const;  // nullptr when absent
    bool has(const std::string& name) const { return find(name) != nullptr; }
    std::vector<std::string> names() const;
    std::vector<int64_t> shape(const std::string& name) const;  // numpy order
    size_t nbytes() const;
    const DevicePtr& device() const { return device_; }

   private:
    struct Spec {
        std::string name;
        std::vector<int64_t> shape;
        ggml_type type;
    };
    DevicePtr device_;
    std::vector<Spec> specs_;
    ggml_context* ctx_ = nullptr;
    ggml_backend_buffer_t buffer_ = nullptr;
    std::unordered_map<std::string, ggml_tensor*> tensors_;
};

// Parse "f32" / "f16" / "bf16" / "q8_0" ... (ggml's type names) into a ggml_type.
ggml_type parse_type(const std::string& name);

}  // namespace sdcpp
