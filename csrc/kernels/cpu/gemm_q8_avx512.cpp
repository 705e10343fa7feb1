// AVX-512 VNNI variant of the q8_0 product: vpdpbusd multiplies 4 u8 x s8 pairs per int32 lane
// and adds them without saturation. A is quantized with +128 (u8 = q + 128) and each panel block
// carries, per column, -128 times the sum of its B values, which starts the block's int32 sums,
// so the dot products come out exact for any B byte (the sign trick would break on B = -128).
// A 6 x 32 tile: 12 int32 block sums and 12 f32 accumulators in zmm; per 4 k two B loads and six
// A broadcasts feed twelve vpdpbusd. B packed per block as [8 groups of 4 k][32 columns][4 int8],
// then the 32 scales, then the 32 compensations. Used only where the CPU has AVX512-VNNI (Ice
// Lake, Zen 4 and later); an AVX-512 CPU without it runs the AVX2 variant.
#include "gemm_q8.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include <algorithm>

#include "gemm_q8_quant.h"

#define SD_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,fma,f16c")))

namespace sdcpp::kernels::cpu {

namespace {

constexpr int MR = 6, NR = 32;
constexpr int64_t VALUES = 8 * NR * 4;  // 1024 bytes
constexpr int64_t SCALES = VALUES, COMP = VALUES + NR * 4;
constexpr int64_t PANEL_BLOCK = VALUES + NR * 8;

// ggml's quantization (gemm_q8_quant.h), vectorized: the rounding is vcvtps2dq's round to
// nearest even, the int8 saturation vpmovsdb's, as ggml's packs; then +128.
SD_TARGET void quantize_a(const float* x, int64_t K, void* q, float* d) {
    uint8_t* out = static_cast<uint8_t*>(q);
    const __m512 sign = _mm512_set1_ps(-0.0f);
    const __m128i offset = _mm_set1_epi8(static_cast<char>(0x80));
    for (int64_t b = 0; b < K / 32; ++b, x += 32, out += 32) {
        const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1)));
        d[b] = gemm_detail::half_to_float(gemm_q8_detail::float_to_half_bits(amax / 127.0f));
        const __m512 id = _mm512_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
        const __m128i q0 = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v0, id)));
        const __m128i q1 = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v1, id)));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm_xor_si128(q0, offset));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16), _mm_xor_si128(q1, offset));
    }
}

// Gathers do the transpose: per 16 columns, vector g holds bytes 4g .. 4g + 3 of each column's
// block, so a panel block is 16 gathers (scalar byte copies made the packing as costly as a
// third of the product on short, wide matrices). Columns past nn are masked off (read nothing,
// packed as zero).
SD_TARGET void pack_b(const uint8_t* B, int64_t ldb, int64_t n0, int64_t nn, int64_t kb0, int64_t nkb, uint8_t* Bp) {
    const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32(static_cast<int32_t>(ldb)));
    const __m512i ones = _mm512_set1_epi8(1);
    for (int64_t p = 0; p * NR < nn; ++p) {
        for (int h = 0; h < 2; ++h) {
            const int64_t j0 = p * NR + h * 16;
            const int64_t valid = std::min<int64_t>(16, std::max<int64_t>(0, nn - j0));
            const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1u);
            const uint8_t* row = valid > 0 ? B + (n0 + j0) * ldb : B;
            for (int64_t kb = 0; kb < nkb; ++kb) {
                const uint8_t* base = row + (kb0 + kb) * kQ8BlockBytes;
                uint8_t* dst = Bp + (p * nkb + kb) * PANEL_BLOCK + h * 64;
                __m512i sum = _mm512_setzero_si512();
#pragma GCC unroll 8
                for (int g = 0; g < 8; ++g) {
                    const __m512i v = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mask, rows, base + 2 + 4 * g, 1);
                    _mm512_storeu_si512(dst + g * 128, v);
                    sum = _mm512_dpbusd_epi32(sum, ones, v);  // the column's 4 values, summed
                }
                _mm512_storeu_si512(dst + COMP, _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sum, 7)));
                const __m512i dw = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mask, rows, base, 1);
                _mm512_storeu_ps(dst + SCALES, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dw)));  // low 16 bits: d
            }
        }
    }
}

SD_TARGET void micro(int64_t nkb, const uint8_t* A, int64_t lda, const float* D, int64_t ldd, const uint8_t* Bp,
                     float* C, int64_t ldc, bool accumulate) {
    __m512 f0[MR], f1[MR];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
        f0[i] = accumulate ? _mm512_loadu_ps(C + i * ldc) : _mm512_setzero_ps();
        f1[i] = accumulate ? _mm512_loadu_ps(C + i * ldc + 16) : _mm512_setzero_ps();
    }
    for (int64_t kb = 0; kb < nkb; ++kb, Bp += PANEL_BLOCK) {
        const __m512i c0 = _mm512_loadu_si512(Bp + COMP), c1 = _mm512_loadu_si512(Bp + COMP + 64);
        __m512i s0[MR], s1[MR];
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
            s0[i] = c0;
            s1[i] = c1;
        }
        const uint8_t* a = A + kb * 32;
#pragma GCC unroll 8
        for (int g = 0; g < 8; ++g) {
            const __m512i b0 = _mm512_loadu_si512(Bp + g * 128), b1 = _mm512_loadu_si512(Bp + g * 128 + 64);
#pragma GCC unroll 8
            for (int i = 0; i < MR; ++i) {
                int32_t quad;
                std::memcpy(&quad, a + i * lda + g * 4, 4);
                const __m512i av = _mm512_set1_epi32(quad);
                s0[i] = _mm512_dpbusd_epi32(s0[i], av, b0);
                s1[i] = _mm512_dpbusd_epi32(s1[i], av, b1);
            }
        }
        const __m512 d0 = _mm512_loadu_ps(Bp + SCALES), d1 = _mm512_loadu_ps(Bp + SCALES + 64);
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
            const __m512 da = _mm512_set1_ps(D[i * ldd + kb]);
            f0[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0[i]), _mm512_mul_ps(d0, da), f0[i]);
            f1[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1[i]), _mm512_mul_ps(d1, da), f1[i]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
        _mm512_storeu_ps(C + i * ldc, f0[i]);
        _mm512_storeu_ps(C + i * ldc + 16, f1[i]);
    }
}

// q4_0: low nibbles are values 0-15, high nibbles 16-31, minus 8; q5_0 adds bit t of qh as 16
// (a byte mask from the 32-bit qh) and subtracts 16.
SD_TARGET void unpack_block(GemmQB t, const uint8_t* src, uint8_t* dst) {
    std::memcpy(dst, src, 2);
    const bool q5 = t == GemmQB::Q5_0;
    const __m128i qs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + (q5 ? 6 : 2)));
    const __m128i low = _mm_set1_epi8(15);
    __m256i v = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(qs, 4), low), _mm_and_si128(qs, low));
    if (q5) {
        uint32_t qh;
        std::memcpy(&qh, src + 2, 4);
        v = _mm256_sub_epi8(_mm256_or_si256(v, _mm256_maskz_mov_epi8(qh, _mm256_set1_epi8(16))), _mm256_set1_epi8(16));
    } else {
        v = _mm256_sub_epi8(v, _mm256_set1_epi8(8));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 2), v);
}

const GemmQ8Kernels kTable{Level::Avx512, MR, NR, 1, PANEL_BLOCK, quantize_a, pack_b, micro, unpack_block};

}  // namespace

const GemmQ8Kernels* gemm_q8_avx512() {
    static const bool vnni = __builtin_cpu_supports("avx512vnni");
    return vnni ? &kTable : nullptr;
}

}  // namespace sdcpp::kernels::cpu

#else
namespace sdcpp::kernels::cpu {
const GemmQ8Kernels* gemm_q8_avx512() { return nullptr; }
}  // namespace sdcpp::kernels::cpu
#endif
