#include "attention_gemm.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace sdcpp::kernels::cpu {

namespace {

constexpr int64_t QB = 96;   // queries per work unit: a multiple of every variant's NR (16, 32)
constexpr int64_t KB = 240;  // keys per softmax block: a multiple of every variant's MR (4, 6, 12)

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

}  // namespace

void attention_gemm(const GemmKernels& g, const Elementwise& e, const AttentionArgs& a, int ith, int nth) {
    const int64_t mr = g.mr, nr = g.nr, d = a.d;
    const int64_t Lkp = round_up(a.Lk, mr);  // keys padded to whole register rows of S^T
    const int64_t dp = round_up(d, mr);      // head dims padded to whole register rows of O^T
    const int64_t qblocks = (a.Lq + QB - 1) / QB;
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));

    // Scores are computed transposed, S^T = K Q^T, straight into the layout the second product
    // reads its B panels in ([QB / nr][KB keys][nr queries]), so P is never repacked; the
    // softmax then runs down the columns (one query per lane, no horizontal reductions).
    thread_local std::vector<float> vt, qp, st, ot, tail, stats;
    vt.resize(static_cast<size_t>(dp * Lkp));
    qp.resize(static_cast<size_t>(QB * d));
    st.resize(static_cast<size_t>(QB * KB));
    ot.resize(static_cast<size_t>(dp * QB));
    tail.resize(static_cast<size_t>(mr * d));
    stats.resize(static_cast<size_t>(3 * QB));
    float* M = stats.data();
    float* L = M + QB;
    float* alpha = L + QB;

    int64_t packed = -1;
    for (int64_t unit = ith; unit < a.N * a.heads * qblocks; unit += nth) {
        const int64_t qb = unit % qblocks, nh = unit / qblocks, h = nh % a.heads, n = nh / a.heads;
        const float* kb = a.k + n * a.k_batch + h * d;
        if (nh != packed) {  // this head's V transposed, [dp][Lkp], zero past d and Lk
            const float* vb = a.v + n * a.v_batch + h * d;
            std::fill(vt.begin(), vt.end(), 0.0f);
            for (int64_t key = 0; key < a.Lk; ++key) {
                const float* row = vb + key * a.v_row;
                for (int64_t c = 0; c < d; ++c) vt[c * Lkp + key] = row[c];
            }
            packed = nh;
        }
        const int64_t q0 = qb * QB, rows = std::min(QB, a.Lq - q0);
        const int64_t qn = round_up(rows, nr);  // query columns computed
        g.pack_b(a.q + n * a.q_batch + q0 * a.q_row + h * d, GemmB::F32, a.q_row * static_cast<int64_t>(sizeof(float)), 0,
                 rows, 0, d, qp.data());
        for (int64_t i = 0; i < qn * d; ++i) qp[i] *= scale;
        std::fill(M, M + QB, -INFINITY);
        std::fill(L, L + QB, 0.0f);
        std::fill(ot.begin(), ot.end(), 0.0f);

        for (int64_t k0 = 0; k0 < Lkp; k0 += KB) {
            const int64_t kn = std::min(KB, Lkp - k0);  // a multiple of mr
            const int64_t valid = std::min(kn, a.Lk - k0);
            for (int64_t i = 0; i < kn; i += mr) {  // S^T rows: keys, read in place
                const float* ka = kb + (k0 + i) * a.k_row;
                int64_t lda = a.k_row;
                if (i + mr > valid) {  // the last keys, padded with zero rows
                    std::fill(tail.begin(), tail.end(), 0.0f);
                    for (int64_t r = 0; r < valid - i; ++r) std::memcpy(&tail[r * d], ka + r * a.k_row, d * sizeof(float));
                    ka = tail.data();
                    lda = d;
                }
                for (int64_t j = 0; j < qn; j += nr)
                    g.micro(d, ka, lda, qp.data() + j * d, st.data() + j * KB + i * nr, nr, false);
            }
            for (int64_t j = 0; j < qn; j += nr) {
                float* panel = st.data() + j * KB;
                for (int64_t key = valid; key < kn; ++key) std::fill(panel + key * nr, panel + key * nr + nr, -INFINITY);
                e.softmax_panel(panel, kn, static_cast<int>(nr), M + j, L + j, alpha + j);
            }
            if (k0 > 0) {
                for (int64_t c = 0; c < d; ++c) {
                    float* row = ot.data() + c * QB;
                    for (int64_t r = 0; r < qn; ++r) row[r] *= alpha[r];
                }
            }
            // O^T += V^T P^T
            for (int64_t c = 0; c < dp; c += mr)
                for (int64_t j = 0; j < qn; j += nr)
                    g.micro(kn, vt.data() + c * Lkp + k0, Lkp, st.data() + j * KB, ot.data() + c * QB + j, QB, true);
        }
        for (int64_t r = 0; r < rows; ++r) {
            float* dst = a.out + n * a.out_batch + (q0 + r) * a.out_row + h * d;
            const float inv = 1.0f / L[r];
            for (int64_t c = 0; c < d; ++c) dst[c] = ot[c * QB + r] * inv;
        }
    }
    // A long single-head attention (the VAE's mid block: d = 512, 16384 keys at 1024x1024)
    // leaves V^T at tens of MB per thread; do not keep that for the life of every pool thread.
    if (vt.size() > (size_t(1) << 20)) std::vector<float>().swap(vt);
}

}  // namespace sdcpp::kernels::cpu
