// The stores' conversions for the native LoRA merge (csrc/runtime/lora_merge.cpp) and
// WeightStore::set: float32 -> half / bf16 rows and the q8_0 / q4_0 quantizers, one table per
// CPU level beside a portable reference (lowrank_portable.cpp, _avx2.cpp, _avx512.cpp). The
// merge's product W0 + A @ B and the half/bf16 -> float32 rows are the packed product's
// (gemm.h: micro, row_to_f32).
#pragma once
#include <cstdint>

#include "cpu_level.h"

namespace sdcpp::kernels::cpu {

struct LowRank {
    Level level;
    // float32 -> IEEE half rows, rounding to nearest even (as ggml's conversions).
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
