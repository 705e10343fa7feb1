#include "winograd_f23.h"

#include <algorithm>
#include <vector>

#include "../kernels/cpu/gemm_op.h"
#include "../kernels/cpu/winograd_f23.h"
#include "winograd_patch.h"

namespace sdcpp::winograd {

namespace kc = sdcpp::kernels::cpu;

namespace {

constexpr int64_t kChunk = 32;  // tiles per input-transform work unit (its patch: 4 x 66 x C floats)

// V [C, T, 16] from x [W, H, C, N]; T = N * TH * TW tiles of 2x2 outputs. Work units are
// (image and tile row, chunk of kChunk tiles): each copies the four input rows its tiles read
// into a channels-last patch (zeros for the padding), then transforms it (kernels/cpu).
void input_op(ggml_tensor* dst, int ith, int nth, void*) {
    const ggml_tensor* x = dst->src[0];
    const int64_t W = x->ne[0], H = x->ne[1], C = x->ne[2], N = x->ne[3];
    const int64_t TW = (W + 1) / 2, TH = (H + 1) / 2;
    const int64_t chunks = (TW + kChunk - 1) / kChunk;
    const kc::WinogradF23& k = kc::winograd_f23();
    float* v = static_cast<float*>(dst->data);
    const int64_t p_stride = dst->nb[2] / sizeof(float);
    for (int64_t unit = ith; unit < N * TH * chunks; unit += nth) {
        const int64_t row = unit / chunks, tx0 = (unit % chunks) * kChunk;  // row = n * TH + ty
        const int64_t n = row / TH, ty = row % TH;
        const int64_t nt = std::min(kChunk, TW - tx0);
        const int64_t cols = 2 * nt + 2;
        float* patch = scratch(size_t(4 * cols * C)).data();
        fill_patch(patch, 4, cols, x, n, 2 * ty - 1, 2 * tx0 - 1, 1);
        k.input_tiles(patch, C, nt, v + (row * TW + tx0) * C, p_stride);
    }
}

// U [C, OC, 16] from w [3, 3, C, OC]; threads take output channels. It runs every forward
// pass (no second copy of the weights is kept): one vectorized conversion of an output
// channel's 9*C weights to f32, then the vectorized transform.
void kernel_op(ggml_tensor* dst, int ith, int nth, void*) {
    const ggml_tensor* w = dst->src[0];
    const int64_t C = w->ne[2], OC = w->ne[3];
    const kc::WinogradF23& k = kc::winograd_f23();
    float* g = scratch(size_t(9 * C)).data();
    const int64_t p_stride = dst->nb[2] / sizeof(float);
    for (int64_t oc = ith; oc < OC; oc += nth) {
        kernel_to_f32(g, w, oc);
        k.kernel(g, C, static_cast<float*>(dst->data) + oc * (dst->nb[1] / sizeof(float)), p_stride);
    }
}

// y [W, H, OC, N] = A^T M A (+ bias) from M [T, OC, 16]; work units are (image, output
// channel, tile row).
void output_op(ggml_tensor* dst, int ith, int nth, void*) {
    const ggml_tensor* m = dst->src[0];
    const ggml_tensor* bias = dst->src[1];
    const int64_t W = dst->ne[0], H = dst->ne[1], OC = dst->ne[2], N = dst->ne[3];
    const int64_t TW = (W + 1) / 2, TH = (H + 1) / 2;
    const kc::WinogradF23& k = kc::winograd_f23();
    const int64_t m_p = m->nb[2] / sizeof(float);
    for (int64_t unit = ith; unit < N * OC * TH; unit += nth) {
        const int64_t n = unit / (OC * TH), oc = unit / TH % OC, ty = unit % TH;
        const float b = bias ? *reinterpret_cast<const float*>(static_cast<const char*>(bias->data) + oc * bias->nb[0]) : 0.0f;
        const float* mp = reinterpret_cast<const float*>(static_cast<const char*>(m->data) + oc * m->nb[1]) + (n * TH + ty) * TW;
        float* out = reinterpret_cast<float*>(static_cast<char*>(dst->data) + oc * dst->nb[2] + n * dst->nb[3] + 2 * ty * dst->nb[1]);
        const int rows = 2 * ty + 1 < H ? 2 : 1;
        k.output_tiles(mp, m_p, TW, rows, W, b, out, dst->nb[1] / sizeof(float));
    }
}

}  // namespace

Conv3x3Parts conv3x3_parts(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, bool bf16) {
    if (x->type != GGML_TYPE_F32) x = ggml_cast(ctx, x, GGML_TYPE_F32);
    if (!ggml_is_contiguous(x)) x = ggml_cont(ctx, x);
    if (!ggml_is_contiguous(w)) w = ggml_cont(ctx, w);
    const int64_t W = x->ne[0], H = x->ne[1], C = x->ne[2], N = x->ne[3], OC = w->ne[3];
    const int64_t T = N * ((W + 1) / 2) * ((H + 1) / 2);
    ggml_tensor* xa[1] = {x};
    ggml_tensor* v = ggml_custom_4d(ctx, GGML_TYPE_F32, C, T, 16, 1, xa, 1, input_op, GGML_N_TASKS_MAX, nullptr);
    ggml_tensor* wa[1] = {w};
    ggml_tensor* u = ggml_custom_4d(ctx, GGML_TYPE_F32, C, OC, 16, 1, wa, 1, kernel_op, GGML_N_TASKS_MAX, nullptr);
    ggml_tensor* m = fused::mul_mat(ctx, v, u, /*cpu=*/true, bf16);  // [T, OC, 16] through the packed product
    ggml_tensor* ma[2] = {m, b};
    return {v, u, ggml_custom_4d(ctx, GGML_TYPE_F32, W, H, OC, N, ma, b ? 2 : 1, output_op, GGML_N_TASKS_MAX, nullptr)};
}

ggml_tensor* conv3x3(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, bool bf16) {
    return conv3x3_parts(ctx, x, w, b, bf16).y;
}

}  // namespace sdcpp::winograd
