// 3x3 stride-1 pad-1 convolution by Winograd F(2x2, 3x3) on the CPU backend.
//
// Per 2x2 output tile the 4x4 input patch d becomes V = B^T d B, the kernel g becomes
// U = G g G^T, and Y = A^T (sum_c U_c * V_c) A: the 16 products per tile are 16 batched
// matrix products [tiles x C] @ [C x OC], done by the packed CPU product (kernels/cpu/gemm.h), i.e.
// 2.25x fewer multiplications than im2col + GEMM and 4x less intermediate data than im2col.
// The transforms are ggml custom ops (CPU only) around the per-level transform kernels
// (kernels/cpu/winograd_f23.h); the transformed operands are f32 whatever the
// kernel's storage type (f16 / bf16 kernels are widened by the kernel transform), so the result
// matches direct convolution to f32 rounding and the products run at f32 speed.
#pragma once
#include "ggml.h"

namespace sdcpp::winograd {

// x [W, H, C, N] f32, w [3, 3, C, OC] (f32 / f16 / bf16), b [OC] f32 or null. bf16: the 16
// products in bf16 where the CPU has AMX-BF16 (the transformed operands rounded to bf16, f32
// sums: fused::matmul's bf16), exact f32 otherwise.
ggml_tensor* conv3x3(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, bool bf16 = false);

// The same graph with its transformed operands, for the tests: v [C, T, 16] (tiles in image,
// row, column order), u [C, OC, 16] and the result y.
struct Conv3x3Parts {
    ggml_tensor* v;
    ggml_tensor* u;
    ggml_tensor* y;
};
Conv3x3Parts conv3x3_parts(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, bool bf16 = false);

}  // namespace sdcpp::winograd
