// What the two bf16 attention variants (fused_attention.cpp: AVX512-BF16 dot products,
// fused_attention_amx.cpp: AMX-BF16 tiles) share, so that they round the same way: the packed
// K / V layout and its packing op, q's rounding, and the 2^x of the online softmax.
// x86 only (included where SD_X86_FUSED_ATTENTION is set).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "ggml.h"

namespace sdcpp::fused_attention::bf16 {

// Shapes of one attention call. The AMX layout pads a q / k row to whole tile depths (32 dims)
// and the keys to 32 (one P tile's depth); the AVX512-BF16 one pads the keys to its 64-key tile.
struct Dims {
    int64_t D, d, heads, Lq, Lk, N;
    int64_t dpairs;  // bf16 pairs of a packed q / k row: ceil(d / 2), AMX: rounded up to 16
    int64_t dvp;     // d rounded up to 16: output lanes
    int64_t Lkp;     // Lk rounded up to 64 (AMX: 32)
    int64_t kp_size() const { return (Lkp / 16) * dpairs * 32; }  // packed K per (n, head)
    int64_t vp_size() const { return Lkp * dvp; }                 // packed V per (n, head)
    int64_t head_size() const { return kp_size() + vp_size(); }
};

inline Dims dims_of(int64_t D, int64_t Lq, int64_t Lk, int64_t N, int heads, bool amx) {
    Dims m{};
    m.D = D;
    m.heads = heads;
    m.d = D / heads;
    m.Lq = Lq;
    m.Lk = Lk;
    m.N = N;
    m.dpairs = (m.d + 1) / 2;
    if (amx) m.dpairs = (m.dpairs + 15) / 16 * 16;
    m.dvp = (m.d + 15) / 16 * 16;
    const int64_t kalign = amx ? 32 : 64;
    m.Lkp = (Lk + kalign - 1) / kalign * kalign;
    return m;
}

// The ops' user data: the head count and the layout (AMX or not).
inline void* user_data(int heads, bool amx) { return reinterpret_cast<void*>(static_cast<intptr_t>(heads) * 2 + amx); }
inline int heads_of(void* ud) { return static_cast<int>(reinterpret_cast<intptr_t>(ud) / 2); }
inline bool amx_of(void* ud) { return (reinterpret_cast<intptr_t>(ud) & 1) != 0; }

inline uint16_t to_bf16(float f) {  // round to nearest even (inputs are finite)
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// softmax(q k^T / sqrt(d)) runs in base 2: q is scaled by this (1/sqrt(d) * log2(e)) before
// rounding to bf16.
inline float q_scale(int64_t d) {
    return static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)) * 1.4426950408889634);
}

// Up to 16 floats at x times scale (n of them; none for n <= 0 or x null, zero past n) rounded
// as to_bf16 (bit for bit the scalar rule), in the low half of each dword.
__attribute__((target("avx512f"))) inline __m512i round16(const float* x, int64_t n, float scale = 1.0f) {
    if (!x || n <= 0) return _mm512_setzero_si512();
    const __mmask16 mask = n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
    const __m512i u = _mm512_castps_si512(_mm512_mul_ps(_mm512_maskz_loadu_ps(mask, x), _mm512_set1_ps(scale)));
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    return _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
}

// The K / V packing op (ggml custom op, src[0] = k, src[1] = v, user_data()). Per (n, head):
//   K: [Lkp/16 blocks][dpairs][16 keys][2 dims]  (a vdpbf16ps operand: 16 keys in the lanes;
//      with AMX's dpairs, 16 pairs of a block are one TDPBF16PS B tile of k^T)
//   V: [Lkp/2 key pairs][dvp dims][2 keys]        (16 output dims in the lanes; for AMX a B
//      tile of 16 key pairs x 16 dims, rows dvp * 4 bytes apart)
// Zero past d and Lk.
void pack_kv(ggml_tensor* dst, int ith, int nth, void* ud);

// The AMX-BF16 variant (fused_attention_amx.cpp): whether the active level runs it (level amx
// and AMX-BF16), and its attention op: src[0] = q, src[1] = K / V packed in the AMX layout,
// src[2] = k (for Lk); user_data(heads, true).
bool amx_available();
void attend_amx(ggml_tensor* dst, int ith, int nth, void* ud);

// Row `pos` of head h of image n in a [D, L, N] f32 tensor (q, k, v or the output).
inline float* head_row(const ggml_tensor* t, int64_t pos, int64_t n, int64_t h, int64_t d) {
    return reinterpret_cast<float*>(static_cast<char*>(t->data) + pos * t->nb[1] + n * t->nb[2]) + h * d;
}

// The finished rows q0 .. q0 + rows - 1 of one (n, head): out = O / L, O rows dvp apart, L the
// online softmax's sums (the same products as a scalar O[c] * (1 / L)).
__attribute__((target("avx512f"))) inline void write_rows(ggml_tensor* dst, const float* O, int64_t dvp, const float* L,
                                                          int64_t q0, int64_t rows, int64_t n, int64_t h, int64_t d) {
    for (int64_t r = 0; r < rows; ++r) {
        float* out = head_row(dst, q0 + r, n, h, d);
        const __m512 inv = _mm512_set1_ps(1.0f / L[r]);
        for (int64_t c = 0; c < d; c += 16) {
            const int64_t nv = std::min<int64_t>(16, d - c);
            _mm512_mask_storeu_ps(out + c, static_cast<__mmask16>((1u << nv) - 1u), _mm512_mul_ps(_mm512_loadu_ps(O + r * dvp + c), inv));
        }
    }
}

// 2^x for x <= 0 (-inf gives 0 after the clamp's 2^-150 underflows) with ~1e-7 relative error.
__attribute__((target("avx512f,avx512dq"))) inline __m512 exp2_ps(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-150.0f));
    const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, n);  // [-0.5, 0.5]
    __m512 p = _mm512_set1_ps(1.5403530e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022651e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

}  // namespace sdcpp::fused_attention::bf16
