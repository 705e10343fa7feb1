#include "vae.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <set>
#include <tuple>

#include "../kernels/cpu/gemm_op.h"
#include "../runtime/error.h"
#include "winograd_strips.h"

namespace sdcpp::model {

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
    std::string out = "(";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + ")";
}

// ggml's ne of `t` equals the numpy shape `s` reversed (trailing unit dims are implicit in ggml).
bool same_shape(const ggml_tensor* t, const std::vector<int64_t>& s) {
    if (s.size() > 4) return false;
    for (int i = 0; i < 4; ++i) {
        const int64_t want = i < int(s.size()) ? s[s.size() - 1 - i] : 1;
        if (t->ne[i] != want) return false;
    }
    return true;
}

// ---------------------------------------------------------------------------------------------
// The list of weights a part needs, with their numpy shapes (built from the config).

struct Expected {
    std::string name;
    std::vector<int64_t> shape;
    bool linear_or_1x1 = false;  // attention projections: [C, C] or [C, C, 1, 1]
};

void add_conv(std::vector<Expected>& e, const std::string& n, int64_t out, int64_t in, int64_t k) {
    e.push_back({n + ".weight", {out, in, k, k}});
    e.push_back({n + ".bias", {out}});
}
void add_norm(std::vector<Expected>& e, const std::string& n, int64_t c) {
    e.push_back({n + ".weight", {c}});
    e.push_back({n + ".bias", {c}});
}
void add_resnet(std::vector<Expected>& e, const std::string& n, int64_t in, int64_t out) {
    add_norm(e, n + ".norm1", in);
    add_conv(e, n + ".conv1", out, in, 3);
    add_norm(e, n + ".norm2", out);
    add_conv(e, n + ".conv2", out, out, 3);
    if (in != out) add_conv(e, n + ".conv_shortcut", out, in, 1);
}
void add_mid(std::vector<Expected>& e, const std::string& n, int64_t c, bool attention) {
    add_resnet(e, n + ".resnets.0", c, c);
    if (attention) {
        const std::string a = n + ".attentions.0";
        add_norm(e, a + ".group_norm", c);
        for (const char* p : {".to_q", ".to_k", ".to_v", ".to_out.0"}) {
            e.push_back({a + p + ".weight", {c, c}, true});
            e.push_back({a + p + ".bias", {c}});
        }
    }
    add_resnet(e, n + ".resnets.1", c, c);
}

std::vector<Expected> encoder_weights(const VAEConfig& c) {
    std::vector<Expected> e;
    const auto& ch = c.block_out_channels;
    const size_t L = ch.size();
    add_conv(e, "encoder.conv_in", ch[0], c.in_channels, 3);
    int64_t prev = ch[0];
    for (size_t i = 0; i < L; ++i) {
        const std::string b = "encoder.down_blocks." + std::to_string(i);
        for (int j = 0; j < c.layers_per_block; ++j) {
            add_resnet(e, b + ".resnets." + std::to_string(j), j == 0 ? prev : ch[i], ch[i]);
        }
        if (i + 1 < L) add_conv(e, b + ".downsamplers.0.conv", ch[i], ch[i], 3);
        prev = ch[i];
    }
    add_mid(e, "encoder.mid_block", ch[L - 1], c.mid_attention);
    add_norm(e, "encoder.conv_norm_out", ch[L - 1]);
    add_conv(e, "encoder.conv_out", 2 * c.latent_channels, ch[L - 1], 3);
    if (c.use_quant_conv) add_conv(e, "quant_conv", 2 * c.latent_channels, 2 * c.latent_channels, 1);
    return e;
}

std::vector<Expected> decoder_weights(const VAEConfig& c) {
    std::vector<Expected> e;
    const auto& ch = c.block_out_channels;
    const size_t L = ch.size();
    if (c.use_post_quant_conv) add_conv(e, "post_quant_conv", c.latent_channels, c.latent_channels, 1);
    add_conv(e, "decoder.conv_in", ch[L - 1], c.latent_channels, 3);
    add_mid(e, "decoder.mid_block", ch[L - 1], c.mid_attention);
    int64_t prev = ch[L - 1];
    for (size_t i = 0; i < L; ++i) {
        const int64_t out = ch[L - 1 - i];
        const std::string b = "decoder.up_blocks." + std::to_string(i);
        for (int j = 0; j <= c.layers_per_block; ++j) {
            add_resnet(e, b + ".resnets." + std::to_string(j), j == 0 ? prev : out, out);
        }
        if (i + 1 < L) add_conv(e, b + ".upsamplers.0.conv", out, out, 3);
        prev = out;
    }
    add_norm(e, "decoder.conv_norm_out", ch[0]);
    add_conv(e, "decoder.conv_out", c.out_channels, ch[0], 3);
    return e;
}

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

// ---------------------------------------------------------------------------------------------
// Graph building.

struct Builder {
    ggml_context* ctx;
    const WeightStore& store;
    const std::string& prefix;
    const VAEConfig& cfg;
    const VAEOptions& opt;

    ggml_tensor* weight(const std::string& name) const { return store.get(prefix + "." + name); }

    // The CPU-only custom ops (fast im2col, strip placement), unless the portable graph (stock
    // ggml ops only, as used on GPUs) is asked for.
    bool custom_ops() const { return store.device()->is_cpu() && !opt.portable; }

    // Weights enter every product as f32: activations are never rounded to f16/bf16.
    ggml_tensor* f32(ggml_tensor* t) const { return t->type == GGML_TYPE_F32 ? t : ggml_cast(ctx, t, GGML_TYPE_F32); }

    // A per-channel vector as [W, 1, C, 1]: broadcasting it over rows keeps ggml's binary ops
    // vectorized (a [1, 1, C, 1] operand makes them add one scalar at a time).
    ggml_tensor* channel_rows(ggml_tensor* v, int64_t W) const {
        return ggml_repeat_4d(ctx, ggml_reshape_4d(ctx, f32(v), 1, 1, v->ne[0], 1), W, 1, v->ne[0], 1);
    }

    ggml_tensor* add_channel_bias(ggml_tensor* y, const std::string& name) const {
        return ggml_add(ctx, y, channel_rows(weight(name + ".bias"), y->ne[0]));
    }

    ggml_tensor* group_norm(ggml_tensor* x, const std::string& name) const {
        const int64_t W = x->ne[0];
        ggml_tensor* y = ggml_group_norm(ctx, x, cfg.norm_groups, cfg.norm_eps);
        y = ggml_mul(ctx, y, channel_rows(weight(name + ".weight"), W));
        return ggml_add(ctx, y, channel_rows(weight(name + ".bias"), W));
    }

    // Place `parts` (each [W, rows_i, C, 1], rows summing to H) one under the other.
    ggml_tensor* stack_rows(const std::vector<ggml_tensor*>& parts) const {
        if (parts.size() == 1) return parts[0];
        int64_t H = 0;
        for (auto* p : parts) H += p->ne[1];
        const int64_t W = parts[0]->ne[0], C = parts[0]->ne[2], N = parts[0]->ne[3];
        const size_t total = size_t(W) * H * C * N * sizeof(float);
        if (total < (size_t(1) << 31)) {
            // The first part placed into a full-size tensor, then every other part written in
            // place (ggml_set keeps its offsets in int32, hence the size limit).
            ggml_tensor* acc;
            if (custom_ops()) {
                ggml_tensor* args[1] = {parts[0]};
                acc = ggml_custom_4d(ctx, GGML_TYPE_F32, W, H, C, N, args, 1, place_first_rows, GGML_N_TASKS_MAX, nullptr);
            } else {
                acc = ggml_pad(ctx, parts[0], 0, static_cast<int>(H - parts[0]->ne[1]), 0, 0);
            }
            int64_t row = parts[0]->ne[1];
            for (size_t i = 1; i < parts.size(); ++i) {
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

    // 2-D convolution of x [W, H, C, 1] with padding (left, right, top, bottom), f32 throughout,
    // plus its bias and, when given, a residual of the output's shape. Bias and residual are
    // added strip by strip on the CPU, so no second full-size output tensor is ever needed.
    // `up` = 2 convolves the nearest-neighbour 2x upsampling of x (diffusers' Upsample2D); on
    // the CPU the im2col reads x through the upsampling, which is never materialized.
    ggml_tensor* conv(ggml_tensor* x, const std::string& name, int stride, int pl, int pr, int pt, int pb,
                      ggml_tensor* residual = nullptr, int up = 1) const {
        ggml_tensor* w = f32(weight(name + ".weight"));  // [KW, KH, IC, OC]
        const int64_t KW = w->ne[0], KH = w->ne[1], IC = w->ne[2], OC = w->ne[3];
        const bool cpu = custom_ops();
        if (up != 1 && (!cpu || opt.conv == ConvMode::Direct)) {
            x = ggml_upscale(ctx, x, up, GGML_SCALE_MODE_NEAREST);
            up = 1;
        }
        if (opt.conv == ConvMode::Winograd && cpu && KW == 3 && KH == 3 && stride == 1 && pl == 1 && pr == 1 && pt == 1 &&
            pb == 1 && opt.compute == ComputeType::F32) {
            // Bias, residual and the 2x upsampling are folded into the Winograd strips.
            return winograd::conv3x3_f43(ctx, x, weight(name + ".weight"), f32(weight(name + ".bias")), residual, up,
                                         opt.winograd_strip_bytes);
        }
        const int64_t W = x->ne[0] * up, H = x->ne[1] * up;
        ggml_tensor* y;
        if (!cpu && KW == 1 && KH == 1 && stride == 1 && pl == 0 && pr == 0 && pt == 0 && pb == 0) {
            // 1x1: a product over channels; the result comes out in image layout. (On the CPU
            // the strip path below does the transposition in bounded strips instead of one
            // whole-image copy.)
            ggml_tensor* xs = ggml_cont(ctx, ggml_transpose(ctx, ggml_reshape_2d(ctx, x, W * H, IC)));  // [IC, WH]
            y = ggml_mul_mat(ctx, xs, ggml_reshape_2d(ctx, w, IC, OC));                                // [WH, OC]
            y = add_channel_bias(ggml_reshape_4d(ctx, y, W, H, OC, 1), name);
            return residual ? ggml_add(ctx, y, residual) : y;
        }
        const int64_t OW = (W + pl + pr - KW) / stride + 1;
        const int64_t OH = (H + pt + pb - KH) / stride + 1;
        const int64_t K = KW * KH * IC;
        const bool sym_w = pl == pr;
        ggml_tensor* w2 = ggml_reshape_2d(ctx, w, K, OC);

        if (opt.conv == ConvMode::Direct) {
            ggml_tensor* xp = x;
            if (!(sym_w && pt == pb)) {
                xp = ggml_pad_ext(ctx, x, pl, pr, pt, pb, 0, 0, 0, 0);
                pl = pr = pt = pb = 0;
            }
            y = add_channel_bias(ggml_conv_2d_direct(ctx, w, xp, stride, stride, pl, pt, 1, 1), name);
            return residual ? ggml_add(ctx, y, residual) : y;
        }

        int64_t rows = OH;
        if (opt.conv == ConvMode::Strips || opt.conv == ConvMode::Winograd) {
            const size_t per_row = size_t(OW) * size_t(K) * sizeof(float);
            rows = std::max<int64_t>(1, std::min<int64_t>(OH, int64_t(opt.max_im2col_bytes / per_row)));
            if (rows < OH) {  // even strips
                const int64_t n = (OH + rows - 1) / rows;
                rows = (OH + n - 1) / n;
            }
        }
        // bf16 compute (CPU): im2col and kernel in bf16, accumulation in f32.
        const bool bf16 = cpu && opt.compute == ComputeType::BF16 && K > IC;  // 1x1 convolutions stay f32
        const size_t elt = bf16 ? 2 : 4;
        if (bf16) {
            ggml_tensor* wr = weight(name + ".weight");
            w2 = ggml_reshape_2d(ctx, wr->type == GGML_TYPE_BF16 ? wr : ggml_cast(ctx, wr, GGML_TYPE_BF16), K, OC);
        }
        if ((opt.conv == ConvMode::Strips || opt.conv == ConvMode::Winograd) && rows < OH && bf16) {  // the budget holds twice the rows in bf16
            rows = std::max<int64_t>(1, std::min<int64_t>(OH, int64_t(opt.max_im2col_bytes / (size_t(OW) * K * elt))));
            const int64_t n = (OH + rows - 1) / rows;
            rows = (OH + n - 1) / n;
        }
        ggml_tensor* bias_rows = channel_rows(weight(name + ".bias"), OW);
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
                }
                col = ggml_im2col(ctx, weight(name + ".weight"), xs, stride, stride, p0, 0, 1, 1, true, GGML_TYPE_F32);  // [K, OW, o1-o0, 1]
            }
            ggml_tensor* r = fused::mul_mat(ctx, ggml_reshape_2d(ctx, col, K, OW * (o1 - o0)), w2, cpu);  // [OW*rows, OC]
            r = ggml_add(ctx, ggml_reshape_4d(ctx, r, OW, o1 - o0, OC, 1), bias_rows);
            if (residual) {  // the residual as the first operand: the graph computes it before this conv's input
                r = ggml_add(ctx, ggml_view_4d(ctx, residual, OW, o1 - o0, OC, 1, residual->nb[1], residual->nb[2],
                                               residual->nb[3], size_t(o0) * residual->nb[1]), r);
            }
            parts.push_back(r);
        }
        return stack_rows(parts);
    }

    ggml_tensor* conv3x3(ggml_tensor* x, const std::string& name) const { return conv(x, name, 1, 1, 1, 1, 1); }

    ggml_tensor* resnet(ggml_tensor* x, const std::string& name) const {
        // The shortcut first: x can then be freed right after norm1 (its last reader).
        ggml_tensor* shortcut = x;
        if (store.has(prefix + "." + name + ".conv_shortcut.weight")) shortcut = conv(x, name + ".conv_shortcut", 1, 0, 0, 0, 0);
        ggml_tensor* h = ggml_silu(ctx, group_norm(x, name + ".norm1"));
        h = conv3x3(h, name + ".conv1");
        h = ggml_silu(ctx, group_norm(h, name + ".norm2"));
        return conv(h, name + ".conv2", 1, 1, 1, 1, 1, shortcut);
    }

    // y = x @ W^T + b over ne0 of x [C, L]; W is [C, C] or [C, C, 1, 1].
    ggml_tensor* linear(ggml_tensor* x, const std::string& name) const {
        ggml_tensor* w = f32(weight(name + ".weight"));
        if (ggml_n_dims(w) > 2) w = ggml_reshape_2d(ctx, w, w->ne[0] * w->ne[1] * w->ne[2], w->ne[3]);
        ggml_tensor* y = fused::mul_mat(ctx, w, x, custom_ops());
        return ggml_add(ctx, y, f32(weight(name + ".bias")));
    }

    // Single-head self-attention over the H*W positions, with residual.
    ggml_tensor* attention(ggml_tensor* x, const std::string& name) const {
        const int64_t W = x->ne[0], H = x->ne[1], C = x->ne[2], L = W * H;
        ggml_tensor* h = group_norm(x, name + ".group_norm");
        h = ggml_cont(ctx, ggml_transpose(ctx, ggml_reshape_2d(ctx, h, L, C)));  // [C, L]
        ggml_tensor* q = linear(h, name + ".to_q");
        ggml_tensor* k = linear(h, name + ".to_k");
        ggml_tensor* v = linear(h, name + ".to_v");
        ggml_tensor* vt = ggml_cont(ctx, ggml_transpose(ctx, v));  // [L, C]
        const float scale = 1.0f / std::sqrt(static_cast<float>(C));
        // Query chunks keep the [L, chunk] score matrix within the budget.
        int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(L, int64_t(opt.max_attention_bytes / (size_t(L) * sizeof(float)))));
        if (chunk < L) {
            const int64_t n = (L + chunk - 1) / chunk;
            chunk = (L + n - 1) / n;
        }
        std::vector<ggml_tensor*> parts;
        for (int64_t i0 = 0; i0 < L; i0 += chunk) {
            const int64_t n = std::min(L, i0 + chunk) - i0;
            ggml_tensor* qc = chunk == L ? q : ggml_view_2d(ctx, q, C, n, q->nb[1], size_t(i0) * q->nb[1]);
            ggml_tensor* s = ggml_mul_mat(ctx, k, qc);  // [L, n]
            s = ggml_soft_max_ext(ctx, s, nullptr, scale, 0.0f);
            ggml_tensor* o = ggml_mul_mat(ctx, vt, s);  // [C, n]
            parts.push_back(ggml_reshape_4d(ctx, o, C, n, 1, 1));
        }
        ggml_tensor* o = ggml_reshape_2d(ctx, stack_rows(parts), C, L);
        o = linear(o, name + ".to_out.0");                                        // [C, L]
        o = ggml_reshape_4d(ctx, ggml_cont(ctx, ggml_transpose(ctx, o)), W, H, C, 1);  // [W, H, C, 1]
        return ggml_add(ctx, o, x);
    }

    ggml_tensor* mid_block(ggml_tensor* x, const std::string& name) const {
        x = resnet(x, name + ".resnets.0");
        if (cfg.mid_attention) x = attention(x, name + ".attentions.0");
        return resnet(x, name + ".resnets.1");
    }

    ggml_tensor* decoder(ggml_tensor* z) const {
        const size_t L = cfg.block_out_channels.size();
        if (cfg.use_post_quant_conv) z = conv(z, "post_quant_conv", 1, 0, 0, 0, 0);
        ggml_tensor* h = conv3x3(z, "decoder.conv_in");
        h = mid_block(h, "decoder.mid_block");
        for (size_t i = 0; i < L; ++i) {
            const std::string b = "decoder.up_blocks." + std::to_string(i);
            for (int j = 0; j <= cfg.layers_per_block; ++j) h = resnet(h, b + ".resnets." + std::to_string(j));
            if (i + 1 < L) {
                h = conv(h, b + ".upsamplers.0.conv", 1, 1, 1, 1, 1, nullptr, 2);  // nearest 2x, then 3x3
            }
        }
        h = ggml_silu(ctx, group_norm(h, "decoder.conv_norm_out"));
        return conv3x3(h, "decoder.conv_out");
    }

    ggml_tensor* encoder(ggml_tensor* x) const {
        const size_t L = cfg.block_out_channels.size();
        ggml_tensor* h = conv3x3(x, "encoder.conv_in");
        for (size_t i = 0; i < L; ++i) {
            const std::string b = "encoder.down_blocks." + std::to_string(i);
            for (int j = 0; j < cfg.layers_per_block; ++j) h = resnet(h, b + ".resnets." + std::to_string(j));
            if (i + 1 < L) h = conv(h, b + ".downsamplers.0.conv", 2, 0, 1, 0, 1);  // pad right/bottom by 1
        }
        h = mid_block(h, "encoder.mid_block");
        h = ggml_silu(ctx, group_norm(h, "encoder.conv_norm_out"));
        h = conv3x3(h, "encoder.conv_out");
        if (cfg.use_quant_conv) h = conv(h, "quant_conv", 1, 0, 0, 0, 0);
        return h;
    }
};

}  // namespace

void VAEConfig::validate() const {
    SD_CHECK(!block_out_channels.empty() && block_out_channels.size() <= 8,
             "VAE config: block_out_channels must list 1 to 8 widths");
    SD_CHECK(layers_per_block >= 1 && layers_per_block <= 16, "VAE config: layers_per_block must be in 1..16");
    SD_CHECK(norm_groups >= 1, "VAE config: norm_groups must be positive");
    SD_CHECK(std::isfinite(norm_eps) && norm_eps > 0, "VAE config: norm_eps must be positive");
    SD_CHECK(latent_channels >= 1 && in_channels >= 1 && out_channels >= 1, "VAE config: channel counts must be positive");
    for (int64_t c : block_out_channels) {
        SD_CHECK(c >= 1, "VAE config: block_out_channels must be positive");
        SD_CHECK(c % norm_groups == 0, "VAE config: every width in block_out_channels must be divisible by norm_groups (" +
                                           std::to_string(c) + " % " + std::to_string(norm_groups) + ")");
    }
}

VAE::VAE(std::shared_ptr<WeightStore> store, VAEConfig config, std::string prefix)
    : store_(std::move(store)), cfg_(std::move(config)), prefix_(std::move(prefix)), runner_(store_ ? store_->device() : nullptr, 32768) {
    SD_CHECK(store_ != nullptr, "VAE needs a weight store");
    SD_CHECK(store_->allocated(), "the weight store is not allocated yet");
    cfg_.validate();
    has_encoder_ = store_->has(prefix_ + ".encoder.conv_in.weight");
    has_decoder_ = store_->has(prefix_ + ".decoder.conv_in.weight");
    SD_CHECK(has_encoder_ || has_decoder_,
             "no VAE weights found: neither '" + prefix_ + ".encoder.conv_in.weight' nor '" + prefix_ + ".decoder.conv_in.weight'");
    if (has_encoder_) validate_part("encoder");
    if (has_decoder_) validate_part("decoder");
}

void VAE::validate_part(const std::string& part) {
    const auto expected = part == "encoder" ? encoder_weights(cfg_) : decoder_weights(cfg_);
    for (const Expected& e : expected) {
        const std::string full = prefix_ + "." + e.name;
        ggml_tensor* t = store_->find(full);
        SD_CHECK(t != nullptr, "VAE " + part + ": missing weight '" + full + "'");
        SD_CHECK(t->type == GGML_TYPE_F32 || t->type == GGML_TYPE_F16 || t->type == GGML_TYPE_BF16,
                 "VAE weight '" + full + "' is stored as " + ggml_type_name(t->type) + "; the VAE takes f32, f16 or bf16");
        const auto got = store_->shape(full);
        bool ok = same_shape(t, e.shape);
        if (!ok && e.linear_or_1x1) ok = same_shape(t, {e.shape[0], e.shape[1], 1, 1});
        SD_CHECK(ok, "VAE weight '" + full + "' has shape " + shape_str(got) + ", expected " + shape_str(e.shape));
    }
}

void VAE::set_options(const VAEOptions& o) {
    SD_CHECK(o.max_im2col_bytes >= (size_t(1) << 20), "max_im2col_bytes must be at least 1 MiB");
    SD_CHECK(o.max_attention_bytes >= (size_t(1) << 20), "max_attention_bytes must be at least 1 MiB");
    std::lock_guard<std::mutex> lock(mu_);
    opt_ = o;
    runner_.clear();
}

void VAE::check_decode_input(int64_t n, int64_t c, int64_t h, int64_t w) const {
    SD_CHECK(has_decoder_, "this VAE has no decoder weights ('" + prefix_ + ".decoder.*')");
    SD_CHECK(n >= 1, "latent batch must be at least 1");
    SD_CHECK(c == cfg_.latent_channels, "latent must have " + std::to_string(cfg_.latent_channels) + " channels, got " +
                                             std::to_string(c));
    SD_CHECK(h >= 1 && w >= 1, "latent height and width must be positive");
    const int64_t f = cfg_.factor();
    SD_CHECK(h * f <= 32768 && w * f <= 32768, "latent is too large (the image side would exceed 32768)");
}

void VAE::check_encode_input(int64_t n, int64_t c, int64_t h, int64_t w) const {
    SD_CHECK(has_encoder_, "this VAE has no encoder weights ('" + prefix_ + ".encoder.*')");
    SD_CHECK(n >= 1, "image batch must be at least 1");
    SD_CHECK(c == cfg_.in_channels, "image must have " + std::to_string(cfg_.in_channels) + " channels, got " + std::to_string(c));
    const int64_t f = cfg_.factor();
    SD_CHECK(h >= f && w >= f && h % f == 0 && w % f == 0,
             "image height and width must be positive multiples of " + std::to_string(f) + ", got " + std::to_string(h) + "x" +
                 std::to_string(w));
    SD_CHECK(h <= 32768 && w <= 32768, "image is too large");
}

BuiltGraph& VAE::decoder_graph(int64_t h, int64_t w) {
    const std::string key = "dec:" + std::to_string(h) + "x" + std::to_string(w);
    return runner_.get(key, [&](ggml_context* ctx, BuiltGraph& g) {
        ggml_tensor* z = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, w, h, cfg_.latent_channels, 1);
        g.inputs["z"] = z;
        Builder b{ctx, *store_, prefix_, cfg_, opt_};
        g.outputs.push_back(b.decoder(z));
    });
}

BuiltGraph& VAE::encoder_graph(int64_t H, int64_t W) {
    const std::string key = "enc:" + std::to_string(H) + "x" + std::to_string(W);
    return runner_.get(key, [&](ggml_context* ctx, BuiltGraph& g) {
        ggml_tensor* x = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, W, H, cfg_.in_channels, 1);
        g.inputs["x"] = x;
        Builder b{ctx, *store_, prefix_, cfg_, opt_};
        g.outputs.push_back(b.encoder(x));
    });
}

void VAE::decode(const float* z, int64_t n, int64_t h, int64_t w, float* out) {
    check_decode_input(n, cfg_.latent_channels, h, w);
    std::lock_guard<std::mutex> lock(mu_);
    BuiltGraph& g = decoder_graph(h, w);
    const int64_t f = cfg_.factor();
    const size_t in_elems = size_t(cfg_.latent_channels) * h * w;
    const size_t out_elems = size_t(cfg_.out_channels) * h * f * w * f;
    SD_CHECK(g.outputs[0]->ne[0] == w * f && g.outputs[0]->ne[1] == h * f, "internal: decoder output shape");
    // One image at a time: the same graph, memory bounded by a single image.
    for (int64_t i = 0; i < n; ++i) {
        runner_.run(g, {{"z", z + i * in_elems}});
        runner_.read_output(g, 0, out + i * out_elems);
    }
}

void VAE::encode(const float* x, int64_t n, int64_t H, int64_t W, float* out) {
    check_encode_input(n, cfg_.in_channels, H, W);
    std::lock_guard<std::mutex> lock(mu_);
    BuiltGraph& g = encoder_graph(H, W);
    const int64_t f = cfg_.factor();
    const size_t in_elems = size_t(cfg_.in_channels) * H * W;
    const size_t out_elems = size_t(2 * cfg_.latent_channels) * (H / f) * (W / f);
    SD_CHECK(g.outputs[0]->ne[0] == W / f && g.outputs[0]->ne[1] == H / f, "internal: encoder output shape");
    for (int64_t i = 0; i < n; ++i) {
        runner_.run(g, {{"x", x + i * in_elems}});
        runner_.read_output(g, 0, out + i * out_elems);
    }
}

void VAE::clear() {
    std::lock_guard<std::mutex> lock(mu_);
    runner_.clear();
}

size_t VAE::compute_buffer_size() const { return runner_.compute_buffer_size(); }

size_t VAE::measure(bool decoder, int64_t h, int64_t w) {
    if (decoder) check_decode_input(1, cfg_.latent_channels, h, w);
    else check_encode_input(1, cfg_.in_channels, h, w);
    std::lock_guard<std::mutex> lock(mu_);
    return runner_.measure(decoder ? decoder_graph(h, w) : encoder_graph(h, w));
}

int VAE::graph_nodes(bool decoder, int64_t h, int64_t w) {
    if (decoder) check_decode_input(1, cfg_.latent_channels, h, w);
    else check_encode_input(1, cfg_.in_channels, h, w);
    std::lock_guard<std::mutex> lock(mu_);
    BuiltGraph& g = decoder ? decoder_graph(h, w) : encoder_graph(h, w);
    return ggml_graph_n_nodes(g.graph);
}

}  // namespace sdcpp::model
