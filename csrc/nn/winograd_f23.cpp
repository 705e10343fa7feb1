#include "winograd_f23.h"

#include <cstring>
#include <vector>

#include "../kernels/cpu/gemm.h"
#include "../kernels/cpu/gemm_op.h"

namespace sdcpp::winograd {

namespace kc = sdcpp::kernels::cpu;

namespace {

std::vector<float>& scratch(size_t n) {
    thread_local std::vector<float> buf;
    if (buf.size() < n) buf.resize(n);
    return buf;
}

// V [C, T, 16] from x [W, H, C, N]; T = N * TH * TW tiles of 2x2 outputs.
void input_transform(ggml_tensor* dst, int ith, int nth, void*) {
    const ggml_tensor* x = dst->src[0];
    const int64_t W = x->ne[0], H = x->ne[1], C = x->ne[2], N = x->ne[3];
    const int64_t TW = (W + 1) / 2, TH = (H + 1) / 2;
    std::vector<float>& buf = scratch(16 * C);
    for (int64_t unit = ith; unit < N * TH; unit += nth) {
        const int64_t n = unit / TH, ty = unit % TH;
        for (int64_t tx = 0; tx < TW; ++tx) {
            const int64_t x0 = 2 * tx - 1, y0 = 2 * ty - 1;
            const bool interior = x0 >= 0 && y0 >= 0 && x0 + 4 <= W && y0 + 4 <= H;
            for (int64_t c = 0; c < C; ++c) {
                const char* plane = static_cast<const char*>(x->data) + c * x->nb[2] + n * x->nb[3];
                float d[4][4];
                for (int i = 0; i < 4; ++i) {
                    const int64_t yy = y0 + i;
                    if (!interior && (yy < 0 || yy >= H)) {
                        for (int j = 0; j < 4; ++j) d[i][j] = 0.0f;
                        continue;
                    }
                    const float* row = reinterpret_cast<const float*>(plane + yy * x->nb[1]);
                    if (interior) {
                        for (int j = 0; j < 4; ++j) d[i][j] = row[x0 + j];
                    } else {
                        for (int j = 0; j < 4; ++j) {
                            const int64_t xx = x0 + j;
                            d[i][j] = (xx >= 0 && xx < W) ? row[xx] : 0.0f;
                        }
                    }
                }
                float t[4][4];  // B^T d
                for (int j = 0; j < 4; ++j) {
                    t[0][j] = d[0][j] - d[2][j];
                    t[1][j] = d[1][j] + d[2][j];
                    t[2][j] = d[2][j] - d[1][j];
                    t[3][j] = d[1][j] - d[3][j];
                }
                float* o = buf.data() + c;
                for (int i = 0; i < 4; ++i) {  // (B^T d) B
                    o[(i * 4 + 0) * C] = t[i][0] - t[i][2];
                    o[(i * 4 + 1) * C] = t[i][1] + t[i][2];
                    o[(i * 4 + 2) * C] = t[i][2] - t[i][1];
                    o[(i * 4 + 3) * C] = t[i][1] - t[i][3];
                }
            }
            const int64_t tile = (n * TH + ty) * TW + tx;
            char* base = static_cast<char*>(dst->data) + tile * dst->nb[1];
            for (int p = 0; p < 16; ++p) std::memcpy(base + p * dst->nb[2], buf.data() + p * C, C * sizeof(float));
        }
    }
}

// U [C, OC, 16] from w [3, 3, C, OC]. Runs every forward pass (no second copy of the
// weights is kept), so it is written to stream: one vectorized conversion of an output
// channel's 9*C weights to f32, a branch-free transform, one conversion per output row.
void weight_transform(ggml_tensor* dst, int ith, int nth, void*) {
    const ggml_tensor* w = dst->src[0];
    const int64_t C = w->ne[2], OC = w->ne[3];
    const auto to_f32 = kc::gemm_kernels().to_f32;
    std::vector<float>& buf = scratch(16 * C + 9 * C);
    float* out = buf.data();
    float* g = buf.data() + 16 * C;
    for (int64_t oc = ith; oc < OC; oc += nth) {
        const void* src = static_cast<const char*>(w->data) + oc * w->nb[3];  // 9*C contiguous values
        switch (w->type) {
            case GGML_TYPE_F32: std::memcpy(g, src, 9 * C * sizeof(float)); break;
            case GGML_TYPE_F16: to_f32(g, static_cast<const char*>(src), kc::GemmB::F16, 9 * C); break;
            default: to_f32(g, static_cast<const char*>(src), kc::GemmB::BF16, 9 * C); break;
        }
        for (int64_t c = 0; c < C; ++c) {
            const float* k = g + 9 * c;  // k[ky * 3 + kx]
            float t[4][3];               // G g
            for (int j = 0; j < 3; ++j) {
                t[0][j] = k[j];
                t[1][j] = 0.5f * (k[j] + k[3 + j] + k[6 + j]);
                t[2][j] = 0.5f * (k[j] - k[3 + j] + k[6 + j]);
                t[3][j] = k[6 + j];
            }
            for (int i = 0; i < 4; ++i) {  // (G g) G^T
                out[(i * 4 + 0) * C + c] = t[i][0];
                out[(i * 4 + 1) * C + c] = 0.5f * (t[i][0] + t[i][1] + t[i][2]);
                out[(i * 4 + 2) * C + c] = 0.5f * (t[i][0] - t[i][1] + t[i][2]);
                out[(i * 4 + 3) * C + c] = t[i][2];
            }
        }
        char* base = static_cast<char*>(dst->data) + oc * dst->nb[1];
        for (int p = 0; p < 16; ++p) std::memcpy(base + p * dst->nb[2], out + p * C, C * sizeof(float));
    }
}

// y [W, H, OC, N] = A^T M A (+ bias) from M [T, OC, 16] f32.
void output_transform(ggml_tensor* dst, int ith, int nth, void*) {
    const ggml_tensor* m = dst->src[0];
    const ggml_tensor* bias = dst->src[1];
    const int64_t W = dst->ne[0], H = dst->ne[1], OC = dst->ne[2], N = dst->ne[3];
    const int64_t TW = (W + 1) / 2, TH = (H + 1) / 2;
    for (int64_t unit = ith; unit < N * OC; unit += nth) {
        const int64_t n = unit / OC, oc = unit % OC;
        const float b = bias ? *reinterpret_cast<const float*>(static_cast<const char*>(bias->data) + oc * bias->nb[0]) : 0.0f;
        const char* mbase = static_cast<const char*>(m->data) + oc * m->nb[1];
        char* ybase = static_cast<char*>(dst->data) + oc * dst->nb[2] + n * dst->nb[3];
        for (int64_t ty = 0; ty < TH; ++ty) {
            float* row0 = reinterpret_cast<float*>(ybase + (2 * ty) * dst->nb[1]);
            float* row1 = 2 * ty + 1 < H ? reinterpret_cast<float*>(ybase + (2 * ty + 1) * dst->nb[1]) : nullptr;
            const int64_t t0 = (n * TH + ty) * TW;
            for (int64_t tx = 0; tx < TW; ++tx) {
                float v[16];
                const char* mp = mbase + (t0 + tx) * m->nb[0];
                for (int p = 0; p < 16; ++p) v[p] = *reinterpret_cast<const float*>(mp + p * m->nb[2]);
                float s[2][4];  // A^T M
                for (int j = 0; j < 4; ++j) {
                    s[0][j] = v[j] + v[4 + j] + v[8 + j];
                    s[1][j] = v[4 + j] - v[8 + j] - v[12 + j];
                }
                const float y00 = s[0][0] + s[0][1] + s[0][2] + b, y01 = s[0][1] - s[0][2] - s[0][3] + b;
                const float y10 = s[1][0] + s[1][1] + s[1][2] + b, y11 = s[1][1] - s[1][2] - s[1][3] + b;
                const int64_t x = 2 * tx;
                row0[x] = y00;
                if (x + 1 < W) row0[x + 1] = y01;
                if (row1) {
                    row1[x] = y10;
                    if (x + 1 < W) row1[x + 1] = y11;
                }
            }
        }
    }
}

}  // namespace

ggml_tensor* conv3x3(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b) {
    if (x->type != GGML_TYPE_F32) x = ggml_cast(ctx, x, GGML_TYPE_F32);
    if (!ggml_is_contiguous(x)) x = ggml_cont(ctx, x);
    if (!ggml_is_contiguous(w)) w = ggml_cont(ctx, w);
    const int64_t W = x->ne[0], H = x->ne[1], C = x->ne[2], N = x->ne[3], OC = w->ne[3];
    const int64_t T = N * ((W + 1) / 2) * ((H + 1) / 2);
    ggml_tensor* xa[1] = {x};
    ggml_tensor* v = ggml_custom_4d(ctx, GGML_TYPE_F32, C, T, 16, 1, xa, 1, input_transform, GGML_N_TASKS_MAX, nullptr);
    ggml_tensor* wa[1] = {w};
    ggml_tensor* u = ggml_custom_4d(ctx, GGML_TYPE_F32, C, OC, 16, 1, wa, 1, weight_transform, GGML_N_TASKS_MAX, nullptr);
    ggml_tensor* m = fused::mul_mat(ctx, v, u, /*cpu=*/true);  // [T, OC, 16] through the packed product
    ggml_tensor* ma[2] = {m, b};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, W, H, OC, N, ma, b ? 2 : 1, output_transform, GGML_N_TASKS_MAX, nullptr);
}

}  // namespace sdcpp::winograd
