#include "winograd_f43.h"

namespace sdcpp::kernels::cpu {

const WinogradF43& winograd_f43_at(Level level) {
    if (const WinogradF43* t = winograd_f43_avx512(); t && runs(level, t->level)) return *t;
    if (const WinogradF43* t = winograd_f43_avx2(); t && runs(level, t->level)) return *t;
    return winograd_f43_portable();
}

const WinogradF43& winograd_f43() { return winograd_f43_at(active_level()); }

void winograd_f43_kernel(const float* g, int64_t C, float* u, int64_t p_stride) {
    // G for points 0, +-1, +-2, infinity (rows), applied as (G g) G^T.
    static const float G[6][3] = {{0.25f, 0.0f, 0.0f},
                                  {-1.0f / 6, -1.0f / 6, -1.0f / 6},
                                  {-1.0f / 6, 1.0f / 6, -1.0f / 6},
                                  {1.0f / 24, 1.0f / 12, 1.0f / 6},
                                  {1.0f / 24, -1.0f / 12, 1.0f / 6},
                                  {0.0f, 0.0f, 1.0f}};
    for (int64_t c = 0; c < C; ++c) {
        const float* k = g + 9 * c;
        float t[6][3];
        for (int i = 0; i < 6; ++i)
            for (int j = 0; j < 3; ++j) t[i][j] = G[i][0] * k[j] + G[i][1] * k[3 + j] + G[i][2] * k[6 + j];
        for (int i = 0; i < 6; ++i)
            for (int j = 0; j < 6; ++j) u[(6 * i + j) * p_stride + c] = t[i][0] * G[j][0] + t[i][1] * G[j][1] + t[i][2] * G[j][2];
    }
}

}  // namespace sdcpp::kernels::cpu
