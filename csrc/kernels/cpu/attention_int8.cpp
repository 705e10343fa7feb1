// The int8 attention's driver: quantization and packing of q, k, v (scalar code, the same for
// every level, so the micro-kernels see the same integers everywhere) and the loop over query
// blocks and key tiles.
#include "attention_int8.h"

#include <vector>

namespace sdcpp::kernels::cpu {

using namespace int8_attention;

const AttentionInt8Kernels& attention_int8_kernels_at(Level level) {
    if (const AttentionInt8Kernels* t = attention_int8_avx512(); t && runs(level, t->level)) return *t;
    if (const AttentionInt8Kernels* t = attention_int8_avx2(); t && runs(level, t->level)) return *t;
    return attention_int8_portable();
}

const AttentionInt8Kernels& attention_int8_kernels() { return attention_int8_kernels_at(active_level()); }

namespace {

// Two int16 values in one word, a in the low half.
inline uint32_t pair(int32_t a, int32_t b) {
    return static_cast<uint32_t>(static_cast<uint16_t>(a)) | (static_cast<uint32_t>(static_cast<uint16_t>(b)) << 16);
}

// x / scale rounded to the nearest int8 value (|x| <= 127 scale by construction; the clamp
// only guards the division's rounding). Nearest-even by adding and subtracting 1.5 * 2^23 (exact
// for |y| < 2^22): what std::nearbyint gives, without its libm call in this baseline-ISA file.
inline int32_t quant(float x, float inv) {
    constexpr float kRound = 12582912.0f;
    const float y = x * inv;
    return std::clamp(static_cast<int32_t>((y + kRound) - kRound), -127, 127);
}

// One row's int8 values as words (zero past d) and its scale (max |x| / 127; 0 for a zero row).
float quant_row(const float* x, int64_t d, int64_t dpairs, uint32_t* out, int64_t stride) {
    float amax = 0.0f;
    for (int64_t c = 0; c < d; ++c) amax = std::max(amax, std::fabs(x[c]));
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int64_t p = 0; p < dpairs; ++p) {
        const int32_t a = quant(x[2 * p], inv);
        const int32_t b = 2 * p + 1 < d ? quant(x[2 * p + 1], inv) : 0;
        out[p * stride] = pair(a, b);
    }
    return amax / 127.0f;
}

const float* row_of(const float* base, int64_t row, int64_t batch, int64_t pos, int64_t n, int64_t h, int64_t d) {
    return base + n * batch + pos * row + h * d;
}

}  // namespace

int64_t packed_int8_words(const AttentionInt8Args& a) { return a.N * a.heads * dims_of(a.d, a.Lk).head_words(); }

void pack_int8(const AttentionInt8Args& a, uint32_t* packed, int ith, int nth) {
    const Dims m = dims_of(a.d, a.Lk);
    std::vector<float> mean(m.d), row(m.d);
    for (int64_t unit = ith; unit < a.N * a.heads; unit += nth) {
        const int64_t n = unit / a.heads, h = unit % a.heads;
        uint32_t* kp = packed + unit * m.head_words();
        float* sk = reinterpret_cast<float*>(kp + m.kp_words());
        uint32_t* vp = kp + m.kp_words() + m.Lkp;
        float* vs = reinterpret_cast<float*>(vp + m.vp_words());
        std::memset(kp, 0, sizeof(uint32_t) * m.head_words());
        // K: the mean over the keys per channel (in double: Lk up to thousands) comes off first
        std::vector<double> sum(m.d, 0.0);
        for (int64_t j = 0; j < a.Lk; ++j) {
            const float* x = row_of(a.k, a.k_row, a.k_batch, j, n, h, m.d);
            for (int64_t c = 0; c < m.d; ++c) sum[c] += x[c];
        }
        for (int64_t c = 0; c < m.d; ++c) mean[c] = static_cast<float>(sum[c] / static_cast<double>(a.Lk));
        for (int64_t j = 0; j < a.Lk; ++j) {
            const float* x = row_of(a.k, a.k_row, a.k_batch, j, n, h, m.d);
            for (int64_t c = 0; c < m.d; ++c) row[c] = x[c] - mean[c];
            sk[j] = quant_row(row.data(), m.d, m.dpairs, kp + (j / 16) * m.dpairs * 16 + j % 16, 16);
        }
        // V: one scale per channel per 64-key tile (rows read in order: a column walk would
        // touch a cache line per value)
        std::vector<float> amax(m.d), inv(m.d);
        for (int64_t t = 0; t < m.tiles(); ++t) {
            const int64_t j0 = t * kKeys, j1 = std::min(m.Lk, j0 + kKeys);
            std::fill(amax.begin(), amax.end(), 0.0f);
            for (int64_t j = j0; j < j1; ++j) {
                const float* x = row_of(a.v, a.v_row, a.v_batch, j, n, h, m.d);
                for (int64_t c = 0; c < m.d; ++c) amax[c] = std::max(amax[c], std::fabs(x[c]));
            }
            float* scale = vs + t * m.dvp;
            for (int64_t c = 0; c < m.d; ++c) {
                inv[c] = amax[c] > 0.0f ? 127.0f / amax[c] : 0.0f;
                scale[c] = amax[c] / 127.0f;
            }
            for (int64_t j = j0; j < j1; j += 2) {
                const float* lo = row_of(a.v, a.v_row, a.v_batch, j, n, h, m.d);
                const float* hi = j + 1 < j1 ? row_of(a.v, a.v_row, a.v_batch, j + 1, n, h, m.d) : nullptr;
                uint32_t* out = vp + (j / 2) * m.dvp;
                for (int64_t c = 0; c < m.d; ++c) out[c] = pair(quant(lo[c], inv[c]), hi ? quant(hi[c], inv[c]) : 0);
            }
        }
    }
}

void attend_int8(const AttentionInt8Kernels& k, const AttentionInt8Args& a, const uint32_t* packed, int ith, int nth) {
    const Dims m = dims_of(a.d, a.Lk);
    // base-2 logits: q's scale carries 1 / sqrt(d) * log2(e)
    const float qscale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(m.d)) * 1.4426950408889634);
    const int64_t qblocks = (a.Lq + kRows - 1) / kRows;
    std::vector<uint32_t> qbuf(kRows * m.dpairs);
    std::vector<float> obuf(kRows * m.dvp), sq(kRows), M(kRows), L(kRows), alpha(kRows);
    std::vector<int32_t> S(kRows * kKeys);
    std::vector<int16_t> P(kRows * kKeys);
    for (int64_t unit = ith; unit < a.N * a.heads * qblocks; unit += nth) {
        const int64_t qb = unit % qblocks, nh = unit / qblocks, h = nh % a.heads, n = nh / a.heads;
        const int64_t q0 = qb * kRows;
        const int rows = static_cast<int>(std::min<int64_t>(kRows, a.Lq - q0));
        const uint32_t* kp = packed + nh * m.head_words();
        const float* sk = reinterpret_cast<const float*>(kp + m.kp_words());
        const uint32_t* vp = kp + m.kp_words() + m.Lkp;
        const float* vs = reinterpret_cast<const float*>(vp + m.vp_words());
        std::fill(qbuf.begin(), qbuf.end(), 0u);
        for (int r = 0; r < rows; ++r)
            sq[r] = quant_row(row_of(a.q, a.q_row, a.q_batch, q0 + r, n, h, m.d), m.d, m.dpairs, qbuf.data() + r * m.dpairs, 1) *
                    qscale;
        std::fill(M.begin(), M.end(), -INFINITY);
        std::fill(L.begin(), L.end(), 0.0f);
        std::fill(obuf.begin(), obuf.end(), 0.0f);
        for (int64_t t = 0; t < m.tiles(); ++t) {
            const int valid = static_cast<int>(std::min<int64_t>(kKeys, m.Lk - t * kKeys));
            k.scores(qbuf.data(), rows, kp + t * kKeys * m.dpairs, m.dpairs, S.data());
            k.softmax(S.data(), rows, sq.data(), sk + t * kKeys, valid, M.data(), L.data(), alpha.data(), P.data());
            k.pv(P.data(), rows, vp + t * (kKeys / 2) * m.dvp, vs + t * m.dvp, alpha.data(), m.dvp, obuf.data());
        }
        for (int r = 0; r < rows; ++r) {
            float* out = a.out + n * a.out_batch + (q0 + r) * a.out_row + h * m.d;
            const float inv = 1.0f / L[r];
            for (int64_t c = 0; c < m.d; ++c) out[c] = obuf[r * m.dvp + c] * inv;
        }
    }
}

}  // namespace sdcpp::kernels::cpu
