// Portable reference of the packed product: a 4 x 16 register tile in plain C++ (the compiler
// vectorises it for the build's baseline ISA).
#include "gemm.h"
#include "gemm_pack.h"

namespace sdcpp::kernels::cpu {

namespace {

constexpr int MR = 4, NR = 16;

void row_to_f32(float* dst, const char* src, GemmB type, int64_t n) {
    if (type == GemmB::F32) {
        std::memcpy(dst, src, static_cast<size_t>(n) * 4);
        return;
    }
    const uint16_t* h = reinterpret_cast<const uint16_t*>(src);
    if (type == GemmB::F16) {
        for (int64_t i = 0; i < n; ++i) dst[i] = gemm_detail::half_to_float(h[i]);
    } else {
        for (int64_t i = 0; i < n; ++i) dst[i] = gemm_detail::bf16_to_float(h[i]);
    }
}
#define ROW_TO_F32 row_to_f32

void pack_b(const void* B, GemmB type, int64_t ldb, int64_t n0, int64_t nn, int64_t k0, int64_t kc, float* Bp) {
    SDCPP_PACK_B_BODY(NR)
}

void micro(int64_t kc, const float* A, int64_t lda, const float* Bp, float* C, int64_t ldc, bool accumulate) {
    float acc[MR][NR] = {};
    for (int64_t k = 0; k < kc; ++k, Bp += NR) {
        for (int i = 0; i < MR; ++i) {
            const float a = A[i * lda + k];
            for (int j = 0; j < NR; ++j) acc[i][j] += a * Bp[j];
        }
    }
    for (int i = 0; i < MR; ++i) {
        float* c = C + i * ldc;
        for (int j = 0; j < NR; ++j) c[j] = accumulate ? c[j] + acc[i][j] : acc[i][j];
    }
}

const GemmKernels kTable{Level::Portable, MR, NR, micro, pack_b, row_to_f32};

}  // namespace

const GemmKernels& gemm_portable() { return kTable; }

}  // namespace sdcpp::kernels::cpu
