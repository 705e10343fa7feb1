#include "fused_attention.h"

#include "attention_gemm.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../../runtime/error.h"
#include "cpu_level.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// The fused kernels (bf16 and f32) are written with x86 intrinsics and target attributes.
#define SD_X86_FUSED_ATTENTION 1
#include <immintrin.h>

#include "fused_attention_bf16.h"
#endif

namespace sdcpp::fused_attention {

#ifdef SD_X86_FUSED_ATTENTION

namespace {

constexpr int KT = 64;  // keys per tile (4 vectors of 16)
constexpr int R = 4;    // query rows per register block
constexpr int QB = 32;  // query rows per work unit (8 register blocks share each K/V tile)

using bf16::Dims;
using bf16::exp2_ps;
using bf16::to_bf16;

}  // namespace

#define SD_PACK_TARGET __attribute__((target("avx512f,avx512bw")))

SD_PACK_TARGET void bf16::pack_kv(ggml_tensor* dst, int ith, int nth, void* ud) {
    const ggml_tensor* k = dst->src[0];
    const ggml_tensor* v = dst->src[1];
    const Dims m = dims_of(k->ne[0], 0, k->ne[1], k->ne[2], heads_of(ud), amx_of(ud));
    const int64_t blocks = m.Lkp / 16;
    const auto row_of = [&](const ggml_tensor* t, int64_t key, int64_t n, int64_t h) -> const float* {
        return key < m.Lk ? head_row(t, key, n, h, m.d) : nullptr;
    };
    thread_local std::vector<uint32_t> kpairs;  // one key's k row as bf16 pairs, zero-padded (to 16 dims)
    kpairs.resize((m.dpairs + 7) / 8 * 8);
    uint16_t* pairs = reinterpret_cast<uint16_t*>(kpairs.data());
    for (int64_t unit = ith; unit < m.N * m.heads * blocks; unit += nth) {
        const int64_t kb = unit % blocks, nh = unit / blocks, h = nh % m.heads, n = nh / m.heads;
        uint32_t* base = reinterpret_cast<uint32_t*>(static_cast<uint16_t*>(dst->data) + nh * m.head_size());
        // K: each key's row rounded, then its pairs dealt out 16 dwords apart (one per key)
        uint32_t* kp = base + kb * m.dpairs * 16;
        for (int64_t i = 0; i < 16; ++i) {
            const float* row = row_of(k, kb * 16 + i, n, h);
            for (int64_t c = 0; c < 2 * m.dpairs; c += 16)
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(pairs + c),
                                    _mm512_cvtepi32_epi16(round16(row ? row + c : nullptr, m.d - c)));
            for (int64_t p = 0; p < m.dpairs; ++p) kp[p * 16 + i] = kpairs[p];
        }
        // V: each pair of keys' rows interleaved, 16 dims (dwords) at a time
        uint32_t* vp = base + m.kp_size() / 2;
        for (int64_t pair = kb * 8; pair < kb * 8 + 8; ++pair) {
            const float* a = row_of(v, 2 * pair, n, h);
            const float* b = row_of(v, 2 * pair + 1, n, h);
            for (int64_t c = 0; c < m.dvp; c += 16) {
                const __m512i lo = round16(a ? a + c : nullptr, m.d - c), hi = round16(b ? b + c : nullptr, m.d - c);
                _mm512_storeu_si512(vp + pair * m.dvp + c, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
            }
        }
    }
}

namespace {

#define SD_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma")))

SD_TARGET inline __m512 dp(__m512 acc, __m512i a, __m512i b) {
    return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh&>(a), reinterpret_cast<__m512bh&>(b));
}

// One query row's online-softmax step over a tile of 4x16 scores s (base-2 logits):
// masked lanes -> -inf, running max *M / sum *L updated, the output row O rescaled, and the
// tile's probabilities returned in p.
SD_TARGET inline void softmax_update(__m512* s, const __mmask16* mask, __m512* p, float* M, float* L, float* O, int64_t dvp) {
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    for (int j = 0; j < 4; ++j) s[j] = _mm512_mask_mov_ps(ninf, mask[j], s[j]);
    const float mx = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(s[0], s[1]), _mm512_max_ps(s[2], s[3])));
    const float mnew = std::max(*M, mx);
    const float alpha = std::exp2(*M - mnew);  // 0 on the first tile
    const __m512 mv = _mm512_set1_ps(mnew);
    for (int j = 0; j < 4; ++j) p[j] = exp2_ps(_mm512_sub_ps(s[j], mv));
    *L = *L * alpha + _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(p[0], p[1]), _mm512_add_ps(p[2], p[3])));
    *M = mnew;
    if (alpha != 1.0f) {
        const __m512 av = _mm512_set1_ps(alpha);
        for (int64_t c = 0; c < dvp; c += 16) _mm512_storeu_ps(O + c, _mm512_mul_ps(_mm512_loadu_ps(O + c), av));
    }
}

void tile_masks(int64_t valid, __mmask16* mask) {
    for (int j = 0; j < 4; ++j) {
        const int64_t nv = std::max<int64_t>(0, std::min<int64_t>(16, valid - 16 * j));
        mask[j] = static_cast<__mmask16>(nv >= 16 ? 0xffff : (1u << nv) - 1u);
    }
}

// acc[r][c] += P[r] . V over one tile of KT keys, for NC output vectors starting at dv0.
template <int NC>
SD_TARGET void pv_chunk(float* O, int64_t dvp, const uint32_t* Pb, const uint16_t* vtile, int64_t dv0) {
    __m512 acc[R][NC];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_loadu_ps(O + r * dvp + (dv0 + c) * 16);
    for (int kp = 0; kp < KT / 2; ++kp) {
        __m512i vv[NC];
        for (int c = 0; c < NC; ++c) vv[c] = _mm512_loadu_si512(vtile + (kp * dvp + (dv0 + c) * 16) * 2);
        for (int r = 0; r < R; ++r) {
            const __m512i pb = _mm512_set1_epi32(static_cast<int>(Pb[r * (KT / 2) + kp]));
            for (int c = 0; c < NC; ++c) acc[r][c] = dp(acc[r][c], pb, vv[c]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < NC; ++c) _mm512_storeu_ps(O + r * dvp + (dv0 + c) * 16, acc[r][c]);
}

SD_TARGET void attend_bf16(ggml_tensor* dst, int ith, int nth, void* ud) {
    const ggml_tensor* q = dst->src[0];
    const ggml_tensor* packed = dst->src[1];
    const ggml_tensor* k = dst->src[2];
    const Dims m = bf16::dims_of(q->ne[0], q->ne[1], k->ne[1], q->ne[2], bf16::heads_of(ud), false);
    const float qscale = bf16::q_scale(m.d);  // the softmax then uses 2^x
    const int64_t qblocks = (m.Lq + QB - 1) / QB;
    const int64_t tiles = m.Lkp / KT;

    thread_local std::vector<float> obuf;
    thread_local std::vector<uint32_t> qbuf, pbuf;
    obuf.resize(QB * m.dvp + 2 * QB);
    qbuf.resize(QB * m.dpairs);
    pbuf.resize(R * KT / 2);
    float* O = obuf.data();
    float* M = O + QB * m.dvp;
    float* L = M + QB;
    uint32_t* Qp = qbuf.data();
    uint32_t* Pb = pbuf.data();

    for (int64_t unit = ith; unit < m.N * m.heads * qblocks; unit += nth) {
        const int64_t qb = unit % qblocks, nh = unit / qblocks, h = nh % m.heads, n = nh / m.heads;
        const int64_t q0 = qb * QB, rows = std::min<int64_t>(QB, m.Lq - q0);
        const uint16_t* kp = static_cast<const uint16_t*>(packed->data) + nh * m.head_size();
        const uint16_t* vp = kp + m.kp_size();
        // q rows -> bf16 pairs, pre-scaled by scale * log2(e) (the softmax then uses 2^x)
        for (int64_t r = 0; r < QB; ++r) {
            const float* row = r < rows ? bf16::head_row(q, q0 + r, n, h, m.d) : nullptr;
            for (int64_t p = 0; p < m.dpairs; ++p) {
                const float a = row ? row[2 * p] * qscale : 0.0f;
                const float b = row && 2 * p + 1 < m.d ? row[2 * p + 1] * qscale : 0.0f;
                Qp[r * m.dpairs + p] = static_cast<uint32_t>(to_bf16(a)) | (static_cast<uint32_t>(to_bf16(b)) << 16);
            }
            M[r] = -INFINITY;
            L[r] = 0.0f;
        }
        std::memset(O, 0, sizeof(float) * QB * m.dvp);

        for (int64_t t = 0; t < tiles; ++t) {
            const uint16_t* ktile = kp + t * 4 * m.dpairs * 32;
            const uint16_t* vtile = vp + t * (KT / 2) * m.dvp * 2;
            const int64_t valid = std::min<int64_t>(KT, m.Lk - t * KT);
            __mmask16 mask[4];
            tile_masks(valid, mask);
            for (int64_t g = 0; g < (rows + R - 1) / R; ++g) {
                const uint32_t* qg = Qp + g * R * m.dpairs;
                __m512 s[R][4];
                for (int r = 0; r < R; ++r)
                    for (int j = 0; j < 4; ++j) s[r][j] = _mm512_setzero_ps();
                for (int64_t p = 0; p < m.dpairs; ++p) {
                    __m512i kv[4];
                    for (int j = 0; j < 4; ++j) kv[j] = _mm512_loadu_si512(ktile + (j * m.dpairs + p) * 32);
                    for (int r = 0; r < R; ++r) {
                        const __m512i qv = _mm512_set1_epi32(static_cast<int>(qg[r * m.dpairs + p]));
                        for (int j = 0; j < 4; ++j) s[r][j] = dp(s[r][j], qv, kv[j]);
                    }
                }
                // online softmax (base 2) of this tile's scores
                for (int r = 0; r < R; ++r) {
                    const int64_t row = g * R + r;
                    __m512 pj[4];
                    softmax_update(s[r], mask, pj, M + row, L + row, O + row * m.dvp, m.dvp);
                    const __m512bh lo = _mm512_cvtne2ps_pbh(pj[1], pj[0]);
                    const __m512bh hi = _mm512_cvtne2ps_pbh(pj[3], pj[2]);
                    std::memcpy(Pb + r * (KT / 2), &lo, 64);
                    std::memcpy(Pb + r * (KT / 2) + 16, &hi, 64);
                }
                float* Og = O + g * R * m.dvp;
                const int64_t nvec = m.dvp / 16;
                for (int64_t dv0 = 0; dv0 < nvec;) {
                    const int64_t nc = std::min<int64_t>(6, nvec - dv0);
                    switch (nc) {
                        case 1: pv_chunk<1>(Og, m.dvp, Pb, vtile, dv0); break;
                        case 2: pv_chunk<2>(Og, m.dvp, Pb, vtile, dv0); break;
                        case 3: pv_chunk<3>(Og, m.dvp, Pb, vtile, dv0); break;
                        case 4: pv_chunk<4>(Og, m.dvp, Pb, vtile, dv0); break;
                        case 5: pv_chunk<5>(Og, m.dvp, Pb, vtile, dv0); break;
                        default: pv_chunk<6>(Og, m.dvp, Pb, vtile, dv0); break;
                    }
                    dv0 += nc;
                }
            }
        }
        bf16::write_rows(dst, O, m.dvp, L, q0, rows, n, h, m.d);
    }
}


// The f32 attention through the GEMM-tiled driver (attention_gemm.h) at the active level.
void attend_gemm(ggml_tensor* dst, int ith, int nth, void* ud) {
    const ggml_tensor* q = dst->src[0];
    const ggml_tensor* k = dst->src[1];
    const ggml_tensor* v = dst->src[2];
    const int heads = bf16::heads_of(ud);
    const auto f = [](const ggml_tensor* t, int i) { return static_cast<int64_t>(t->nb[i] / sizeof(float)); };
    kernels::cpu::AttentionArgs a{static_cast<const float*>(q->data), f(q, 1), f(q, 2),
                                  static_cast<const float*>(k->data), f(k, 1), f(k, 2),
                                  static_cast<const float*>(v->data), f(v, 1), f(v, 2),
                                  static_cast<float*>(dst->data), f(dst, 1), f(dst, 2),
                                  q->ne[2], q->ne[1], k->ne[1], q->ne[0] / heads, heads};
    kernels::cpu::attention_gemm(kernels::cpu::gemm_kernels(), kernels::cpu::elementwise(), a, ith, nth);
}

}  // namespace

namespace kc = sdcpp::kernels::cpu;

bool available_bf16() { return kc::runs(kc::active_level(), kc::Level::Avx512Bf16); }

bool available_bf16_amx() { return available_bf16() && bf16::amx_available(); }

const char* bf16_variant() { return !available_bf16() ? "ggml_flash" : bf16::amx_available() ? "amx" : "avx512_bf16"; }

bool available_f32() {
    const kc::Level level = kc::active_level();
    return kc::runs(level, kc::Level::Avx512) || kc::runs(level, kc::Level::Avx2);
}

ggml_tensor* attention_f32(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads) {
    if (!available_f32()) throw Error("the fused f32 attention needs the CPU level avx2 or avx512");
    if (q->type != GGML_TYPE_F32 || q->nb[0] != sizeof(float)) q = ggml_cont(ctx, q);
    if (k->type != GGML_TYPE_F32 || k->nb[0] != sizeof(float)) k = ggml_cont(ctx, k);
    if (v->type != GGML_TYPE_F32 || v->nb[0] != sizeof(float)) v = ggml_cont(ctx, v);
    ggml_tensor* args[3] = {q, k, v};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, q->ne[0], q->ne[1], q->ne[2], 1, args, 3, attend_gemm, GGML_N_TASKS_MAX,
                          bf16::user_data(heads, false));
}

ggml_tensor* attention_bf16(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads) {
    if (!available_bf16()) throw Error("bf16 attention needs the CPU level avx512_bf16");
    if (q->type != GGML_TYPE_F32 || q->nb[0] != sizeof(float)) q = ggml_cont(ctx, q);
    if (k->type != GGML_TYPE_F32 || k->nb[0] != sizeof(float)) k = ggml_cont(ctx, k);
    if (v->type != GGML_TYPE_F32 || v->nb[0] != sizeof(float)) v = ggml_cont(ctx, v);
    // level amx (with AMX-BF16): the tile variant, on its own K / V padding
    const bool amx = bf16::amx_available();
    const Dims m = bf16::dims_of(q->ne[0], q->ne[1], k->ne[1], q->ne[2], heads, amx);
    void* ud = bf16::user_data(heads, amx);
    ggml_tensor* kv[2] = {k, v};
    ggml_tensor* packed = ggml_custom_4d(ctx, GGML_TYPE_BF16, m.N * m.heads * m.head_size(), 1, 1, 1, kv, 2, bf16::pack_kv,
                                         GGML_N_TASKS_MAX, ud);
    ggml_tensor* args[3] = {q, packed, k};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, m.D, m.Lq, m.N, 1, args, 3, amx ? bf16::attend_amx : attend_bf16,
                          GGML_N_TASKS_MAX, ud);
}

#else

bool available_bf16() { return false; }
bool available_bf16_amx() { return false; }
const char* bf16_variant() { return "ggml_flash"; }
bool available_f32() { return false; }
ggml_tensor* attention_f32(ggml_context*, ggml_tensor*, ggml_tensor*, ggml_tensor*, int) {
    throw Error("the fused f32 attention is not built for this CPU architecture");
}
ggml_tensor* attention_bf16(ggml_context*, ggml_tensor*, ggml_tensor*, ggml_tensor*, int) {
    throw Error("bf16 attention is not built for this CPU architecture");
}

#endif

}  // namespace sdcpp::fused_attention
