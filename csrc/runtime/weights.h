// WeightStore: every model weight as a named ggml tensor in one backend buffer on the device.
//
// Two phases, because a backend buffer is allocated once for all tensors:
//   declare(name, numpy_shape, type) for every tensor, allocate(), then set(name, data).
// Graphs look weights up by canonical name (docs/internals.md §3); nothing is copied per step.
//
// Zero copy (CPU): map_to_file(name, file, offset) before allocate() makes the tensor use the
// checkpoint's bytes in place, through a private (copy-on-write) mapping of the file, instead of
// an allocated copy: the weights are then the OS page cache's pages (no second copy, nothing to
// fault in at load), and a LoRA write copies only the pages it changes.
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
    // Zero copy: the tensor's bytes are `file` at byte `offset`, already in its stored type and
    // C order (the caller checks that). CPU device only; offset a multiple of the element size:
    // ggml's CPU kernels (and ours) load weights with unaligned vector loads, and checkpoints
    // rarely keep a 32-byte alignment past their first odd-sized tensor.
    void map_to_file(const std::string& name, const std::string& file, uint64_t offset);
    static bool mapping_supported();
    void allocate();
    bool allocated() const { return allocated_; }
    bool is_mapped(const std::string& name) const;
    size_t mapped_nbytes() const { return mapped_bytes_; }

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
        std::string file;  // zero copy: the file and byte offset holding the tensor
        uint64_t offset = 0;
    };
    struct Mapping {
        void* addr = nullptr;
        size_t size = 0;
        ggml_backend_buffer_t buffer = nullptr;
    };
    DevicePtr device_;
    std::vector<Spec> specs_;
    ggml_context* ctx_ = nullptr;
    ggml_backend_buffer_t buffer_ = nullptr;
    std::unordered_map<std::string, ggml_tensor*> tensors_;
    std::unordered_map<std::string, size_t> spec_index_;
    std::vector<Mapping> maps_;
    bool allocated_ = false;
    size_t mapped_bytes_ = 0;
    void map_specs();
};

// Parse "f32" / "f16" / "bf16" / "q8_0" ... (ggml's type names) into a ggml_type.
ggml_type parse_type(const std::string& name);

}  // namespace sdcpp
