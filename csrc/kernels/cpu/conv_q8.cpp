#include "conv_q8.h"

#include "elementwise.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace sdcpp::kernels::cpu {

namespace {

// Output pixels quantized per block (as gemm_q8.cpp's MC): the quantized rows (MC K bytes) and
// the f32 output tile (MC x kQ8ColBlock, 240 KiB) stay in L2.
constexpr int64_t MC = 240;
// Pixels gathered together (the transposes' width): their f32 values for one run of channels
// (RB x 32 k k floats, 36 KiB for 3x3) stay in L1 between the gather and the quantization.
constexpr int64_t RB = 32;

// A run of consecutive output pixels in one output row: r0 .. r0 + len of the RB being gathered.
// Per kernel row ky the offset of its input row in a channel plane (-1: outside, zeros); per
// kernel column kx the pixels i in [lo, hi) whose input column x0 + i stride (upsampled
// coordinates) lies in the image (zeros outside).
struct Segment {
    int64_t r0, len;
    const float* image;
    int64_t yoff[kConvQ8MaxK];
    int64_t lo[kConvQ8MaxK], hi[kConvQ8MaxK], x0[kConvQ8MaxK];
};

// The segments of output pixels m0 .. m0 + rows (rows <= RB); returns how many.
int segments(const ConvQ8Args& a, int64_t m0, int64_t rows, Segment* seg) {
    const int64_t P = a.OW * a.OH, IH = a.H * a.up, IW = a.W * a.up;
    int count = 0;
    for (int64_t r = 0; r < rows;) {
        const int64_t m = m0 + r, n = m / P, p = m - n * P, oy = p / a.OW, ox = p - oy * a.OW;
        Segment& s = seg[count++];
        s.r0 = r;
        s.len = std::min(rows - r, a.OW - ox);
        s.image = a.x + n * a.xs3;
        for (int j = 0; j < a.k; ++j) {
            const int64_t iy = oy * a.stride + j - a.pad;  // upsampled row iy is row iy / 2 of x
            s.yoff[j] = iy >= 0 && iy < IH ? (iy >> (a.up - 1)) * a.xs1 : -1;
            const int64_t x0 = ox * a.stride + j - a.pad;
            // first i with x0 + i stride >= 0, first i with x0 + i stride >= IW (clamped to len)
            const int64_t lo = x0 >= 0 ? 0 : (-x0 + a.stride - 1) / a.stride;
            const int64_t hi = x0 >= IW ? 0 : (IW - x0 + a.stride - 1) / a.stride;
            s.x0[j] = x0;
            s.lo[j] = std::min(lo, s.len);
            s.hi[j] = std::max(s.lo[j], std::min(hi, s.len));
        }
        r += s.len;
    }
    return count;
}

// Channels c0 .. c0 + cc of the segments' pixels, transposed: bufT[(c k k + ky k + kx) RB + r] is
// the input of pixel r at that tap, or 0 outside the image, as ggml_im2col writes it. Channel
// outer and pixels innermost: contiguous copies along each input row (stride 1), each plane read
// once for all the pixels.
void gather_t(const ConvQ8Args& a, const Segment* seg, int nseg, int64_t c0, int64_t cc, float* bufT) {
    const int k = a.k;
    const int sh = a.up - 1;
    for (int64_t c = 0; c < cc; ++c) {
        const int64_t plane = (c0 + c) * a.xs2;
        for (int ky = 0; ky < k; ++ky) {
            for (int kx = 0; kx < k; ++kx) {
                float* d = bufT + ((c * k + ky) * k + kx) * RB;
                for (int g = 0; g < nseg; ++g) {
                    const Segment& s = seg[g];
                    float* ds = d + s.r0;
                    if (s.yoff[ky] < 0) {
                        for (int64_t i = 0; i < s.len; ++i) ds[i] = 0.0f;
                        continue;
                    }
                    const float* row = s.image + plane + s.yoff[ky];
                    const int64_t lo = s.lo[kx], hi = s.hi[kx], x0 = s.x0[kx];
                    for (int64_t i = 0; i < lo; ++i) ds[i] = 0.0f;
                    if (a.stride == 1 && sh == 0) {
                        if (hi > lo) std::memcpy(ds + lo, row + x0 + lo, static_cast<size_t>(hi - lo) * sizeof(float));
                    } else {
                        for (int64_t i = lo; i < hi; ++i) ds[i] = row[(x0 + i * a.stride) >> sh];
                    }
                    for (int64_t i = hi; i < s.len; ++i) ds[i] = 0.0f;
                }
            }
        }
    }
}

// Rows m0 .. m0 + rows of the implicit im2col, quantized into aq / ad (row r at aq + r lda,
// ad + r KB), a run of channels at a time: cc channels are a whole number of 32-value blocks.
void gather_quantize(const GemmQ8Kernels& k, const Elementwise& ew, const ConvQ8Args& a, int64_t m0, int64_t rows,
                     uint8_t* aq, int64_t lda, float* ad, int64_t KB) {
    const int kk = a.k * a.k;
    int64_t cc = 1;  // the fewest channels making whole blocks: 32 / gcd(k k, 32)
    while ((cc * kk) % kQ8Block) cc *= 2;
    cc = std::min(a.C, std::max<int64_t>(cc, (kQ8Block * 8 + kk - 1) / kk / cc * cc));  // ~256 values per call at least
    thread_local std::vector<float> bufT, buf;
    thread_local std::vector<Segment> seg;
    thread_local std::vector<int> nseg;
    bufT.assign(static_cast<size_t>(RB * cc * kk), 0.0f);  // pixels past the rows: defined, unused
    buf.resize(static_cast<size_t>(RB * cc * kk));
    const int64_t nsb = (rows + RB - 1) / RB;
    seg.resize(static_cast<size_t>(nsb * RB));
    nseg.resize(static_cast<size_t>(nsb));
    for (int64_t b = 0; b < nsb; ++b) nseg[b] = segments(a, m0 + b * RB, std::min(RB, rows - b * RB), &seg[b * RB]);
    // Channel runs outer: one run's planes (the block's few input rows of each) stay in cache
    // while all the block's pixels read them.
    for (int64_t c0 = 0; c0 < a.C; c0 += cc) {
        const int64_t nc = std::min(cc, a.C - c0);  // C k k is whole blocks, so is nc k k
        const int64_t V = nc * kk, v0 = c0 * kk;
        for (int64_t b = 0; b < nsb; ++b) {
            const int64_t r0 = b * RB, rb = std::min(RB, rows - r0);
            gather_t(a, &seg[b * RB], nseg[b], c0, nc, bufT.data());
            ew.transpose(bufT.data(), RB, buf.data(), V, V, RB);  // [V][RB] -> [RB][V]: a row per pixel
            for (int64_t r = 0; r < rb; ++r)
                k.quantize_a(buf.data() + r * V, V, aq + (r0 + r) * lda + v0 * k.a_esz, ad + (r0 + r) * KB + v0 / kQ8Block);
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
void conv_rows(const GemmQ8Kernels& k, const Elementwise& ew, const ConvQ8Args& a, int64_t r0, int64_t r1, int64_t c0,
               int64_t c1) {
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
    if (k.thread_begin) k.thread_begin();
    for (int64_t m0 = r0; m0 < r1; m0 += mc) {
        const int64_t mm = std::min(mc, r1 - m0);
        const int64_t mpad = (mm + mr - 1) / mr * mr;
        gather_quantize(k, ew, a, m0, mm, aq.data(), lda, ad.data(), KB);
        // rows past the block are zero rows, so the micro-kernel always reads MR real rows
        for (int64_t r = mm; r < mpad; ++r) k.quantize_a(zero.data(), K, aq.data() + r * lda, ad.data() + r * KB);
        for (int64_t n0 = c0; n0 < c1; n0 += kQ8ColBlock) {
            const int64_t nn = std::min(kQ8ColBlock, c1 - n0);
            gemm_q8_block(k, g, aq.data(), ad.data(), mm, n0, nn, tile.data(), kQ8ColBlock);
            store_tile(a, tile.data(), m0, mm, n0, nn);
        }
    }
    if (k.thread_end) k.thread_end();
}

}  // namespace

int64_t conv_q8_out_size(int64_t in, int up, int k, int stride, int pad) { return (in * up + 2 * pad - k) / stride + 1; }

void conv_q8(const GemmQ8Kernels& k, const ConvQ8Args& a, int ith, int nth) {
    // the gather's transpose: the element-wise table's tiled copy (exact at every level), the
    // widest one the product's level may run
    const Elementwise& ew = elementwise_at(k.level);
    const int64_t M = a.OW * a.OH * a.N;
    // The same split as gemm_q8_batched (one product of M rows): few pixels against many output
    // channels -> every thread all pixels and a range of channels; otherwise ranges of pixels.
    const int64_t col_panels = (a.OC + k.nr - 1) / k.nr;
    if (nth > 1 && M <= 1024 && col_panels >= int64_t(2) * nth) {
        const int64_t p0 = col_panels * ith / nth, p1 = col_panels * (ith + 1) / nth;
        const int64_t c0 = p0 * k.nr, c1 = std::min(a.OC, p1 * k.nr);
        if (c0 < c1) conv_rows(k, ew, a, 0, M, c0, c1);
        return;
    }
    const int64_t tiles = (M + k.mr - 1) / k.mr;
    const int64_t t0 = tiles * ith / nth, t1 = tiles * (ith + 1) / nth;
    if (t0 < t1) conv_rows(k, ew, a, t0 * k.mr, std::min(M, t1 * k.mr), 0, a.OC);
}

}  // namespace sdcpp::kernels::cpu
