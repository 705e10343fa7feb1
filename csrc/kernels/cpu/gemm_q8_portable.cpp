// Portable reference of the q8_0 product (plain int32 loops): a 4 x 8 tile, B packed per block as
// [8 columns][32 int8] followed by the 8 scales. It defines the numerics every variant matches
// bit for bit: per block an exact int32 dot product, then acc = fma(dot, d_b * d_a, acc).
#include <cmath>
#include <cstring>

#include "gemm_q8.h"
#include "gemm_q8_quant.h"

namespace sdcpp::kernels::cpu {

namespace {

constexpr int MR = 4, NR = 8;
constexpr int64_t PANEL_BLOCK = NR * 32 + NR * 4;

void quantize_a(const float* x, int64_t K, void* q, float* d) {
    int8_t* out = static_cast<int8_t*>(q);
    for (int64_t b = 0; b < K / 32; ++b) d[b] = gemm_q8_detail::quantize_block_inline(x + b * 32, out + b * 32);
}

void pack_b(const uint8_t* B, int64_t ldb, int64_t n0, int64_t nn, int64_t kb0, int64_t nkb, uint8_t* Bp) {
    for (int64_t p = 0; p * NR < nn; ++p) {
        for (int64_t kb = 0; kb < nkb; ++kb) {
            uint8_t* dst = Bp + (p * nkb + kb) * PANEL_BLOCK;
            for (int j = 0; j < NR; ++j) {
                const int64_t n = p * NR + j;
                float d = 0.0f;
                if (n < nn) {
                    const uint8_t* src = B + (n0 + n) * ldb + (kb0 + kb) * kQ8BlockBytes;
                    uint16_t h;
                    std::memcpy(&h, src, 2);
                    d = gemm_detail::half_to_float(h);
                    std::memcpy(dst + j * 32, src + 2, 32);
                } else {
                    std::memset(dst + j * 32, 0, 32);
                }
                std::memcpy(dst + NR * 32 + j * 4, &d, 4);
            }
        }
    }
}

void micro(int64_t nkb, const uint8_t* A, int64_t lda, const float* D, int64_t ldd, const uint8_t* Bp, float* C,
           int64_t ldc, bool accumulate) {
    float acc[MR][NR];
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) acc[i][j] = accumulate ? C[i * ldc + j] : 0.0f;
    for (int64_t kb = 0; kb < nkb; ++kb, Bp += PANEL_BLOCK) {
        const int8_t* bq = reinterpret_cast<const int8_t*>(Bp);
        float bd[NR];
        std::memcpy(bd, Bp + NR * 32, sizeof bd);
        for (int i = 0; i < MR; ++i) {
            const int8_t* a = reinterpret_cast<const int8_t*>(A + i * lda) + kb * 32;
            const float da = D[i * ldd + kb];
            for (int j = 0; j < NR; ++j) {
                int32_t dot = 0;
                for (int t = 0; t < 32; ++t) dot += int32_t(a[t]) * int32_t(bq[j * 32 + t]);
                acc[i][j] = std::fma(static_cast<float>(dot), bd[j] * da, acc[i][j]);
            }
        }
    }
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) C[i * ldc + j] = acc[i][j];
}

const GemmQ8Kernels kTable{Level::Portable, MR, NR, 1, PANEL_BLOCK, quantize_a, pack_b, micro, nullptr};

}  // namespace

const GemmQ8Kernels& gemm_q8_portable() { return kTable; }

}  // namespace sdcpp::kernels::cpu
