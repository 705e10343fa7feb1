// ggml's q8_0 activation quantization of one 32-value block, written once and inlined into each
// gemm_q8 variant (so that, inside an AVX2 / AVX-512 target region, the rounding compiles to
// vroundps instead of a libm call). Included only by gemm_q8*.cpp.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "gemm_pack.h"

namespace sdcpp::kernels::cpu::gemm_q8_detail {

// IEEE float -> half bits, round to nearest even (what F16C's vcvtps2ph does, and so what ggml
// stores as a block's d on x86).
inline uint16_t float_to_half_bits(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u) return sign | 0x7c00u | (x > 0x7f800000u ? 0x200u : 0u);  // inf, nan
    if (x >= 0x477ff000u) return sign | 0x7c00u;  // 65520 and above round to inf
    if (x < 0x38800000u) {                        // below 2^-14: a half subnormal (or zero)
        float v;
        std::memcpy(&v, &x, 4);
        return sign | static_cast<uint16_t>(std::nearbyint(v * 16777216.0f));  // units of 2^-24, exact scaling
    }
    return sign | static_cast<uint16_t>((x + 0xfffu + ((x >> 13) & 1u) - 0x38000000u) >> 13);
}

// The block's scale d (f16-rounded, as f32) and its 32 values: amax over the block, d =
// f16(amax / 127), q = round-half-even(x * (127 / amax)), as ggml's x86 quantize_row_q8_0.
inline float quantize_block_inline(const float* x, int8_t* q) {
    float amax = 0.0f;
    for (int i = 0; i < 32; ++i) {
        const float a = std::fabs(x[i]);
        amax = a > amax ? a : amax;
    }
    const float d = gemm_detail::half_to_float(float_to_half_bits(amax / 127.0f));
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    for (int i = 0; i < 32; ++i) {
        const float v = std::nearbyint(x[i] * id);
        // NaN and out-of-range values saturate as ggml's packs do (a NaN converts to -128)
        q[i] = static_cast<int8_t>(!(v >= -128.0f) ? -128.0f : v > 127.0f ? 127.0f : v);
    }
    return d;
}

}  // namespace sdcpp::kernels::cpu::gemm_q8_detail
