// Integer matrix product for q8_0 (and q5_0 / q4_0) weights: C[M][N] = A[M][K] * B[N][K]^T, A in f32 (activations),
// B in ggml's q8_0 (per 32 values: an f16 scale d, then 32 int8). Why our own: on x86 ggml runs
// these through llamafile's tinyBLAS_Q0 at ~32 GMAC/s on one core, less than half of our f32
// packed product (gemm.h), so q8_0 models ran at half the speed of f16 ones.
//
// Numerics are ggml's q8_0 x q8_0 product, so quantized models keep the fidelity they were tuned
// for: each row of A is quantized per 32-value block as ggml's x86 quantize_row_q8_0 does
// (amax, d = f16(amax / 127), q = round-half-even(x * (127 / amax))), each block's int32 dot
// product with B's block is exact, and C = sum over blocks, in block order, of
// fma(float(dot), d_a * d_b, acc). Every level computes that same chain, so the variants agree
// bit for bit with the portable reference; ggml only sums its lanes in another order.
//
// Like gemm.h: B is packed per cache block into NR-column panels (each variant its own layout:
// AVX-512 VNNI 4-byte groups for vpdpbusd with a column-sum compensation, AVX2 int16 pairs for
// vpmaddwd, portable plain int8) and an MR x NR tile of C stays in registers (AMX: in four tile
// registers per block, folded into f32 with AVX-512). One table per CPU level, chosen at run time
// (cpu_level.h); the AVX-512 table needs AVX512-VNNI besides the level.
#pragma once
#include <cstddef>
#include <cstdint>

#include "cpu_level.h"

namespace sdcpp::kernels::cpu {

constexpr int64_t kQ8Block = 32;       // values per q8_0 block
constexpr int64_t kQ8BlockBytes = 34;  // f16 scale + 32 int8

// B's block type. q5_0 / q4_0 (ggml's: values d (q - 16), d (q - 8)) are unpacked to q8_0 blocks
// (exactly: their integers fit int8) before packing, so they share the kernels and ggml's numerics
// for them (the activations are quantized to q8_0 there too).
enum class GemmQB : int { Q8_0 = 0, Q5_0 = 1, Q4_0 = 2 };
int64_t gemm_qb_block_bytes(GemmQB t);  // 34, 22, 18

struct GemmQ8Kernels {
    Level level;
    int mr, nr;               // the register tile
    int a_esz;                // bytes per quantized activation in this variant's A layout
    int64_t panel_block;      // bytes of one packed panel per 32-value block (values, scales, compensation)
    // One row of K f32 values (K a multiple of 32) to this variant's layout: q (K values of a_esz
    // bytes) and d (K / 32 scales, the f16-rounded d as f32), the values exactly ggml's q8_0.
    // Blocks are independent (block b at q + 32 b a_esz, d[b]), so a row may also be quantized a
    // run of blocks at a time (conv_q8.cpp does, as it gathers).
    void (*quantize_a)(const float* x, int64_t K, void* q, float* d);
    // Panels of B's rows n0 .. n0 + nn (zero columns past them) over the blocks kb0 .. kb0 + nkb:
    // panel p at Bp + p * nkb * panel_block. B's rows are ldb bytes apart.
    void (*pack_b)(const uint8_t* B, int64_t ldb, int64_t n0, int64_t nn, int64_t kb0, int64_t nkb, uint8_t* Bp);
    // C[mr][nr] (row stride ldc) = (accumulate ? C : 0) + the nkb blocks of A (mr rows lda bytes
    // apart, their scales ldd floats apart) against one packed panel.
    void (*micro)(int64_t nkb, const uint8_t* A, int64_t lda, const float* D, int64_t ldd, const uint8_t* Bp, float* C,
                  int64_t ldc, bool accumulate);
    // Optional (nullptr: the portable one): one q5_0 / q4_0 block at src as a q8_0 block at dst.
    void (*unpack_block)(GemmQB t, const uint8_t* src, uint8_t* dst);
    // Optional: run on the calling thread before its first micro call of a product and after its
    // last (AMX: load the tile configuration, then release the tiles, so that other code on the
    // thread, ggml's own AMX kernels included, finds the tile state as it left it).
    void (*thread_begin)() = nullptr;
    void (*thread_end)() = nullptr;
};

const GemmQ8Kernels& gemm_q8_kernels();                // the active level's
const GemmQ8Kernels& gemm_q8_kernels_at(Level level);  // tests run each variant
const GemmQ8Kernels& gemm_q8_portable();
const GemmQ8Kernels* gemm_q8_avx2();
const GemmQ8Kernels* gemm_q8_avx512();  // nullptr without AVX512-VNNI
const GemmQ8Kernels* gemm_q8_amx();     // nullptr below the level amx

struct GemmQ8Args {
    const float* A;    // [M][K], rows lda floats apart
    int64_t lda;
    const uint8_t* B;  // [N][K / 32] blocks of btype, rows ldb bytes apart
    int64_t ldb;
    float* C;          // [M][N], rows ldc floats apart
    int64_t ldc;
    int64_t M, N, K;   // K a multiple of 32
    GemmQB btype = GemmQB::Q8_0;
};

// Work unit `ith` of `nth` of a batch of products (as gemm_batched: A + b * a_batch floats,
// B + b * b_batch bytes, C + b * c_batch floats); each thread quantizes the rows of A it needs.
void gemm_q8_batched(const GemmQ8Kernels& k, const GemmQ8Args& g, int64_t batch, int64_t a_batch, int64_t b_batch,
                     int64_t c_batch, int ith, int nth);

// The inner loops of the product, for drivers that make A's quantized rows themselves (the
// quantized convolution, conv_q8.h): C[mm][nn] (rows ldc floats apart) = mm rows of A quantized
// by k.quantize_a (aq rows g.K * a_esz bytes apart, ad rows g.K / 32 floats apart; rows up to the
// next multiple of k.mr must exist, e.g. zero rows) times B's rows n0 .. n0 + nn (g.B, g.ldb,
// g.btype over g.K; g.A and g.C unused). B is packed per cache block in thread-local scratch.
// gemm_q8_batched runs these same loops, so any driver gets its numbers bit for bit. The caller
// brackets its calls on a thread with k.thread_begin / k.thread_end where those are set.
void gemm_q8_block(const GemmQ8Kernels& k, const GemmQ8Args& g, const uint8_t* aq, const float* ad, int64_t mm,
                   int64_t n0, int64_t nn, float* C, int64_t ldc);
constexpr int64_t kQ8ColBlock = 256;  // columns of B one gemm_q8_block call should take at most (L2)

namespace gemm_q8_detail {
// ggml's activation quantization of one 32-value block, scalar: the f16-rounded scale and the
// 32 values; every variant's quantize_a matches it bit for bit.
float quantize_block(const float* x, int8_t* q);
// One q5_0 / q4_0 block as a q8_0 block (the portable unpacker).
void unpack_block(GemmQB t, const uint8_t* src, uint8_t* dst);
}  // namespace gemm_q8_detail

}  // namespace sdcpp::kernels::cpu
