// Packed matrix product for the CPU: C[M][N] = A[M][K] * B[N][K]^T, A in f32, B (the weights)
// in f32, f16 or bf16. Why our own: on x86 ggml's f32 products (llamafile's tinyBLAS) reach about
// 60% of what PyTorch's oneDNN/MKL get on the same core, and its f16 products convert both operands
// inside the inner loop. Here B is converted to f32 once per cache block while it is packed into
// NR-wide panels that stay in L2, and an ISA-specific micro-kernel keeps an MR x NR tile of C in
// registers while MR rows of A (read in place: they stay in L1 across all panels) pass over them.
// f16/bf16 weights therefore run at f32 speed with half the memory. One table per CPU level
// (cpu_level.h), each beside the portable reference.
#pragma once
#include <cstdint>

#include "cpu_level.h"

namespace sdcpp::kernels::cpu {

enum class GemmB : int { F32 = 0, F16 = 1, BF16 = 2 };

struct GemmKernels {
    Level level;
    int mr, nr;  // the register tile
    // C[mr][nr] (row stride ldc) = (accumulate ? C : 0) + A * Bp over kc steps, where A holds
    // mr rows lda floats apart and Bp[k][nr] is a packed panel.
    void (*micro)(int64_t kc, const float* A, int64_t lda, const float* Bp, float* C, int64_t ldc, bool accumulate);
    // Bp[p][k][nr] = B[n0 + p nr + j][k0 + k] for the rows n0 .. n0 + nn (zero past them),
    // B's rows `ldb` bytes apart.
    void (*pack_b)(const void* B, GemmB type, int64_t ldb, int64_t n0, int64_t nn, int64_t k0, int64_t kc, float* Bp);
    // dst[0..n) = src's n values of `type` as f32, exact (the converter pack_b uses; also for
    // weight transforms that read f16/bf16 rows, the LoRA merge and the store's conversions)
    void (*to_f32)(float* dst, const char* src, GemmB type, int64_t n);
};

const GemmKernels& gemm_kernels();                // the active level's
const GemmKernels& gemm_kernels_at(Level level);  // tests run each variant
const GemmKernels& gemm_portable();
const GemmKernels* gemm_avx2();
const GemmKernels* gemm_avx512();

struct GemmArgs {
    const float* A;  // [M][K], rows lda floats apart
    int64_t lda;
    const void* B;   // [N][K] of `btype`, rows ldb bytes apart
    GemmB btype;
    int64_t ldb;
    float* C;        // [M][N], rows ldc floats apart
    int64_t ldc;
    int64_t M, N, K;
};

// Work unit `ith` of `nth` of a batch of products: product b uses A + b * a_batch (floats),
// B + b * b_batch (bytes; 0 broadcasts one B) and C + b * c_batch (floats). Rows of all products
// are split evenly among the threads, so each thread packs only the B blocks its rows need.
void gemm_batched(const GemmKernels& k, const GemmArgs& g, int64_t batch, int64_t a_batch, int64_t b_batch,
                  int64_t c_batch, int ith, int nth);

}  // namespace sdcpp::kernels::cpu
