// Multi-head attention softmax(q k^T / sqrt(d)) v for the CPU, tiled so that both products run
// through the packed GEMM micro-kernels (gemm.h) and the softmax through the element-wise row
// kernels (elementwise.h) of the active level: flash-style (online softmax over blocks of 256
// keys, no score matrix), with the 1/sqrt(d) folded into q. Per (batch, head) a thread packs K
// into GEMM panels and V transposed once; per block of 96 queries it computes the score tile
// S = Q K^T, the row maxima and e^(S - max) with their sums, and O^T += V^T P^T, whose register
// tile runs along the queries, so head widths such as 40 or 80 waste at most MR - 1 rows.
#pragma once
#include <cstdint>

#include "elementwise.h"
#include "gemm.h"

namespace sdcpp::kernels::cpu {

struct AttentionArgs {
    // q [N][Lq][heads * d], k and v [N][Lk][heads * d], out [N][Lq][heads * d]: rows and
    // batches `*_row` / `*_batch` floats apart, head h in columns h*d .. h*d + d - 1.
    const float* q;
    int64_t q_row, q_batch;
    const float* k;
    int64_t k_row, k_batch;
    const float* v;
    int64_t v_row, v_batch;
    float* out;
    int64_t out_row, out_batch;
    int64_t N, Lq, Lk, d;
    int heads;
};

// Work unit `ith` of `nth` (units: batch x head x block of queries).
void attention_gemm(const GemmKernels& g, const Elementwise& e, const AttentionArgs& a, int ith, int nth);

}  // namespace sdcpp::kernels::cpu
