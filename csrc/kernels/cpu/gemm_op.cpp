#include "gemm_op.h"

#include <cstdlib>

#include "gemm.h"
#include "gemm_bf16.h"
#include "gemm_q8.h"
#include "ggml-backend.h"

namespace sdcpp::fused {

namespace kc = sdcpp::kernels::cpu;

bool gemm_type(ggml_type t, kc::GemmB* out) {
    switch (t) {
        case GGML_TYPE_F32: *out = kc::GemmB::F32; return true;
        case GGML_TYPE_F16: *out = kc::GemmB::F16; return true;
        case GGML_TYPE_BF16: *out = kc::GemmB::BF16; return true;
        default: return false;
    }
}

void row_to_f32(float* dst, const void* src, ggml_type type, int64_t n) {
    kc::GemmB b = kc::GemmB::F32;
    if (!gemm_type(type, &b)) GGML_ABORT("row_to_f32: f32, f16 or bf16 rows only");
    kc::gemm_kernels().to_f32(dst, static_cast<const char*>(src), b, n);
}

namespace {

bool int8_type(ggml_type t, kc::GemmQB* out) {
    switch (t) {
        case GGML_TYPE_Q8_0: *out = kc::GemmQB::Q8_0; return true;
        case GGML_TYPE_Q5_0: *out = kc::GemmQB::Q5_0; return true;
        case GGML_TYPE_Q4_0: *out = kc::GemmQB::Q4_0; return true;
        default: return false;
    }
}

// ggml mul_mat's broadcasting of w over x's dimensions 2 and 3, as runs of products that share w:
// run(A, B, C, batch, a_batch floats, b_batch bytes, c_batch floats). When w has all of x's
// dimension-2 batches, the whole dimension is one batched call (threads split its rows across
// products); otherwise r2 products of x per w matrix.
template <class Run>
void for_each_weight_run(const ggml_tensor* dst, const ggml_tensor* w, const ggml_tensor* x, Run&& run) {
    const int64_t r2 = x->ne[2] / w->ne[2], r3 = x->ne[3] / w->ne[3];
    const int64_t xs2 = static_cast<int64_t>(x->nb[2] / sizeof(float)), ds2 = static_cast<int64_t>(dst->nb[2] / sizeof(float));
    for (int64_t i3 = 0; i3 < x->ne[3]; ++i3) {
        const char* wb = static_cast<const char*>(w->data) + (i3 / r3) * w->nb[3];
        const char* xb = static_cast<const char*>(x->data) + i3 * x->nb[3];
        char* db = static_cast<char*>(dst->data) + i3 * dst->nb[3];
        if (r2 == 1) {
            run(xb, wb, db, x->ne[2], xs2, static_cast<int64_t>(w->nb[2]), ds2);
        } else {
            for (int64_t i2w = 0; i2w < w->ne[2]; ++i2w)
                run(xb + i2w * r2 * x->nb[2], wb + i2w * w->nb[2], db + i2w * r2 * dst->nb[2], r2, xs2, int64_t(0), ds2);
        }
    }
}

// q8_0 / q5_0 / q4_0 weights: the integer product (gemm_q8.h).
void matmul_q8_op(ggml_tensor* dst, int ith, int nth, void*) {
    const ggml_tensor* w = dst->src[0];
    const ggml_tensor* x = dst->src[1];
    const kc::GemmQ8Kernels& k = kc::gemm_q8_kernels();
    kc::GemmQ8Args g{nullptr, static_cast<int64_t>(x->nb[1] / sizeof(float)), nullptr, static_cast<int64_t>(w->nb[1]),
                     nullptr, static_cast<int64_t>(dst->nb[1] / sizeof(float)), x->ne[1], w->ne[1], x->ne[0]};
    int8_type(w->type, &g.btype);
    for_each_weight_run(dst, w, x, [&](const char* a, const char* b, char* c, int64_t batch, int64_t ab, int64_t bb, int64_t cb) {
        kc::GemmQ8Args gi = g;
        gi.A = reinterpret_cast<const float*>(a);
        gi.B = reinterpret_cast<const uint8_t*>(b);
        gi.C = reinterpret_cast<float*>(c);
        kc::gemm_q8_batched(k, gi, batch, ab, bb, cb, ith, nth);
    });
}

// The op's userdata: whether the graph asked for bf16 products (a pointer to one of these).
const bool kExact = false, kBf16 = true;

// The float product, f32 (gemm.h) or bf16 (gemm_bf16.h), one signature for matmul_op.
struct FloatGemm {
    const kc::GemmKernels* f32 = nullptr;
    const kc::GemmBf16Kernels* bf16 = nullptr;
    void operator()(const kc::GemmArgs& g, int64_t batch, int64_t a_batch, int64_t b_batch, int64_t c_batch, int ith,
                    int nth) const {
        if (bf16) {
            kc::gemm_bf16_batched(*bf16, g, batch, a_batch, b_batch, c_batch, ith, nth);
        } else {
            kc::gemm_batched(*f32, g, batch, a_batch, b_batch, c_batch, ith, nth);
        }
    }
};

void matmul_op(ggml_tensor* dst, int ith, int nth, void* userdata) {
    const ggml_tensor* w = dst->src[0];
    const ggml_tensor* x = dst->src[1];
    kc::GemmQB qb;
    if (int8_type(w->type, &qb)) return matmul_q8_op(dst, ith, nth, nullptr);
    kc::GemmB bt = kc::GemmB::F32;
    gemm_type(w->type, &bt);
    FloatGemm gemm;
    if (userdata && *static_cast<const bool*>(userdata) && kc::gemm_bf16_fast()) {
        gemm.bf16 = &kc::gemm_bf16_kernels();
    } else {
        gemm.f32 = &kc::gemm_kernels();
    }
    const kc::GemmArgs g{nullptr, static_cast<int64_t>(x->nb[1] / sizeof(float)), nullptr, bt, static_cast<int64_t>(w->nb[1]),
                         nullptr, static_cast<int64_t>(dst->nb[1] / sizeof(float)), x->ne[1], w->ne[1], x->ne[0]};
    for_each_weight_run(dst, w, x, [&](const char* a, const char* b, char* c, int64_t batch, int64_t ab, int64_t bb, int64_t cb) {
        kc::GemmArgs gi = g;
        gi.A = reinterpret_cast<const float*>(a);
        gi.B = b;
        gi.C = reinterpret_cast<float*>(c);
        gemm(gi, batch, ab, bb, cb, ith, nth);
    });
}

// SDCPP_INT8_GEMM=0 sends quantized weights back to ggml's integer products (A/B benchmarks).
bool int8_enabled() {
    static const bool on = [] {
        const char* env = std::getenv("SDCPP_INT8_GEMM");
        return !(env && env[0] == '0');
    }();
    return on;
}

}  // namespace

bool int8_gemm_preferred() {
    const kc::Level l = kc::gemm_q8_kernels().level;
    return int8_enabled() && (l == kc::Level::Avx2 || l == kc::Level::Avx512 || l == kc::Level::Amx);
}

bool int8_matmul_applies(const ggml_tensor* w) {
    kc::GemmQB qb;
    if (w->buffer && !ggml_backend_buffer_is_host(w->buffer)) return false;
    return int8_enabled() && int8_type(w->type, &qb) && w->ne[0] % kc::kQ8Block == 0 &&
           kc::gemm_q8_kernels().level != kc::Level::Portable;
}

bool matmul_applies(const ggml_tensor* w, const ggml_tensor* x, bool bf16) {
    // SDCPP_PACKED_GEMM=0 keeps ggml_mul_mat everywhere (for A/B benchmarks), read once.
    static const bool enabled = [] {
        const char* env = std::getenv("SDCPP_PACKED_GEMM");
        return !(env && env[0] == '0');
    }();
    const bool int8 = int8_enabled();
    kc::GemmB bt;
    // Weights in a buffer whose bytes are not ggml's plain layout (the CPU_REPACK buffer the
    // store puts q4_0 matrices in, interleaved for ggml's own GEMM) stay with ggml.
    if (w->buffer && !ggml_backend_buffer_is_host(w->buffer)) return false;
    kc::GemmQB qb;
    // Not at the portable level: plain int32 loops are the reference, far slower than ggml's
    // NEON / SSE dot products.
    const bool q8 = int8 && int8_type(w->type, &qb) && w->ne[0] % kc::kQ8Block == 0 &&
                    kc::gemm_q8_kernels().level != kc::Level::Portable;
    if (!q8 && (!enabled || !gemm_type(w->type, &bt))) return false;
    if (x->type != GGML_TYPE_F32) return false;
    if (w->ne[0] != x->ne[0]) return false;
    if (w->nb[0] != ggml_type_size(w->type) || x->nb[0] != sizeof(float)) return false;  // contiguous rows
    if (x->nb[1] % sizeof(float) || x->nb[2] % sizeof(float) || x->nb[3] % sizeof(float)) return false;
    if (w->ne[2] == 0 || w->ne[3] == 0 || x->ne[2] % w->ne[2] || x->ne[3] % w->ne[3]) return false;
    // f32 weights against few rows (a text encoder's 2 x 77 tokens, the cross-attention
    // context, time embeddings): packing B costs as much as the product there, and llamafile's
    // unpacked f32 kernel is faster (measured: CLIP-L prompt 0.150 s vs 0.196 s on an AVX-512
    // Xeon). f16 / bf16 weights still come here: ggml would convert both operands per product;
    // so do f32 ones when bf16 products run (AMX: packing is cheap beside llamafile's f32 product).
    if (w->type == GGML_TYPE_F32 && x->ne[1] * x->ne[2] * x->ne[3] <= 1024 && !(bf16 && kc::gemm_bf16_fast())) return false;
    return true;
}

bool bf16_products() { return kc::gemm_bf16_fast(); }

ggml_tensor* matmul(ggml_context* ctx, ggml_tensor* w, ggml_tensor* x, bool bf16) {
    ggml_tensor* args[2] = {w, x};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, w->ne[1], x->ne[1], x->ne[2], x->ne[3], args, 2, matmul_op,
                          GGML_N_TASKS_MAX, const_cast<bool*>(bf16 ? &kBf16 : &kExact));
}

ggml_tensor* mul_mat(ggml_context* ctx, ggml_tensor* w, ggml_tensor* x, bool cpu, bool bf16) {
    if (cpu && matmul_applies(w, x, bf16)) return matmul(ctx, w, x, bf16);
    return ggml_mul_mat(ctx, w, x);
}

}  // namespace sdcpp::fused
