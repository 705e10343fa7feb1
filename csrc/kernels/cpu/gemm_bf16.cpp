#include "gemm_bf16.h"
#include "gemm_split.h"

#include <algorithm>
#include <vector>

namespace sdcpp::kernels::cpu {

namespace {

// Cache blocking: a KC x NC block of B as bf16 (512 KiB) stays in L2 (2 MiB per core on Sapphire
// Rapids) while MR rows of A pass over its panels. A is rounded MC rows at a time (a bounded
// scratch whatever M is: MC x K bf16, 11 MiB at K = 11520), and B repacked per MC rows, which
// costs N K conversions against MC N K multiply-adds: at AMX speed (~1000 flop per cycle peak)
// packing B is not negligible, so MC is large. KC 1024 / MC 512 against 256-512 / 256 measured
// up to 1.5x on the large-K U-Net shapes (shared machine, noisy: bench/README.md).
#ifndef SDCPP_GEMM_BF16_KC
#define SDCPP_GEMM_BF16_KC 1024
#endif
constexpr int64_t KC = SDCPP_GEMM_BF16_KC;
static_assert(KC % kBf16Block == 0, "K blocks hold whole tile products");
constexpr int64_t NC = 256;
constexpr int64_t MC = 512;

int64_t pad32(int64_t k) { return (k + kBf16Block - 1) / kBf16Block * kBf16Block; }

// Rows [r0, r1) and columns [c0, c1) of one product.
void gemm_bf16_rows(const GemmBf16Kernels& k, const GemmArgs& g, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    const int mr = k.mr, nr = k.nr;
    const int64_t lda = pad32(g.K);
    const int64_t mc = std::max<int64_t>(mr, (MC / mr) * mr);
    thread_local std::vector<uint16_t> aq, bp;
    thread_local std::vector<float> zero, edge;
    aq.resize(static_cast<size_t>(mc * lda));
    bp.resize(static_cast<size_t>(((NC + nr - 1) / nr) * nr * KC));
    if (zero.size() < static_cast<size_t>(g.K)) zero.assign(static_cast<size_t>(g.K), 0.0f);
    edge.resize(static_cast<size_t>(mr * nr));
    if (k.thread_begin) k.thread_begin();
    for (int64_t m0 = r0; m0 < r1; m0 += mc) {
        const int64_t mm = std::min(mc, r1 - m0);
        const int64_t mpad = (mm + mr - 1) / mr * mr;
        // rows past M round as zero rows, so the micro-kernel always reads MR real rows
        for (int64_t r = 0; r < mpad; ++r) k.round_a(r < mm ? g.A + (m0 + r) * g.lda : zero.data(), g.K, aq.data() + r * lda);
        for (int64_t n0 = c0; n0 < c1; n0 += NC) {
            const int64_t nn = std::min(NC, c1 - n0);
            for (int64_t k0 = 0; k0 < g.K; k0 += KC) {
                const int64_t kc = std::min(KC, g.K - k0);
                const int64_t nkb = pad32(kc) / kBf16Block;
                const bool acc = k0 > 0;
                k.pack_b(g.B, g.btype, g.ldb, g.K, n0, nn, k0, kc, bp.data());
                for (int64_t i = 0; i < mm; i += mr) {
                    const int64_t mv = std::min<int64_t>(mr, mm - i);
                    const uint16_t* a = aq.data() + i * lda + k0;
                    for (int64_t j = 0; j < nn; j += nr) {
                        const uint16_t* panel = bp.data() + (j / nr) * nkb * kBf16Block * nr;
                        const int64_t nv = std::min<int64_t>(nr, nn - j);
                        float* c = g.C + (m0 + i) * g.ldc + n0 + j;
                        if (mv == mr && nv == nr) {
                            k.micro(nkb, a, lda, panel, c, g.ldc, acc);
                            continue;
                        }
                        // A partial tile goes through a full-size scratch tile.
                        if (acc) {
                            for (int64_t r = 0; r < mv; ++r) std::memcpy(&edge[r * nr], c + r * g.ldc, nv * sizeof(float));
                        }
                        k.micro(nkb, a, lda, panel, edge.data(), nr, acc);
                        for (int64_t r = 0; r < mv; ++r) std::memcpy(c + r * g.ldc, &edge[r * nr], nv * sizeof(float));
                    }
                }
            }
        }
    }
    if (k.thread_end) k.thread_end();
}

}  // namespace

const GemmBf16Kernels& gemm_bf16_kernels_at(Level level) {
    if (const GemmBf16Kernels* t = gemm_bf16_amx(); t && runs(level, t->level)) return *t;
    return gemm_bf16_portable();
}

const GemmBf16Kernels& gemm_bf16_kernels() { return gemm_bf16_kernels_at(active_level()); }

bool gemm_bf16_fast() { return gemm_bf16_kernels().level == Level::Amx; }

void gemm_bf16_batched(const GemmBf16Kernels& k, const GemmArgs& g, int64_t batch, int64_t a_batch, int64_t b_batch,
                       int64_t c_batch, int ith, int nth) {
    split_batched(g.M, g.N, k.mr, k.nr, batch, ith, nth, [&](int64_t b, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
        GemmArgs one = g;
        one.A = g.A + b * a_batch;
        one.B = static_cast<const char*>(g.B) + b * b_batch;
        one.C = g.C + b * c_batch;
        gemm_bf16_rows(k, one, r0, r1, c0, c1);
    });
}

}  // namespace sdcpp::kernels::cpu
