#include "conv_q8_op.h"

#include <cstdint>
#include <cstdlib>

#include "conv_q8.h"
#include "gemm_op.h"

namespace sdcpp::fused {

namespace kc = sdcpp::kernels::cpu;

namespace {

// The geometry packed into the custom op's userdata pointer (nothing to outlive the graph):
// k, stride, pad, up one byte each, then whether there is a bias (the last source) and a residual
// (the first).
struct Geometry {
    int k, stride, pad, up;
    bool bias, residual;
};

void* pack(const Geometry& g) {
    const uint64_t v = uint64_t(g.k) | uint64_t(g.stride) << 8 | uint64_t(g.pad) << 16 | uint64_t(g.up) << 24 |
                       uint64_t(g.bias) << 32 | uint64_t(g.residual) << 33;
    return reinterpret_cast<void*>(static_cast<uintptr_t>(v));
}

Geometry unpack(void* ud) {
    const uint64_t v = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(ud));
    return {int(v & 255), int(v >> 8 & 255), int(v >> 16 & 255), int(v >> 24 & 255), bool(v >> 32 & 1), bool(v >> 33 & 1)};
}

bool weight_type(ggml_type t, kc::GemmQB* out) {
    switch (t) {
        case GGML_TYPE_Q8_0: *out = kc::GemmQB::Q8_0; return true;
        case GGML_TYPE_Q5_0: *out = kc::GemmQB::Q5_0; return true;
        case GGML_TYPE_Q4_0: *out = kc::GemmQB::Q4_0; return true;
        default: return false;
    }
}

void conv_q8_op(ggml_tensor* dst, int ith, int nth, void* ud) {
    const Geometry geo = unpack(ud);
    int next = 0;
    const ggml_tensor* r = geo.residual ? dst->src[next++] : nullptr;
    const ggml_tensor* w = dst->src[next++];
    const ggml_tensor* x = dst->src[next++];
    const ggml_tensor* b = geo.bias ? dst->src[next++] : nullptr;
    kc::ConvQ8Args a;
    a.x = static_cast<const float*>(x->data);
    a.W = x->ne[0], a.H = x->ne[1], a.C = x->ne[2], a.N = x->ne[3];
    a.xs1 = int64_t(x->nb[1] / sizeof(float)), a.xs2 = int64_t(x->nb[2] / sizeof(float)), a.xs3 = int64_t(x->nb[3] / sizeof(float));
    a.up = geo.up, a.k = geo.k, a.stride = geo.stride, a.pad = geo.pad;
    a.w = static_cast<const uint8_t*>(w->data);
    a.ldw = int64_t(w->nb[1]), a.OC = w->ne[1];
    weight_type(w->type, &a.wtype);
    a.bias = b ? static_cast<const float*>(b->data) : nullptr;
    a.residual = r ? static_cast<const float*>(r->data) : nullptr;
    a.y = static_cast<float*>(dst->data);
    a.OW = dst->ne[0], a.OH = dst->ne[1];
    kc::conv_q8(kc::gemm_q8_kernels(), a, ith, nth);
}

}  // namespace

bool conv_q8_enabled() {
    static const bool on = [] {
        const char* env = std::getenv("SDCPP_CONV_Q8");
        return !(env && env[0] == '0');
    }();
    return on;
}

bool conv_q8_applies(const ggml_tensor* x, const ggml_tensor* w, int k, int stride, int pad, int up,
                     const ggml_tensor* bias, const ggml_tensor* residual) {
    kc::GemmQB qb;
    if (!int8_matmul_applies(w) || !weight_type(w->type, &qb)) return false;
    if (k < 1 || k > kc::kConvQ8MaxK || stride < 1 || stride > 255 || pad < 0 || pad > 255 || (up != 1 && up != 2)) return false;
    if (w->ne[0] != x->ne[2] * k * k || w->ne[2] != 1 || w->ne[3] != 1) return false;
    if (x->type != GGML_TYPE_F32 || x->nb[0] != sizeof(float)) return false;
    if (x->nb[1] % sizeof(float) || x->nb[2] % sizeof(float) || x->nb[3] % sizeof(float)) return false;
    const int64_t OW = kc::conv_q8_out_size(x->ne[0], up, k, stride, pad), OH = kc::conv_q8_out_size(x->ne[1], up, k, stride, pad);
    if (OW < 1 || OH < 1) return false;
    if (bias && (bias->type != GGML_TYPE_F32 || !ggml_is_contiguous(bias) || ggml_nelements(bias) != w->ne[1])) return false;
    if (residual && (residual->type != GGML_TYPE_F32 || !ggml_is_contiguous(residual) || residual->ne[0] != OW ||
                     residual->ne[1] != OH || residual->ne[2] != w->ne[1] || residual->ne[3] != x->ne[3]))
        return false;
    return true;
}

ggml_tensor* conv2d_q8(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, int k, int stride, int pad, int up,
                       ggml_tensor* bias, ggml_tensor* residual) {
    const int64_t OW = kc::conv_q8_out_size(x->ne[0], up, k, stride, pad), OH = kc::conv_q8_out_size(x->ne[1], up, k, stride, pad);
    // The residual first (as nn::conv2d's ggml_add(residual, y)): ggml visits a node's sources in
    // order, so the residual's producer (a ResNet's shortcut) runs before this convolution's input
    // chain and its input can be freed early.
    ggml_tensor* args[4] = {};
    int n = 0;
    if (residual) args[n++] = residual;
    args[n++] = w;
    args[n++] = x;
    if (bias) args[n++] = bias;
    return ggml_custom_4d(ctx, GGML_TYPE_F32, OW, OH, w->ne[1], x->ne[3], args, n, conv_q8_op, GGML_N_TASKS_MAX,
                          pack({k, stride, pad, up, bias != nullptr, residual != nullptr}));
}

}  // namespace sdcpp::fused
