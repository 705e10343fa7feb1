// AVX2 variant of the int8 attention's micro-kernels (attention_int8.h): vpmaddwd multiplies
// 16 int16 pairs into 8 int32 sums per instruction (vpaddd accumulates), 8 keys (scores) or 8
// channels (P V) per vector, 4 query rows per register block. The softmax repeats the portable
// rules lane by lane (same roundings, explicit fma), so the results agree bit for bit.
#include "attention_int8.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

namespace sdcpp::kernels::cpu {

using namespace int8_attention;

namespace {

#define SD_TARGET __attribute__((target("avx2,fma")))

constexpr int R = 4;  // query rows per register block

// acc += the pair products of a and b. The empty asm pins the sum to its register: without it
// GCC computes each product into a new register and copies it back (a vmovdqa per product in
// the inner loops, on the same ports as the products).
SD_TARGET inline void dot2(__m256i& acc, __m256i a, __m256i b) {
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
    asm("" : "+x"(acc));
}

SD_TARGET inline __m256 exp2_neg8(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-127.0f));
    const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 f = _mm256_sub_ps(x, n);
    __m256 p = _mm256_set1_ps(kExp2[0]);
    for (int i = 1; i < kExp2Terms; ++i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2[i]));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

SD_TARGET void scores(const uint32_t* q, int rows, const uint32_t* ktile, int64_t dpairs, int32_t* S) {
    for (int r0 = 0; r0 < rows; r0 += R)
        for (int g = 0; g < kKeys / 16; ++g) {
            const uint32_t* kg = ktile + g * dpairs * 16;
            __m256i acc[R][2];
            for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
            for (int64_t p = 0; p < dpairs; ++p) {
                const __m256i k0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kg + p * 16));
                const __m256i k1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kg + p * 16 + 8));
                for (int r = 0; r < R; ++r) {
                    const __m256i qb = _mm256_set1_epi32(static_cast<int>(q[(r0 + r) * dpairs + p]));
                    dot2(acc[r][0], qb, k0);
                    dot2(acc[r][1], qb, k1);
                }
            }
            for (int r = 0; r < R; ++r) {
                int32_t* s = S + (r0 + r) * kKeys + g * 16;
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(s), acc[r][0]);
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(s + 8), acc[r][1]);
            }
        }
}

SD_TARGET void softmax(const int32_t* S, int rows, const float* sq, const float* sk, int valid, float* M, float* L,
                       float* alpha, int16_t* P) {
    constexpr int NV = kKeys / 8;
    __m256 lim[NV];  // +inf on the tile's keys, -inf past Lk: min() masks the scores
    for (int i = 0; i < NV; ++i) {
        const __m256i j = _mm256_add_epi32(_mm256_set1_epi32(8 * i), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        const __m256i in = _mm256_cmpgt_epi32(_mm256_set1_epi32(valid), j);
        lim[i] = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), _mm256_set1_ps(INFINITY), _mm256_castsi256_ps(in));
    }
    for (int r = 0; r < rows; ++r) {
        __m256 s[NV];
        __m256 mx = _mm256_set1_ps(-INFINITY);
        const __m256 qs = _mm256_set1_ps(sq[r]);
        for (int i = 0; i < NV; ++i) {
            const __m256 si = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(S + r * kKeys + 8 * i)));
            s[i] = _mm256_min_ps(_mm256_mul_ps(_mm256_mul_ps(si, qs), _mm256_loadu_ps(sk + 8 * i)), lim[i]);
            mx = _mm256_max_ps(mx, s[i]);
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        const float mnew = std::max(M[r], _mm_cvtss_f32(m4));
        alpha[r] = rescale(M[r], mnew);
        M[r] = mnew;
        const __m256 mv = _mm256_set1_ps(mnew);
        __m256i sum = _mm256_setzero_si256();
        for (int i = 0; i < NV; i += 2) {
            const __m256i p0 = _mm256_cvtps_epi32(_mm256_mul_ps(exp2_neg8(_mm256_sub_ps(s[i], mv)), _mm256_set1_ps(kP)));
            const __m256i p1 = _mm256_cvtps_epi32(_mm256_mul_ps(exp2_neg8(_mm256_sub_ps(s[i + 1], mv)), _mm256_set1_ps(kP)));
            sum = _mm256_add_epi32(sum, _mm256_add_epi32(p0, p1));
            // packs works per 128-bit lane: put the 16 values back in key order
            const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(p0, p1), 0xD8);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(P + r * kKeys + 8 * i), w);
        }
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
        L[r] = std::fma(L[r], alpha[r], static_cast<float>(_mm_cvtsi128_si32(s4)));
    }
}

// R = 4 rows x NC (1 or 2) vectors of 8 channels starting at c. Named accumulators: with
// arrays GCC keeps them on the stack here.
template <int NC>
SD_TARGET inline void pv_block(const int16_t* P, const uint32_t* vtile, const float* vs, const float* alpha, int64_t dvp,
                               float* O, int r0, int64_t c) {
    static_assert(R == 4 && (NC == 1 || NC == 2));
    __m256i a00 = _mm256_setzero_si256(), a10 = a00, a20 = a00, a30 = a00, a01 = a00, a11 = a00, a21 = a00, a31 = a00;
    const int16_t* p = P + r0 * kKeys;
    for (int kp = 0; kp < kKeys / 2; ++kp) {
        const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(vtile + kp * dvp + c));
        const __m256i v1 = NC == 2 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(vtile + kp * dvp + c + 8)) : v0;
        int32_t w[R];
        std::memcpy(&w[0], p + 2 * kp, 4);
        std::memcpy(&w[1], p + kKeys + 2 * kp, 4);
        std::memcpy(&w[2], p + 2 * kKeys + 2 * kp, 4);
        std::memcpy(&w[3], p + 3 * kKeys + 2 * kp, 4);
        const __m256i p0 = _mm256_set1_epi32(w[0]), p1 = _mm256_set1_epi32(w[1]);
        const __m256i p2 = _mm256_set1_epi32(w[2]), p3 = _mm256_set1_epi32(w[3]);
        dot2(a00, p0, v0);
        dot2(a10, p1, v0);
        dot2(a20, p2, v0);
        dot2(a30, p3, v0);
        if constexpr (NC == 2) {
            dot2(a01, p0, v1);
            dot2(a11, p1, v1);
            dot2(a21, p2, v1);
            dot2(a31, p3, v1);
        }
    }
    const __m256i acc[R][2] = {{a00, a01}, {a10, a11}, {a20, a21}, {a30, a31}};
    for (int r = 0; r < R; ++r) {
        const __m256 a = _mm256_set1_ps(alpha[r0 + r]);
        for (int j = 0; j < NC; ++j) {
            float* o = O + (r0 + r) * dvp + c + 8 * j;
            _mm256_storeu_ps(o, _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][j]), _mm256_loadu_ps(vs + c + 8 * j),
                                                _mm256_mul_ps(_mm256_loadu_ps(o), a)));
        }
    }
}

SD_TARGET void pv(const int16_t* P, int rows, const uint32_t* vtile, const float* vs, const float* alpha, int64_t dvp,
                  float* O) {
    for (int r0 = 0; r0 < rows; r0 += R) {
        int64_t c = 0;
        for (; c + 16 <= dvp; c += 16) pv_block<2>(P, vtile, vs, alpha, dvp, O, r0, c);
        if (c < dvp) pv_block<1>(P, vtile, vs, alpha, dvp, O, r0, c);
    }
}

#undef SD_TARGET

}  // namespace

const AttentionInt8Kernels* attention_int8_avx2() {
    static const AttentionInt8Kernels t{Level::Avx2, "avx2", scores, softmax, pv};
    return &t;
}

}  // namespace sdcpp::kernels::cpu

#else
namespace sdcpp::kernels::cpu {
const AttentionInt8Kernels* attention_int8_avx2() { return nullptr; }
}  // namespace sdcpp::kernels::cpu
#endif
