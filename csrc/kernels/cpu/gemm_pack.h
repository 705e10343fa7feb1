// Packing of B for the gemm variants: each variant includes this with its own row converter
// (its ISA's f16/bf16 -> f32) so the conversion runs vectorised, then scatters the row into the
// panel. Included only by gemm_*.cpp, inside their target attribute region.
#pragma once
#include <cstdint>
#include <cstring>

#include "gemm.h"

namespace sdcpp::kernels::cpu::gemm_detail {

// bit-exact IEEE half -> float (subnormals, inf, nan) without any ISA help
inline float half_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {  // subnormal: normalise
        int e = -1;
        do { man <<= 1; ++e; } while (!(man & 0x400u));
        bits = sign | ((112u - e) << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

inline float bf16_to_float(uint16_t h) {
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

}  // namespace sdcpp::kernels::cpu::gemm_detail

// ROW_TO_F32(dst, src_bytes, type, n) must be defined by the includer before PACK_B_BODY.
#define SDCPP_PACK_B_BODY(NR)                                                                          \
    const size_t esz = type == GemmB::F32 ? 4 : 2;                                                     \
    float row[256];                                                                                    \
    for (int64_t p = 0; p * NR < nn; ++p) {                                                            \
        float* dst = Bp + p * kc * NR;                                                                 \
        for (int j = 0; j < NR; ++j) {                                                                 \
            const int64_t n = p * NR + j;                                                              \
            if (n >= nn) {                                                                             \
                for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = 0.0f;                               \
                continue;                                                                              \
            }                                                                                          \
            const char* src = static_cast<const char*>(B) + (n0 + n) * ldb + k0 * esz;                 \
            for (int64_t c0 = 0; c0 < kc; c0 += 256) {                                                 \
                const int64_t cn = kc - c0 < 256 ? kc - c0 : 256;                                      \
                ROW_TO_F32(row, src + c0 * esz, type, cn);                                             \
                for (int64_t k = 0; k < cn; ++k) dst[(c0 + k) * NR + j] = row[k];                      \
            }                                                                                          \
        }                                                                                              \
    }
