#include "fused_ops.h"

#include <cstdint>
#include <cstring>

#include "elementwise.h"

namespace sdcpp::fused {

namespace kc = sdcpp::kernels::cpu;

namespace {

// custom-op parameters packed into the userdata pointer (no allocation to outlive the graph)
void* pack_params(float eps, uint32_t small) {
    uint32_t bits;
    std::memcpy(&bits, &eps, 4);
    return reinterpret_cast<void*>(static_cast<uintptr_t>((static_cast<uint64_t>(bits) << 32) | small));
}
float param_eps(void* ud) {
    const uint32_t bits = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(ud) >> 32);
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
uint32_t param_small(void* ud) { return static_cast<uint32_t>(reinterpret_cast<uintptr_t>(ud) & 0xffffffffu); }

const float* f32(const ggml_tensor* t) { return static_cast<const float*>(t->data); }
float* f32(ggml_tensor* t) { return static_cast<float*>(t->data); }

void geglu_op(ggml_tensor* dst, int ith, int nth, void*) {
    const int64_t F = dst->ne[0], rows = dst->ne[1] * dst->ne[2] * dst->ne[3];
    kc::geglu_rows(kc::elementwise(), f32(dst->src[0]), f32(dst), rows, F, ith, nth);
}

void quick_gelu_op(ggml_tensor* dst, int ith, int nth, void*) {
    kc::quick_gelu_rows(kc::elementwise(), f32(dst->src[0]), f32(dst), ggml_nrows(dst), dst->ne[0], ith, nth);
}

void gelu_op(ggml_tensor* dst, int ith, int nth, void*) {
    kc::gelu_rows(kc::elementwise(), f32(dst->src[0]), f32(dst), ggml_nrows(dst), dst->ne[0], ith, nth);
}

void group_norm_op(ggml_tensor* dst, int ith, int nth, void* ud) {
    const ggml_tensor* x = dst->src[0];
    const uint32_t small = param_small(ud);
    kc::group_norm_rows(kc::elementwise(), f32(x), f32(dst), x->ne[3], x->ne[2], x->ne[0] * x->ne[1],
                        static_cast<int>(small >> 1), param_eps(ud), small & 1u, f32(dst->src[1]), f32(dst->src[2]),
                        ith, nth);
}

void layer_norm_op(ggml_tensor* dst, int ith, int nth, void* ud) {
    const ggml_tensor* x = dst->src[0];
    kc::layer_norm_rows(kc::elementwise(), f32(x), f32(dst), x->ne[1] * x->ne[2] * x->ne[3], x->ne[0], f32(dst->src[1]),
                        f32(dst->src[2]), param_eps(ud), ith, nth);
}

void transpose_op(ggml_tensor* dst, int ith, int nth, void*) {
    const ggml_tensor* x = dst->src[0];
    kc::transpose_rows(kc::elementwise(), f32(x), f32(dst), x->ne[2] * x->ne[3], x->ne[1], x->ne[0], ith, nth);
}

}  // namespace

ggml_tensor* geglu(ggml_context* ctx, ggml_tensor* x) {
    if (!ggml_is_contiguous(x)) x = ggml_cont(ctx, x);
    ggml_tensor* a[1] = {x};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, x->ne[0] / 2, x->ne[1], x->ne[2], x->ne[3], a, 1, geglu_op, GGML_N_TASKS_MAX,
                          nullptr);
}

namespace {
ggml_tensor* unary(ggml_context* ctx, ggml_tensor* x, ggml_custom_op_t op) {
    if (!ggml_is_contiguous(x)) x = ggml_cont(ctx, x);
    ggml_tensor* a[1] = {x};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, x->ne[0], x->ne[1], x->ne[2], x->ne[3], a, 1, op, GGML_N_TASKS_MAX, nullptr);
}
}  // namespace

ggml_tensor* quick_gelu(ggml_context* ctx, ggml_tensor* x) { return unary(ctx, x, quick_gelu_op); }
ggml_tensor* gelu(ggml_context* ctx, ggml_tensor* x) { return unary(ctx, x, gelu_op); }

ggml_tensor* group_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, int groups, float eps, bool silu) {
    if (!ggml_is_contiguous(x)) x = ggml_cont(ctx, x);
    ggml_tensor* a[3] = {x, w, b};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, x->ne[0], x->ne[1], x->ne[2], x->ne[3], a, 3, group_norm_op, GGML_N_TASKS_MAX,
                          pack_params(eps, (static_cast<uint32_t>(groups) << 1) | (silu ? 1u : 0u)));
}

ggml_tensor* group_norm_inplace(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, int groups, float eps,
                                bool silu, ggml_tensor* after) {
    GGML_ASSERT(ggml_is_contiguous(x) && x->type == GGML_TYPE_F32);
    // ggml_custom_inplace puts x at src[0] and the arguments after it: the sources are laid out
    // as group_norm's (x, w, b), so the same op body runs with dst's data being x's.
    ggml_tensor* a[3] = {w, b, after};
    return ggml_custom_inplace(ctx, x, a, after ? 3 : 2, group_norm_op, GGML_N_TASKS_MAX,
                               pack_params(eps, (static_cast<uint32_t>(groups) << 1) | (silu ? 1u : 0u)));
}

ggml_tensor* layer_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, float eps) {
    if (!ggml_is_contiguous(x)) x = ggml_cont(ctx, x);
    ggml_tensor* a[3] = {x, w, b};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, x->ne[0], x->ne[1], x->ne[2], x->ne[3], a, 3, layer_norm_op, GGML_N_TASKS_MAX,
                          pack_params(eps, 0));
}

ggml_tensor* transpose(ggml_context* ctx, ggml_tensor* x) {
    if (!ggml_is_contiguous(x) || x->type != GGML_TYPE_F32) return ggml_cont(ctx, ggml_permute(ctx, x, 1, 0, 2, 3));
    ggml_tensor* a[1] = {x};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, x->ne[1], x->ne[0], x->ne[2], x->ne[3], a, 1, transpose_op, GGML_N_TASKS_MAX,
                          nullptr);
}

}  // namespace sdcpp::fused
