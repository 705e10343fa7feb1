// Fused multi-head attention for the CPU backend: bf16 products (AVX512-BF16), or f32 (AVX-512).
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

bool available();      // AVX512-BF16: attention()
bool available_f32();  // AVX-512 F/BW/VL/DQ: attention_f32()

// q [D, Lq, N], k, v [D, Lk, N] f32 (contiguous rows); returns [D, Lq, N] f32.
ggml_tensor* attention(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads);

// The same kernel with f32 operands (AVX-512 FMA): f32-exact like ggml's flash attention, no
// head-dim padding, no permute / copy nodes.
ggml_tensor* attention_f32(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads);

}  // namespace sdcpp::bf16_attention
