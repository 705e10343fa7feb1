// AVX2 + FMA fused attention: the AVX-512 f32 kernel's flash structure at 8 lanes. A key tile
// is 32 keys (4 vectors); 3 query rows share each tile (12 score accumulators + 4 key vectors
// fill the 16 ymm registers); the softmax is online and in base 2 (q pre-scaled by log2 e).
// Packed per (n, head): K [Lkp/8 blocks][d][8 keys], V [Lkp keys][dvp dims], zero past Lk.
#include "fused_attention_avx2.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#define SD_TARGET __attribute__((target("avx2,fma")))

namespace sdcpp::fused_attention::avx2 {

namespace {

constexpr int KT = 32;  // keys per tile
constexpr int R = 3;    // query rows per register block
constexpr int QB = 24;  // query rows per work unit (a multiple of R)

struct Dims {
    int64_t D, d, heads, Lq, Lk, N;
    int64_t dvp;  // d rounded up to 8: output lanes
    int64_t Lkp;  // Lk rounded up to KT
    int64_t head_size() const { return Lkp * d + Lkp * dvp; }
};

Dims dims_of(int64_t D, int64_t Lq, int64_t Lk, int64_t N, int heads) {
    Dims m{};
    m.D = D;
    m.heads = heads;
    m.d = D / heads;
    m.Lq = Lq;
    m.Lk = Lk;
    m.N = N;
    m.dvp = (m.d + 7) / 8 * 8;
    m.Lkp = (Lk + KT - 1) / KT * KT;
    return m;
}

int heads_of(void* ud) { return static_cast<int>(reinterpret_cast<intptr_t>(ud)); }

const float* row_of(const ggml_tensor* t, int64_t i, int64_t n, int64_t col) {
    return reinterpret_cast<const float*>(static_cast<const char*>(t->data) + i * t->nb[1] + n * t->nb[2]) + col;
}

// 2^x for x <= 0 (x = -inf included) with ~1e-7 relative error; below -126 it returns 2^-126
// times the polynomial, which callers mask or which vanishes against the row maximum's 1.
SD_TARGET inline __m256 exp2_ps(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-126.0f));
    const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 f = _mm256_sub_ps(x, n);  // [-0.5, 0.5]
    __m256 p = _mm256_set1_ps(1.5403530e-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3333558e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6181291e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5504109e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022651e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314718e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

SD_TARGET inline float hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

SD_TARGET inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// acc[r][c] += P[r] . V over one tile of KT keys, for NC output vectors starting at dv0.
template <int NC>
SD_TARGET void pv_chunk(float* O, int64_t dvp, const float* P, const float* vtile, int64_t dv0) {
    __m256 acc[R][NC];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < NC; ++c) acc[r][c] = _mm256_loadu_ps(O + r * dvp + (dv0 + c) * 8);
    for (int key = 0; key < KT; ++key) {
        __m256 vv[NC];
        for (int c = 0; c < NC; ++c) vv[c] = _mm256_loadu_ps(vtile + key * dvp + (dv0 + c) * 8);
        for (int r = 0; r < R; ++r) {
            const __m256 pb = _mm256_broadcast_ss(P + r * KT + key);
            for (int c = 0; c < NC; ++c) acc[r][c] = _mm256_fmadd_ps(pb, vv[c], acc[r][c]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < NC; ++c) _mm256_storeu_ps(O + r * dvp + (dv0 + c) * 8, acc[r][c]);
}

}  // namespace

int64_t packed_floats(int64_t D, int64_t Lk, int64_t N, int heads) {
    const Dims m = dims_of(D, 0, Lk, N, heads);
    return m.N * m.heads * m.head_size();
}

void pack(ggml_tensor* dst, int ith, int nth, void* ud) {
    const ggml_tensor* k = dst->src[0];
    const ggml_tensor* v = dst->src[1];
    const Dims m = dims_of(k->ne[0], 0, k->ne[1], k->ne[2], heads_of(ud));
    float* out = static_cast<float*>(dst->data);
    const int64_t blocks = m.Lkp / 8;
    for (int64_t unit = ith; unit < m.N * m.heads * blocks; unit += nth) {
        const int64_t kb = unit % blocks, nh = unit / blocks, h = nh % m.heads, n = nh / m.heads;
        float* kp = out + nh * m.head_size() + kb * m.d * 8;
        float* vp = out + nh * m.head_size() + m.Lkp * m.d;
        for (int64_t i = 0; i < 8; ++i) {
            const int64_t key = kb * 8 + i;
            const float* krow = key < m.Lk ? row_of(k, key, n, h * m.d) : nullptr;
            const float* vrow = key < m.Lk ? row_of(v, key, n, h * m.d) : nullptr;
            for (int64_t dd = 0; dd < m.d; ++dd) kp[dd * 8 + i] = krow ? krow[dd] : 0.0f;
            for (int64_t dd = 0; dd < m.dvp; ++dd) vp[key * m.dvp + dd] = vrow && dd < m.d ? vrow[dd] : 0.0f;
        }
    }
}

SD_TARGET void attend(ggml_tensor* dst, int ith, int nth, void* ud) {
    const ggml_tensor* q = dst->src[0];
    const ggml_tensor* packed = dst->src[1];
    const ggml_tensor* k = dst->src[2];
    const Dims m = dims_of(q->ne[0], q->ne[1], k->ne[1], q->ne[2], heads_of(ud));
    const float qscale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(m.d)) * 1.4426950408889634);  // log2(e)
    const int64_t qblocks = (m.Lq + QB - 1) / QB;
    const int64_t tiles = m.Lkp / KT;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);

    thread_local std::vector<float> obuf, qbuf, pbuf;
    obuf.resize(QB * m.dvp + 2 * QB);
    qbuf.resize(QB * m.d);
    pbuf.resize(R * KT);
    float* O = obuf.data();
    float* M = O + QB * m.dvp;
    float* L = M + QB;
    float* Qs = qbuf.data();
    float* P = pbuf.data();

    for (int64_t unit = ith; unit < m.N * m.heads * qblocks; unit += nth) {
        const int64_t qb = unit % qblocks, nh = unit / qblocks, h = nh % m.heads, n = nh / m.heads;
        const int64_t q0 = qb * QB, rows = std::min<int64_t>(QB, m.Lq - q0);
        const float* kp = static_cast<const float*>(packed->data) + nh * m.head_size();
        const float* vp = kp + m.Lkp * m.d;
        for (int64_t r = 0; r < QB; ++r) {
            const float* row = r < rows ? row_of(q, q0 + r, n, h * m.d) : nullptr;
            for (int64_t dd = 0; dd < m.d; ++dd) Qs[r * m.d + dd] = row ? row[dd] * qscale : 0.0f;
            M[r] = -INFINITY;
            L[r] = 0.0f;
        }
        std::memset(O, 0, sizeof(float) * QB * m.dvp);
        for (int64_t t = 0; t < tiles; ++t) {
            const float* ktile = kp + t * 4 * m.d * 8;
            const float* vtile = vp + t * KT * m.dvp;
            const int64_t valid = std::min<int64_t>(KT, m.Lk - t * KT);
            __m256 mask[4];
            for (int j = 0; j < 4; ++j)
                mask[j] = _mm256_castsi256_ps(
                    _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(valid - 8 * j)), lane));
            for (int64_t g = 0; g < (rows + R - 1) / R; ++g) {
                const float* qg = Qs + g * R * m.d;
                __m256 s[R][4];
                for (int r = 0; r < R; ++r)
                    for (int j = 0; j < 4; ++j) s[r][j] = _mm256_setzero_ps();
                for (int64_t dd = 0; dd < m.d; ++dd) {
                    __m256 kv[4];
                    for (int j = 0; j < 4; ++j) kv[j] = _mm256_loadu_ps(ktile + (j * m.d + dd) * 8);
                    for (int r = 0; r < R; ++r) {
                        const __m256 qv = _mm256_broadcast_ss(qg + r * m.d + dd);
                        for (int j = 0; j < 4; ++j) s[r][j] = _mm256_fmadd_ps(qv, kv[j], s[r][j]);
                    }
                }
                const __m256 ninf = _mm256_set1_ps(-INFINITY);
                for (int r = 0; r < R; ++r) {
                    const int64_t row = g * R + r;
                    for (int j = 0; j < 4; ++j) s[r][j] = _mm256_blendv_ps(ninf, s[r][j], mask[j]);
                    const float mx = hmax(_mm256_max_ps(_mm256_max_ps(s[r][0], s[r][1]), _mm256_max_ps(s[r][2], s[r][3])));
                    const float mnew = std::max(M[row], mx);
                    const float alpha = std::exp2(M[row] - mnew);  // 0 on the first tile
                    const __m256 mv = _mm256_set1_ps(mnew);
                    __m256 sum = _mm256_setzero_ps();
                    for (int j = 0; j < 4; ++j) {
                        const __m256 p = _mm256_and_ps(exp2_ps(_mm256_sub_ps(s[r][j], mv)), mask[j]);
                        _mm256_storeu_ps(P + r * KT + 8 * j, p);
                        sum = _mm256_add_ps(sum, p);
                    }
                    L[row] = L[row] * alpha + hsum(sum);
                    M[row] = mnew;
                    if (alpha != 1.0f) {
                        const __m256 av = _mm256_set1_ps(alpha);
                        float* orow = O + row * m.dvp;
                        for (int64_t c = 0; c < m.dvp; c += 8) _mm256_storeu_ps(orow + c, _mm256_mul_ps(_mm256_loadu_ps(orow + c), av));
                    }
                }
                float* Og = O + g * R * m.dvp;
                const int64_t nvec = m.dvp / 8;
                for (int64_t dv0 = 0; dv0 < nvec;) {
                    const int64_t nc = std::min<int64_t>(4, nvec - dv0);
                    switch (nc) {
                        case 1: pv_chunk<1>(Og, m.dvp, P, vtile, dv0); break;
                        case 2: pv_chunk<2>(Og, m.dvp, P, vtile, dv0); break;
                        case 3: pv_chunk<3>(Og, m.dvp, P, vtile, dv0); break;
                        default: pv_chunk<4>(Og, m.dvp, P, vtile, dv0); break;
                    }
                    dv0 += nc;
                }
            }
        }
        for (int64_t r = 0; r < rows; ++r) {
            float* out = reinterpret_cast<float*>(static_cast<char*>(dst->data) + (q0 + r) * dst->nb[1] + n * dst->nb[2]) + h * m.d;
            const float inv = 1.0f / L[r];
            for (int64_t c = 0; c < m.d; ++c) out[c] = O[r * m.dvp + c] * inv;
        }
    }
}

}  // namespace sdcpp::fused_attention::avx2

#endif
