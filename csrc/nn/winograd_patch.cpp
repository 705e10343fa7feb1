#include "winograd_patch.h"

#include <algorithm>
#include <cstring>

#include "../kernels/cpu/gemm_op.h"

namespace sdcpp::winograd {

std::vector<float>& scratch(size_t n) {
    thread_local std::vector<float> buf;
    if (buf.size() < n) buf.resize(n);
    return buf;
}

void fill_patch(float* patch, int rows, int64_t cols, const ggml_tensor* x, int64_t n, int64_t y0, int64_t x0, int up) {
    const int64_t W = x->ne[0] * up, H = x->ne[1] * up, C = x->ne[2];
    // Columns [k_lo, k_hi) of the patch lie inside the image.
    const int64_t k_lo = std::max<int64_t>(0, -x0), k_hi = std::min<int64_t>(cols, W - x0);
    const char* base = static_cast<const char*>(x->data) + n * x->nb[3];
    for (int i = 0; i < rows; ++i) {
        const int64_t iy = y0 + i;
        float* prow = patch + i * cols * C;
        if (iy < 0 || iy >= H) {
            std::memset(prow, 0, sizeof(float) * cols * C);
            continue;
        }
        for (int64_t kx = 0; kx < k_lo; ++kx) std::memset(prow + kx * C, 0, sizeof(float) * C);
        for (int64_t kx = std::max(k_lo, k_hi); kx < cols; ++kx) std::memset(prow + kx * C, 0, sizeof(float) * C);
        for (int64_t c = 0; c < C; ++c) {
            const float* src = reinterpret_cast<const float*>(base + c * x->nb[2] + (iy / up) * x->nb[1]);
            float* d = prow + c;
            if (up == 1) {
                for (int64_t kx = k_lo; kx < k_hi; ++kx) d[kx * C] = src[x0 + kx];
            } else {
                for (int64_t kx = k_lo; kx < k_hi; ++kx) d[kx * C] = src[(x0 + kx) / 2];
            }
        }
    }
}

void kernel_to_f32(float* g, const ggml_tensor* w, int64_t oc) {
    const int64_t C = w->ne[2];
    fused::row_to_f32(g, static_cast<const char*>(w->data) + oc * w->nb[3], w->type, 9 * C);  // 9*C contiguous values
}

}  // namespace sdcpp::winograd
