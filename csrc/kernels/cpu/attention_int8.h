// The int8 fused attention (opt-in, not exact; UNet.attention = "int8"): softmax(q k^T / sqrt(d)) v
// per head with both products in integers, for CPUs whose f32 FMA rate bounds the exact kernel
// (AVX2 has no int8 FMA, but vpmaddwd does 16 int16 pair products per instruction, twice the f32
// FMA rate; AVX512-VNNI's vpdpwssd adds them in the same instruction).
//
//   S = q k^T: q rows (per token, per head) and k rows quantized to int8 values with one f32
//       scale per row; k first loses its mean over the keys per channel (the softmax of a row
//       does not change when a constant q.mean is subtracted from all its scores). Int16 pair
//       products summed in int32 (exact), times the two scales -> base-2 logits.
//   online softmax in f32 over tiles of 64 keys; the tile's probabilities, relative to the
//       running row max, rounded to Q15 (0 .. 32767) int16.
//   P V: v quantized to int8 values with one scale per channel per 64-key tile; int16 pair
//       products summed in int32 (exact) per tile, then O = O * alpha + sum * scale in f32;
//       the row sum L is the integer sum of the tile's Q15 probabilities.
//
// Every sum in integers, every f32 step elementwise with the same operations in every variant
// (explicit fma, no reductions in floats but max), so the variants (portable reference, AVX2,
// AVX-512 with or without VNNI) agree bit for bit; tests check it. The quantization and
// packing are scalar code shared by all (attention_int8.cpp), the per-tile micro-kernels are
// per level (attention_int8_portable.cpp, _avx2.cpp, _avx512.cpp).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "attention_gemm.h"
#include "cpu_level.h"

namespace sdcpp::kernels::cpu {

namespace int8_attention {

constexpr int kRows = 32;  // query rows per work unit (multiple of every variant's register block)
constexpr int kKeys = 64;  // keys per tile: the online softmax's step and V's scale block
constexpr float kP = 32767.0f;  // Q15: a probability equal to the running row max

// Shapes of one (n, head) of a call and its packed K / V (32-bit words):
//   kp [Lkp / 16 groups][dpairs][16 keys]  two int16 dims of one key per word
//   sk [Lkp]                               f32 key scales (0 past Lk)
//   vp [Lkp / 2 key pairs][dvp]            two keys' int16 values of one channel per word
//   vs [Lkp / 64 tiles][dvp]               f32 channel scales of each tile
struct Dims {
    int64_t d, dpairs, dvp, Lk, Lkp;
    int64_t tiles() const { return Lkp / kKeys; }
    int64_t kp_words() const { return Lkp * dpairs; }
    int64_t vp_words() const { return Lkp / 2 * dvp; }
    int64_t head_words() const { return kp_words() + Lkp + vp_words() + tiles() * dvp; }
};

inline Dims dims_of(int64_t d, int64_t Lk) {
    Dims m{};
    m.d = d;
    m.dpairs = (d + 1) / 2;
    m.dvp = (d + 7) / 8 * 8;  // SD1's d = 40 stays 40 (AVX2: 5 vectors; AVX-512: 2 and a masked half)
    m.Lk = Lk;
    m.Lkp = (Lk + kKeys - 1) / kKeys * kKeys;
    return m;
}

inline float bits_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Polynomial of 2^f on [-0.5, 0.5], evaluated with fma in every variant: degree 4 (relative error
// 3.1e-6, fitted here with p(0) = 1) is below half a Q15 step of the probabilities (1.5e-5 of the
// row max), so a higher degree would buy nothing but time in the softmax.
constexpr int kExp2Terms = 5;
constexpr float kExp2[kExp2Terms] = {0.00960039533674717f, 0.05591689422726631f, 0.24023719131946564f,
                                     0.6931219696998596f, 1.0f};

// 2^x for x <= 0 (x >= -127 after the clamp; 2^-127 is taken as 0, so -inf gives 0): the
// scalar rule every vector variant repeats lane by lane (nearest-even rounding, fma chain,
// exponent bits), so that their results agree bit for bit.
inline float exp2_neg(float x) {
    x = std::max(x, -127.0f);
    const float n = std::nearbyint(x);
    const float f = x - n;
    float p = kExp2[0];
    for (int i = 1; i < kExp2Terms; ++i) p = std::fma(p, f, kExp2[i]);
    return p * bits_float(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
}

// The running row max's factor 2^(old - new): 1 when the max stays, which exp2_neg(0) gives
// exactly (p(0) = 1, 2^0), so skipping the scalar polynomial then changes no bit; it is most
// tiles past the first few, and its fma chain's latency was a fifth of the AVX2 softmax.
inline float rescale(float old_max, float new_max) { return old_max == new_max ? 1.0f : exp2_neg(old_max - new_max); }

}  // namespace int8_attention

// Micro-kernels of one level. Word = two int16 values (low half first).
struct AttentionInt8Kernels {
    Level level;
    const char* name;  // "portable", "avx2", "avx512", "avx512_vnni"
    // S[r * 64 + j] = q row r . key j of one tile, r < rows (q rows dpairs words apart, zero
    // padded to a multiple of 8 rows), ktile: 4 groups of [dpairs][16] words.
    void (*scores)(const uint32_t* q, int rows, const uint32_t* ktile, int64_t dpairs, int32_t* S);
    // The online softmax step of rows r < rows over one tile: s = float(S) * sq[r] * sk[j]
    // (base-2 logits; keys j >= valid ignored), M[r] (running max) updated, alpha[r] =
    // 2^(old M - new M), P[r * 64 + j] = nearest(2^(s - M) * 32767), L[r] = fma(L, alpha,
    // sum_j P).
    void (*softmax)(const int32_t* S, int rows, const float* sq, const float* sk, int valid, float* M, float* L,
                    float* alpha, int16_t* P);
    // O[r * dvp + c] = fma(float(sum_j P[r * 64 + j] v[j][c]), vs[c], O[r * dvp + c] * alpha[r])
    // for r < rows, c < dvp; vtile: [32 key pairs][dvp] words.
    void (*pv)(const int16_t* P, int rows, const uint32_t* vtile, const float* vs, const float* alpha, int64_t dvp,
               float* O);
};

// The table for the active level, and for a given one (tests run each variant).
const AttentionInt8Kernels& attention_int8_kernels();
const AttentionInt8Kernels& attention_int8_kernels_at(Level level);

const AttentionInt8Kernels& attention_int8_portable();
const AttentionInt8Kernels* attention_int8_avx2();
const AttentionInt8Kernels* attention_int8_avx512();  // the VNNI one where the CPU has AVX512-VNNI
// The AVX-512 table with vpdpwssd (nullptr without AVX512-VNNI) or with vpmaddwd + vpaddd.
const AttentionInt8Kernels* attention_int8_avx512_with(bool vnni);

// The attention over packed operands (the driver, attention_int8.cpp): the exact kernel's
// operand layout (attention_gemm.h).
using AttentionInt8Args = AttentionArgs;

// Words of the packed K / V of all (n, head); pack_int8 fills them (units: (n, head) pairs,
// shared out over nth threads), attend_int8 runs the attention (units: 32-query blocks).
int64_t packed_int8_words(const AttentionInt8Args& a);
void pack_int8(const AttentionInt8Args& a, uint32_t* packed, int ith, int nth);
void attend_int8(const AttentionInt8Kernels& k, const AttentionInt8Args& a, const uint32_t* packed, int ith, int nth);

}  // namespace sdcpp::kernels::cpu
