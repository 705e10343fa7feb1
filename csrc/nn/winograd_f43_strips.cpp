#include "winograd_f43_strips.h"

#include <algorithm>
#include <mutex>
#include <set>
#include <tuple>
#include <vector>

#include "../kernels/cpu/gemm_op.h"
#include "../kernels/cpu/winograd_f43.h"
#include "winograd_patch.h"

namespace sdcpp::winograd {

namespace {

namespace kc = sdcpp::kernels::cpu;

constexpr int64_t kChunk = 16;  // tiles per input-transform work unit (its patch: 6 x 66 x C floats)
constexpr int kOntoResidual = 1, kOntoInput = 2;  // StripParams::onto

struct StripParams {
    int64_t ty0, nty;  // the strip's first tile row and its number of tile rows
    int up;
    bool first;  // the first strip allocates the output; the others write into it in place
    int onto;    // 0: an output of its own; kOntoResidual / kOntoInput: written over that tensor
    bool bias;   // whether b is among the output op's sources
    bool operator<(const StripParams& o) const {
        return std::tie(ty0, nty, up, first, onto, bias) < std::tie(o.ty0, o.nty, o.up, o.first, o.onto, o.bias);
    }
};

// Custom ops keep a pointer to their parameters: intern them for the life of the process
// (one entry per distinct strip geometry).
const StripParams* intern(const StripParams& p) {
    static std::mutex mu;
    static std::set<StripParams> table;
    std::lock_guard<std::mutex> lock(mu);
    return &*table.insert(p).first;
}

// V [C, nty * TW, 36] for the strip's tiles from x [W, H, C, N] (read through the upsampling).
// Tile rows are numbered across the batch (image n's rows are n * TH .. n * TH + TH - 1), so a
// strip may span images.
// Work units are (tile row, chunk of kChunk tiles): each copies the six input rows its tiles
// read into a channels-last patch (zeros for the padding), then transforms it.
void input_op(ggml_tensor* dst, int ith, int nth, void* userdata) {
    const StripParams& p = *static_cast<const StripParams*>(userdata);
    const ggml_tensor* x = dst->src[0];
    const int up = p.up;
    const int64_t W = x->ne[0] * up, H = x->ne[1] * up, C = x->ne[2];
    const int64_t TW = (W + 3) / 4, TH = (H + 3) / 4;
    const int64_t chunks = (TW + kChunk - 1) / kChunk;
    const kc::WinogradF43& k = kc::winograd_f43();
    float* v = static_cast<float*>(dst->data);
    const int64_t p_stride = dst->nb[2] / sizeof(float);
    for (int64_t unit = ith; unit < p.nty * chunks; unit += nth) {
        const int64_t r = unit / chunks, tx0 = (unit % chunks) * kChunk;
        const int64_t nt = std::min(kChunk, TW - tx0);
        const int64_t cols = 4 * nt + 2;
        float* patch = scratch(size_t(6 * cols * C)).data();
        const int64_t g = p.ty0 + r;  // global tile row: image g / TH, tile row g % TH
        fill_patch(patch, 6, cols, x, g / TH, 4 * (g % TH) - 1, 4 * tx0 - 1, up);
        k.input_tiles(patch, C, nt, v + (r * TW + tx0) * C, p_stride);
    }
}

// U [C, OC, 36] from w [3, 3, C, OC]; threads take output channels.
void kernel_op(ggml_tensor* dst, int ith, int nth, void*) {
    const ggml_tensor* w = dst->src[0];
    const int64_t C = w->ne[2], OC = w->ne[3];
    const kc::WinogradF43& k = kc::winograd_f43();
    float* g = scratch(size_t(9 * C)).data();
    const int64_t p_stride = dst->nb[2] / sizeof(float);
    for (int64_t oc = ith; oc < OC; oc += nth) {
        kernel_to_f32(g, w, oc);
        k.kernel(g, C, static_cast<float*>(dst->data) + oc * (dst->nb[1] / sizeof(float)), p_stride);
    }
}

// The strip's rows of y [W, H, OC, N] = A^T M A + b (+ residual), M [nty * TW, OC, 36].
// Sources: (y, when in place), M, b (or null), residual (or null). Written over the residual:
// y (= the residual), M, b. Written over the input (one image): y (a view of it), M, b, the
// next strip's V (read before this strip overwrites rows it needs; not read here).
void output_op(ggml_tensor* dst, int ith, int nth, void* userdata) {
    const StripParams& p = *static_cast<const StripParams*>(userdata);
    const int s0 = p.first && !p.onto ? 0 : 1;
    const ggml_tensor* m = dst->src[s0];
    const ggml_tensor* b = p.bias ? dst->src[s0 + 1] : nullptr;
    const ggml_tensor* res = p.onto == kOntoResidual ? dst
                             : p.onto == kOntoInput  ? nullptr
                                                     : dst->src[s0 + (p.bias ? 2 : 1)];
    const int64_t W = dst->ne[0], H = dst->ne[1], OC = dst->ne[2];
    const int64_t TW = (W + 3) / 4, TH = (H + 3) / 4;
    const kc::WinogradF43& k = kc::winograd_f43();
    const int64_t m_p = m->nb[2] / sizeof(float);
    for (int64_t unit = ith; unit < OC * p.nty; unit += nth) {
        const int64_t oc = unit / p.nty, r = unit % p.nty;
        const int64_t g = p.ty0 + r, n = g / TH;
        const int64_t y0 = 4 * (g % TH);
        const int rows = static_cast<int>(std::min<int64_t>(4, H - y0));
        const float* mp = reinterpret_cast<const float*>(static_cast<const char*>(m->data) + oc * m->nb[1]) + r * TW;
        const float bias = b ? *reinterpret_cast<const float*>(static_cast<const char*>(b->data) + oc * b->nb[0]) : 0.0f;
        const float* rp = res ? reinterpret_cast<const float*>(static_cast<const char*>(res->data) + oc * res->nb[2] +
                                                               n * res->nb[3] + y0 * res->nb[1])
                              : nullptr;
        float* out = reinterpret_cast<float*>(static_cast<char*>(dst->data) + oc * dst->nb[2] + n * dst->nb[3] + y0 * dst->nb[1]);
        k.output_tiles(mp, m_p, TW, rows, W, bias, rp, res ? res->nb[1] / sizeof(float) : 0, out, dst->nb[1] / sizeof(float));
    }
}

}  // namespace

ggml_tensor* conv3x3_f43(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, ggml_tensor* residual, int up,
                         size_t strip_bytes, bool onto_residual, bool onto_input) {
    if (!ggml_is_contiguous(x)) x = ggml_cont(ctx, x);
    if (!ggml_is_contiguous(w)) w = ggml_cont(ctx, w);
    if (residual && (residual->nb[0] != sizeof(float) || residual->type != GGML_TYPE_F32)) residual = ggml_cont(ctx, residual);
    // Over the residual only where it is the output's exact shape and layout.
    int onto = 0;
    if (onto_residual && residual && ggml_is_contiguous(residual) && residual->ne[0] == x->ne[0] * up &&
        residual->ne[1] == x->ne[1] * up && residual->ne[2] == w->ne[3] && residual->ne[3] == 1)
        onto = kOntoResidual;
    // Over the input: the output's channels are the input's first planes (same width and height).
    else if (onto_input && !residual && up == 1 && w->ne[3] <= x->ne[2] && x->ne[3] == 1 && x->type == GGML_TYPE_F32)
        onto = kOntoInput;
    const int64_t W = x->ne[0] * up, H = x->ne[1] * up, C = x->ne[2], N = x->ne[3], OC = w->ne[3];
    const int64_t TW = (W + 3) / 4, TH = (H + 3) / 4 * N;  // tile rows of the whole batch
    // Tile rows per strip: the strip's V and M each within the budget, strips of even size.
    const size_t per_row = size_t(TW) * 36 * sizeof(float) * size_t(std::max(C, OC));
    int64_t nty = std::max<int64_t>(1, std::min<int64_t>(TH, int64_t(strip_bytes / per_row)));
    const int64_t n = (TH + nty - 1) / nty;
    nty = (TH + n - 1) / n;

    ggml_tensor* wa[1] = {w};
    ggml_tensor* u = ggml_custom_4d(ctx, GGML_TYPE_F32, C, OC, 36, 1, wa, 1, kernel_op, GGML_N_TASKS_MAX, nullptr);
    // Every strip's transformed input first: over the input, strip k's output op takes strip
    // k+1's V as a source, so that V has read its top row (strip k's last) before it is overwritten.
    std::vector<ggml_tensor*> vs;
    std::vector<const StripParams*> ps;
    for (int64_t ty0 = 0; ty0 < TH; ty0 += nty) {
        const int64_t rows = std::min(nty, TH - ty0);
        ps.push_back(intern({ty0, rows, up, ty0 == 0, onto, b != nullptr}));
        ggml_tensor* xa[1] = {x};
        vs.push_back(ggml_custom_4d(ctx, GGML_TYPE_F32, C, rows * TW, 36, 1, xa, 1, input_op, GGML_N_TASKS_MAX,
                                    const_cast<StripParams*>(ps.back())));
    }
    ggml_tensor* y = nullptr;
    for (size_t k = 0; k < vs.size(); ++k) {
        const StripParams* p = ps[k];
        ggml_tensor* m = fused::mul_mat(ctx, vs[k], u, /*cpu=*/true);  // [rows * TW, OC, 36]
        ggml_tensor* args[3] = {m};
        int nargs = 1;
        if (b) args[nargs++] = b;
        if (residual && onto != kOntoResidual) args[nargs++] = residual;
        if (onto == kOntoInput && k + 1 < vs.size()) args[nargs++] = vs[k + 1];
        if (!y && onto == kOntoResidual) {
            y = ggml_custom_inplace(ctx, residual, args, nargs, output_op, GGML_N_TASKS_MAX, const_cast<StripParams*>(p));
        } else if (!y && onto == kOntoInput) {
            ggml_tensor* first = ggml_view_4d(ctx, x, W, H, OC, 1, x->nb[1], x->nb[2], x->nb[3], 0);
            y = ggml_custom_inplace(ctx, first, args, nargs, output_op, GGML_N_TASKS_MAX, const_cast<StripParams*>(p));
        } else if (!y) {
            y = ggml_custom_4d(ctx, GGML_TYPE_F32, W, H, OC, N, args, nargs, output_op, GGML_N_TASKS_MAX, const_cast<StripParams*>(p));
        } else {
            y = ggml_custom_inplace(ctx, y, args, nargs, output_op, GGML_N_TASKS_MAX, const_cast<StripParams*>(p));
        }
    }
    return y;
}

}  // namespace sdcpp::winograd
