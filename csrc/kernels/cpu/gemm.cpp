#include "gemm.h"
#include "gemm_split.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace sdcpp::kernels::cpu {

namespace {

// Cache blocking: a KC x NC block of B, packed and converted to f32 (256 KiB), stays in L2 while
// the thread's rows of A pass over it MR at a time; those MR rows (MR x KC floats, at most 12 KiB)
// stay in L1 while every NR panel of the block meets them. Sized for the smallest L2 we target
// (512 KiB on Zen 2-4) and a 32 KiB L1.
#ifndef SDCPP_GEMM_KC
#define SDCPP_GEMM_KC 256
#endif
#ifndef SDCPP_GEMM_NC
#define SDCPP_GEMM_NC 256
#endif
constexpr int64_t KC = SDCPP_GEMM_KC;
constexpr int64_t NC = SDCPP_GEMM_NC;

// Rows [r0, r1) and columns [c0, c1) of one product.
void gemm_rows(const GemmKernels& k, const GemmArgs& g, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    const int mr = k.mr, nr = k.nr;
    thread_local std::vector<float> bp, tail, edge;
    bp.resize(static_cast<size_t>(KC * ((NC + nr - 1) / nr) * nr));
    tail.resize(static_cast<size_t>(mr * KC));
    edge.resize(static_cast<size_t>(mr * nr));
    for (int64_t n0 = c0; n0 < c1; n0 += NC) {
        const int64_t nn = std::min(NC, c1 - n0);
        for (int64_t k0 = 0; k0 < g.K; k0 += KC) {
            const int64_t kc = std::min(KC, g.K - k0);
            const bool acc = k0 > 0;
            k.pack_b(g.B, g.btype, g.ldb, n0, nn, k0, kc, bp.data());
            for (int64_t i = r0; i < r1; i += mr) {
                const int64_t mv = std::min<int64_t>(mr, r1 - i);
                const float* a = g.A + i * g.lda + k0;
                int64_t lda = g.lda;
                if (mv < mr) {  // the last rows, padded with zero rows so the kernel reads only real memory
                    std::fill(tail.begin(), tail.end(), 0.0f);
                    for (int64_t r = 0; r < mv; ++r) std::memcpy(&tail[r * kc], a + r * g.lda, kc * sizeof(float));
                    a = tail.data();
                    lda = kc;
                }
                for (int64_t j = 0; j < nn; j += nr) {
                    const float* bpan = bp.data() + (j / nr) * kc * nr;
                    const int64_t nv = std::min<int64_t>(nr, nn - j);
                    float* c = g.C + i * g.ldc + n0 + j;
                    if (mv == mr && nv == nr) {
                        k.micro(kc, a, lda, bpan, c, g.ldc, acc);
                        continue;
                    }
                    // A partial tile goes through a full-size scratch tile.
                    if (acc) {
                        for (int64_t r = 0; r < mv; ++r) std::memcpy(&edge[r * nr], c + r * g.ldc, nv * sizeof(float));
                    }
                    k.micro(kc, a, lda, bpan, edge.data(), nr, acc);
                    for (int64_t r = 0; r < mv; ++r) std::memcpy(c + r * g.ldc, &edge[r * nr], nv * sizeof(float));
                }
            }
        }
    }
}

}  // namespace

const GemmKernels& gemm_kernels_at(Level level) {
    if (const GemmKernels* t = gemm_avx512(); t && runs(level, t->level)) return *t;
    if (const GemmKernels* t = gemm_avx2(); t && runs(level, t->level)) return *t;
    return gemm_portable();
}

const GemmKernels& gemm_kernels() { return gemm_kernels_at(active_level()); }

void gemm_batched(const GemmKernels& k, const GemmArgs& g, int64_t batch, int64_t a_batch, int64_t b_batch,
                  int64_t c_batch, int ith, int nth) {
    split_batched(g.M, g.N, k.mr, k.nr, batch, ith, nth, [&](int64_t b, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
        GemmArgs one = g;
        one.A = g.A + b * a_batch;
        one.B = static_cast<const char*>(g.B) + b * b_batch;
        one.C = g.C + b * c_batch;
        gemm_rows(k, one, r0, r1, c0, c1);
    });
}

}  // namespace sdcpp::kernels::cpu
