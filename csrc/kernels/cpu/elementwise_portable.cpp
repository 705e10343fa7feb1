// The portable reference of the element-wise kernels: plain C++, libm's erf and exp.
#include <cmath>

#include "elementwise.h"

namespace sdcpp::kernels::cpu {

namespace {

inline float gelu_erf(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f)); }
inline float silu(float x) { return x / (1.0f + std::exp(-x)); }

void geglu_row(float* y, const float* h, const float* g, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = h[i] * gelu_erf(g[i]);
}
void affine_row(float* y, const float* x, float scale, float shift, int64_t n, bool act) {
    for (int64_t i = 0; i < n; ++i) {
        const float v = x[i] * scale + shift;
        y[i] = act ? silu(v) : v;
    }
}
double row_sum(const float* x, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += x[i];
    return s;
}
double row_sq(const float* x, float mean, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += double(x[i] - mean) * double(x[i] - mean);
    return s;
}
void layer_norm_row(float* y, const float* x, float mean, float rstd, const float* w, const float* b, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * rstd * w[i] + b[i];
}


void softmax_panel(float* p, int64_t keys, int nr, float* m, float* l, float* alpha) {
    for (int j = 0; j < nr; ++j) {
        float mx = m[j];
        for (int64_t k = 0; k < keys; ++k) mx = p[k * nr + j] > mx ? p[k * nr + j] : mx;
        alpha[j] = std::exp(m[j] - mx);
        float sum = 0.0f;
        for (int64_t k = 0; k < keys; ++k) {
            p[k * nr + j] = std::exp(p[k * nr + j] - mx);
            sum += p[k * nr + j];
        }
        l[j] = l[j] * alpha[j] + sum;
        m[j] = mx;
    }
}

void transpose(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}

}  // namespace

const Elementwise& elementwise_portable() {
    static const Elementwise t{Level::Portable, geglu_row, affine_row, row_sum, row_sq, layer_norm_row, softmax_panel,
                               transpose};
    return t;
}

}  // namespace sdcpp::kernels::cpu
