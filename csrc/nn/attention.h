// The one multi-head attention of the layer library: softmax(q k^T / sqrt(d)) v per head, on
// projected q [D, Lq, N] and k, v [D, Lk, N], returning [D, Lq, N]. Which kernel runs is decided
// here:
//   Flash + custom ops, where the CPU level has one -> sdcpp's fused CPU kernel
//       (kernels/cpu/fused_attention.h: bf16 products for `type` BF16, else f32);
//   Int8 + custom ops, at least int8_min_keys keys -> sdcpp's int8 CPU kernel
//       (kernels/cpu/attention_int8.h, every CPU level; not exact: what Auto takes on the CPU
//       for quantized weights), Int8 otherwise as Flash;
//   Flash otherwise -> ggml_flash_attn_ext in f32;
//   MulMat (and every causal attention) -> mul_mat + soft_max in `type` (F32, F16 or BF16
//       operands, f32 sums), queries in chunks whose score matrix stays within
//       `max_score_bytes`.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../runtime/device.h"
#include "ggml.h"

namespace sdcpp::nn {

// Int8: its products are quantized; Auto takes it only for a model whose attention weights are
// quantized themselves (see resolve_attention).
enum class AttentionKernel { Auto, MulMat, Flash, Int8 };

// What Auto means on this device. Measured on the CPU backend (bk-sdm-tiny / SD1.5 at 64x64,
// batch 2, 1 thread): ggml's tiled f32 flash attention ~52 GFLOP/s, 0.94 s per 4096-token SD1
// self-attention, against 1.35 s for mul_mat + soft_max in f32 and ~1.5 s in bf16, with no
// 1 GiB score matrix; sdcpp's fused kernels are faster still. Other backends keep mul_mat:
// their flash kernels want f16 K/V (not measured).
// `quantized_weights` (the model's attention projections are q8_0 / q5_0 / q4_0): on the CPU
// Int8, whose own error is small next to what the weights' integer products already cost
// (final latents of BK-SDM-tiny at 64x64 with q8_0, up to q/k logits 16x sharper than diffusers'
// initialisation: bench/README.md "Int8 attention by default"), and the largest single speed
// gain left for quantized U-Nets on the CPU. f32 / f16 / bf16 weights keep the exact kernels.
AttentionKernel resolve_attention(AttentionKernel requested, const Device& device, bool quantized_weights = false);

struct AttentionOptions {
    AttentionKernel kernel = AttentionKernel::MulMat;  // Auto is taken as MulMat: resolve it first
    bool custom_ops = false;                           // nn::custom_ops_allowed()
    ggml_type type = GGML_TYPE_F32;                    // operand type of the products (see above)
    bool causal = false;                               // mask future positions (CLIP)
    size_t max_score_bytes = SIZE_MAX;                 // MulMat: score matrix per query chunk
    // Int8: the int8 kernel from this many keys on; fewer (the 77-token cross-attention, the
    // 256-token self-attention of SD1's last level) run as Flash, exact and not slower there:
    // measured on 2 x 8 heads, one Sapphire Rapids core at avx2, f32 / int8 time 0.81 at 77
    // keys (the 64-key tile pads them to 128), 0.91 at 256, 1.11 at 1024, 1.39 at 4096.
    int64_t int8_min_keys = 512;
};

ggml_tensor* attention(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads,
                       const AttentionOptions& opt);

}  // namespace sdcpp::nn
