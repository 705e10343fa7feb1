// Portable reference of the Winograd F(4x4, 3x3) transforms: 4-float generic vectors (SSE2 on
// x86-64, NEON on arm64, scalar code elsewhere), no ISA-specific code.
#include "winograd_f43.h"

namespace sdcpp::kernels::cpu {

namespace {

#define SD_TARGET
typedef float V __attribute__((vector_size(16)));
constexpr int L = 4;

inline void interleave4(const V* y, float* dst) {
    for (int l = 0; l < L; ++l)
        for (int k = 0; k < 4; ++k) dst[4 * l + k] = y[k][l];
}

inline void load9(const float* g, V* k) {
    for (int q = 0; q < 9; ++q)
        for (int l = 0; l < L; ++l) k[q][l] = g[9 * l + q];
}

#include "winograd_f43_body.h"
#undef SD_TARGET

}  // namespace

const WinogradF43& winograd_f43_portable() {
    static const WinogradF43 t{Level::Portable, input_tiles, output_tiles, kernel};
    return t;
}

}  // namespace sdcpp::kernels::cpu
