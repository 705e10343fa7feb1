// ggml_mul_mat through the packed CPU product (gemm.h), as a ggml custom op for the CPU backend.
// Same contract as ggml_mul_mat(w, x): w [K, N, B2w, B3w] (f32, f16, bf16, q8_0, q5_0, q4_0; contiguous rows),
// x [K, M, B2, B3] f32 with contiguous rows -> [N, M, B2, B3] f32, w broadcast over the batch
// dimensions it lacks (B2 a multiple of B2w, B3 of B3w). Graph builders call it only where
// custom ops may run (the CPU backend) and only when `applies` says so; otherwise they keep
// ggml_mul_mat. q8_0 / q5_0 / q4_0 weights run our integer product (gemm_q8.h, ggml's numerics)
// unless they sit in a repacked (non-host) buffer; SDCPP_INT8_GEMM=0 sends them back to ggml's,
// as SDCPP_PACKED_GEMM=0 does the float ones.
#pragma once
#include "gemm.h"
#include "ggml.h"

namespace sdcpp::fused {

// The packed product's operand type for a ggml type: f32 / f16 / bf16; false for the others.
bool gemm_type(ggml_type t, kernels::cpu::GemmB* out);

// dst[0..n) = the n values of `type` (f32 / f16 / bf16) at src as f32, exactly, with the active
// level's row converter (the one the packed product packs with).
void row_to_f32(float* dst, const void* src, ggml_type type, int64_t n);

// bf16: the caller asks for bf16 products (matmul's bf16), which also take f32 weights against few rows.
bool matmul_applies(const ggml_tensor* w, const ggml_tensor* x, bool bf16 = false);

// Whether a q8_0 / q5_0 / q4_0 weight runs our integer product (gemm_q8.h): SDCPP_INT8_GEMM not
// 0, rows a multiple of 32, plain layout in a host buffer, and not at the portable level.
bool int8_matmul_applies(const ggml_tensor* w);

// Whether q4_0 weights should stay in ggml's plain layout for our integer product rather than go
// to ggml's repacked buffer: where our AVX2, AVX-512 VNNI or AMX variant runs (measured on
// BK-SDM-tiny: 95 GMAC/s against 45 for ggml's repacked kernels at AVX-512; on an emulated
// AVX2-only CPU, a whole q4_0 U-Net pass 12.3 s against 16.4 s with ggml's repacked AVX2 GEMM
// and its im2col, bench/README.md).
bool int8_gemm_preferred();
// bf16: f32 / f16 / bf16 weights run the bf16 product (gemm_bf16.h: both operands rounded to
// bf16, f32 sums) where the active level has AMX-BF16, decided when the graph runs; elsewhere,
// and by default, the exact f32 product. Quantized weights ignore it.
ggml_tensor* matmul(ggml_context* ctx, ggml_tensor* w, ggml_tensor* x, bool bf16 = false);

// Whether this CPU runs matmul's bf16 products in bf16 (AMX-BF16 at the active level), for graph
// builders that would lay out a product differently for it.
bool bf16_products();

// ggml_mul_mat(w, x), or `matmul` when custom ops may run (`cpu`) and it applies.
ggml_tensor* mul_mat(ggml_context* ctx, ggml_tensor* w, ggml_tensor* x, bool cpu, bool bf16 = false);

}  // namespace sdcpp::fused
