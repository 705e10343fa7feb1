// The Winograd F(4x4, 3x3) tile transforms, written once over a vector type and included by
// each variant file (winograd_f43_portable.cpp, _avx2.cpp, _avx512.cpp) inside its own
// anonymous namespace, after it defines:
//   SD_TARGET        the function target attribute of the variant (empty for portable)
//   V, L             a GCC/clang vector of L floats (its arithmetic compiles to the ISA)
//   interleave4(y, dst)  dst[4 l + k] = y[k][l] for l < L, k < 4 (64 bytes per lane group)
//   load9(g, k)      k[q][l] = g[9 l + q] for q < 9, l < L (L channels' 3x3 kernels)
// The input and kernel transforms run over channels (L at a time, scalar tail), the output
// transform over tiles (L at a time, then tile by tile at the right edge), so all are pure
// vector arithmetic on contiguous loads / stores.

#include "vec_load_store.h"

// o = B^T d for one column of six values (points 0, +-1, +-2, infinity).
template <typename T>
SD_TARGET inline void bt6(T d0, T d1, T d2, T d3, T d4, T d5, T* o) {
    const T a = d4 - d2, b = d3 - d1;
    o[0] = a + (d0 - d2) * 4.0f;
    o[1] = (d3 + d4) - (d1 + d2) * 4.0f;
    o[2] = (d4 - d3) + (d1 - d2) * 4.0f;
    o[3] = a + b * 2.0f;
    o[4] = a - b * 2.0f;
    o[5] = (d5 - d3) + (d1 - d3) * 4.0f;
}

// o = A^T m for one column of six values.
template <typename T>
SD_TARGET inline void at4(T m0, T m1, T m2, T m3, T m4, T m5, T* o) {
    const T a = m1 + m2, b = m1 - m2, c = m3 + m4, d = m3 - m4;
    o[0] = m0 + a + c;
    o[1] = b + d * 2.0f;
    o[2] = a + c * 4.0f;
    o[3] = b + d * 8.0f + m5;
}

// One tile, T channels at a time: s points at channel c of the patch's top-left value,
// `cs` floats between columns, `rs` between rows; o[p * ps] gets transformed value p.
template <typename T>
SD_TARGET inline void input_tile(const float* s, int64_t cs, int64_t rs, float* o, int64_t ps) {
    T t[6][6];
    for (int j = 0; j < 6; ++j) {
        const float* c = s + j * cs;
        T col[6];
        bt6(ld<T>(c), ld<T>(c + rs), ld<T>(c + 2 * rs), ld<T>(c + 3 * rs), ld<T>(c + 4 * rs), ld<T>(c + 5 * rs), col);
        for (int i = 0; i < 6; ++i) t[i][j] = col[i];
    }
    for (int i = 0; i < 6; ++i) {
        T r[6];
        bt6(t[i][0], t[i][1], t[i][2], t[i][3], t[i][4], t[i][5], r);
        for (int k = 0; k < 6; ++k) st(o + (6 * i + k) * ps, r[k]);
    }
}

SD_TARGET void input_tiles(const float* patch, int64_t C, int64_t ntiles, float* v, int64_t p_stride) {
    const int64_t rs = (4 * ntiles + 2) * C;
    for (int64_t t = 0; t < ntiles; ++t) {
        const float* s = patch + 4 * t * C;
        float* o = v + t * C;
        int64_t c = 0;
        for (; c + L <= C; c += L) input_tile<V>(s + c, C, rs, o + c, p_stride);
        for (; c < C; ++c) input_tile<float>(s + c, C, rs, o + c, p_stride);
    }
}

// One group of T tiles: y[r][k] is output row r, column k of each tile.
template <typename T>
SD_TARGET inline void output_tile(const float* m, int64_t ps, T y[4][4]) {
    T s[4][6];
    for (int j = 0; j < 6; ++j) {
        T col[4];
        at4(ld<T>(m + j * ps), ld<T>(m + (6 + j) * ps), ld<T>(m + (12 + j) * ps), ld<T>(m + (18 + j) * ps),
            ld<T>(m + (24 + j) * ps), ld<T>(m + (30 + j) * ps), col);
        for (int r = 0; r < 4; ++r) s[r][j] = col[r];
    }
    for (int r = 0; r < 4; ++r) at4(s[r][0], s[r][1], s[r][2], s[r][3], s[r][4], s[r][5], y[r]);
}

SD_TARGET void output_tiles(const float* m, int64_t p_stride, int64_t ntiles, int rows, int64_t cols, float bias,
                            const float* res, int64_t res_stride, float* out, int64_t out_stride) {
    int64_t t = 0;
    const V vb = V{} + bias;
    for (; t + L <= ntiles && 4 * (t + L) <= cols; t += L) {
        V y[4][4];
        output_tile<V>(m + t, p_stride, y);
        for (int r = 0; r < rows; ++r) {
            float* o = out + r * out_stride + 4 * t;
            // The residual is read before the interleave writes o: res may be out itself (the
            // output written over its residual, winograd_f43_strips.h).
            V rv[4] = {};
            if (res)
                for (int q = 0; q < 4; ++q) rv[q] = ld<V>(res + r * res_stride + 4 * t + q * L);
            interleave4(y[r], o);
            for (int q = 0; q < 4; ++q) {
                V z = ld<V>(o + q * L) + vb;
                if (res) z += rv[q];
                st(o + q * L, z);
            }
        }
    }
    for (; t < ntiles && 4 * t < cols; ++t) {
        float y[4][4];
        output_tile<float>(m + t, p_stride, y);
        const int64_t n = cols - 4 * t < 4 ? cols - 4 * t : 4;
        for (int r = 0; r < rows; ++r) {
            float* o = out + r * out_stride + 4 * t;
            for (int64_t k = 0; k < n; ++k) o[k] = y[r][k] + bias + (res ? res[r * res_stride + 4 * t + k] : 0.0f);
        }
    }
}

// G = D G' with D = diag(1/4, -1/6, -1/6, 1/24, 1/24, 1) and G' = [1 0 0; 1 1 1; 1 -1 1; 1 2 4;
// 1 -2 4; 0 0 1]: U = G g G^T = D (G' g G'^T) D. G' g G'^T takes only additions and products
// by powers of two (exact, so a fused multiply-add rounds as the separate ones would), then one
// product by D_i D_j per value: the same bits at every level, whether or not the compiler
// contracts, and one rounding fewer than applying G's thirds directly.
constexpr double kD43[6] = {1.0 / 4, -1.0 / 6, -1.0 / 6, 1.0 / 24, 1.0 / 24, 1.0};

// o = G' k for one column of three values.
template <typename T>
SD_TARGET inline void gp3(T k0, T k1, T k2, T* o) {
    const T a = k0 + k2, b = k0 + k2 * 4.0f, c = k1 * 2.0f;
    o[0] = k0;
    o[1] = a + k1;
    o[2] = a - k1;
    o[3] = b + c;
    o[4] = b - c;
    o[5] = k2;
}

// U for T channels at a time: k[ky * 3 + kx] holds each channel's kernel value.
template <typename T>
SD_TARGET inline void kernel_tile(const T* k, float* u, int64_t ps) {
    static const struct Scale {
        float s[6][6];
        Scale() {
            for (int i = 0; i < 6; ++i)
                for (int j = 0; j < 6; ++j) s[i][j] = static_cast<float>(kD43[i] * kD43[j]);
        }
    } scale;
    T t[6][3];  // G' g, column by column
    for (int j = 0; j < 3; ++j) {
        T col[6];
        gp3(k[j], k[3 + j], k[6 + j], col);
        for (int i = 0; i < 6; ++i) t[i][j] = col[i];
    }
    for (int i = 0; i < 6; ++i) {  // (G' g) G'^T, then D_i D_j
        T r[6];
        gp3(t[i][0], t[i][1], t[i][2], r);
        for (int j = 0; j < 6; ++j) st(u + (6 * i + j) * ps, T(r[j] * scale.s[i][j]));
    }
}

SD_TARGET void kernel(const float* g, int64_t C, float* u, int64_t p_stride) {
    int64_t c = 0;
    for (; c + L <= C; c += L) {
        V k[9];
        load9(g + 9 * c, k);
        kernel_tile<V>(k, u + c, p_stride);
    }
    for (; c < C; ++c) kernel_tile<float>(g + 9 * c, u + c, p_stride);
}
