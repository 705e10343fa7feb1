// Portable reference of the low-rank merge kernels: plain loops the compiler vectorizes (a
// multiply and an add where the target has no FMA), ggml's own half conversions.
#include "ggml.h"
#include "lowrank.h"

namespace sdcpp::kernels::cpu {

namespace {

constexpr int MR = 4, NR = 16;

void tile(const float* a, const float* b, int64_t K, float* c, int64_t ldc) {
    float acc[MR][NR];
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) acc[i][j] = c[i * ldc + j];
    for (int64_t k = 0; k < K; ++k) {
        const float* bk = b + k * NR;
        for (int i = 0; i < MR; ++i) {
            const float ai = a[k * MR + i];
            for (int j = 0; j < NR; ++j) acc[i][j] += ai * bk[j];
        }
    }
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) c[i * ldc + j] = acc[i][j];
}

void f16_to_f32(const uint16_t* x, float* y, int64_t n) {
    ggml_fp16_to_fp32_row(reinterpret_cast<const ggml_fp16_t*>(x), y, n);
}

void f32_to_f16(const float* x, uint16_t* y, int64_t n) {
    ggml_fp32_to_fp16_row(x, reinterpret_cast<ggml_fp16_t*>(y), n);
}

void f32_to_bf16(const float* x, uint16_t* y, int64_t n) {
    ggml_fp32_to_bf16_row_ref(x, reinterpret_cast<ggml_bf16_t*>(y), n);
}

}  // namespace

void quantize_q8_0_ggml(const float* x, void* y, int64_t n) {
    ggml_quantize_chunk(GGML_TYPE_Q8_0, x, y, 0, 1, n, nullptr);
}

void quantize_q4_0_ggml(const float* x, void* y, int64_t n) {
    ggml_quantize_chunk(GGML_TYPE_Q4_0, x, y, 0, 1, n, nullptr);
}

const LowRank& lowrank_portable() {
    static const LowRank t{Level::Portable, MR, NR, tile, f16_to_f32, f32_to_f16, f32_to_bf16, quantize_q8_0_ggml,
                           quantize_q4_0_ggml};
    return t;
}

}  // namespace sdcpp::kernels::cpu
