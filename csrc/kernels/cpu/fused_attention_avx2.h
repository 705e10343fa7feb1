// The AVX2 + FMA variant of the fused f32 attention (fused_attention.h), for x86 CPUs without
// AVX-512 (every AMD Zen before Zen 4, Intel client CPUs). fused_attention.cpp chooses it at
// graph-build time when the active CPU level is avx2; only compiled on x86-64.
#pragma once
#include <cstdint>

#include "ggml.h"

namespace sdcpp::fused_attention::avx2 {

// Floats of the packed K/V buffer for k, v [D, Lk, N] with `heads` heads.
int64_t packed_floats(int64_t D, int64_t Lk, int64_t N, int heads);

// ggml custom ops (userdata = heads): pack(k, v) -> packed; attend(q, packed, k) -> [D, Lq, N].
void pack(ggml_tensor* dst, int ith, int nth, void* ud);
void attend(ggml_tensor* dst, int ith, int nth, void* ud);

}  // namespace sdcpp::fused_attention::avx2
