// AVX2 variant of the q8_0 product: vpmaddwd on int16 operands. Why not vpmaddubsw (u8 x s8, as
// ggml): its int16 pair sums saturate unless the sign trick moves A's signs onto B per row,
// which breaks for B = -128 (valid q8_0 bytes); widened to int16 both operands multiply exactly.
// A 3 x 16 tile: 6 int32 block sums and 6 f32 accumulators in ymm; B packed per block as
// [16 k pairs][16 columns][2 int16] followed by the 16 scales.
#include "gemm_q8.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include "gemm_q8_quant.h"

#define SD_TARGET __attribute__((target("avx2,fma,f16c")))

namespace sdcpp::kernels::cpu {

namespace {

constexpr int MR = 3, NR = 16;
constexpr int64_t VALUES = 16 * NR * 4;  // 1024 bytes
constexpr int64_t PANEL_BLOCK = VALUES + NR * 4;

SD_TARGET void quantize_a(const float* x, int64_t K, void* q, float* d) {
    int16_t* out = static_cast<int16_t*>(q);
    int8_t blk[32];
    for (int64_t b = 0; b < K / 32; ++b) {
        d[b] = gemm_q8_detail::quantize_block_inline(x + b * 32, blk);
        for (int t = 0; t < 32; ++t) out[b * 32 + t] = blk[t];
    }
}

SD_TARGET void pack_b(const uint8_t* B, int64_t ldb, int64_t n0, int64_t nn, int64_t kb0, int64_t nkb, uint8_t* Bp) {
    for (int64_t p = 0; p * NR < nn; ++p) {
        for (int64_t kb = 0; kb < nkb; ++kb) {
            uint8_t* dst = Bp + (p * nkb + kb) * PANEL_BLOCK;
            int16_t* v = reinterpret_cast<int16_t*>(dst);  // panel blocks are 64-byte multiples
            for (int j = 0; j < NR; ++j) {
                const int64_t n = p * NR + j;
                float d = 0.0f;
                if (n < nn) {
                    const uint8_t* src = B + (n0 + n) * ldb + (kb0 + kb) * kQ8BlockBytes;
                    uint16_t h;
                    std::memcpy(&h, src, 2);
                    d = gemm_detail::half_to_float(h);
                    const int8_t* qs = reinterpret_cast<const int8_t*>(src + 2);
                    for (int t = 0; t < 32; ++t) v[(t / 2) * NR * 2 + j * 2 + (t & 1)] = qs[t];
                } else {
                    for (int t = 0; t < 32; ++t) v[(t / 2) * NR * 2 + j * 2 + (t & 1)] = 0;
                }
                std::memcpy(dst + VALUES + j * 4, &d, 4);
            }
        }
    }
}

SD_TARGET void micro(int64_t nkb, const uint8_t* A, int64_t lda, const float* D, int64_t ldd, const uint8_t* Bp,
                     float* C, int64_t ldc, bool accumulate) {
    __m256 f0[MR], f1[MR];
    for (int i = 0; i < MR; ++i) {
        f0[i] = accumulate ? _mm256_loadu_ps(C + i * ldc) : _mm256_setzero_ps();
        f1[i] = accumulate ? _mm256_loadu_ps(C + i * ldc + 8) : _mm256_setzero_ps();
    }
    for (int64_t kb = 0; kb < nkb; ++kb, Bp += PANEL_BLOCK) {
        __m256i s0[MR], s1[MR];
        for (int i = 0; i < MR; ++i) s0[i] = s1[i] = _mm256_setzero_si256();
        const uint8_t* a = A + kb * 64;
#pragma GCC unroll 16
        for (int p = 0; p < 16; ++p) {
            const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(Bp + p * 64));
            const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(Bp + p * 64 + 32));
#pragma GCC unroll 4
            for (int i = 0; i < MR; ++i) {
                int32_t pair;
                std::memcpy(&pair, a + i * lda + p * 4, 4);
                const __m256i av = _mm256_set1_epi32(pair);
                s0[i] = _mm256_add_epi32(s0[i], _mm256_madd_epi16(av, b0));
                s1[i] = _mm256_add_epi32(s1[i], _mm256_madd_epi16(av, b1));
            }
        }
        const __m256 d0 = _mm256_loadu_ps(reinterpret_cast<const float*>(Bp + VALUES));
        const __m256 d1 = _mm256_loadu_ps(reinterpret_cast<const float*>(Bp + VALUES + 32));
        for (int i = 0; i < MR; ++i) {
            const __m256 da = _mm256_set1_ps(D[i * ldd + kb]);
            f0[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0[i]), _mm256_mul_ps(d0, da), f0[i]);
            f1[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1[i]), _mm256_mul_ps(d1, da), f1[i]);
        }
    }
    for (int i = 0; i < MR; ++i) {
        _mm256_storeu_ps(C + i * ldc, f0[i]);
        _mm256_storeu_ps(C + i * ldc + 8, f1[i]);
    }
}

const GemmQ8Kernels kTable{Level::Avx2, MR, NR, 2, PANEL_BLOCK, quantize_a, pack_b, micro, nullptr};

}  // namespace

const GemmQ8Kernels* gemm_q8_avx2() { return &kTable; }

}  // namespace sdcpp::kernels::cpu

#else
namespace sdcpp::kernels::cpu {
const GemmQ8Kernels* gemm_q8_avx2() { return nullptr; }
}  // namespace sdcpp::kernels::cpu
#endif
