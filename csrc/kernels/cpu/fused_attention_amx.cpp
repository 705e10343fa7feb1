// AMX-BF16 variant of the bf16 attention (fused_attention.h), chosen at the level amx where the
// CPU has AMX-BF16. Why: the AVX512-BF16 variant spends most of its time in vdpbf16ps (32
// products per instruction); TDPBF16PS does 16 x 16 x 32 per tile product.
//
// Per (batch, head, block of 32 queries), for each tile of up to KT keys:
//   S = Q K^T   tile products into a 32 x 32 block of f32 per 32 keys (tmm0-3, from two Q tiles
//               tmm4-5 and two K^T tiles tmm6-7: the tile shapes of gemm_bf16_amx.cpp), stored;
//   softmax     online (flash style), base 2, in f32 with AVX-512 on the stored rows: running
//               max and sum per query, O rescaled in memory, P = 2^(S - max) rounded to bf16;
//   O += P V    tile products, O (32 x d f32) loaded and stored per tile of keys.
// K and V come packed by the shared op (fused_attention_bf16.h, AMX padding: q / k rows to
// whole 32-dim tile depths, so d 40 -> 64, 80 -> 96, 64 and 160 unchanged; keys to 32).
//
// Numerics as the AVX512-BF16 variant: q * (log2(e) / sqrt(d)), k and v rounded to bf16 (nearest
// even), the same 2^x, probabilities rounded to bf16 (VCVTNE2PS2BF16) after subtracting the
// running max, f32 sums. Not bit for bit that variant: the products add in another order (pairs,
// 32 deep per tile product), the running max moves per KT keys rather than per 64, and the
// rescale factor 2^(old max - new max) is the vector 2^x rather than std::exp2.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include "fused_attention_bf16.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "amx_tiles.h"
#include "cpu_level.h"
#include "gemm_bf16.h"

#define SD_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))

namespace sdcpp::fused_attention::bf16 {

namespace {

constexpr int QB = 32;   // queries per work unit: the rows of two A tiles
constexpr int KT = 128;  // keys per softmax step: four 32-key blocks, S and P stay in L1

// All eight tiles 16 rows of 64 bytes (f32 sums: 16 columns; bf16 A: 32 values; bf16 B: 16
// columns of pairs), as gemm_bf16_amx.cpp.
SD_TARGET void load_tile_config() {
    static const kernels::cpu::AmxTileConfig cfg =
        kernels::cpu::amx_tiles({64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16});
    _tile_loadconfig(&cfg);
}

// S[32][KT] (the first nblk * 32 columns) = Q K^T for nblk blocks of 32 keys. Q: 32 rows of
// dpairs * 2 bf16; ktile: the tile's first 16-key block of packed K.
SD_TARGET void scores(const uint16_t* Q, int64_t dpairs, const uint16_t* ktile, int64_t nblk, float* S) {
    const int64_t qstride = dpairs * 4, block = dpairs * 32;  // bytes per Q row; values per 16-key block
    for (int64_t b = 0; b < nblk; ++b) {
        const uint16_t* k0 = ktile + 2 * b * block;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t j = 0; j < dpairs / 16; ++j) {
            _tile_loadd(4, Q + j * 32, qstride);
            _tile_loadd(6, k0 + j * 512, 64);
            _tile_loadd(7, k0 + block + j * 512, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_loadd(5, Q + 16 * dpairs * 2 + j * 32, qstride);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        float* s = S + b * 32;
        _tile_stored(0, s, KT * 4);
        _tile_stored(1, s + 16, KT * 4);
        _tile_stored(2, s + 16 * KT, KT * 4);
        _tile_stored(3, s + 16 * KT + 16, KT * 4);
    }
}

// The online-softmax step of the 32 rows of S over `valid` keys (nblk * 32 columns; those past
// `valid` are padding, masked out): running max M and sum L per row updated, the rows of O
// rescaled, and P (32 x KT bf16) filled. The row maxima come first so that the rescale factors
// 2^(old max - new max) are computed 16 rows at a time.
SD_TARGET void softmax(const float* S, int64_t valid, int64_t nblk, float* M, float* L, float* O, int64_t dvp,
                       uint16_t* P) {
    __mmask16 mask[KT / 16];
    for (int64_t j = 0; j < 2 * nblk; ++j) {
        const int64_t nv = std::max<int64_t>(0, std::min<int64_t>(16, valid - 16 * j));
        mask[j] = static_cast<__mmask16>(nv >= 16 ? 0xffff : (1u << nv) - 1u);
    }
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    alignas(64) float mnew[QB], alpha[QB];
    for (int r = 0; r < QB; ++r) {
        const float* s = S + r * KT;
        __m512 mx = ninf;
        for (int64_t j = 0; j < 2 * nblk; ++j) mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(ninf, mask[j], s + 16 * j));
        mnew[r] = _mm512_reduce_max_ps(mx);
    }
    for (int r = 0; r < QB; r += 16) {  // exp2_ps(-inf) = 0 on the first tile, exactly 1 where the max stays
        const __m512 mold = _mm512_loadu_ps(M + r), mn = _mm512_max_ps(mold, _mm512_load_ps(mnew + r));
        _mm512_store_ps(alpha + r, exp2_ps(_mm512_sub_ps(mold, mn)));
        _mm512_store_ps(mnew + r, mn);
        _mm512_storeu_ps(M + r, mn);
    }
    for (int r = 0; r < QB; ++r) {
        const float* s = S + r * KT;
        const __m512 mv = _mm512_set1_ps(mnew[r]);
        __m512 sum = _mm512_setzero_ps();
        for (int64_t j = 0; j < 2 * nblk; j += 2) {
            const __m512 p0 = _mm512_maskz_mov_ps(mask[j], exp2_ps(_mm512_sub_ps(_mm512_loadu_ps(s + 16 * j), mv)));
            const __m512 p1 =
                _mm512_maskz_mov_ps(mask[j + 1], exp2_ps(_mm512_sub_ps(_mm512_loadu_ps(s + 16 * j + 16), mv)));
            sum = _mm512_add_ps(sum, _mm512_add_ps(p0, p1));
            const __m512bh pb = _mm512_cvtne2ps_pbh(p1, p0);
            _mm512_storeu_si512(P + r * KT + 16 * j, reinterpret_cast<const __m512i&>(pb));
        }
        L[r] = L[r] * alpha[r] + _mm512_reduce_add_ps(sum);
        if (alpha[r] != 1.0f) {
            const __m512 av = _mm512_set1_ps(alpha[r]);
            float* o = O + r * dvp;
            for (int64_t c = 0; c < dvp; c += 16) _mm512_storeu_ps(o + c, _mm512_mul_ps(_mm512_loadu_ps(o + c), av));
        }
    }
}

// O[32][dvp] += P V over nblk blocks of 32 keys; vtile: the tile's first key pair of packed V
// (rows of dvp dims x 2 keys, so a B tile's rows are dvp * 4 bytes apart).
SD_TARGET void accumulate(float* O, int64_t dvp, const uint16_t* P, const uint16_t* vtile, int64_t nblk) {
    const int64_t os = dvp * 4, vs = dvp * 4, nvec = dvp / 16;
    for (int64_t c = 0; c < nvec; c += 2) {
        const bool two = c + 1 < nvec;  // a last, odd column block uses tiles 0, 2 and 6 only
        float* o = O + c * 16;
        _tile_loadd(0, o, os);
        _tile_loadd(2, o + 16 * dvp, os);
        if (two) {
            _tile_loadd(1, o + 16, os);
            _tile_loadd(3, o + 16 * dvp + 16, os);
        }
        for (int64_t b = 0; b < nblk; ++b) {
            const uint16_t* v = vtile + b * 16 * dvp * 2 + c * 32;
            _tile_loadd(4, P + b * 32, KT * 2);
            _tile_loadd(5, P + 16 * KT + b * 32, KT * 2);
            _tile_loadd(6, v, vs);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(2, 5, 6);
            if (two) {
                _tile_loadd(7, v + 32, vs);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(3, 5, 7);
            }
        }
        _tile_stored(0, o, os);
        _tile_stored(2, o + 16 * dvp, os);
        if (two) {
            _tile_stored(1, o + 16, os);
            _tile_stored(3, o + 16 * dvp + 16, os);
        }
    }
}

}  // namespace

bool amx_available() {
    namespace kc = kernels::cpu;
    // gemm_bf16_amx() is the one check for AMX-BF16 (beyond the level amx's tiles and AMX-INT8)
    return kc::runs(kc::active_level(), kc::Level::Amx) && kc::gemm_bf16_amx() != nullptr;
}

SD_TARGET void attend_amx(ggml_tensor* dst, int ith, int nth, void* ud) {
    const ggml_tensor* q = dst->src[0];
    const ggml_tensor* packed = dst->src[1];
    const ggml_tensor* k = dst->src[2];
    const Dims m = dims_of(q->ne[0], q->ne[1], k->ne[1], q->ne[2], heads_of(ud), true);
    const float qscale = q_scale(m.d);
    const int64_t qblocks = (m.Lq + QB - 1) / QB, tiles = (m.Lkp + KT - 1) / KT, dp = m.dpairs * 2;

    thread_local std::vector<float> fbuf;
    thread_local std::vector<uint16_t> hbuf;
    fbuf.resize(QB * KT + QB * m.dvp + 2 * QB);
    hbuf.resize(QB * KT + QB * dp);
    float* S = fbuf.data();
    float* O = S + QB * KT;
    float* M = O + QB * m.dvp;
    float* L = M + QB;
    uint16_t* P = hbuf.data();
    uint16_t* Q = P + QB * KT;

    load_tile_config();
    for (int64_t unit = ith; unit < m.N * m.heads * qblocks; unit += nth) {
        const int64_t qb = unit % qblocks, nh = unit / qblocks, h = nh % m.heads, n = nh / m.heads;
        const int64_t q0 = qb * QB, rows = std::min<int64_t>(QB, m.Lq - q0);
        const uint16_t* kp = static_cast<const uint16_t*>(packed->data) + nh * m.head_size();
        const uint16_t* vp = kp + m.kp_size();
        // q rows -> bf16 pre-scaled (zero rows past Lq and dims past d: they add nothing)
        for (int64_t r = 0; r < QB; ++r) {
            const float* row = r < rows ? head_row(q, q0 + r, n, h, m.d) : nullptr;
            for (int64_t c = 0; c < dp; c += 16)
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(Q + r * dp + c),
                                    _mm512_cvtepi32_epi16(round16(row ? row + c : nullptr, m.d - c, qscale)));
            M[r] = -INFINITY;
            L[r] = 0.0f;
        }
        std::fill(O, O + QB * m.dvp, 0.0f);
        for (int64_t t = 0; t < tiles; ++t) {
            const int64_t valid = std::min<int64_t>(KT, m.Lk - t * KT), nblk = (valid + 31) / 32;
            scores(Q, m.dpairs, kp + t * (KT / 16) * m.dpairs * 32, nblk, S);
            softmax(S, valid, nblk, M, L, O, m.dvp, P);
            accumulate(O, m.dvp, P, vp + t * (KT / 2) * m.dvp * 2, nblk);
        }
        write_rows(dst, O, m.dvp, L, q0, rows, n, h, m.d);
    }
    _tile_release();
}

}  // namespace sdcpp::fused_attention::bf16

#endif
