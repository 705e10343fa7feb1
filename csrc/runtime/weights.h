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
//
// Quantized storage (q8_0, q5_0, q4_0): ggml quantizes along ne0 in blocks of 32, and a
// matrix product with a quantized src0 runs ggml's integer dot products. A linear weight
// [out, in] is stored as it is (rows of `in`). A convolution kernel [OC, IC, KH, KW] is stored
// as the matrix [OC, IC*KH*KW] (rows = the im2col reduction length, same bytes in the same
// order), because its ne0 = KW could never hold a block; shape() still reports the declared
// (logical) shape, so shape checks and set() / get() see the kernel as declared. A weight
// whose reduction length is not a multiple of the block size is stored as f16 instead.
#pragma once
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "device.h"
#include "ggml.h"

namespace sdcpp {

class WeightStore {
   public:
    // repack: on the CPU, hold q4_0 matrices in ggml's CPU_REPACK buffer (rows interleaved for
    // its AVX2 / NEON GEMM kernels, ~2x faster products); such tensors cannot be read back. Not
    // where sdcpp's integer product runs AVX2 or better (fused::int8_gemm_preferred), faster still.
    explicit WeightStore(DevicePtr device, bool repack = true);
    ~WeightStore();
    WeightStore(const WeightStore&) = delete;
    WeightStore& operator=(const WeightStore&) = delete;

    // shape in numpy order (d0..dn-1, at most 4 dims); stored as ggml ne (dn-1..d0).
    void declare(const std::string& name, const std::vector<int64_t>& shape, ggml_type type);
    // Zero copy: the tensor's bytes are `file` at byte `offset`, already in its stored type and
    // C order (the caller checks that). CPU device, plain types only; offset a multiple of the
    // element size: ggml's CPU kernels (and ours) load weights with unaligned vector loads, and
    // checkpoints rarely keep a 32-byte alignment past their first odd-sized tensor.
    void map_to_file(const std::string& name, const std::string& file, uint64_t offset);
    static bool mapping_supported();
    // Spill (CPU, before allocate): the tensors that are not mapped from a checkpoint live in a
    // temporary file under `dir` (created, unlinked at once, space reserved with
    // posix_fallocate, mapped shared) instead of anonymous memory: the converted weights then
    // page like a checkpoint, so release_mapped_pages / release_mapped_range can give them back
    // to the page cache without losing a byte (memory="low" streams a converted U-Net this way).
    // Where the file cannot be made or its space reserved, allocate() uses memory as usual.
    void spill_to(const std::string& dir) { spill_dir_ = dir; }
    size_t spilled_nbytes() const { return spilled_bytes_; }
    void allocate();
    bool allocated() const { return allocated_; }
    bool is_mapped(const std::string& name) const;
    // Mapped from a checkpoint or spilled: pages release_mapped_range can give back.
    bool is_paged(const std::string& name) const;
    size_t mapped_nbytes() const { return mapped_bytes_; }
    // A write into a mapped tensor's bytes copies those pages (copy on write): they then hold
    // data the file does not. set() records its writes; a writer that goes through the tensor's
    // pointer (the LoRA merge) calls note_written so that release_mapped_pages keeps them.
    void note_written(const std::string& name);
    // Drop this process's page-table entries for the mapped pages that no write touched
    // (madvise DONTNEED on a private mapping): RSS falls by the file pages a model run faulted
    // in, the OS page cache keeps them, and the next read faults them back from it unchanged.
    // Pages holding written bytes are kept (dropping them would lose the writes). Returns the
    // bytes advised; 0 where there is no mapping.
    size_t release_mapped_pages();
    // The same for the bytes [lo, hi) of one mapped tensor or run of tensors (widened to whole
    // pages; unwritten pages only): memory="low" streams the U-Net's weights by giving back each
    // module's pages once its part of the graph has run (model/unet.cpp). A range outside every
    // mapping is ignored. Safe to call while a graph runs: it changes no byte's value.
    size_t release_mapped_range(const void* lo, const void* hi) const;

    // Copy `count` elements of `src_type` (F32, F16, BF16 or a ggml quantized type, C-contiguous
    // in the declared shape) into the tensor, converting to its storage type (F32, F16, BF16 or
    // a quantized type). Quantized data of the storage type is copied block for block (GGUF
    // tensors load as they are); other quantized data is dequantized first.
    void set(const std::string& name, const void* data, ggml_type src_type, size_t count);
    // The tensor's values as float32 (dequantized), numpy order.
    std::vector<float> get_f32(const std::string& name) const;

    ggml_tensor* get(const std::string& name) const;   // throws naming the missing tensor
    ggml_tensor* find(const std::string& name) const;  // nullptr when absent
    bool has(const std::string& name) const { return find(name) != nullptr; }
    std::vector<std::string> names() const;
    std::vector<int64_t> shape(const std::string& name) const;  // declared (logical) shape, numpy order
    ggml_type type(const std::string& name) const { return get(name)->type; }
    size_t nbytes() const;
    bool repacked(const std::string& name) const;  // held in ggml's CPU_REPACK buffer
    const DevicePtr& device() const { return device_; }

   private:
    struct Spec {
        std::string name;
        std::vector<int64_t> shape;    // declared, numpy order
        std::vector<int64_t> storage;  // the ggml tensor's shape, numpy order
        ggml_type type;
        std::string file;  // zero copy: the file and byte offset holding the tensor
        uint64_t offset = 0;
    };
    struct Mapping {
        void* addr = nullptr;
        size_t size = 0;
        ggml_backend_buffer_t buffer = nullptr;
        std::vector<std::pair<size_t, size_t>> written;  // byte ranges [lo, hi) from addr, unsorted
        bool shared = false;  // the spill file (MAP_SHARED): writes live in the file, every page may go
    };
    DevicePtr device_;
    std::vector<Spec> specs_;
    std::unordered_map<std::string, size_t> spec_index_;
    bool repack_ = true;
    bool allocated_ = false;
    ggml_context* ctx_ = nullptr;
    ggml_context* repack_ctx_ = nullptr;
    ggml_backend_buffer_t buffer_ = nullptr;
    ggml_backend_buffer_t repack_buffer_ = nullptr;
    std::unordered_map<std::string, ggml_tensor*> tensors_;
    std::vector<Mapping> maps_;
    size_t mapped_bytes_ = 0;
    std::string spill_dir_;
    size_t spilled_bytes_ = 0;
    bool spill_allocate(size_t& placed);  // true: every unmapped plain-buffer tensor is in the spill file
    mutable std::mutex written_mutex_;  // set() runs on several loader threads at once
    void map_specs();
};

// Parse "f32" / "f16" / "bf16" / "q8_0" ... (ggml's type names, any case) into a ggml_type.
ggml_type parse_type(const std::string& name);

// The types a WeightStore may be declared with: f32, f16, bf16, q8_0, q5_0, q4_0.
bool storable_type(ggml_type t);

}  // namespace sdcpp
