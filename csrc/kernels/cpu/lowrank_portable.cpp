// Portable reference of the store conversions: ggml's own half / bf16 conversions and
// reference quantizers.
#include "ggml.h"
#include "lowrank.h"

namespace sdcpp::kernels::cpu {

namespace {

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
    static const LowRank t{Level::Portable, f32_to_f16, f32_to_bf16, quantize_q8_0_ggml,
                           quantize_q4_0_ggml};
    return t;
}

}  // namespace sdcpp::kernels::cpu
