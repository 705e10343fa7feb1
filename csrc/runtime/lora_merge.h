// Native LoRA merge: a weight of the store becomes W0 + sum_i scale_i * up_i @ down_i, written
// in the store's type, without full-size float32 temporaries (docs/lora.md, "How the merge runs").
//
// W0 is the checkpoint's original tensor (f32, f16 or bf16 bits, C order, `out` rows of K
// values: a conv kernel [OC, IC, KH, KW] is OC rows of IC*KH*KW); up_i is [out, r_i] and
// down_i [r_i, K] (f32, f16 or bf16, converted to float32 exactly while they are packed). The terms are multiplied as one product with the ranks side by
// side (A = [scale_1 up_1 | scale_2 up_2 ...], B = [down_1; down_2 ...]), tile by tile on
// `threads` threads: a tile of W0 is converted to float32, A @ B is added (float32 FMAs), and
// the tile is converted to the stored type (f32 / f16 / bf16 / q8_0 / q5_0 / q4_0, by the same
// row conversions WeightStore::set uses) straight into the tensor's memory, or into one
// staging copy for memory the CPU cannot write in place (a GPU, ggml's repacked q4_0).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "weights.h"

namespace sdcpp {

struct LowRankTerm {
    const void* up;    // [out, rank]
    const void* down;  // [rank, K]
    ggml_type type;    // of up and down: f32, f16 or bf16 (a LoRA file's own dtype, read as it is)
    int64_t rank;
    float scale;
};

void merge_low_rank(WeightStore& store, const std::string& name, const void* original, ggml_type original_type,
                    int64_t out, const std::vector<LowRankTerm>& terms, int threads);

}  // namespace sdcpp
