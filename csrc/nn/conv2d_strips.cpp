#include "conv2d_strips.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <set>
#include <tuple>

#include "../kernels/cpu/gemm_op.h"
#include "layers.h"
#include "winograd_f43_strips.h"

namespace sdcpp::nn {

namespace {

// ---------------------------------------------------------------------------------------------
// A CPU im2col for a band of output rows, written for speed: threads split the output rows
// (ggml's im2col splits channels, so both threads write into the same cache lines), padding
// is read as zeros instead of being materialized, and the output is f32 or bf16 (bf16 halves
// the memory traffic of the bf16 compute mode). Output [K = KW*KH*C, OW, rows, 1] with
// K ordered (kx, ky, c) like ggml's [KW, KH, IC, OC] kernels.

struct Im2colParams {
    int kw, kh, stride, pad_l, pad_t;
    int64_t row0, rows, ow;
    int up;  // 1, or 2: the input is read as its nearest-neighbour 2x upsampling (fused Upsample2D)
    bool operator<(const Im2colParams& o) const {
        return std::tie(kw, kh, stride, pad_l, pad_t, row0, rows, ow, up) <
               std::tie(o.kw, o.kh, o.stride, o.pad_l, o.pad_t, o.row0, o.rows, o.ow, o.up);
    }
};

// Custom ops keep a pointer to their parameters: intern them for the life of the process
// (there is one entry per distinct conv geometry, a few hundred at most).
const Im2colParams* intern(const Im2colParams& p) {
    static std::mutex mu;
    static std::set<Im2colParams> table;
    std::lock_guard<std::mutex> lock(mu);
    return &*table.insert(p).first;
}

inline uint16_t to_bf16(float f) {  // round to nearest even, NaN kept quiet (as ggml does)
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((u >> 16) | 64);
    return static_cast<uint16_t>((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

template <typename T>
inline T store_as(float v);
template <>
inline float store_as<float>(float v) { return v; }
template <>
inline uint16_t store_as<uint16_t>(float v) { return to_bf16(v); }

// Row by row: for each output row, each (channel, kernel row) reads one input row sequentially
// and writes KW values into every output pixel's column; the OW destination lines stay in cache
// between consecutive (channel, kernel row) steps. Threads take whole output rows.
template <typename T, int UP>
void im2col_rows_impl(ggml_tensor* dst, int ith, int nth, const Im2colParams& p) {
    const ggml_tensor* x = dst->src[0];
    const int64_t W = x->ne[0] * UP, H = x->ne[1] * UP, C = x->ne[2];  // the (virtual) input size
    const int64_t K = int64_t(p.kw) * p.kh * C;
    const int64_t per = (p.rows + nth - 1) / nth;
    const int64_t r0 = ith * per, r1 = std::min(p.rows, r0 + per);
    const char* base = static_cast<const char*>(x->data);
    const size_t nb1 = x->nb[1], nb2 = x->nb[2];
    const T zero = store_as<T>(0.0f);
    // Output pixels whose whole kernel window lies inside the row: [ow_lo, ow_hi).
    const int64_t ow_lo = std::min<int64_t>(p.ow, (p.pad_l + p.stride - 1) / p.stride);
    int64_t ow_hi = W - p.kw + p.pad_l >= 0 ? (W - p.kw + p.pad_l) / p.stride + 1 : 0;
    ow_hi = std::max(ow_lo, std::min(ow_hi, p.ow));
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t oh = p.row0 + r;
        T* drow = static_cast<T*>(dst->data) + r * p.ow * K;
        for (int64_t c = 0; c < C; ++c) {
            const char* plane = base + c * nb2;
            for (int ky = 0; ky < p.kh; ++ky) {
                T* d = drow + (c * p.kh + ky) * p.kw;
                const int64_t iy = oh * p.stride - p.pad_t + ky;
                if (iy < 0 || iy >= H) {
                    for (int64_t ow = 0; ow < p.ow; ++ow)
                        for (int kx = 0; kx < p.kw; ++kx) d[ow * K + kx] = zero;
                    continue;
                }
                const float* row = reinterpret_cast<const float*>(plane + (iy / UP) * nb1);
                auto edge = [&](int64_t ow) {
                    const int64_t ix0 = ow * p.stride - p.pad_l;
                    for (int kx = 0; kx < p.kw; ++kx) {
                        const int64_t ix = ix0 + kx;
                        d[ow * K + kx] = ix >= 0 && ix < W ? store_as<T>(row[ix / UP]) : zero;
                    }
                };
                for (int64_t ow = 0; ow < ow_lo; ++ow) edge(ow);
                if (UP == 1 && p.kw == 3 && p.stride == 1) {
                    const float* src = row + (ow_lo - p.pad_l);
                    T* dd = d + ow_lo * K;
                    for (int64_t ow = ow_lo; ow < ow_hi; ++ow, ++src, dd += K) {
                        dd[0] = store_as<T>(src[0]);
                        dd[1] = store_as<T>(src[1]);
                        dd[2] = store_as<T>(src[2]);
                    }
                } else {
                    for (int64_t ow = ow_lo; ow < ow_hi; ++ow) {
                        const int64_t ix0 = ow * p.stride - p.pad_l;
                        for (int kx = 0; kx < p.kw; ++kx) d[ow * K + kx] = store_as<T>(row[(ix0 + kx) / UP]);
                    }
                }
                for (int64_t ow = ow_hi; ow < p.ow; ++ow) edge(ow);
            }
        }
    }
}

void im2col_rows(ggml_tensor* dst, int ith, int nth, void* userdata) {
    const Im2colParams& p = *static_cast<const Im2colParams*>(userdata);
    const bool bf16 = dst->type == GGML_TYPE_BF16;
    if (p.up == 2) bf16 ? im2col_rows_impl<uint16_t, 2>(dst, ith, nth, p) : im2col_rows_impl<float, 2>(dst, ith, nth, p);
    else bf16 ? im2col_rows_impl<uint16_t, 1>(dst, ith, nth, p) : im2col_rows_impl<float, 1>(dst, ith, nth, p);
}

// dst [W, H, C, N] <- src [W, h <= H, C, N] into rows [0, h); the other rows are left for
// ggml_set_inplace to fill. Taking the first part as a source also orders the graph: the
// full-size output is allocated only once that part is computed.
void place_first_rows(ggml_tensor* dst, int ith, int nth, void*) {
    const ggml_tensor* src = dst->src[0];
    const int64_t planes = src->ne[2] * src->ne[3];
    const size_t row_bytes = size_t(src->ne[0]) * sizeof(float);
    for (int64_t p = ith; p < planes; p += nth) {
        const int64_t c = p % src->ne[2], n = p / src->ne[2];
        const char* s = static_cast<const char*>(src->data) + c * src->nb[2] + n * src->nb[3];
        char* d = static_cast<char*>(dst->data) + c * dst->nb[2] + n * dst->nb[3];
        for (int64_t r = 0; r < src->ne[1]; ++r) std::memcpy(d + r * dst->nb[1], s + r * src->nb[1], row_bytes);
    }
}

// No computation: a tensor for the parts to be written into, allocated where the graph
// reaches it (its source only orders it).
void allocate_only(ggml_tensor*, int, int, void*) {}

}  // namespace

// Place `parts` (each [W, rows_i, C, 1], rows summing to H) one under the other.
ggml_tensor* stack_rows(ggml_context* ctx, const std::vector<ggml_tensor*>& parts, bool custom_ops, ggml_tensor* allocate_after) {
    if (parts.size() == 1) return parts[0];
    int64_t H = 0;
    for (auto* p : parts) H += p->ne[1];
    const int64_t W = parts[0]->ne[0], C = parts[0]->ne[2], N = parts[0]->ne[3];
    const size_t total = size_t(W) * H * C * N * sizeof(float);
    if (total < (size_t(1) << 31)) {
        // The first part placed into a full-size tensor, then every other part written in
        // place (ggml_set keeps its offsets in int32, hence the size limit).
        ggml_tensor* acc;
        size_t i0 = 1;
        if (custom_ops && allocate_after) {
            ggml_tensor* after[1] = {allocate_after};
            acc = ggml_custom_4d(ctx, GGML_TYPE_F32, W, H, C, N, after, 1, allocate_only, 1, nullptr);
            i0 = 0;
        } else if (custom_ops) {
            ggml_tensor* args[1] = {parts[0]};
            acc = ggml_custom_4d(ctx, GGML_TYPE_F32, W, H, C, N, args, 1, place_first_rows, GGML_N_TASKS_MAX, nullptr);
        } else {
            acc = ggml_pad(ctx, parts[0], 0, static_cast<int>(H - parts[0]->ne[1]), 0, 0);
        }
        int64_t row = i0 ? parts[0]->ne[1] : 0;
        for (size_t i = i0; i < parts.size(); ++i) {
            acc = ggml_set_inplace(ctx, acc, parts[i], acc->nb[1], acc->nb[2], acc->nb[3], size_t(row) * acc->nb[1]);
            row += parts[i]->ne[1];
        }
        return acc;
    }
    // A balanced tree of concatenations (each level copies the data once).
    std::vector<ggml_tensor*> level = parts;
    while (level.size() > 1) {
        std::vector<ggml_tensor*> next;
        for (size_t i = 0; i + 1 < level.size(); i += 2) next.push_back(ggml_concat(ctx, level[i], level[i + 1], 1));
        if (level.size() % 2) next.push_back(level.back());
        level.swap(next);
    }
    return level[0];
}

ggml_tensor* conv2d_strips(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w_in, ggml_tensor* b, const ConvGeometry& g,
                           const ConvOptions& opt, ggml_tensor* residual) {
    // Bias and residual are added strip by strip on the CPU, so no second full-size output
    // tensor is ever needed; with `up` = 2 the CPU im2col reads x through the upsampling, which
    // is never materialized.
    const int stride = g.stride;
    int pl = g.pad_l, pr = g.pad_r, pt = g.pad_t, pb = g.pad_b, up = g.up;
    const bool f32_products = opt.products != ConvProducts::BF16;
    ggml_tensor* w = to_f32(ctx, w_in);  // [KW, KH, IC, OC]
    const int64_t KW = w->ne[0], KH = w->ne[1], IC = w->ne[2], OC = w->ne[3];
    const bool cpu = opt.custom_ops;
    auto add_channel_bias = [&](ggml_tensor* y) { return b ? ggml_add(ctx, y, channel_rows(ctx, b, y->ne[0])) : y; };
    if (up != 1 && (!cpu || opt.algo == ConvAlgo::Direct)) {
        x = ggml_upscale(ctx, x, up, GGML_SCALE_MODE_NEAREST);
        up = 1;
    }
    if (opt.algo == ConvAlgo::WinogradStrips && cpu && KW == 3 && KH == 3 && stride == 1 && pl == 1 && pr == 1 && pt == 1 &&
        pb == 1 && f32_products) {
        // Bias, residual and the 2x upsampling are folded into the Winograd strips.
        return winograd::conv3x3_f43(ctx, x, w_in, b ? to_f32(ctx, b) : nullptr, residual, up, opt.winograd_strip_bytes,
                                     opt.residual_dead, opt.input_dead);
    }
    const int64_t W = x->ne[0] * up, H = x->ne[1] * up;
    ggml_tensor* y;
    if (!cpu && KW == 1 && KH == 1 && stride == 1 && pl == 0 && pr == 0 && pt == 0 && pb == 0) {
        // 1x1: a product over channels; the result comes out in image layout. (On the CPU
        // the strip path below does the transposition in bounded strips instead of one
        // whole-image copy.)
        ggml_tensor* xs = ggml_cont(ctx, ggml_transpose(ctx, ggml_reshape_2d(ctx, x, W * H, IC)));  // [IC, WH]
        y = ggml_mul_mat(ctx, xs, ggml_reshape_2d(ctx, w, IC, OC));                                // [WH, OC]
        y = add_channel_bias(ggml_reshape_4d(ctx, y, W, H, OC, 1));
        return residual ? ggml_add(ctx, y, residual) : y;
    }
    const int64_t OW = (W + pl + pr - KW) / stride + 1;
    const int64_t OH = (H + pt + pb - KH) / stride + 1;
    const int64_t K = KW * KH * IC;
    const bool sym_w = pl == pr;
    ggml_tensor* w2 = ggml_reshape_2d(ctx, w, K, OC);

    if (opt.algo == ConvAlgo::Direct) {
        ggml_tensor* xp = x;
        if (!(sym_w && pt == pb)) {
            xp = ggml_pad_ext(ctx, x, pl, pr, pt, pb, 0, 0, 0, 0);
            pl = pr = pt = pb = 0;
        }
        y = add_channel_bias(ggml_conv_2d_direct(ctx, w, xp, stride, stride, pl, pt, 1, 1));
        return residual ? ggml_add(ctx, y, residual) : y;
    }

    int64_t rows = OH;
    const bool strips = opt.algo == ConvAlgo::Strips || opt.algo == ConvAlgo::WinogradStrips;
    if (strips) {
        const size_t per_row = size_t(OW) * size_t(K) * sizeof(float);
        // A 1x1 convolution's "im2col" is only a transposition and its strip product is half its
        // size again: a quarter of the budget keeps the VAE shortcuts' temporaries (alive next to
        // the full-size input and output) small at no cost in speed (decode buffers at 512 px
        // 584 -> 450 MiB; same values).
        const size_t budget = KW == 1 && KH == 1 ? opt.max_im2col_bytes / 4 : opt.max_im2col_bytes;
        rows = std::max<int64_t>(1, std::min<int64_t>(OH, int64_t(budget / per_row)));
        if (rows < OH) {  // even strips
            const int64_t n = (OH + rows - 1) / rows;
            rows = (OH + n - 1) / n;
        }
    }
    // bf16 compute (CPU): im2col and kernel in bf16, accumulation in f32.
    const bool bf16 = cpu && !f32_products && K > IC;  // 1x1 convolutions stay f32
    const size_t elt = bf16 ? 2 : 4;
    if (bf16) {
        ggml_tensor* wr = w_in;
        w2 = ggml_reshape_2d(ctx, wr->type == GGML_TYPE_BF16 ? wr : ggml_cast(ctx, wr, GGML_TYPE_BF16), K, OC);
    }
    if (strips && rows < OH && bf16) {  // the budget holds twice the rows in bf16
        rows = std::max<int64_t>(1, std::min<int64_t>(OH, int64_t(opt.max_im2col_bytes / (size_t(OW) * K * elt))));
        const int64_t n = (OH + rows - 1) / rows;
        rows = (OH + n - 1) / n;
    }
    ggml_tensor* bias_rows = b ? channel_rows(ctx, b, OW) : nullptr;
    std::vector<ggml_tensor*> parts;
    for (int64_t o0 = 0; o0 < OH; o0 += rows) {
        const int64_t o1 = std::min(OH, o0 + rows);
        ggml_tensor* col;
        if (cpu && pl >= 0 && pt >= 0) {
            const Im2colParams* ip = intern({int(KW), int(KH), stride, pl, pt, o0, o1 - o0, OW, up});
            ggml_tensor* args[1] = {x};
            col = ggml_custom_4d(ctx, bf16 ? GGML_TYPE_BF16 : GGML_TYPE_F32, K, OW, o1 - o0, 1, args, 1, im2col_rows,
                                 GGML_N_TASKS_MAX, const_cast<Im2colParams*>(ip));
        } else {
            // Input rows this strip reads, in unpadded coordinates: [lo, hi).
            const int64_t lo = o0 * stride - pt;
            const int64_t hi = (o1 - 1) * stride - pt + KH;
            const int64_t r0 = std::max<int64_t>(0, lo), r1 = std::min<int64_t>(H, hi);
            const int top = static_cast<int>(r0 - lo), bottom = static_cast<int>(hi - r1);
            ggml_tensor* xs = x;
            if (r0 != 0 || r1 != H)
                xs = ggml_view_4d(ctx, x, W, r1 - r0, x->ne[2], x->ne[3], x->nb[1], x->nb[2], x->nb[3], size_t(r0) * x->nb[1]);
            int p0 = pl;
            if (!sym_w || top || bottom) {
                xs = ggml_pad_ext(ctx, xs, sym_w ? 0 : pl, sym_w ? 0 : pr, top, bottom, 0, 0, 0, 0);
                if (!sym_w) p0 = 0;
            } else if (!ggml_is_contiguous(xs)) {
                // A middle strip's rows are a strided view; ggml-vulkan's im2col takes only a
                // contiguous input (else the scheduler runs it on the CPU).
                xs = ggml_cont(ctx, xs);
            }
            col = ggml_im2col(ctx, w_in, xs, stride, stride, p0, 0, 1, 1, true, GGML_TYPE_F32);  // [K, OW, o1-o0, 1]
        }
        ggml_tensor* r = fused::mul_mat(ctx, ggml_reshape_2d(ctx, col, K, OW * (o1 - o0)), w2, cpu);  // [OW*rows, OC]
        r = ggml_reshape_4d(ctx, r, OW, o1 - o0, OC, 1);
        if (bias_rows) r = ggml_add(ctx, r, bias_rows);
        if (residual) {  // the residual as the first operand: the graph computes it before this conv's input
            r = ggml_add(ctx, ggml_view_4d(ctx, residual, OW, o1 - o0, OC, 1, residual->nb[1], residual->nb[2],
                                           residual->nb[3], size_t(o0) * residual->nb[1]), r);
        }
        parts.push_back(r);
    }
    // A 1x1 convolution's output allocated as soon as its input exists, before the strips'
    // temporaries: ggml-alloc then puts the VAE's ResNet shortcuts low in the buffer, and the
    // activations the next stage stacks on top of them with them (1024x1024 decode: compute
    // buffers 2077 -> 1855 MiB for the same live set; bench/README.md, memory).
    return stack_rows(ctx, parts, cpu, KW == 1 && KH == 1 ? x : nullptr);
}

}  // namespace sdcpp::nn
