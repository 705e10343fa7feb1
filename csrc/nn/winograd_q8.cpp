#include "winograd_q8.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "../kernels/cpu/gemm_op.h"
#include "../kernels/cpu/gemm_q8.h"
#include "../kernels/cpu/winograd_f23.h"
#include "../kernels/cpu/winograd_f43.h"
#include "../kernels/cpu/winograd_q8.h"
#include "winograd_patch.h"

namespace sdcpp::winograd {

namespace kc = sdcpp::kernels::cpu;

namespace {

constexpr int64_t kChunk = 32;    // tiles per input-transform work unit (as winograd_f23.cpp)
constexpr int64_t kOcChunk = 64;  // output channels per output-transform work unit

// The ops' userdata: F (2 or 4: the output tile's side) and the upsampling factor.
struct Geometry {
    int f, up;
};
void* pack(Geometry g) { return reinterpret_cast<void*>(static_cast<uintptr_t>(g.f | g.up << 8)); }
Geometry unpack(void* ud) {
    const auto v = static_cast<int>(reinterpret_cast<uintptr_t>(ud));
    return {v & 255, v >> 8};
}

// Per-channel power-of-two scales s_c (SmoothQuant-like): V's channel c is multiplied by s_c and
// U's by 1 / s_c, which leaves every product's sum as it is (powers of two: exactly, barring
// overflow) but balances the two operands' ranges before each is rounded to q8_0 in blocks of
// 32 channels: s_c ~ sqrt(amax |w_c| / amax |x_c|). Without it a block's scale is set by its
// channel of largest activations and the others lose their low bits. Threads take channels;
// q8_0 kernels only (others: s = 1).
void scales_op(ggml_tensor* dst, int ith, int nth, void*) {
    const ggml_tensor* x = dst->src[0];
    const ggml_tensor* w = dst->src[1];
    const int64_t W = x->ne[0], H = x->ne[1], C = x->ne[2], N = x->ne[3], OC = w->ne[1];
    float* s = static_cast<float*>(dst->data);
    for (int64_t c = ith; c < C; c += nth) {
        float ax = 0.0f;
        for (int64_t n = 0; n < N; ++n)
            for (int64_t y = 0; y < H; ++y) {
                const float* row = reinterpret_cast<const float*>(static_cast<const char*>(x->data) + n * x->nb[3] +
                                                                  c * x->nb[2] + y * x->nb[1]);
                for (int64_t i = 0; i < W; ++i) ax = std::max(ax, std::fabs(row[i]));
            }
        float aw = 0.0f;
        if (w->type == GGML_TYPE_Q8_0) {
            for (int64_t oc = 0; oc < OC; ++oc) {
                const uint8_t* r = static_cast<const uint8_t*>(w->data) + oc * w->nb[1];
                for (int t = 0; t < 9; ++t) {
                    const int64_t k = 9 * c + t;
                    const uint8_t* blk = r + (k / kc::kQ8Block) * kc::kQ8BlockBytes;
                    ggml_fp16_t h;
                    std::memcpy(&h, blk, 2);
                    const int8_t q = static_cast<int8_t>(blk[2 + k % kc::kQ8Block]);
                    aw = std::max(aw, std::fabs(ggml_fp16_to_fp32(h)) * float(q < 0 ? -q : q));
                }
            }
        }
        int e = 0;
        if (ax > 0.0f && aw > 0.0f && std::isfinite(ax) && std::isfinite(aw)) {
            int ex, ew;
            std::frexp(ax, &ex);
            std::frexp(aw, &ew);
            e = std::clamp((ew - ex) / 2, -24, 24);  // C++ division: towards zero
        }
        s[c] = std::ldexp(1.0f, e);
    }
}

// V [C, T, P] from x [W, H, C, N] seen through the upsampling (W, H below are the upsampled
// sizes); work units are (image and tile row, chunk of tiles), as winograd_f23.cpp's. Tile
// (ty, tx) reads rows F ty - 1 .. F ty + F and the same columns.
void input_op(ggml_tensor* dst, int ith, int nth, void* ud) {
    const ggml_tensor* x = dst->src[0];
    const float* sc = dst->src[1] ? static_cast<const float*>(dst->src[1]->data) : nullptr;
    const Geometry geo = unpack(ud);
    const int F = geo.f, A = F + 2;
    const int64_t W = x->ne[0] * geo.up, H = x->ne[1] * geo.up, C = x->ne[2], N = x->ne[3];
    const int64_t TW = (W + F - 1) / F, TH = (H + F - 1) / F;
    const int64_t chunks = (TW + kChunk - 1) / kChunk;
    float* v = static_cast<float*>(dst->data);
    const int64_t p_stride = dst->nb[2] / sizeof(float);
    for (int64_t unit = ith; unit < N * TH * chunks; unit += nth) {
        const int64_t row = unit / chunks, tx0 = (unit % chunks) * kChunk;
        const int64_t n = row / TH, ty = row % TH;
        const int64_t nt = std::min(kChunk, TW - tx0);
        const int64_t cols = F * nt + 2;
        float* patch = scratch(size_t(A * cols * C)).data();
        fill_patch(patch, A, cols, x, n, F * ty - 1, F * tx0 - 1, geo.up);
        if (sc)
            for (int64_t i = 0; i < A * cols; ++i)
                for (int64_t c = 0; c < C; ++c) patch[i * C + c] *= sc[c];
        float* vo = v + (row * TW + tx0) * C;
        if (F == 2) {
            kc::winograd_f23().input_tiles(patch, C, nt, vo, p_stride);
        } else {
            kc::winograd_f43().input_tiles(patch, C, nt, vo, p_stride);
        }
    }
}

// U [C, OC, P] q8_0 from w [9 C, OC]; threads take output channels: the kernel row dequantized
// (ggml's to_float), transformed (f32), each position's C values quantized.
void kernel_op(ggml_tensor* dst, int ith, int nth, void* ud) {
    const ggml_tensor* w = dst->src[0];
    const float* sc = dst->src[1] ? static_cast<const float*>(dst->src[1]->data) : nullptr;
    const int F = unpack(ud).f, P = (F + 2) * (F + 2);
    const int64_t C = dst->ne[0], OC = dst->ne[1];
    const ggml_to_float_t to_float = ggml_get_type_traits(w->type)->to_float;
    float* g = scratch(size_t((9 + P) * C)).data();  // 9 C kernel values, then P C transformed
    float* u = g + 9 * C;
    for (int64_t oc = ith; oc < OC; oc += nth) {
        to_float(static_cast<const char*>(w->data) + oc * w->nb[1], g, 9 * C);
        if (sc)
            for (int64_t c = 0; c < C; ++c)
                for (int t = 0; t < 9; ++t) g[9 * c + t] /= sc[c];  // a power of two: exact
        if (F == 2) {
            kc::winograd_f23().kernel(g, C, u, C);
        } else {
            kc::winograd_f43().kernel(g, C, u, C);
        }
        kc::winograd_q8_quantize(u, P, C, static_cast<uint8_t*>(dst->data) + oc * dst->nb[1], int64_t(dst->nb[2]));
    }
}

// y [W, H, OC, N] (+ bias) from M [OC, T, P]; work units are (image and tile row, chunk of
// output channels).
void output_op(ggml_tensor* dst, int ith, int nth, void* ud) {
    const ggml_tensor* m = dst->src[0];
    const ggml_tensor* bias = dst->src[1];
    const int F = unpack(ud).f;
    const int64_t W = dst->ne[0], H = dst->ne[1], OC = dst->ne[2], N = dst->ne[3];
    const int64_t TW = (W + F - 1) / F, TH = (H + F - 1) / F;
    const int64_t chunks = (OC + kOcChunk - 1) / kOcChunk;
    const int64_t m_p = m->nb[2] / sizeof(float);
    const float* b = bias ? static_cast<const float*>(bias->data) : nullptr;
    const auto transform = F == 2 ? kc::winograd_f23_q8_output : kc::winograd_f43_q8_output;
    for (int64_t unit = ith; unit < N * TH * chunks; unit += nth) {
        const int64_t row = unit / chunks, oc0 = (unit % chunks) * kOcChunk;
        const int64_t n = row / TH, ty = row % TH;
        const float* mp = static_cast<const float*>(m->data) + row * TW * OC;
        float* out = reinterpret_cast<float*>(static_cast<char*>(dst->data) + n * dst->nb[3] + F * ty * dst->nb[1]);
        const int rows = int(std::min<int64_t>(F, H - F * ty));
        transform(mp, m_p, OC, oc0, std::min(OC, oc0 + kOcChunk), TW, rows, W, b, out, int64_t(dst->nb[1] / sizeof(float)),
                  int64_t(dst->nb[2] / sizeof(float)));
    }
}

}  // namespace

bool q8_enabled() {
    static const bool on = [] {
        const char* env = std::getenv("SDCPP_WINOGRAD_Q8");
        return !(env && env[0] == '0');
    }();
    return on;
}

bool q8_smooth() {
    static const bool on = [] {
        const char* env = std::getenv("SDCPP_WINOGRAD_Q8_SMOOTH");
        return env && env[0] == '1';
    }();
    return on;
}

int64_t q8_min_pixels(int64_t fallback) {
    static const long long v = [] {
        const char* env = std::getenv("SDCPP_WINOGRAD_Q8");
        return env && *env ? std::atoll(env) : -1LL;
    }();
    if (v == 0) return INT64_MAX;
    if (v > 1) return v;
    if (v == 1) return fallback;
    // Unset: off. Measured (bench/README.md "Winograd with int8 products"), it saved about 5 % of a
    // BK-SDM-tiny q8_0 step at the AVX2 level (nothing with AMX-INT8, noise on SD1.5) for final
    // latents at 2.92e-2 from diffusers fp32 against the direct op's 2.40e-2 (q8_0's bound: 3e-2).
    // Too little gain for that margin, and a default that changed the numerics with the CPU level;
    // SDCPP_WINOGRAD_Q8=1 (or UNet.conv = "winograd") opts in.
    return INT64_MAX;
}

bool conv3x3_q8_applies(const ggml_tensor* x, const ggml_tensor* w) {
    if (w->type != GGML_TYPE_Q8_0 && w->type != GGML_TYPE_Q5_0 && w->type != GGML_TYPE_Q4_0) return false;
    if (!fused::int8_matmul_applies(w)) return false;
    const int64_t C = x->ne[2];
    return x->type == GGML_TYPE_F32 && C % kc::kQ8Block == 0 && w->ne[0] == 9 * C && w->ne[1] >= 32 &&
           w->ne[2] == 1 && w->ne[3] == 1 && ggml_is_contiguous(w);
}

ggml_tensor* conv3x3_q8(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, int up, bool f43) {
    if (!ggml_is_contiguous(x)) x = ggml_cont(ctx, x);
    if (b && b->type != GGML_TYPE_F32) b = ggml_cast(ctx, b, GGML_TYPE_F32);
    if (b && !ggml_is_contiguous(b)) b = ggml_cont(ctx, b);
    const int F = f43 ? 4 : 2, P = (F + 2) * (F + 2);
    const int64_t W = x->ne[0] * up, H = x->ne[1] * up, C = x->ne[2], N = x->ne[3], OC = w->ne[1];
    const int64_t T = N * ((W + F - 1) / F) * ((H + F - 1) / F);
    void* ud = pack({F, up});
    ggml_tensor* sc = nullptr;
    if (q8_smooth()) {
        ggml_tensor* sa[2] = {x, w};
        sc = ggml_custom_4d(ctx, GGML_TYPE_F32, C, 1, 1, 1, sa, 2, scales_op, GGML_N_TASKS_MAX, nullptr);
    }
    ggml_tensor* xa[2] = {x, sc};
    ggml_tensor* v = ggml_custom_4d(ctx, GGML_TYPE_F32, C, T, P, 1, xa, sc ? 2 : 1, input_op, GGML_N_TASKS_MAX, ud);
    ggml_tensor* wa[2] = {w, sc};
    ggml_tensor* u = ggml_custom_4d(ctx, GGML_TYPE_Q8_0, C, OC, P, 1, wa, sc ? 2 : 1, kernel_op, GGML_N_TASKS_MAX, ud);
    ggml_tensor* m = fused::matmul(ctx, u, v);  // [OC, T, P]: the integer product
    ggml_tensor* ma[2] = {m, b};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, W, H, OC, N, ma, b ? 2 : 1, output_op, GGML_N_TASKS_MAX, ud);
}

}  // namespace sdcpp::winograd
