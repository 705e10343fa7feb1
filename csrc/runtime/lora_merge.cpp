#include "lora_merge.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include "../kernels/cpu/gemm_op.h"
#include "../kernels/cpu/lowrank.h"
#include "error.h"
#include "ggml-backend.h"

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace sdcpp {

namespace {

namespace kc = kernels::cpu;

// Columns per tile: a multiple of every level's panel width and of the 32-value quant blocks.
// The packed B of a chunk (R x chunk floats) should stay in L2 while a thread sweeps its rows:
// 512 KiB gives 2048 columns at rank 64, where a row segment of an f16 weight is a whole 4 KiB
// page (fewer TLB walks per tile: the weights live in 4 KiB pages of the page cache or the
// copy-on-write mapping). Measured on SSD-1B, 2048 columns beat 512 by about 10%.
constexpr int64_t kMinChunk = 512, kMaxChunk = 2048, kChunkBytes = 512 * 1024;

int64_t chunk_for(int64_t R) {
    const int64_t c = kChunkBytes / (R * int64_t(sizeof(float))) / kMinChunk * kMinChunk;
    return std::max(kMinChunk, std::min(kMaxChunk, c));
}

struct Job {
    const kc::GemmKernels* g;  // the product's micro-kernel and row converters
    const kc::LowRank* k;      // the stored types' converters and quantizers
    const uint8_t* src;
    ggml_type src_type;
    size_t src_row;  // bytes per row of the original
    uint8_t* dst;
    ggml_type dst_type;
    size_t dst_row;  // bytes per stored row
    int64_t out, K, R, Kpad;
    const float* bpack;  // panels of nr columns: [Kpad / nr][R][nr]
    const std::vector<LowRankTerm>* terms;
    bool populate;       // dst is a private file mapping: fault its pages in up front
};

// The zero-copy tensors (WeightStore::map_to_file) are private mappings of the checkpoint: the
// first write to each 4 KiB page faults and copies it. MADV_POPULATE_WRITE (Linux 5.14+) does
// those copies in one call per range, without a trap per page; elsewhere the writes fault as
// usual (the call is only a speed-up, its failure is ignored).
void populate(uint8_t* p, size_t n) {
#if defined(__linux__)
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
    const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
    const uintptr_t lo = reinterpret_cast<uintptr_t>(p) / page * page;
    const uintptr_t hi = reinterpret_cast<uintptr_t>(p) + n;
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_POPULATE_WRITE);
#else
    (void)p;
    (void)n;
#endif
}

// n values of type `type` (f32 / f16 / bf16) starting at element `at` of `src`, as float32
// (exact), with the packed product's row converter.
void to_f32(const kc::GemmKernels& g, const void* src, ggml_type type, int64_t at, int64_t n, float* y) {
    kc::GemmB b = kc::GemmB::F32;
    fused::gemm_type(type, &b);
    g.to_f32(y, static_cast<const char*>(src) + size_t(at) * ggml_type_size(type), b, n);
}

inline void prefetch(const void* p, bool write) {
#if defined(__GNUC__) || defined(__clang__)
    if (write)
        __builtin_prefetch(p, 1, 3);
    else
        __builtin_prefetch(p, 0, 3);
#else
    (void)p;
    (void)write;
#endif
}

void load_row(const Job& j, int64_t row, int64_t c0, int64_t n, float* y) {
    to_f32(*j.g, j.src + row * j.src_row, j.src_type, c0, n, y);
}

void store_row(const Job& j, int64_t row, int64_t c0, int64_t n, const float* x) {
    uint8_t* d = j.dst + row * j.dst_row;
    switch (j.dst_type) {
        case GGML_TYPE_F32: std::memcpy(reinterpret_cast<float*>(d) + c0, x, n * sizeof(float)); break;
        case GGML_TYPE_F16: j.k->f32_to_f16(x, reinterpret_cast<uint16_t*>(d) + c0, n); break;
        case GGML_TYPE_BF16: j.k->f32_to_bf16(x, reinterpret_cast<uint16_t*>(d) + c0, n); break;
        default: {
            // whole blocks (c0 and n are multiples of 32): quantized exactly as a whole row would be
            const size_t off = size_t(c0 / ggml_blck_size(j.dst_type)) * ggml_type_size(j.dst_type);
            if (j.dst_type == GGML_TYPE_Q8_0)
                j.k->quantize_q8_0(x, d + off, n);
            else if (j.dst_type == GGML_TYPE_Q4_0)
                j.k->quantize_q4_0(x, d + off, n);
            else
                ggml_quantize_chunk(j.dst_type, x, d + off, 0, 1, n, nullptr);
        }
    }
}

// Rows [r0, r1) of the result (r0 a multiple of mr), tile by tile: each mr x nr tile of the
// original (as float32) gets A @ B added by the packed product's micro-kernel.
void run_rows(const Job& j, int64_t r0, int64_t r1) {
    const int mr = j.g->mr, nr = j.g->nr;
    const int64_t blocks = (r1 - r0 + mr - 1) / mr;
    // A for these rows (the ups, scaled, side by side), per block of mr rows of R floats
    // (the micro-kernel's A: row i at a[i * R]), zero rows past `out`.
    std::vector<float> apack(size_t(blocks * mr * j.R), 0.0f);
    std::vector<float> u(size_t(j.R));
    for (int64_t b = 0; b < blocks; ++b) {
        float* ab = apack.data() + b * mr * j.R;
        for (int i = 0; i < mr; ++i) {
            const int64_t row = r0 + b * mr + i;
            if (row >= r1) break;
            int64_t k0 = 0;
            for (const LowRankTerm& t : *j.terms) {
                to_f32(*j.g, t.up, t.type, row * t.rank, t.rank, u.data());
                for (int64_t k = 0; k < t.rank; ++k) ab[i * j.R + k0 + k] = t.scale * u[k];
                k0 += t.rank;
            }
        }
    }
    if (j.populate) populate(j.dst + r0 * j.dst_row, size_t(r1 - r0) * j.dst_row);
    const int64_t kChunk = chunk_for(j.R);
    std::vector<float> tile(size_t(mr * kChunk), 0.0f);
    for (int64_t c0 = 0; c0 < j.Kpad; c0 += kChunk) {
        const int64_t nc = std::min(kChunk, j.Kpad - c0);   // multiple of nr
        const int64_t valid = std::min(nc, j.K - c0);        // columns of the tensor
        for (int64_t b = 0; b < blocks; ++b) {
            const int64_t row0 = r0 + b * mr;
            const int rows = int(std::min<int64_t>(mr, r1 - row0));
            for (int i = 0; i < rows; ++i) load_row(j, row0 + i, c0, valid, tile.data() + i * kChunk);
            const float* ab = apack.data() + b * mr * j.R;
            // While this block computes, the next block's original and destination bytes are
            // fetched: a few cache lines per panel (segments of 1-2 KiB per row are too short
            // for the hardware prefetchers to ramp up on).
            const int64_t next = row0 + mr < r1 ? row0 + mr : -1;
            const int next_rows = next < 0 ? 0 : int(std::min<int64_t>(mr, r1 - next));
            const size_t src_bytes = size_t(valid) * ggml_type_size(j.src_type);
            const size_t dst_bytes = ggml_row_size(j.dst_type, valid);
            const size_t src_at = size_t(c0) * ggml_type_size(j.src_type), dst_at = ggml_row_size(j.dst_type, c0);
            const int64_t lines = int64_t((src_bytes + 63) / 64), dlines = int64_t((dst_bytes + 63) / 64);
            const int64_t panels = nc / nr;
            const int64_t per = (int64_t(next_rows) * (lines + dlines) + panels - 1) / panels;
            int64_t r = 0, l = 0;  // the next line to fetch: row r of the next block, line l of its segments
            for (int64_t p = 0; p < nc; p += nr) {
                for (int64_t q = 0; q < per && r < next_rows; ++q) {
                    if (l < lines)
                        prefetch(j.src + (next + r) * j.src_row + src_at + size_t(l) * 64, false);
                    else
                        prefetch(j.dst + (next + r) * j.dst_row + dst_at + size_t(l - lines) * 64, true);
                    if (++l == lines + dlines) {
                        l = 0;
                        ++r;
                    }
                }
                j.g->micro(j.R, ab, j.R, j.bpack + (c0 + p) * j.R, tile.data() + p, kChunk, /*accumulate=*/true);
            }
            for (int i = 0; i < rows; ++i) store_row(j, row0 + i, c0, valid, tile.data() + i * kChunk);
        }
    }
}

}  // namespace

void merge_low_rank(WeightStore& store, const std::string& name, const void* original, ggml_type original_type,
                    int64_t out, const std::vector<LowRankTerm>& terms, int threads) {
    ggml_tensor* t = store.get(name);
    SD_CHECK(store.allocated(), "weights are not allocated yet");
    auto plain = [](ggml_type t) { return t == GGML_TYPE_F32 || t == GGML_TYPE_F16 || t == GGML_TYPE_BF16; };
    SD_CHECK(plain(original_type), "weight '" + name + "': the original must be f32, f16 or bf16");
    SD_CHECK(!terms.empty(), "weight '" + name + "': no LoRA terms to merge");
    const int64_t count = ggml_nelements(t);
    SD_CHECK(out > 0 && count % out == 0, "weight '" + name + "': " + std::to_string(count) + " values are not " +
                                              std::to_string(out) + " rows");
    const int64_t K = count / out;
    if (ggml_is_quantized(t->type))
        SD_CHECK(t->ne[0] == K && K % ggml_blck_size(t->type) == 0,
                 "weight '" + name + "': stored rows do not hold " + std::to_string(K) + " values");
    int64_t R = 0;
    for (const LowRankTerm& term : terms) {
        SD_CHECK(term.rank > 0 && term.up && term.down, "weight '" + name + "': empty LoRA term");
        SD_CHECK(plain(term.type), "weight '" + name + "': LoRA factors must be f32, f16 or bf16");
        R += term.rank;
    }

    const kc::LowRank& k = kc::lowrank();
    const kc::GemmKernels& g = kc::gemm_kernels();
    const int nr = g.nr;
    const int64_t Kpad = (K + nr - 1) / nr * nr;
    // B = the downs stacked, in panels of nr columns: bpack[(p * R + r) * nr + j] = B[r][p * nr + j]
    // (p counted in columns: the panel starting at column c lies at c * R).
    std::vector<float> bpack(size_t(Kpad * R), 0.0f);

    // Write in place when the tensor's bytes are ordinary host memory in the stored layout.
    const bool in_place = t->buffer && ggml_backend_buffer_is_host(t->buffer) && !store.repacked(name);
    store.note_written(name);  // its mapped pages will hold merged values (release_mapped_pages keeps them)
    std::vector<uint8_t> staging;
    uint8_t* dst = static_cast<uint8_t*>(t->data);
    if (!in_place) {
        staging.resize(ggml_nbytes(t));
        dst = staging.data();
    }
    Job job{&g, &k, static_cast<const uint8_t*>(original), original_type,
            size_t(K) * ggml_type_size(original_type), dst, t->type, ggml_row_size(t->type, K),
            out, K, R, Kpad, bpack.data(), &terms, in_place && store.is_mapped(name)};

    const int mr = g.mr;
    const int64_t blocks = (out + mr - 1) / mr;
    // Small tensors are not worth a thread each: about 4 M multiply-adds per thread at least.
    const int64_t work = out * K * R;
    int n = int(std::max<int64_t>(1, std::min<int64_t>({int64_t(std::max(1, threads)), blocks, work / (int64_t(1) << 22) + 1})));

    auto pack = [&](int ith, int nth) {
        const int64_t panels = Kpad / nr;
        for (int64_t p = ith; p < panels; p += nth) {
            float* dstp = bpack.data() + p * nr * R;
            int64_t r0 = 0;
            for (const LowRankTerm& term : terms) {
                const int64_t cols = std::min<int64_t>(nr, K - p * nr);
                for (int64_t r = 0; r < term.rank; ++r)
                    to_f32(g, term.down, term.type, r * K + p * nr, cols, dstp + (r0 + r) * nr);
                r0 += term.rank;
            }
        }
    };
    auto rows = [&](int ith, int nth) {
        const int64_t b0 = blocks * ith / nth, b1 = blocks * (ith + 1) / nth;
        if (b1 > b0) run_rows(job, b0 * mr, std::min(out, b1 * mr));
    };
    auto parallel = [&](auto&& fn) {
        if (n == 1) {
            fn(0, 1);
            return;
        }
        std::exception_ptr error;
        std::mutex mu;
        std::vector<std::thread> pool;
        for (int i = 1; i < n; ++i)
            pool.emplace_back([&, i] {
                try {
                    fn(i, n);
                } catch (...) {
                    std::lock_guard<std::mutex> g(mu);
                    if (!error) error = std::current_exception();
                }
            });
        try {
            fn(0, n);
        } catch (...) {
            std::lock_guard<std::mutex> g(mu);
            if (!error) error = std::current_exception();
        }
        for (auto& th : pool) th.join();
        if (error) std::rethrow_exception(error);
    };
    parallel(pack);
    parallel(rows);
    if (!in_place) ggml_backend_tensor_set(t, staging.data(), 0, staging.size());
}

}  // namespace sdcpp
