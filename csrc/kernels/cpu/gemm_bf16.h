// bf16 matrix product for the CPU, opt-in: C[M][N] = A[M][K] * B[N][K]^T with both operands
// rounded to bf16 and f32 accumulation. Why: on CPUs with AMX-BF16 (Sapphire Rapids and later)
// TDPBF16PS multiplies 16 x 32 by 32 x 16 bf16 tiles in 16 cycles, several times what AVX-512
// FMAs reach in f32; PyTorch's bf16 runs there owe their speed to it. Not exact like gemm.h's f32
// product: it is chosen only when a caller asks for bf16 compute.
//
// Numerics (every variant): A's f32 values and B's (f32, f16 as f32, bf16 as f32) are rounded to
// bf16 by round_bf16 below, VCVTNE2PS2BF16's rule: round to nearest even, zero and denormal
// inputs to signed zero (the instruction treats input denormals as zero), NaN kept and quieted;
// then C = sum over k of A(m, k) B(n, k) in f32 (each product of two bf16 values is exact in
// f32). The order of that sum is the variant's: the portable reference adds k in order, AMX adds
// products in pairs, 32 k per tile product (and flushes denormal results) -> variants agree with
// a float64 product of the rounded operands within f32 accumulation error, not bit for bit.
//
// Like gemm_q8.h: each thread rounds the rows of A it needs, MC at a time, into [rows][K padded
// to 32] bf16, and packs a KC x NC block of B per MC rows into panels of NR columns, each 32 k
// a [2 halves of 16 columns][16 k pairs][16 columns][2 bf16] block (an AMX B tile per half). The
// portable reference uses the same layouts, so packing is one definition.
#pragma once
#include <cstdint>
#include <cstring>

#include "cpu_level.h"
#include "gemm.h"

namespace sdcpp::kernels::cpu {

constexpr int64_t kBf16Block = 32;  // k values per packed block (one tile product)

struct GemmBf16Kernels {
    Level level;
    int mr, nr;  // the tile of C one micro call computes
    // One row of K f32 values as bf16 (round_bf16), zero-padded to a multiple of 32.
    void (*round_a)(const float* x, int64_t K, uint16_t* out);
    // Panels of B's rows n0 .. n0 + nn (zero columns past them) over k0 .. k0 + kc (kc a multiple
    // of 32 or reaching K; zero past K): panel p at Bp + p * (kc padded to 32) * nr.
    void (*pack_b)(const void* B, GemmB type, int64_t ldb, int64_t K, int64_t n0, int64_t nn, int64_t k0, int64_t kc,
                   uint16_t* Bp);
    // C[mr][nr] (row stride ldc) = (accumulate ? C : 0) + nkb blocks of A (mr rows lda values
    // apart) against one packed panel.
    void (*micro)(int64_t nkb, const uint16_t* A, int64_t lda, const uint16_t* Bp, float* C, int64_t ldc, bool accumulate);
    // Optional: run on the calling thread around its micro calls (AMX: tile configuration, release).
    void (*thread_begin)() = nullptr;
    void (*thread_end)() = nullptr;
};

const GemmBf16Kernels& gemm_bf16_kernels();                // the active level's
const GemmBf16Kernels& gemm_bf16_kernels_at(Level level);  // tests run each variant
const GemmBf16Kernels& gemm_bf16_portable();
const GemmBf16Kernels* gemm_bf16_amx();  // nullptr without AMX-BF16 (or below the level amx)

// Whether the active level has a bf16 product worth choosing over the exact f32 one (AMX-BF16).
bool gemm_bf16_fast();

// Work unit `ith` of `nth` of a batch of products, arguments and batching as gemm_batched.
void gemm_bf16_batched(const GemmBf16Kernels& k, const GemmArgs& g, int64_t batch, int64_t a_batch, int64_t b_batch,
                       int64_t c_batch, int ith, int nth);

namespace gemm_bf16_detail {
// VCVTNE2PS2BF16's rounding of one value (see above), as bf16 bits.
inline uint16_t round_bf16(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0) return static_cast<uint16_t>((u >> 16) & 0x8000u);  // zero, denormal
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // NaN, quieted
    return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);  // nearest even (inf stays)
}
}  // namespace gemm_bf16_detail

}  // namespace sdcpp::kernels::cpu
