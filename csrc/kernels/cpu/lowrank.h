// Kernels of the native LoRA merge (csrc/runtime/lora_merge.cpp): W = W0 + A @ B with a small
// inner dimension K (the LoRA rank, or the ranks of several LoRAs side by side), one table per
// CPU level beside a portable reference (lowrank_portable.cpp, _avx2.cpp, _avx512.cpp).
//
// The product runs on packed operands so the inner loop reads both with unit stride: A in
// blocks of `mr` rows, a[k * mr + i]; B in panels of `nr` columns, b[k * nr + j] (zeros past
// the matrix edges). `tile` adds one mr x nr block of A @ B onto c (row stride ldc),
// in float32, k in order (fused multiply-adds where the level has FMA).
#pragma once
#include <cstdint>

#include "cpu_level.h"

namespace sdcpp::kernels::cpu {

struct LowRank {
    Level level;
    int mr, nr;
    void (*tile)(const float* a, const float* b, int64_t K, float* c, int64_t ldc);
    // IEEE half <-> float32 rows; float -> half rounds to nearest even (as ggml's conversions).
    void (*f16_to_f32)(const uint16_t* x, float* y, int64_t n);
    void (*f32_to_f16)(const float* x, uint16_t* y, int64_t n);
    // float32 -> bf16 bits, rounding to nearest even, NaN kept quiet (ggml_fp32_to_bf16_row_ref's
    // rule: (u + 0x7fff + ((u >> 16) & 1)) >> 16, NaN -> (u >> 16) | 64).
    void (*f32_to_bf16)(const float* x, uint16_t* y, int64_t n);
    // n floats (a multiple of 32) -> n / 32 q8_0 blocks, the same bytes as ggml's reference
    // quantizer (quantize_row_q8_0_ref: d = amax / 127 stored as half, q = roundf(x / d));
    // blocks holding a NaN or infinity go through ggml's own code.
    void (*quantize_q8_0)(const float* x, void* y, int64_t n);
    // The same for q4_0 (quantize_row_q4_0_ref: d = -(the value of largest magnitude, first
    // one) / 8, q = min(15, trunc(x / d + 8.5))).
    void (*quantize_q4_0)(const float* x, void* y, int64_t n);
};

// The portable quantizers (ggml's reference), also the variants' fallback for odd blocks.
void quantize_q8_0_ggml(const float* x, void* y, int64_t n);
void quantize_q4_0_ggml(const float* x, void* y, int64_t n);

const LowRank& lowrank();
const LowRank& lowrank_at(Level level);

const LowRank& lowrank_portable();
const LowRank* lowrank_avx2();
const LowRank* lowrank_avx512();

}  // namespace sdcpp::kernels::cpu
