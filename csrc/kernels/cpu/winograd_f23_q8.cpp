#include "winograd_f23_q8.h"

#include <cstring>

#include "gemm_q8.h"
#include "ggml.h"

namespace sdcpp::kernels::cpu {

void winograd_f23_q8_kernel(const WinogradF23& k, const float* g, int64_t C, float* u, uint8_t* dst, int64_t p_stride) {
    k.kernel(g, C, u, C);  // u[p * C + c]
    for (int p = 0; p < 16; ++p) {
        uint8_t* row = dst + p * p_stride;
        for (int64_t b = 0; b < C / kQ8Block; ++b) {
            uint8_t* blk = row + b * kQ8BlockBytes;
            const float d = gemm_q8_detail::quantize_block(u + p * C + b * kQ8Block, reinterpret_cast<int8_t*>(blk + 2));
            const ggml_fp16_t h = ggml_fp32_to_fp16(d);  // d is f16-rounded already: exact
            std::memcpy(blk, &h, 2);
        }
    }
}

namespace {

typedef float V __attribute__((vector_size(16)));  // SSE2 / NEON width: no target needed
constexpr int L = 4;

template <typename T>
inline T ld(const float* p) {
    T v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

// One tile, T output channels at a time (A^T M A, as winograd_f23_body.h's output_tile).
template <typename T>
inline void output_tile(const float* m, int64_t ps, T y[2][2]) {
    T s[2][4];  // A^T M
    for (int j = 0; j < 4; ++j) {
        const T m0 = ld<T>(m + j * ps), m1 = ld<T>(m + (4 + j) * ps), m2 = ld<T>(m + (8 + j) * ps),
                m3 = ld<T>(m + (12 + j) * ps);
        s[0][j] = m0 + m1 + m2;
        s[1][j] = m1 - m2 - m3;
    }
    for (int r = 0; r < 2; ++r) {  // (A^T M) A
        y[r][0] = s[r][0] + s[r][1] + s[r][2];
        y[r][1] = s[r][1] - s[r][2] - s[r][3];
    }
}

}  // namespace

void winograd_f23_q8_output(const float* m, int64_t p_stride, int64_t OC, int64_t oc0, int64_t oc1, int64_t ntiles,
                            int rows, int64_t cols, const float* bias, float* out, int64_t out_stride, int64_t plane) {
    for (int64_t t = 0; t < ntiles && 2 * t < cols; ++t) {
        const float* mt = m + t * OC;
        const int n = cols - 2 * t < 2 ? 1 : 2;
        float* o = out + 2 * t;
        int64_t oc = oc0;
        for (; oc + L <= oc1; oc += L) {
            V y[2][2];
            output_tile<V>(mt + oc, p_stride, y);
            const V b = bias ? ld<V>(bias + oc) : V{};
            for (int r = 0; r < rows; ++r)
                for (int k = 0; k < n; ++k) {
                    const V v = y[r][k] + b;
                    for (int l = 0; l < L; ++l) o[(oc + l) * plane + r * out_stride + k] = v[l];
                }
        }
        for (; oc < oc1; ++oc) {
            float y[2][2];
            output_tile<float>(mt + oc, p_stride, y);
            const float b = bias ? bias[oc] : 0.0f;
            for (int r = 0; r < rows; ++r)
                for (int k = 0; k < n; ++k) o[oc * plane + r * out_stride + k] = y[r][k] + b;
        }
    }
}

}  // namespace sdcpp::kernels::cpu
