// The int8 attention (attention_int8.h) as ggml custom ops: K / V quantized and packed once per
// (image, head), then the attention over 32-query blocks, both shared out over ggml's threads.
#include "attention_int8.h"
#include "fused_attention.h"

#include <cstdint>

namespace sdcpp::fused_attention {

namespace kc = sdcpp::kernels::cpu;

namespace {

void* user_data(int heads) { return reinterpret_cast<void*>(static_cast<intptr_t>(heads)); }
int heads_of(void* ud) { return static_cast<int>(reinterpret_cast<intptr_t>(ud)); }

// The driver's arguments from q [D, Lq, N], k, v [D, Lk, N] (f32, contiguous rows) and out.
kc::AttentionInt8Args args_of(const ggml_tensor* q, const ggml_tensor* k, const ggml_tensor* v, ggml_tensor* out, int heads) {
    const auto f = [](const ggml_tensor* t, int i) { return static_cast<int64_t>(t->nb[i] / sizeof(float)); };
    return {q ? static_cast<const float*>(q->data) : nullptr, q ? f(q, 1) : 0, q ? f(q, 2) : 0,
            static_cast<const float*>(k->data), f(k, 1), f(k, 2),
            v ? static_cast<const float*>(v->data) : nullptr, v ? f(v, 1) : 0, v ? f(v, 2) : 0,
            out ? static_cast<float*>(out->data) : nullptr, out ? f(out, 1) : 0, out ? f(out, 2) : 0,
            k->ne[2], q ? q->ne[1] : 0, k->ne[1], k->ne[0] / heads, heads};
}

// src[0] = k, src[1] = v -> the packed words (dst, I32)
void pack_op(ggml_tensor* dst, int ith, int nth, void* ud) {
    const kc::AttentionInt8Args a = args_of(nullptr, dst->src[0], dst->src[1], nullptr, heads_of(ud));
    kc::pack_int8(a, static_cast<uint32_t*>(dst->data), ith, nth);
}

// src[0] = q, src[1] = packed, src[2] = k (its shape: Lk)
void attend_op(ggml_tensor* dst, int ith, int nth, void* ud) {
    const kc::AttentionInt8Args a = args_of(dst->src[0], dst->src[2], nullptr, dst, heads_of(ud));
    kc::attend_int8(kc::attention_int8_kernels(), a, static_cast<const uint32_t*>(dst->src[1]->data), ith, nth);
}

}  // namespace

const char* int8_variant() { return kc::attention_int8_kernels().name; }

ggml_tensor* attention_int8(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads) {
    if (q->type != GGML_TYPE_F32 || q->nb[0] != sizeof(float)) q = ggml_cont(ctx, q);
    if (k->type != GGML_TYPE_F32 || k->nb[0] != sizeof(float)) k = ggml_cont(ctx, k);
    if (v->type != GGML_TYPE_F32 || v->nb[0] != sizeof(float)) v = ggml_cont(ctx, v);
    const kc::AttentionInt8Args a = args_of(q, k, v, nullptr, heads);
    ggml_tensor* kv[2] = {k, v};
    ggml_tensor* packed =
        ggml_custom_4d(ctx, GGML_TYPE_I32, kc::packed_int8_words(a), 1, 1, 1, kv, 2, pack_op, GGML_N_TASKS_MAX, user_data(heads));
    ggml_tensor* args[3] = {q, packed, k};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, q->ne[0], q->ne[1], q->ne[2], 1, args, 3, attend_op, GGML_N_TASKS_MAX,
                          user_data(heads));
}

}  // namespace sdcpp::fused_attention
