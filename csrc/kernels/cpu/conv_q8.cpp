#include "conv_q8.h"

#include <algorithm>
#include <vector>

namespace sdcpp::kernels::cpu {

namespace {

// Output pixels quantized per block (as gemm_q8.cpp's MC): the quantized rows (MC K bytes) and
// the f32 output tile (MC x kQ8ColBlock, 240 KiB) stay in L2.
constexpr int64_t MC = 240;
// Pixels gathered together: their f32 values for one run of channels (RB x 32 k k floats, 36 KiB
// for 3x3) stay in L1 between the gather and the quantization.
constexpr int64_t RB = 32;

// Where output pixel m reads: the image's first value and, per kernel position ky k + kx, the
// offset of its input in a channel plane (-1: outside the image, a zero).
struct PixelTaps {
    const float* image;
    bool inside;  // all k k positions in the image
    int64_t off[kConvQ8MaxK * kConvQ8MaxK];
};

void pixel_taps(const ConvQ8Args& a, int64_t m, PixelTaps& t) {
    const int k = a.k;
    const int64_t P = a.OW * a.OH;
    const int64_t n = m / P, p = m - n * P, oy = p / a.OW, ox = p - oy * a.OW;
    const int64_t IH = a.H * a.up, IW = a.W * a.up;
    int64_t ys[kConvQ8MaxK], xs[kConvQ8MaxK];
    t.inside = true;
    for (int j = 0; j < k; ++j) {
        // through the upsampling: upsampled row iy is row iy / 2 of x
        const int64_t iy = oy * a.stride + j - a.pad, ix = ox * a.stride + j - a.pad;
        ys[j] = iy >= 0 && iy < IH ? (a.up == 2 ? iy >> 1 : iy) * a.xs1 : -1;
        xs[j] = ix >= 0 && ix < IW ? (a.up == 2 ? ix >> 1 : ix) : -1;
        t.inside = t.inside && ys[j] >= 0 && xs[j] >= 0;
    }
    for (int ky = 0; ky < k; ++ky)
        for (int kx = 0; kx < k; ++kx) t.off[ky * k + kx] = ys[ky] < 0 || xs[kx] < 0 ? -1 : ys[ky] + xs[kx];
    t.image = a.x + n * a.xs3;
}

// Channels c0 .. c0 + cc of pixels `taps[0 .. rows)` into buf (rows cc k k floats apart): value
// c k k + ky k + kx of a row is the input at that tap in channel c0 + c, or 0 outside, as
// ggml_im2col writes it. Channel outer: each plane is read once, along its rows, for all the
// pixels (one pixel's taps across channels lie a plane apart, often a multiple of 4 KiB, which
// thrashes the caches' sets). KK: k k when fixed at compile time (3x3, 1x1), 0 otherwise.
template <int KK>
void gather(const ConvQ8Args& a, const PixelTaps* taps, int64_t rows, int64_t c0, int64_t cc, float* buf) {
    const int kk = KK ? KK : a.k * a.k;
    const int64_t ld = cc * kk;
    for (int64_t c = 0; c < cc; ++c) {
        const int64_t plane = (c0 + c) * a.xs2;
        for (int64_t r = 0; r < rows; ++r) {
            const PixelTaps& t = taps[r];
            const float* src = t.image + plane;
            float* dst = buf + r * ld + c * kk;
            if (t.inside) {
                for (int j = 0; j < kk; ++j) dst[j] = src[t.off[j]];
            } else {
                for (int j = 0; j < kk; ++j) dst[j] = t.off[j] >= 0 ? src[t.off[j]] : 0.0f;
            }
        }
    }
}

using GatherFn = void (*)(const ConvQ8Args&, const PixelTaps*, int64_t, int64_t, int64_t, float*);

GatherFn gather_for(int k) { return k == 3 ? gather<9> : k == 1 ? gather<1> : gather<0>; }

// Rows m0 .. m0 + rows of the implicit im2col, quantized into aq / ad (row r at aq + r lda,
// ad + r KB), a run of channels at a time: cc channels are a whole number of 32-value blocks.
void gather_quantize(const GemmQ8Kernels& k, const ConvQ8Args& a, int64_t m0, int64_t rows, uint8_t* aq, int64_t lda,
                     float* ad, int64_t KB) {
    const int kk = a.k * a.k;
    int64_t cc = 1;  // the fewest channels making whole blocks: 32 / gcd(k k, 32)
    while ((cc * kk) % kQ8Block) cc *= 2;
    cc = std::min(a.C, std::max<int64_t>(cc, (kQ8Block * 8 + kk - 1) / kk / cc * cc));  // ~256 values per call at least
    thread_local std::vector<PixelTaps> taps;
    thread_local std::vector<float> buf;
    taps.resize(static_cast<size_t>(RB));
    buf.resize(static_cast<size_t>(RB * cc * kk));
    const GatherFn gather_fn = gather_for(a.k);
    for (int64_t r0 = 0; r0 < rows; r0 += RB) {
        const int64_t rb = std::min(RB, rows - r0);
        for (int64_t r = 0; r < rb; ++r) pixel_taps(a, m0 + r0 + r, taps[r]);
        for (int64_t c0 = 0; c0 < a.C; c0 += cc) {
            const int64_t nc = std::min(cc, a.C - c0);  // C k k is whole blocks, so is nc k k
            gather_fn(a, taps.data(), rb, c0, nc, buf.data());
            const int64_t v0 = c0 * kk;
            for (int64_t r = 0; r < rb; ++r)
                k.quantize_a(buf.data() + r * nc * kk, nc * kk, aq + (r0 + r) * lda + v0 * k.a_esz,
                             ad + (r0 + r) * KB + v0 / kQ8Block);
        }
    }
}

// The finished tile C[mm][nn] (rows kQ8ColBlock apart) of output pixels m0 .. m0 + mm and
// channels n0 .. n0 + nn, transposed into y [OW, OH, OC, N] (+ bias, + residual as ggml_add
// computes them: (c + b) + r), one run of pixels per image the rows cross.
void store_tile(const ConvQ8Args& a, const float* C, int64_t m0, int64_t mm, int64_t n0, int64_t nn) {
    const int64_t P = a.OW * a.OH;
    for (int64_t r0 = 0; r0 < mm;) {
        const int64_t n = (m0 + r0) / P, p0 = (m0 + r0) - n * P;
        const int64_t run = std::min(mm - r0, P - p0);
        for (int64_t j = 0; j < nn; ++j) {
            const int64_t o = (n * a.OC + n0 + j) * P + p0;
            float* dst = a.y + o;
            const float* src = C + r0 * kQ8ColBlock + j;
            const float b = a.bias ? a.bias[n0 + j] : 0.0f;
            if (a.residual) {
                const float* res = a.residual + o;
                if (a.bias) {
                    for (int64_t r = 0; r < run; ++r) dst[r] = (src[r * kQ8ColBlock] + b) + res[r];
                } else {
                    for (int64_t r = 0; r < run; ++r) dst[r] = src[r * kQ8ColBlock] + res[r];
                }
            } else if (a.bias) {
                for (int64_t r = 0; r < run; ++r) dst[r] = src[r * kQ8ColBlock] + b;
            } else {
                for (int64_t r = 0; r < run; ++r) dst[r] = src[r * kQ8ColBlock];
            }
        }
        r0 += run;
    }
}

// Output pixels [r0, r1) against channels [c0, c1).
void conv_rows(const GemmQ8Kernels& k, const ConvQ8Args& a, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    const int mr = k.mr;
    const int64_t K = a.C * a.k * a.k, KB = K / kQ8Block;
    const int64_t lda = K * k.a_esz;
    const int64_t mc = std::max<int64_t>(mr, (MC / mr) * mr);
    thread_local std::vector<uint8_t> aq;
    thread_local std::vector<float> ad, zero, tile;
    aq.resize(static_cast<size_t>(mc * lda));
    ad.resize(static_cast<size_t>(mc * KB));
    if (zero.size() < static_cast<size_t>(K)) zero.assign(static_cast<size_t>(K), 0.0f);
    tile.resize(static_cast<size_t>(mc * kQ8ColBlock));
    // the product's operands: B the kernel matrix (A and C are ours)
    GemmQ8Args g{nullptr, 0, a.w, a.ldw, nullptr, 0, 0, a.OC, K, a.wtype};
    for (int64_t m0 = r0; m0 < r1; m0 += mc) {
        const int64_t mm = std::min(mc, r1 - m0);
        const int64_t mpad = (mm + mr - 1) / mr * mr;
        gather_quantize(k, a, m0, mm, aq.data(), lda, ad.data(), KB);
        // rows past the block are zero rows, so the micro-kernel always reads MR real rows
        for (int64_t r = mm; r < mpad; ++r) k.quantize_a(zero.data(), K, aq.data() + r * lda, ad.data() + r * KB);
        for (int64_t n0 = c0; n0 < c1; n0 += kQ8ColBlock) {
            const int64_t nn = std::min(kQ8ColBlock, c1 - n0);
            gemm_q8_block(k, g, aq.data(), ad.data(), mm, n0, nn, tile.data(), kQ8ColBlock);
            store_tile(a, tile.data(), m0, mm, n0, nn);
        }
    }
}

}  // namespace

int64_t conv_q8_out_size(int64_t in, int up, int k, int stride, int pad) { return (in * up + 2 * pad - k) / stride + 1; }

void conv_q8(const GemmQ8Kernels& k, const ConvQ8Args& a, int ith, int nth) {
    const int64_t M = a.OW * a.OH * a.N;
    // The same split as gemm_q8_batched (one product of M rows): few pixels against many output
    // channels -> every thread all pixels and a range of channels; otherwise ranges of pixels.
    const int64_t col_panels = (a.OC + k.nr - 1) / k.nr;
    if (nth > 1 && M <= 1024 && col_panels >= int64_t(2) * nth) {
        const int64_t p0 = col_panels * ith / nth, p1 = col_panels * (ith + 1) / nth;
        const int64_t c0 = p0 * k.nr, c1 = std::min(a.OC, p1 * k.nr);
        if (c0 < c1) conv_rows(k, a, 0, M, c0, c1);
        return;
    }
    const int64_t tiles = (M + k.mr - 1) / k.mr;
    const int64_t t0 = tiles * ith / nth, t1 = tiles * (ith + 1) / nth;
    if (t0 < t1) conv_rows(k, a, t0 * k.mr, std::min(M, t1 * k.mr), 0, a.OC);
}

}  // namespace sdcpp::kernels::cpu
