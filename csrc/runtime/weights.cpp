#include "weights.h"

#include <algorithm>
#include <cstring>

#include "error.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define SDCPP_HAVE_MMAP 1
#endif

namespace sdcpp {

ggml_type parse_type(const std::string& name) {
    std::string n = name;
    std::transform(n.begin(), n.end(), n.begin(), ::tolower);
    for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
        const char* tn = ggml_type_name(static_cast<ggml_type>(t));
        if (tn && n == tn && ggml_type_size(static_cast<ggml_type>(t)) > 0) return static_cast<ggml_type>(t);
    }
    throw InvalidArgument("unknown weight type '" + name + "' (use f32, f16, bf16 or a ggml quantized type such as q8_0)");
}

WeightStore::WeightStore(DevicePtr device) : device_(std::move(device)) {}

WeightStore::~WeightStore() {
    if (buffer_) ggml_backend_buffer_free(buffer_);
    for (Mapping& m : maps_) {
        if (m.buffer) ggml_backend_buffer_free(m.buffer);  // a from_ptr buffer: frees no memory
#ifdef SDCPP_HAVE_MMAP
        if (m.addr) munmap(m.addr, m.size);
#endif
    }
    if (ctx_) ggml_free(ctx_);
}

bool WeightStore::mapping_supported() {
#ifdef SDCPP_HAVE_MMAP
    return true;
#else
    return false;
#endif
}

void WeightStore::map_to_file(const std::string& name, const std::string& file, uint64_t offset) {
    SD_CHECK(!allocated_, "weights are already allocated; cannot map '" + name + "'");
    SD_CHECK(mapping_supported(), "zero-copy weights need mmap (not available on this system)");
    SD_CHECK(device_->is_cpu(), "zero-copy weights work on the CPU device only");
    auto it = spec_index_.find(name);
    SD_CHECK(it != spec_index_.end(), "tensor '" + name + "' was not declared");
    Spec& s = specs_[it->second];
    SD_CHECK(ggml_blck_size(s.type) == 1, "tensor '" + name + "': only plain types can be mapped");
    SD_CHECK(offset % ggml_type_size(s.type) == 0, "tensor '" + name + "': file offset " + std::to_string(offset) +
                                                       " is not a multiple of its element size");
    s.file = file;
    s.offset = offset;
}

bool WeightStore::is_mapped(const std::string& name) const {
    auto it = spec_index_.find(name);
    return allocated_ && it != spec_index_.end() && !specs_[it->second].file.empty();
}

void WeightStore::map_specs() {
#ifdef SDCPP_HAVE_MMAP
    std::unordered_map<std::string, size_t> by_file;  // file -> maps_ index
    for (const Spec& s : specs_) {
        if (s.file.empty()) continue;
        auto f = by_file.find(s.file);
        if (f == by_file.end()) {
            const int fd = ::open(s.file.c_str(), O_RDONLY);
            SD_CHECK(fd >= 0, "cannot open '" + s.file + "' to map its weights");
            struct stat st {};
            const bool ok = fstat(fd, &st) == 0 && st.st_size > 0;
            void* addr = ok ? mmap(nullptr, size_t(st.st_size), PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0) : MAP_FAILED;
            ::close(fd);  // the mapping keeps the file
            SD_CHECK(addr != MAP_FAILED, "cannot map '" + s.file + "'");
            Mapping m;
            m.addr = addr;
            m.size = size_t(st.st_size);
            maps_.push_back(m);
            m.buffer = ggml_backend_cpu_buffer_from_ptr(addr, m.size);
            maps_.back().buffer = m.buffer;
            SD_CHECK(m.buffer, "cannot wrap the mapping of '" + s.file + "' in a ggml buffer");
            ggml_backend_buffer_set_usage(m.buffer, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
            f = by_file.emplace(s.file, maps_.size() - 1).first;
        }
        const Mapping& m = maps_[f->second];
        ggml_tensor* t = tensors_.at(s.name);
        const size_t nb = ggml_nbytes(t);
        SD_CHECK(s.offset + nb <= m.size, "tensor '" + s.name + "' (bytes " + std::to_string(s.offset) + ".." +
                                              std::to_string(s.offset + nb) + ") lies outside '" + s.file + "'");
        SD_CHECK(ggml_backend_tensor_alloc(m.buffer, t, static_cast<char*>(m.addr) + s.offset) == GGML_STATUS_SUCCESS,
                 "cannot place tensor '" + s.name + "' in the mapping of '" + s.file + "'");
        mapped_bytes_ += nb;
    }
#endif
}

void WeightStore::declare(const std::string& name, const std::vector<int64_t>& shape, ggml_type type) {
    SD_CHECK(!allocated_, "weights are already allocated; cannot declare '" + name + "'");
    SD_CHECK(!shape.empty() && shape.size() <= 4, "tensor '" + name + "' must have 1 to 4 dims");
    for (int64_t d : shape) SD_CHECK(d > 0, "tensor '" + name + "' has a non-positive dimension");
    const int64_t row = shape.back();
    if (ggml_blck_size(type) > 1 && row % ggml_blck_size(type) != 0) type = GGML_TYPE_F16;  // rows not block-aligned
    SD_CHECK(spec_index_.find(name) == spec_index_.end(), "tensor '" + name + "' declared twice");
    spec_index_[name] = specs_.size();
    specs_.push_back({name, shape, type, std::string(), 0});
}

void WeightStore::allocate() {
    SD_CHECK(!allocated_, "weights are already allocated");
    SD_CHECK(!specs_.empty(), "no weights were declared");
    ggml_init_params params{};
    params.mem_size = ggml_tensor_overhead() * (specs_.size() + 1);
    params.no_alloc = true;
    ctx_ = ggml_init(params);
    if (!ctx_) throw Error("ggml_init failed for the weight context");
    for (const Spec& s : specs_) {
        SD_CHECK(tensors_.find(s.name) == tensors_.end(), "tensor '" + s.name + "' declared twice");
        int64_t ne[4] = {1, 1, 1, 1};
        const int n = static_cast<int>(s.shape.size());
        for (int i = 0; i < n; ++i) ne[i] = s.shape[n - 1 - i];
        ggml_tensor* t = ggml_new_tensor(ctx_, s.type, n, ne);
        ggml_set_name(t, s.name.size() < GGML_MAX_NAME ? s.name.c_str() : s.name.substr(s.name.size() - GGML_MAX_NAME + 1).c_str());
        tensors_[s.name] = t;
    }
    map_specs();  // zero-copy tensors first: ggml-alloc then skips them (their data is set)
    bool owned = false;
    for (const Spec& s : specs_) owned = owned || s.file.empty();
    if (owned) {
        buffer_ = ggml_backend_alloc_ctx_tensors(ctx_, device_->backend());
        if (!buffer_)
            throw Error("out of memory on " + device_->info().name + " allocating the model weights");
        ggml_backend_buffer_set_usage(buffer_, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    }
    allocated_ = true;
}

ggml_tensor* WeightStore::find(const std::string& name) const {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : it->second;
}

ggml_tensor* WeightStore::get(const std::string& name) const {
    ggml_tensor* t = find(name);
    if (!t) throw InvalidArgument("missing weight '" + name + "'");
    return t;
}

std::vector<std::string> WeightStore::names() const {
    std::vector<std::string> out;
    for (const Spec& s : specs_) out.push_back(s.name);
    return out;
}

std::vector<int64_t> WeightStore::shape(const std::string& name) const {
    ggml_tensor* t = get(name);
    std::vector<int64_t> out(ggml_n_dims(t));
    for (size_t i = 0; i < out.size(); ++i) out[i] = t->ne[out.size() - 1 - i];
    return out;
}

size_t WeightStore::nbytes() const { return (buffer_ ? ggml_backend_buffer_get_size(buffer_) : 0) + mapped_bytes_; }

void WeightStore::set(const std::string& name, const void* data, ggml_type src_type, size_t count) {
    SD_CHECK(allocated_, "weights are not allocated yet");
    ggml_tensor* t = get(name);
    SD_CHECK(static_cast<int64_t>(count) == ggml_nelements(t),
             "tensor '" + name + "': got " + std::to_string(count) + " values, expected " + std::to_string(ggml_nelements(t)));
    SD_CHECK(src_type == GGML_TYPE_F32 || src_type == GGML_TYPE_F16 || src_type == GGML_TYPE_BF16,
             "tensor '" + name + "': source data must be f32, f16 or bf16");
    if (src_type == t->type) {
        ggml_backend_tensor_set(t, data, 0, ggml_nbytes(t));
        return;
    }
    // Convert through f32 (exact for f16/bf16 sources).
    std::vector<float> f32;
    const float* src = static_cast<const float*>(data);
    if (src_type != GGML_TYPE_F32) {
        f32.resize(count);
        if (src_type == GGML_TYPE_F16) ggml_fp16_to_fp32_row(static_cast<const ggml_fp16_t*>(data), f32.data(), count);
        else ggml_bf16_to_fp32_row(static_cast<const ggml_bf16_t*>(data), f32.data(), count);
        src = f32.data();
    }
    if (t->type == GGML_TYPE_F32) {
        ggml_backend_tensor_set(t, src, 0, ggml_nbytes(t));
        return;
    }
    std::vector<uint8_t> dst(ggml_nbytes(t));
    if (t->type == GGML_TYPE_F16) {
        ggml_fp32_to_fp16_row(src, reinterpret_cast<ggml_fp16_t*>(dst.data()), count);
    } else if (t->type == GGML_TYPE_BF16) {
        ggml_fp32_to_bf16_row_ref(src, reinterpret_cast<ggml_bf16_t*>(dst.data()), count);
    } else {
        const int64_t per_row = t->ne[0];
        ggml_quantize_chunk(t->type, src, dst.data(), 0, count / per_row, per_row, nullptr);
    }
    ggml_backend_tensor_set(t, dst.data(), 0, dst.size());
}

std::vector<float> WeightStore::get_f32(const std::string& name) const {
    ggml_tensor* t = get(name);
    const size_t n = ggml_nelements(t);
    std::vector<uint8_t> raw(ggml_nbytes(t));
    ggml_backend_tensor_get(t, raw.data(), 0, raw.size());
    std::vector<float> out(n);
    if (t->type == GGML_TYPE_F32) {
        std::memcpy(out.data(), raw.data(), n * sizeof(float));
    } else {
        const ggml_type_traits* tr = ggml_get_type_traits(t->type);
        if (!tr || !tr->to_float) throw Error("cannot read back weight '" + name + "' of type " + ggml_type_name(t->type));
        tr->to_float(raw.data(), out.data(), n);
    }
    return out;
}

}  // namespace sdcpp
