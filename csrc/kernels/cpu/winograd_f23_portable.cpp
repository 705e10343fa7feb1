// Portable reference of the Winograd F(2x2, 3x3) transforms: 4-float generic vectors (SSE2 on
// x86-64, NEON on arm64, scalar code elsewhere), no ISA-specific code.
#include "winograd_f23.h"

namespace sdcpp::kernels::cpu {

namespace {

#define SD_TARGET
typedef float V __attribute__((vector_size(16)));
constexpr int L = 4;

inline void interleave2(const V* y, float* dst) {
    for (int l = 0; l < L; ++l)
        for (int k = 0; k < 2; ++k) dst[2 * l + k] = y[k][l];
}

inline void load9(const float* g, V* k) {
    for (int q = 0; q < 9; ++q)
        for (int l = 0; l < L; ++l) k[q][l] = g[9 * l + q];
}

#include "winograd_f23_body.h"
#undef SD_TARGET

}  // namespace

const WinogradF23& winograd_f23_portable() {
    static const WinogradF23 t{Level::Portable, input_tiles, output_tiles, kernel};
    return t;
}

}  // namespace sdcpp::kernels::cpu
