#include "weights.h"

#include <algorithm>
#include <cstring>
#include <memory>

#include "../kernels/cpu/gemm_op.h"
#include "../kernels/cpu/lowrank.h"
#include "backends.h"
#include "error.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"

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
        if (!tn || ggml_type_size(static_cast<ggml_type>(t)) == 0) continue;
        std::string lower = tn;  // ggml spells the k-quants "q4_K"
        std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
        if (n == lower) return static_cast<ggml_type>(t);
    }
    throw InvalidArgument("unknown weight type '" + name + "' (use f32, f16, bf16, q8_0, q5_0 or q4_0)");
}

bool storable_type(ggml_type t) {
    switch (t) {
        case GGML_TYPE_F32: case GGML_TYPE_F16: case GGML_TYPE_BF16:
        case GGML_TYPE_Q8_0: case GGML_TYPE_Q5_0: case GGML_TYPE_Q4_0: return true;
        default: return false;
    }
}

namespace {

// ggml's CPU_REPACK buffer type (an "extra" buffer type of the CPU device), or null.
ggml_backend_buffer_type_t cpu_repack_buffer_type(ggml_backend_t backend) {
    ggml_backend_dev_t dev = ggml_backend_get_device(backend);
    if (!dev || ggml_backend_dev_type(dev) != GGML_BACKEND_DEVICE_TYPE_CPU) return nullptr;
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    auto get = reinterpret_cast<ggml_backend_dev_get_extra_bufts_t>(
        ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts"));
    if (!get) return nullptr;
    for (ggml_backend_buffer_type_t* b = get(dev); b && *b; ++b)
        if (std::strcmp(ggml_backend_buft_name(*b), "CPU_REPACK") == 0) return *b;
    return nullptr;
}

// The q4_0 matrices ggml repacks on this CPU (its ggml_repack_get_optimal_repack_type for
// Q4_0: AVX2 with rows in groups of 8; NEON with int8 matmul or dot product, groups of 4). A
// tensor the repack buffer could not lay out would abort in ggml, so this errs on "no".
bool repackable(ggml_type type, const std::vector<int64_t>& storage) {
    if (type != GGML_TYPE_Q4_0 || storage.size() != 2 || storage[1] % 32 != 0) return false;
    if (fused::int8_gemm_preferred()) return false;  // sdcpp's integer product is faster there
    const int64_t rows = storage[0];  // ggml ne1
    if (cpu_backend_has("AVX2")) return rows % 8 == 0;
    if (cpu_backend_has("NEON") && (cpu_backend_has("MATMUL_INT8") || cpu_backend_has("DOTPROD"))) return rows % 4 == 0;
    return false;
}

// While a tensor is written into the repack buffer: ggml logs one DEBUG line per tensor it
// repacks (to stderr by default); drop DEBUG lines, pass the rest on to the previous logger.
class QuietRepackLog {
   public:
    QuietRepackLog() {
        ggml_log_get(&prev_, &prev_ud_);
        ggml_log_set(&QuietRepackLog::filter, this);
    }
    ~QuietRepackLog() { ggml_log_set(prev_, prev_ud_); }

   private:
    static void filter(ggml_log_level level, const char* text, void* ud) {
        auto* self = static_cast<QuietRepackLog*>(ud);
        if (level == GGML_LOG_LEVEL_DEBUG || level == GGML_LOG_LEVEL_CONT) return;
        if (self->prev_) self->prev_(level, text, self->prev_ud_);
    }
    ggml_log_callback prev_ = nullptr;
    void* prev_ud_ = nullptr;
};

}  // namespace

WeightStore::WeightStore(DevicePtr device, bool repack) : device_(std::move(device)), repack_(repack) {}

WeightStore::~WeightStore() {
    if (buffer_) ggml_backend_buffer_free(buffer_);
    if (repack_buffer_) ggml_backend_buffer_free(repack_buffer_);
    for (Mapping& m : maps_) {
        if (m.buffer) ggml_backend_buffer_free(m.buffer);  // a from_ptr buffer: frees no memory
#ifdef SDCPP_HAVE_MMAP
        if (m.addr) munmap(m.addr, m.size);
#endif
    }
    if (ctx_) ggml_free(ctx_);
    if (repack_ctx_) ggml_free(repack_ctx_);
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
    SD_CHECK(!ggml_is_quantized(s.type) && s.storage == s.shape, "tensor '" + name + "': only plain types can be mapped");
    SD_CHECK(offset % ggml_type_size(s.type) == 0, "tensor '" + name + "': file offset " + std::to_string(offset) +
                                                       " is not a multiple of its element size");
    s.file = file;
    s.offset = offset;
}

bool WeightStore::is_mapped(const std::string& name) const {
    auto it = spec_index_.find(name);
    return allocated_ && it != spec_index_.end() && !specs_[it->second].file.empty();
}

void WeightStore::note_written(const std::string& name) {
    ggml_tensor* t = find(name);
    if (!t || !t->data) return;
    const char* p = static_cast<const char*>(t->data);
    for (Mapping& m : maps_) {
        const char* base = static_cast<const char*>(m.addr);
        if (p >= base && p < base + m.size) {
            if (m.shared) return;  // the spill file keeps its writes
            const size_t lo = size_t(p - base);
            std::lock_guard<std::mutex> lock(written_mutex_);
            m.written.emplace_back(lo, std::min(m.size, lo + ggml_nbytes(t)));
            return;
        }
    }
}

#ifdef SDCPP_HAVE_MMAP
namespace {
using ByteRanges = std::vector<std::pair<size_t, size_t>>;

// Written byte ranges widened to whole pages, sorted and merged: the pages that must stay.
ByteRanges written_pages(const ByteRanges& written, size_t page) {
    ByteRanges keep;
    for (const auto& r : written) keep.emplace_back(r.first / page * page, (r.second + page - 1) / page * page);
    std::sort(keep.begin(), keep.end());
    ByteRanges merged;
    for (const auto& r : keep) {
        if (!merged.empty() && r.first <= merged.back().second)
            merged.back().second = std::max(merged.back().second, r.second);
        else
            merged.push_back(r);
    }
    return merged;
}

// madvise(DONTNEED) the page-aligned bytes [lo, hi) of the mapping at `base` except `keep`
// (written_pages); returns the bytes advised.
size_t advise_except(char* base, size_t lo, size_t hi, const ByteRanges& keep) {
    size_t advised = 0;
    auto advise = [&](size_t a, size_t b) {
        if (b > a && madvise(base + a, b - a, MADV_DONTNEED) == 0) advised += b - a;
    };
    for (const auto& r : keep) {
        if (r.second <= lo) continue;
        if (r.first >= hi) break;
        if (r.first > lo) advise(lo, r.first);
        lo = std::max(lo, r.second);
    }
    advise(lo, hi);
    return advised;
}
}  // namespace
#endif

size_t WeightStore::release_mapped_pages() {
    size_t advised = 0;
#ifdef SDCPP_HAVE_MMAP
    std::lock_guard<std::mutex> lock(written_mutex_);
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    for (Mapping& m : maps_) {
        // the spill file keeps its writes: every page may go
        ByteRanges keep = m.shared ? ByteRanges() : written_pages(m.written, page);
        advised += advise_except(static_cast<char*>(m.addr), 0, (m.size + page - 1) / page * page, keep);
        m.written.swap(keep);  // merged: repeated LoRA changes do not grow it without bound
    }
#endif
    return advised;
}

size_t WeightStore::release_mapped_range(const void* lo_p, const void* hi_p) const {
#ifdef SDCPP_HAVE_MMAP
    std::lock_guard<std::mutex> lock(written_mutex_);
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    const char* lo_c = static_cast<const char*>(lo_p);
    const char* hi_c = static_cast<const char*>(hi_p);
    for (const Mapping& m : maps_) {
        char* base = static_cast<char*>(m.addr);
        if (lo_c < base || lo_c >= base + m.size) continue;
        const size_t end = (m.size + page - 1) / page * page;
        const size_t lo = size_t(lo_c - base) / page * page;
        const size_t hi = std::min(end, (size_t(std::min<const char*>(hi_c, base + m.size) - base) + page - 1) / page * page);
        return advise_except(base, lo, hi, m.shared ? ByteRanges() : written_pages(m.written, page));
    }
#endif
    return 0;
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
            maps_.push_back(m);  // owned from here: the destructor unmaps it
            maps_.back().buffer = cpu_buffer_from_ptr(addr, m.size);
            SD_CHECK(maps_.back().buffer, "cannot wrap the mapping of '" + s.file + "' in a ggml buffer");
            ggml_backend_buffer_set_usage(maps_.back().buffer, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
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
    SD_CHECK(storable_type(type), "tensor '" + name + "': weights cannot be stored as " + ggml_type_name(type) +
                                      " (use f32, f16, bf16, q8_0, q5_0 or q4_0)");
    SD_CHECK(spec_index_.find(name) == spec_index_.end(), "tensor '" + name + "' declared twice");
    std::vector<int64_t> storage = shape;
    if (ggml_is_quantized(type)) {
        // Blocks run along the reduction length: a row of a linear weight, IC*KH*KW of a conv kernel.
        int64_t k = shape.back();
        if (shape.size() >= 3) {
            k = 1;
            for (size_t i = 1; i < shape.size(); ++i) k *= shape[i];
            storage = {shape[0], k};
        }
        if (k % ggml_blck_size(type) != 0) {
            type = GGML_TYPE_F16;  // no whole blocks: f16 keeps the declared layout
            storage = shape;
        }
    }
    spec_index_[name] = specs_.size();
    specs_.push_back({name, shape, storage, type, std::string(), 0});
}

void WeightStore::allocate() {
    SD_CHECK(!allocated_, "weights are already allocated");
    SD_CHECK(!specs_.empty(), "no weights were declared");
    ggml_init_params params{};
    params.mem_size = ggml_tensor_overhead() * (specs_.size() + 1);
    params.no_alloc = true;
    ctx_ = ggml_init(params);
    if (!ctx_) throw Error("ggml_init failed for the weight context");
    ggml_backend_buffer_type_t rbuft = repack_ ? cpu_repack_buffer_type(device_->backend()) : nullptr;
    if (rbuft) {
        repack_ctx_ = ggml_init(params);
        if (!repack_ctx_) throw Error("ggml_init failed for the weight context");
    }
    size_t in_repack = 0, in_main = 0;
    for (const Spec& s : specs_) {
        int64_t ne[4] = {1, 1, 1, 1};
        const int n = static_cast<int>(s.storage.size());
        for (int i = 0; i < n; ++i) ne[i] = s.storage[n - 1 - i];
        const bool rp = rbuft && s.file.empty() && repackable(s.type, s.storage);
        ggml_tensor* t = ggml_new_tensor(rp ? repack_ctx_ : ctx_, s.type, n, ne);
        if (s.file.empty()) ++(rp ? in_repack : in_main);  // mapped tensors need no allocation
        ggml_set_name(t, s.name.size() < GGML_MAX_NAME ? s.name.c_str() : s.name.substr(s.name.size() - GGML_MAX_NAME + 1).c_str());
        tensors_[s.name] = t;
    }
    map_specs();  // zero-copy tensors first: ggml-alloc then skips them (their data is set)
    size_t spilled = 0;
    if (in_main && !spill_dir_.empty() && device_->is_cpu() && spill_allocate(spilled)) in_main = 0;
    if (in_main) {
        buffer_ = ggml_backend_alloc_ctx_tensors(ctx_, device_->backend());
        if (!buffer_) throw Error("out of memory on " + device_->info().name + " allocating the model weights");
        ggml_backend_buffer_set_usage(buffer_, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    }
    if (in_repack) {
        repack_buffer_ = ggml_backend_alloc_ctx_tensors_from_buft(repack_ctx_, rbuft);
        if (!repack_buffer_)
            throw Error("out of memory on " + device_->info().name + " allocating the repacked model weights");
        ggml_backend_buffer_set_usage(repack_buffer_, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    }
    allocated_ = true;
}

bool WeightStore::spill_allocate(size_t& placed) {
#ifdef SDCPP_HAVE_MMAP
    const size_t align = 64;  // ggml's CPU buffer alignment
    size_t total = 0;
    for (ggml_tensor* t = ggml_get_first_tensor(ctx_); t; t = ggml_get_next_tensor(ctx_, t))
        if (!t->data) total += (ggml_nbytes(t) + align - 1) / align * align;
    if (total == 0) return false;
    std::string tmpl = spill_dir_ + "/sdcpp-weights-XXXXXX";
    const int fd = mkstemp(tmpl.data());
    if (fd < 0) return false;
    unlink(tmpl.c_str());  // nothing is left behind, whatever happens next
    // Reserve the blocks now: writing a mapped page of a sparse file on a full disk would
    // raise SIGBUS in the middle of loading.
    void* addr = posix_fallocate(fd, 0, off_t(total)) == 0
                     ? mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                     : MAP_FAILED;
    ::close(fd);
    if (addr == MAP_FAILED) return false;
    Mapping m;
    m.addr = addr;
    m.size = total;
    m.shared = true;
    maps_.push_back(m);  // owned from here: the destructor unmaps it (and the file goes)
    maps_.back().buffer = cpu_buffer_from_ptr(addr, total);
    SD_CHECK(maps_.back().buffer, "cannot wrap the weight spill file in a ggml buffer");
    ggml_backend_buffer_set_usage(maps_.back().buffer, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    size_t off = 0;
    for (ggml_tensor* t = ggml_get_first_tensor(ctx_); t; t = ggml_get_next_tensor(ctx_, t)) {
        if (t->data) continue;
        SD_CHECK(ggml_backend_tensor_alloc(maps_.back().buffer, t, static_cast<char*>(addr) + off) == GGML_STATUS_SUCCESS,
                 "cannot place a tensor in the weight spill file");
        off += (ggml_nbytes(t) + align - 1) / align * align;
    }
    placed = spilled_bytes_ = total;
    return true;
#else
    (void)placed;
    return false;
#endif
}

bool WeightStore::is_paged(const std::string& name) const {
    if (is_mapped(name)) return true;
    const ggml_tensor* t = find(name);
    if (!t || !t->data || spilled_bytes_ == 0) return false;
    for (const Mapping& m : maps_)
        if (m.shared && t->data >= m.addr && static_cast<const char*>(t->data) < static_cast<const char*>(m.addr) + m.size)
            return true;
    return false;
}

bool WeightStore::repacked(const std::string& name) const {
    ggml_tensor* t = get(name);
    return repack_buffer_ != nullptr && t->buffer == repack_buffer_;
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
    get(name);  // throws naming a missing tensor
    const Spec& s = specs_[spec_index_.at(name)];
    // as ggml_n_dims would report it: trailing size-1 dims of the declared shape dropped
    std::vector<int64_t> out = s.shape;
    while (out.size() > 1 && out.front() == 1) out.erase(out.begin());
    return out;
}

size_t WeightStore::nbytes() const {
    return (buffer_ ? ggml_backend_buffer_get_size(buffer_) : 0) +
           (repack_buffer_ ? ggml_backend_buffer_get_size(repack_buffer_) : 0) + mapped_bytes_;
}

void WeightStore::set(const std::string& name, const void* data, ggml_type src_type, size_t count) {
    SD_CHECK(allocated_, "weights are not allocated yet");
    ggml_tensor* t = get(name);
    SD_CHECK(static_cast<int64_t>(count) == ggml_nelements(t),
             "tensor '" + name + "': got " + std::to_string(count) + " values, expected " + std::to_string(ggml_nelements(t)));
    const bool quant_src = ggml_is_quantized(src_type);
    SD_CHECK(src_type == GGML_TYPE_F32 || src_type == GGML_TYPE_F16 || src_type == GGML_TYPE_BF16 || quant_src,
             "tensor '" + name + "': source data must be f32, f16, bf16 or ggml-quantized");
    if (quant_src) {
        // Blocks run along the flattened values, so a block-aligned source has whole blocks here.
        SD_CHECK(count % ggml_blck_size(src_type) == 0,
                 "tensor '" + name + "': " + std::to_string(count) + " values are not whole " + ggml_type_name(src_type) + " blocks");
    }
    std::unique_ptr<QuietRepackLog> quiet;
    if (repacked(name)) quiet = std::make_unique<QuietRepackLog>();
    note_written(name);  // a mapped tensor's pages become private copies (release_mapped_pages)
    if (src_type == t->type) {
        ggml_backend_tensor_set(t, data, 0, ggml_nbytes(t));  // as they are (incl. quantized blocks)
        return;
    }
    // From f32 / f16 / bf16 to a plain or q8_0 / q5_0 / q4_0 tensor: in blocks through a small
    // float32 buffer, straight into a tensor held in ordinary host memory, with the CPU kernels'
    // conversions (csrc/kernels/cpu/gemm_op.h, lowrank.h: half/bf16 -> float exact, float -> half/bf16
    // rounding to nearest even, q8_0 / q4_0 as ggml's reference quantizers). No tensor-sized
    // float32 copy: for a model-sized LoRA restore, allocating and faulting in those copies cost
    // more than the conversions.
    auto plain = [](ggml_type x) { return x == GGML_TYPE_F32 || x == GGML_TYPE_F16 || x == GGML_TYPE_BF16; };
    const bool host = t->buffer && ggml_backend_buffer_is_host(t->buffer) && !repacked(name);
    const bool blocks = t->type == GGML_TYPE_Q8_0 || t->type == GGML_TYPE_Q5_0 || t->type == GGML_TYPE_Q4_0;
    if (plain(src_type) && (plain(t->type) || blocks)) {
        const kernels::cpu::LowRank& k = kernels::cpu::lowrank();
        // memory the CPU cannot write in place (a GPU, the repack buffer): one staging copy of
        // the stored bytes, handed to the backend at the end
        std::vector<uint8_t> staging;
        uint8_t* dst = static_cast<uint8_t*>(t->data);
        if (!host) {
            staging.resize(ggml_nbytes(t));
            dst = staging.data();
        }
        constexpr size_t kBlock = 4096;  // whole 32-value blocks
        std::vector<float> buf(kBlock);
        uint16_t* d16 = reinterpret_cast<uint16_t*>(dst);
        for (size_t i = 0; i < count; i += kBlock) {
            const size_t m = std::min(kBlock, count - i);
            const float* f = buf.data();
            if (src_type == GGML_TYPE_F32) {
                f = static_cast<const float*>(data) + i;
            } else {  // f16 / bf16
                fused::row_to_f32(buf.data(), static_cast<const char*>(data) + 2 * i, src_type, int64_t(m));
            }
            uint8_t* qdst = blocks ? dst + i / 32 * ggml_type_size(t->type) : nullptr;
            if (t->type == GGML_TYPE_Q8_0)
                k.quantize_q8_0(f, qdst, int64_t(m));
            else if (t->type == GGML_TYPE_Q4_0)
                k.quantize_q4_0(f, qdst, int64_t(m));
            else if (t->type == GGML_TYPE_Q5_0)   // blocks are independent: a chunk quantizes as in a row
                ggml_quantize_chunk(t->type, f, qdst, 0, 1, int64_t(m), nullptr);
            else if (t->type == GGML_TYPE_F32)
                std::memcpy(reinterpret_cast<float*>(dst) + i, f, m * sizeof(float));
            else if (t->type == GGML_TYPE_F16)
                k.f32_to_f16(f, d16 + i, int64_t(m));
            else
                k.f32_to_bf16(f, d16 + i, int64_t(m));
        }
        if (!host) ggml_backend_tensor_set(t, staging.data(), 0, staging.size());
        return;
    }
    // Convert through f32 (exact for f16/bf16 and for dequantized blocks), one tensor at a time.
    std::vector<float> f32;
    const float* src = static_cast<const float*>(data);
    if (src_type != GGML_TYPE_F32) {
        f32.resize(count);
        if (src_type == GGML_TYPE_F16) {
            ggml_fp16_to_fp32_row(static_cast<const ggml_fp16_t*>(data), f32.data(), count);
        } else if (src_type == GGML_TYPE_BF16) {
            ggml_bf16_to_fp32_row(static_cast<const ggml_bf16_t*>(data), f32.data(), count);
        } else {
            const ggml_type_traits* tr = ggml_get_type_traits(src_type);
            if (!tr || !tr->to_float)
                throw InvalidArgument("tensor '" + name + "': cannot dequantize " + ggml_type_name(src_type));
            tr->to_float(data, f32.data(), static_cast<int64_t>(count));
        }
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
        // ggml's reference quantizers, row by row of the stored matrix (conv kernels: rows of
        // IC*KH*KW, the declared OIHW values in their own order).
        const int64_t per_row = t->ne[0];
        if (t->type == GGML_TYPE_Q8_0)   // the same bytes, vectorized where the CPU allows
            kernels::cpu::lowrank().quantize_q8_0(src, dst.data(), int64_t(count));
        else if (t->type == GGML_TYPE_Q4_0)
            kernels::cpu::lowrank().quantize_q4_0(src, dst.data(), int64_t(count));
        else
            ggml_quantize_chunk(t->type, src, dst.data(), 0, count / per_row, per_row, nullptr);
    }
    ggml_backend_tensor_set(t, dst.data(), 0, dst.size());
}

std::vector<float> WeightStore::get_f32(const std::string& name) const {
    ggml_tensor* t = get(name);
    if (repacked(name))
        throw InvalidArgument("weight '" + name + "' is held repacked for the CPU's " + ggml_type_name(t->type) +
                              " kernels and cannot be read back (build the store with repack=False to read it)");
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
