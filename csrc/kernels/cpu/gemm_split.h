// How one batched packed product is cut among ggml's nth threads: the one rule shared by every
// packed product (gemm.h's f32, gemm_q8.h's integer, gemm_bf16.h's bf16 one).
#pragma once
#include <algorithm>
#include <cstdint>

namespace sdcpp::kernels::cpu {

// Thread ith's share of `batch` products of M x N, as calls rows(b, r0, r1, c0, c1): product b's
// rows [r0, r1) against its columns [c0, c1). mr / nr: the variant's register tile.
template <class Rows>
void split_batched(int64_t M, int64_t N, int64_t mr, int64_t nr, int64_t batch, int ith, int nth, Rows&& rows) {
    // Few rows per product (a text encoder's 2 x 77 tokens, a time embedding, the Winograd
    // products' output channels against their tiles) against many columns: every thread takes
    // all rows and a range of columns, so each packs (converts) only its part of B; split by
    // rows, each thread would pack all of B, as costly as a small product itself.
    const int64_t col_panels = (N + nr - 1) / nr;
    if (nth > 1 && M <= 1024 && col_panels >= int64_t(2) * nth) {
        const int64_t p0 = col_panels * ith / nth, p1 = col_panels * (ith + 1) / nth;
        const int64_t c0 = p0 * nr, c1 = std::min(N, p1 * nr);
        for (int64_t b = 0; b < batch && c0 < c1; ++b) rows(b, int64_t(0), M, c0, c1);
        return;
    }
    // Otherwise all rows of all products, cut into nth contiguous ranges on MR boundaries; a
    // range that crosses products is done product by product.
    const int64_t tiles_per = (M + mr - 1) / mr;
    const int64_t tiles = tiles_per * batch;
    const int64_t t0 = tiles * ith / nth, t1 = tiles * (ith + 1) / nth;
    for (int64_t t = t0; t < t1;) {
        const int64_t b = t / tiles_per;
        const int64_t end = std::min(t1, (b + 1) * tiles_per);
        rows(b, (t - b * tiles_per) * mr, std::min(M, (end - b * tiles_per) * mr), int64_t(0), N);
        t = end;
    }
}

}  // namespace sdcpp::kernels::cpu
