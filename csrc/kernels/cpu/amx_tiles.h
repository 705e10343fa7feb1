// ldtilecfg's 64-byte operand (palette 1) for the AMX variants (gemm_q8_amx.cpp, gemm_bf16_amx.cpp):
// each fills in its eight tiles' shapes and loads it per thread (their thread_begin hooks).
#pragma once
#include <cstdint>

namespace sdcpp::kernels::cpu {

struct alignas(64) AmxTileConfig {
    uint8_t palette = 1, start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};  // bytes per row of each tile
    uint8_t rows[16] = {};
};

// Tiles 0-7 with these row bytes and rows (the rest unused).
inline AmxTileConfig amx_tiles(const uint16_t (&colsb)[8], const uint8_t (&rows)[8]) {
    AmxTileConfig c;
    for (int i = 0; i < 8; ++i) c.colsb[i] = colsb[i], c.rows[i] = rows[i];
    return c;
}

}  // namespace sdcpp::kernels::cpu
