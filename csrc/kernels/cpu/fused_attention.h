// Fused multi-head attention for the CPU backend: bf16 products (level avx512_bf16; amx: AMX-BF16
// tiles), or f32
// (levels avx2 and avx512: the GEMM-tiled driver of attention_gemm.h on the packed product's
// micro-kernels); below those levels callers use ggml's flash attention.
//
// softmax(q k^T * scale) v for every head, flash-style (online softmax over key tiles, no
// score matrix). bf16: q.k and p.v are bf16 dot products with f32 accumulation (vdpbf16ps), the
// softmax is f32. Reads q, k, v in the projections' own layout [D, L, N] (head h = columns
// h*d .. h*d+d-1) and writes [D, Lq, N], so no permute / pad / copy nodes are needed.
// bf16: two ggml custom ops, K/V packing then the attention. CPU only; available_*() follow the
// active CPU level (cpu_level.h), read when the graph is built.
#pragma once
#include "ggml.h"

namespace sdcpp::fused_attention {

bool available_bf16();  // level avx512_bf16: attention_bf16()
// attention_bf16()'s variant at the active level: "amx" (level amx with AMX-BF16: tile products,
// fused_attention_amx.cpp), "avx512_bf16", or "ggml_flash" (none).
const char* bf16_variant();
// Whether that variant is the AMX one: what compute="bf16" (model/unet.h) asks for before it
// routes f32 / f16 attention through attention_bf16().
bool available_bf16_amx();
bool available_f32();   // level avx2 or avx512: attention_f32()

// q [D, Lq, N], k, v [D, Lk, N] f32 (contiguous rows); returns [D, Lq, N] f32.
ggml_tensor* attention_bf16(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads);

// f32 operands (AVX-512 or AVX2 FMA, by the active level), f32-exact like ggml's flash
// attention, no permute / copy nodes: one custom op (K/V are packed per head inside it).
ggml_tensor* attention_f32(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads);

// Int8 operands (kernels/cpu/attention_int8.h; opt-in, not exact: about 1e-2 from f32 on one
// attention's output): every CPU level (the variant by the active level), two custom ops (K / V
// quantized and packed, then the attention). int8_variant(): "portable", "avx2", "avx512" or
// "avx512_vnni".
ggml_tensor* attention_int8(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads);
const char* int8_variant();

}  // namespace sdcpp::fused_attention
