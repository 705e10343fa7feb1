// Fused multi-head attention with bf16 products (AVX512-BF16) for the CPU backend.
//
// softmax(q k^T * scale) v for every head, flash-style (online softmax over key tiles, no
// score matrix): q.k and p.v are bf16 dot products with f32 accumulation (vdpbf16ps), the
// softmax is f32. Reads q, k, v in the projections' own layout [D, L, N] (head h = columns
// h*d .. h*d+d-1) and writes [D, Lq, N], so no permute / pad / copy nodes are needed.
// Two ggml custom ops: K/V packing, then the attention. CPU only; available() says whether
// this CPU has AVX512-BF16 (else callers use ggml's flash attention).
#pragma once
#include "ggml.h"

namespace sdcpp::bf16_attention {

bool available();

// q [D, Lq, N], k, v [D, Lk, N] f32 (contiguous rows); returns [D, Lq, N] f32.
ggml_tensor* attention(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads);

}  // namespace sdcpp::bf16_attention
