#include "gemm_q8.h"
#include "gemm_split.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "gemm_q8_quant.h"

namespace sdcpp::kernels::cpu {

namespace gemm_q8_detail {
float quantize_block(const float* x, int8_t* q) { return quantize_block_inline(x, q); }
}  // namespace gemm_q8_detail

int64_t gemm_qb_block_bytes(GemmQB t) { return t == GemmQB::Q8_0 ? 34 : t == GemmQB::Q5_0 ? 22 : 18; }

namespace gemm_q8_detail {

// One q5_0 / q4_0 block to a q8_0 block (same f16 d, the integers widened): value t of the
// first 16 is the low nibble of byte t, of the last 16 the high one; q5_0's fifth bits are bit t
// of its 32-bit qh, which follows d.
void unpack_block(GemmQB t, const uint8_t* src, uint8_t* dst) {
    std::memcpy(dst, src, 2);
    int8_t* q = reinterpret_cast<int8_t*>(dst + 2);
    if (t == GemmQB::Q4_0) {
        const uint8_t* qs = src + 2;
        for (int i = 0; i < 16; ++i) {
            q[i] = static_cast<int8_t>((qs[i] & 15) - 8);
            q[i + 16] = static_cast<int8_t>((qs[i] >> 4) - 8);
        }
        return;
    }
    uint32_t qh;
    std::memcpy(&qh, src + 2, 4);
    const uint8_t* qs = src + 6;
    for (int i = 0; i < 16; ++i) {
        q[i] = static_cast<int8_t>(((qs[i] & 15) | (((qh >> i) & 1u) << 4)) - 16);
        q[i + 16] = static_cast<int8_t>(((qs[i] >> 4) | (((qh >> (i + 16)) & 1u) << 4)) - 16);
    }
}

}  // namespace gemm_q8_detail

namespace {

// Rows n0 .. n0 + nn, blocks kb0 .. kb0 + nkb of a q5_0 / q4_0 B as q8_0 rows of nkb blocks.
void unpack_b(const GemmQ8Kernels& k, const GemmQ8Args& g, int64_t n0, int64_t nn, int64_t kb0, int64_t nkb, uint8_t* dst) {
    const int64_t bb = gemm_qb_block_bytes(g.btype);
    auto unpack_block = k.unpack_block ? k.unpack_block : gemm_q8_detail::unpack_block;
    for (int64_t n = 0; n < nn; ++n) {
        const uint8_t* src = g.B + (n0 + n) * g.ldb + kb0 * bb;
        for (int64_t kb = 0; kb < nkb; ++kb) unpack_block(g.btype, src + kb * bb, dst + (n * nkb + kb) * kQ8BlockBytes);
    }
}

// Cache blocking as in gemm.cpp: a KCB-block x NC-column block of B, packed (128 KiB of int8,
// 256 KiB as AVX2's int16), stays in L2 while the quantized rows of A pass over it MR at a time.
// A is quantized MC rows at a time (a bounded scratch whatever M is); B is repacked per MC rows,
// which costs N K bytes of copying against MC N K multiply-adds.
constexpr int64_t KCB = 16;
constexpr int64_t NC = kQ8ColBlock;
constexpr int64_t MC = 240;

// Rows [r0, r1) and columns [c0, c1) of one product.
void gemm_q8_rows(const GemmQ8Kernels& k, const GemmQ8Args& g, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    const int mr = k.mr;
    const int64_t KB = g.K / kQ8Block;
    const int64_t lda = g.K * k.a_esz;
    const int64_t mc = std::max<int64_t>(mr, (MC / mr) * mr);
    thread_local std::vector<uint8_t> aq;
    thread_local std::vector<float> ad, zero;
    aq.resize(static_cast<size_t>(mc * lda));
    ad.resize(static_cast<size_t>(mc * KB));
    if (zero.size() < static_cast<size_t>(g.K)) zero.assign(static_cast<size_t>(g.K), 0.0f);
    if (k.thread_begin) k.thread_begin();
    for (int64_t m0 = r0; m0 < r1; m0 += mc) {
        const int64_t mm = std::min(mc, r1 - m0);
        const int64_t mpad = (mm + mr - 1) / mr * mr;
        // rows past M quantize as zero rows, so the micro-kernel always reads MR real rows
        for (int64_t r = 0; r < mpad; ++r)
            k.quantize_a(r < mm ? g.A + (m0 + r) * g.lda : zero.data(), g.K, aq.data() + r * lda, ad.data() + r * KB);
        for (int64_t n0 = c0; n0 < c1; n0 += NC)
            gemm_q8_block(k, g, aq.data(), ad.data(), mm, n0, std::min(NC, c1 - n0), g.C + m0 * g.ldc + n0, g.ldc);
    }
    if (k.thread_end) k.thread_end();
}

}  // namespace

void gemm_q8_block(const GemmQ8Kernels& k, const GemmQ8Args& g, const uint8_t* aq, const float* ad, int64_t mm,
                   int64_t n0, int64_t nn, float* C, int64_t ldc) {
    const int mr = k.mr, nr = k.nr;
    const int64_t KB = g.K / kQ8Block;
    const int64_t lda = g.K * k.a_esz;
    thread_local std::vector<uint8_t> bp, unpacked;
    thread_local std::vector<float> edge;
    bp.resize(static_cast<size_t>(((std::max(nn, NC) + nr - 1) / nr) * KCB * k.panel_block));
    edge.resize(static_cast<size_t>(mr * nr));
    const bool q8 = g.btype == GemmQB::Q8_0;
    if (!q8) unpacked.resize(static_cast<size_t>(std::max(nn, NC) * KCB * kQ8BlockBytes));
    for (int64_t kb0 = 0; kb0 < KB; kb0 += KCB) {
        const int64_t nkb = std::min(KCB, KB - kb0);
        const bool acc = kb0 > 0;
        if (q8) {
            k.pack_b(g.B, g.ldb, n0, nn, kb0, nkb, bp.data());
        } else {
            unpack_b(k, g, n0, nn, kb0, nkb, unpacked.data());
            k.pack_b(unpacked.data(), nkb * kQ8BlockBytes, 0, nn, 0, nkb, bp.data());
        }
        for (int64_t i = 0; i < mm; i += mr) {
            const int64_t mv = std::min<int64_t>(mr, mm - i);
            const uint8_t* a = aq + i * lda + kb0 * kQ8Block * k.a_esz;
            const float* d = ad + i * KB + kb0;
            for (int64_t j = 0; j < nn; j += nr) {
                const uint8_t* panel = bp.data() + (j / nr) * nkb * k.panel_block;
                const int64_t nv = std::min<int64_t>(nr, nn - j);
                float* c = C + i * ldc + j;
                if (mv == mr && nv == nr) {
                    k.micro(nkb, a, lda, d, KB, panel, c, ldc, acc);
                    continue;
                }
                // A partial tile goes through a full-size scratch tile.
                if (acc) {
                    for (int64_t r = 0; r < mv; ++r) std::memcpy(&edge[r * nr], c + r * ldc, nv * sizeof(float));
                }
                k.micro(nkb, a, lda, d, KB, panel, edge.data(), nr, acc);
                for (int64_t r = 0; r < mv; ++r) std::memcpy(c + r * ldc, &edge[r * nr], nv * sizeof(float));
            }
        }
    }
}

const GemmQ8Kernels& gemm_q8_kernels_at(Level level) {
    if (const GemmQ8Kernels* t = gemm_q8_amx(); t && runs(level, t->level)) return *t;
    if (const GemmQ8Kernels* t = gemm_q8_avx512(); t && runs(level, t->level)) return *t;
    if (const GemmQ8Kernels* t = gemm_q8_avx2(); t && runs(level, t->level)) return *t;
    return gemm_q8_portable();
}

const GemmQ8Kernels& gemm_q8_kernels() { return gemm_q8_kernels_at(active_level()); }

void gemm_q8_batched(const GemmQ8Kernels& k, const GemmQ8Args& g, int64_t batch, int64_t a_batch, int64_t b_batch,
                     int64_t c_batch, int ith, int nth) {
    split_batched(g.M, g.N, k.mr, k.nr, batch, ith, nth, [&](int64_t b, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
        GemmQ8Args one = g;
        one.A = g.A + b * a_batch;
        one.B = g.B + b * b_batch;
        one.C = g.C + b * c_batch;
        gemm_q8_rows(k, one, r0, r1, c0, c1);
    });
}

}  // namespace sdcpp::kernels::cpu
