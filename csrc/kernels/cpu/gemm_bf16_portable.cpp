// Portable reference of the bf16 product: the rounding and the packed layouts as gemm_bf16.h
// defines them, in plain loops, each C value summed over k in order in f32.
#include "gemm_bf16.h"
#include "gemm_pack.h"

namespace sdcpp::kernels::cpu {

namespace {

constexpr int MR = 32, NR = 32;
using gemm_bf16_detail::round_bf16;

float bf16_value(uint16_t h) { return gemm_detail::bf16_to_float(h); }

void round_a(const float* x, int64_t K, uint16_t* out) {
    const int64_t kp = (K + kBf16Block - 1) / kBf16Block * kBf16Block;
    for (int64_t k = 0; k < kp; ++k) out[k] = k < K ? round_bf16(x[k]) : 0;
}

float b_value(const void* B, GemmB type, int64_t ldb, int64_t n, int64_t k) {
    const char* row = static_cast<const char*>(B) + n * ldb;
    if (type == GemmB::F32) {
        float v;
        std::memcpy(&v, row + k * 4, 4);
        return v;
    }
    uint16_t h;
    std::memcpy(&h, row + k * 2, 2);
    return type == GemmB::F16 ? gemm_detail::half_to_float(h) : bf16_value(h);
}

// Value (k, c) of a 32-k block sits at half c / 16, k pair k / 2, column c % 16, k % 2.
inline int64_t block_index(int64_t k, int64_t c) { return (c / 16) * 512 + (k / 2) * 32 + (c % 16) * 2 + (k % 2); }

void pack_b(const void* B, GemmB type, int64_t ldb, int64_t K, int64_t n0, int64_t nn, int64_t k0, int64_t kc,
            uint16_t* Bp) {
    const int64_t nkb = (kc + kBf16Block - 1) / kBf16Block;
    for (int64_t p = 0; p * NR < nn; ++p) {
        for (int64_t kb = 0; kb < nkb; ++kb) {
            uint16_t* blk = Bp + (p * nkb + kb) * kBf16Block * NR;
            for (int64_t c = 0; c < NR; ++c) {
                const int64_t n = p * NR + c;
                for (int64_t kk = 0; kk < kBf16Block; ++kk) {
                    const int64_t k = k0 + kb * kBf16Block + kk;
                    const bool real = n < nn && kk + kb * kBf16Block < kc && k < K;
                    blk[block_index(kk, c)] = real ? round_bf16(b_value(B, type, ldb, n0 + n, k)) : 0;
                }
            }
        }
    }
}

void micro(int64_t nkb, const uint16_t* A, int64_t lda, const uint16_t* Bp, float* C, int64_t ldc, bool accumulate) {
    static thread_local float acc[MR][NR];
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) acc[i][j] = accumulate ? C[i * ldc + j] : 0.0f;
    for (int64_t kb = 0; kb < nkb; ++kb) {
        const uint16_t* blk = Bp + kb * kBf16Block * NR;
        for (int64_t kk = 0; kk < kBf16Block; ++kk) {
            for (int i = 0; i < MR; ++i) {
                const float a = bf16_value(A[i * lda + kb * kBf16Block + kk]);
                for (int j = 0; j < NR; ++j) acc[i][j] += a * bf16_value(blk[block_index(kk, j)]);
            }
        }
    }
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) C[i * ldc + j] = acc[i][j];
}

const GemmBf16Kernels kTable{Level::Portable, MR, NR, round_a, pack_b, micro};

}  // namespace

const GemmBf16Kernels& gemm_bf16_portable() { return kTable; }

}  // namespace sdcpp::kernels::cpu
