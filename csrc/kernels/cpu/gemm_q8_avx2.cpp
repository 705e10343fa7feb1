// AVX2 variant of the q8_0 product: vpmaddwd on int16 operands. Why not vpmaddubsw (u8 x s8, as
// ggml): it needs one operand unsigned, so ggml moves B's signs onto A per pair (|b| times
// sign(a, b)): one extra vpsignb and a vpmaddwd to widen per 32 products, which on AVX2 costs more
// than widening both operands to int16 once (A when quantized, B when packed) and multiplying
// them exactly with one vpmaddwd per 16 products.
// A 3 x 16 tile: 6 int32 block sums and 6 f32 accumulators in ymm; B packed per block as
// [16 k pairs][16 columns][2 int16] followed by the 16 scales.
#include "gemm_q8.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include <algorithm>

#include "gemm_q8_quant.h"

#define SD_TARGET __attribute__((target("avx2,fma,f16c")))

namespace sdcpp::kernels::cpu {

namespace {

constexpr int MR = 3, NR = 16;
constexpr int64_t VALUES = 16 * NR * 4;  // 1024 bytes
constexpr int64_t PANEL_BLOCK = VALUES + NR * 4;

// ggml's quantization (gemm_q8_quant.h), vectorized, to int16. amax: lane-wise max with the
// running maximum as vmaxps's second operand, so a NaN input is skipped as the scalar loop skips
// it; rounding: vcvtps2dq's round to nearest even; then clamped to [-128, 127], where a NaN
// (vcvtps2dq's 0x80000000) lands on -128 as in the scalar reference.
SD_TARGET void quantize_a(const float* x, int64_t K, void* q, float* d) {
    int16_t* out = static_cast<int16_t*>(q);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i lo = _mm256_set1_epi32(-128), hi = _mm256_set1_epi32(127);
    for (int64_t b = 0; b < K / 32; ++b, x += 32, out += 32) {
        __m256 v[4];
        __m256 m = _mm256_setzero_ps();
        for (int i = 0; i < 4; ++i) {
            v[i] = _mm256_loadu_ps(x + 8 * i);
            m = _mm256_max_ps(_mm256_andnot_ps(sign, v[i]), m);
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        const float amax = _mm_cvtss_f32(m4);
        // F16C's round trip, nearest even, subnormal halves included: float_to_half_bits /
        // half_to_float's values without their branches (amax is never NaN here)
        d[b] = _cvtsh_ss(_cvtss_sh(amax / 127.0f, _MM_FROUND_TO_NEAREST_INT));
        const __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
        __m256i r[4];
        for (int i = 0; i < 4; ++i)
            r[i] = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v[i], id)), lo), hi);
        // packs interleaves 128-bit lanes: [0-3, 8-11, 4-7, 12-15]; the permute restores the order
        const __m256i p0 = _mm256_permute4x64_epi64(_mm256_packs_epi32(r[0], r[1]), 0xD8);
        const __m256i p1 = _mm256_permute4x64_epi64(_mm256_packs_epi32(r[2], r[3]), 0xD8);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), p0);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16), p1);
    }
}

// Gathers do the transpose: per 8 columns, gather g holds bytes 4g .. 4g + 3 of each column's
// block (k pairs 2g and 2g + 1); vpshufb moves each byte into the high half of an int16 and an
// arithmetic shift sign-extends it. Columns past nn are masked off (read nothing, packed as 0).
SD_TARGET void pack_b(const uint8_t* B, int64_t ldb, int64_t n0, int64_t nn, int64_t kb0, int64_t nkb, uint8_t* Bp) {
    const __m256i rows = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                            _mm256_set1_epi32(static_cast<int32_t>(ldb)));
    const __m256i even = _mm256_setr_epi8(-1, 0, -1, 1, -1, 4, -1, 5, -1, 8, -1, 9, -1, 12, -1, 13,  //
                                          -1, 0, -1, 1, -1, 4, -1, 5, -1, 8, -1, 9, -1, 12, -1, 13);
    const __m256i odd = _mm256_setr_epi8(-1, 2, -1, 3, -1, 6, -1, 7, -1, 10, -1, 11, -1, 14, -1, 15,  //
                                         -1, 2, -1, 3, -1, 6, -1, 7, -1, 10, -1, 11, -1, 14, -1, 15);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i low16 = _mm256_set1_epi32(0xffff);
    for (int64_t p = 0; p * NR < nn; ++p) {
        __m256i dw[2];
        const uint8_t* row[2];
        __m256i mask[2];
        for (int h = 0; h < 2; ++h) {
            const int64_t j0 = p * NR + h * 8;
            const int64_t valid = std::min<int64_t>(8, std::max<int64_t>(0, nn - j0));
            mask[h] = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(valid)), lane);
            row[h] = valid > 0 ? B + (n0 + j0) * ldb : B;
        }
        for (int64_t kb = 0; kb < nkb; ++kb) {
            uint8_t* dst = Bp + (p * nkb + kb) * PANEL_BLOCK;
            for (int h = 0; h < 2; ++h) {
                const uint8_t* base = row[h] + (kb0 + kb) * kQ8BlockBytes;
#pragma GCC unroll 8
                for (int g = 0; g < 8; ++g) {
                    const __m256i v = _mm256_mask_i32gather_epi32(_mm256_setzero_si256(),
                                                                  reinterpret_cast<const int*>(base + 2 + 4 * g), rows,
                                                                  mask[h], 1);
                    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + (2 * g) * 64 + h * 32),
                                        _mm256_srai_epi16(_mm256_shuffle_epi8(v, even), 8));
                    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + (2 * g + 1) * 64 + h * 32),
                                        _mm256_srai_epi16(_mm256_shuffle_epi8(v, odd), 8));
                }
                dw[h] = _mm256_and_si256(
                    _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), reinterpret_cast<const int*>(base), rows,
                                                mask[h], 1),
                    low16);
            }
            // the 16 f16 scales in column order (packus interleaves lanes as above), then widened
            const __m256i hs = _mm256_permute4x64_epi64(_mm256_packus_epi32(dw[0], dw[1]), 0xD8);
            _mm256_storeu_ps(reinterpret_cast<float*>(dst + VALUES), _mm256_cvtph_ps(_mm256_castsi256_si128(hs)));
            _mm256_storeu_ps(reinterpret_cast<float*>(dst + VALUES + 32), _mm256_cvtph_ps(_mm256_extracti128_si256(hs, 1)));
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
                // Integer sums reassociate freely, and GCC, fully unrolled, would then form all 96
                // products first and spill them to the stack (half the speed): this empty asm keeps
                // each sum a running one in its register.
                __asm__("" : "+x"(s0[i]), "+x"(s1[i]));
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

// q4_0: low nibbles are values 0-15, high nibbles 16-31, minus 8; q5_0 adds bit t of qh as 16
// (byte t of a broadcast qh picks its byte t / 8, then tests bit t % 8) and subtracts 16. As the
// AVX-512 one: a few instructions per block where the portable unpacker loops per value.
SD_TARGET void unpack_block(GemmQB t, const uint8_t* src, uint8_t* dst) {
    std::memcpy(dst, src, 2);
    const bool q5 = t == GemmQB::Q5_0;
    const __m128i qs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + (q5 ? 6 : 2)));
    const __m128i low = _mm_set1_epi8(15);
    __m256i v = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(qs, 4), low), _mm_and_si128(qs, low));
    if (q5) {
        uint32_t qh;
        std::memcpy(&qh, src + 2, 4);
        const __m256i pick = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                              2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
        const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
        const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int32_t>(qh)), pick);
        const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
        v = _mm256_sub_epi8(_mm256_or_si256(v, _mm256_and_si256(set, _mm256_set1_epi8(16))), _mm256_set1_epi8(16));
    } else {
        v = _mm256_sub_epi8(v, _mm256_set1_epi8(8));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 2), v);
}

const GemmQ8Kernels kTable{Level::Avx2, MR, NR, 2, PANEL_BLOCK, quantize_a, pack_b, micro, unpack_block};

}  // namespace

const GemmQ8Kernels* gemm_q8_avx2() { return &kTable; }

}  // namespace sdcpp::kernels::cpu

#else
namespace sdcpp::kernels::cpu {
const GemmQ8Kernels* gemm_q8_avx2() { return nullptr; }
}  // namespace sdcpp::kernels::cpu
#endif
