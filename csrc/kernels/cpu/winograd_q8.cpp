#include "winograd_q8.h"

#include <cstring>

#include "gemm_q8.h"
#include "ggml.h"

namespace sdcpp::kernels::cpu {

namespace {

typedef float V __attribute__((vector_size(16)));  // SSE2 / NEON width: no target needed
typedef int32_t VI __attribute__((vector_size(16)));
constexpr int L = 4;

template <typename T>
inline T ld(const float* p) {
    T v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

// One 32-value block as gemm_q8_detail::quantize_block computes it, bit for bit, on generic
// vectors: amax, d = f16(amax / 127), q = x (127 / amax) rounded half to even by adding and
// subtracting 1.5 2^23 (exact for |v| <= 2^22: the sum's rounding is the rounding to an
// integer, in the default rounding mode as nearbyint's), then clamped as ggml's packs do. It
// runs every pass over 16/9 of the kernel's values, hence not the scalar libm rounding.
// No fused multiply-add of the scaling into the rounding (an FMA target would round once where
// the reference rounds x id first): separate statements (clang) and fp-contract off (GCC).
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
inline float quantize_block(const float* x, int8_t* q) {
    V a = V{};
    for (int i = 0; i < 32; i += L) {
        const V v = ld<V>(x + i);
        const V m = v < 0 ? -v : v;
        a = m > a ? m : a;  // a NaN value leaves amax as it is, as quantize_block
    }
    float amax = 0.0f;
    for (int l = 0; l < L; ++l) amax = a[l] > amax ? a[l] : amax;
    const float d = ggml_fp16_to_fp32(ggml_fp32_to_fp16(amax / 127.0f));
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    const V magic = V{} + 12582912.0f;  // 1.5 2^23
    for (int i = 0; i < 32; i += L) {
        const V scaled = ld<V>(x + i) * id;
        V r = scaled + magic;
        r = r - magic;
        r = r > 127.0f ? V{} + 127.0f : r;
        r = r >= -128.0f ? r : V{} - 128.0f;  // NaN compares false: -128, as quantize_block
        const VI n = __builtin_convertvector(r, VI);
        for (int l = 0; l < L; ++l) q[i + l] = static_cast<int8_t>(n[l]);
    }
    return d;
}

}  // namespace

void winograd_q8_quantize(const float* u, int P, int64_t C, uint8_t* dst, int64_t p_stride) {
    for (int p = 0; p < P; ++p) {
        uint8_t* row = dst + p * p_stride;
        for (int64_t b = 0; b < C / kQ8Block; ++b) {
            uint8_t* blk = row + b * kQ8BlockBytes;
            const float d = quantize_block(u + p * C + b * kQ8Block, reinterpret_cast<int8_t*>(blk + 2));
            const ggml_fp16_t h = ggml_fp32_to_fp16(d);  // d is f16-rounded already: exact
            std::memcpy(blk, &h, 2);
        }
    }
}

namespace {

// One F(2x2, 3x3) tile, T output channels at a time (A^T M A, as winograd_f23_body.h's
// output_tile).
template <typename T>
inline void output_tile2(const float* m, int64_t ps, T y[2][2]) {
    T s[2][4];  // A^T M
    for (int j = 0; j < 4; ++j) {
        const T m0 = ld<T>(m + j * ps), m1 = ld<T>(m + (4 + j) * ps), m2 = ld<T>(m + (8 + j) * ps),
                m3 = ld<T>(m + (12 + j) * ps);
        s[0][j] = m0 + m1 + m2;
        s[1][j] = m1 - m2 - m3;
    }
    for (int r = 0; r < 2; ++r) {  // (A^T M) A
        y[r][0] = s[r][0] + s[r][1] + s[r][2];
        y[r][1] = s[r][1] - s[r][2] - s[r][3];
    }
}

// o = A^T m for one column of six values (as winograd_f43_body.h's at4).
template <typename T>
inline void at4(T m0, T m1, T m2, T m3, T m4, T m5, T* o) {
    const T a = m1 + m2, b = m1 - m2, c = m3 + m4, d = m3 - m4;
    o[0] = m0 + a + c;
    o[1] = b + d * 2.0f;
    o[2] = a + c * 4.0f;
    o[3] = b + d * 8.0f + m5;
}

// One F(4x4, 3x3) tile, T output channels at a time (as winograd_f43_body.h's output_tile).
template <typename T>
inline void output_tile4(const float* m, int64_t ps, T y[4][4]) {
    T s[4][6];
    for (int j = 0; j < 6; ++j) {
        T col[4];
        at4(ld<T>(m + j * ps), ld<T>(m + (6 + j) * ps), ld<T>(m + (12 + j) * ps), ld<T>(m + (18 + j) * ps),
            ld<T>(m + (24 + j) * ps), ld<T>(m + (30 + j) * ps), col);
        for (int r = 0; r < 4; ++r) s[r][j] = col[r];
    }
    for (int r = 0; r < 4; ++r) at4(s[r][0], s[r][1], s[r][2], s[r][3], s[r][4], s[r][5], y[r]);
}

}  // namespace

namespace {

// The output transform of one strip of tiles, M x M outputs per tile (F(2,3): 2, F(4,3): 4).
template <int M>
void q8_output(const float* m, int64_t p_stride, int64_t OC, int64_t oc0, int64_t oc1, int64_t ntiles, int rows,
               int64_t cols, const float* bias, float* out, int64_t out_stride, int64_t plane) {
    auto tile = [&](const auto* mt, auto (&y)[M][M]) {
        if constexpr (M == 4) output_tile4(mt, p_stride, y);
        else output_tile2(mt, p_stride, y);
    };
    for (int64_t t = 0; t < ntiles && M * t < cols; ++t) {
        const float* mt = m + t * OC;
        const int n = cols - M * t < M ? int(cols - M * t) : M;
        float* o = out + M * t;
        int64_t oc = oc0;
        for (; oc + L <= oc1; oc += L) {
            V y[M][M];
            tile(mt + oc, y);
            const V b = bias ? ld<V>(bias + oc) : V{};
            for (int r = 0; r < rows; ++r)
                for (int k = 0; k < n; ++k) {
                    const V v = y[r][k] + b;
                    for (int l = 0; l < L; ++l) o[(oc + l) * plane + r * out_stride + k] = v[l];
                }
        }
        for (; oc < oc1; ++oc) {
            float y[M][M];
            tile(mt + oc, y);
            const float b = bias ? bias[oc] : 0.0f;
            for (int r = 0; r < rows; ++r)
                for (int k = 0; k < n; ++k) o[oc * plane + r * out_stride + k] = y[r][k] + b;
        }
    }
}

}  // namespace

void winograd_f43_q8_output(const float* m, int64_t p_stride, int64_t OC, int64_t oc0, int64_t oc1, int64_t ntiles,
                            int rows, int64_t cols, const float* bias, float* out, int64_t out_stride, int64_t plane) {
    q8_output<4>(m, p_stride, OC, oc0, oc1, ntiles, rows, cols, bias, out, out_stride, plane);
}

void winograd_f23_q8_output(const float* m, int64_t p_stride, int64_t OC, int64_t oc0, int64_t oc1, int64_t ntiles,
                            int rows, int64_t cols, const float* bias, float* out, int64_t out_stride, int64_t plane) {
    q8_output<2>(m, p_stride, OC, oc0, oc1, ntiles, rows, cols, bias, out, out_stride, plane);
}

}  // namespace sdcpp::kernels::cpu
