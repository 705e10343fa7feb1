// The Winograd F(2x2, 3x3) transforms, written once over a vector type and included by each
// variant file (winograd_f23_portable.cpp, _avx2.cpp, _avx512.cpp) inside its own anonymous
// namespace, after it defines:
//   SD_TARGET        the function target attribute of the variant (empty for portable)
//   V, L             a GCC/clang vector of L floats (its arithmetic compiles to the ISA)
//   interleave2(y, dst)  dst[2 l + k] = y[k][l] for l < L, k < 2
//   load9(g, k)      k[q][l] = g[9 l + q] for q < 9, l < L (L channels' 3x3 kernels)
// The input and kernel transforms run over channels (L at a time, scalar tail), the output
// transform over tiles (L at a time, then tile by tile at the right edge). The scalar and vector
// paths share one template, so the order of operations, hence every result bit, is the same at
// every level.

#include "vec_load_store.h"

// One tile, T channels at a time: s points at channel c of the patch's top-left value, `cs`
// floats between columns, `rs` between rows; o[p * ps] gets transformed value p.
template <typename T>
SD_TARGET inline void input_tile(const float* s, int64_t cs, int64_t rs, float* o, int64_t ps) {
    T t[4][4];  // B^T d, column by column
    for (int j = 0; j < 4; ++j) {
        const float* c = s + j * cs;
        const T d0 = ld<T>(c), d1 = ld<T>(c + rs), d2 = ld<T>(c + 2 * rs), d3 = ld<T>(c + 3 * rs);
        t[0][j] = d0 - d2;
        t[1][j] = d1 + d2;
        t[2][j] = d2 - d1;
        t[3][j] = d1 - d3;
    }
    for (int i = 0; i < 4; ++i) {  // (B^T d) B
        st(o + (4 * i + 0) * ps, T(t[i][0] - t[i][2]));
        st(o + (4 * i + 1) * ps, T(t[i][1] + t[i][2]));
        st(o + (4 * i + 2) * ps, T(t[i][2] - t[i][1]));
        st(o + (4 * i + 3) * ps, T(t[i][1] - t[i][3]));
    }
}

SD_TARGET void input_tiles(const float* patch, int64_t C, int64_t ntiles, float* v, int64_t p_stride) {
    const int64_t rs = (2 * ntiles + 2) * C;
    for (int64_t t = 0; t < ntiles; ++t) {
        const float* s = patch + 2 * t * C;
        float* o = v + t * C;
        int64_t c = 0;
        for (; c + L <= C; c += L) input_tile<V>(s + c, C, rs, o + c, p_stride);
        for (; c < C; ++c) input_tile<float>(s + c, C, rs, o + c, p_stride);
    }
}

// One group of T tiles: y[r][k] is output row r, column k of each tile (before the bias).
template <typename T>
SD_TARGET inline void output_tile(const float* m, int64_t ps, T y[2][2]) {
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

SD_TARGET void output_tiles(const float* m, int64_t p_stride, int64_t ntiles, int rows, int64_t cols, float bias,
                            float* out, int64_t out_stride) {
    int64_t t = 0;
    const V vb = V{} + bias;
    for (; t + L <= ntiles && 2 * (t + L) <= cols; t += L) {
        V y[2][2];
        output_tile<V>(m + t, p_stride, y);
        for (int r = 0; r < rows; ++r) {
            y[r][0] += vb;
            y[r][1] += vb;
            interleave2(y[r], out + r * out_stride + 2 * t);
        }
    }
    for (; t < ntiles && 2 * t < cols; ++t) {
        float y[2][2];
        output_tile<float>(m + t, p_stride, y);
        const int64_t n = cols - 2 * t < 2 ? cols - 2 * t : 2;
        for (int r = 0; r < rows; ++r) {
            float* o = out + r * out_stride + 2 * t;
            for (int64_t k = 0; k < n; ++k) o[k] = y[r][k] + bias;
        }
    }
}

// U = G g G^T for T channels: k[ky * 3 + kx] holds each channel's kernel value.
template <typename T>
SD_TARGET inline void kernel_tile(const T* k, float* u, int64_t ps) {
    T t[4][3];  // G g
    for (int j = 0; j < 3; ++j) {
        t[0][j] = k[j];
        t[1][j] = 0.5f * (k[j] + k[3 + j] + k[6 + j]);
        t[2][j] = 0.5f * (k[j] - k[3 + j] + k[6 + j]);
        t[3][j] = k[6 + j];
    }
    for (int i = 0; i < 4; ++i) {  // (G g) G^T
        st(u + (4 * i + 0) * ps, t[i][0]);
        st(u + (4 * i + 1) * ps, T(0.5f * (t[i][0] + t[i][1] + t[i][2])));
        st(u + (4 * i + 2) * ps, T(0.5f * (t[i][0] - t[i][1] + t[i][2])));
        st(u + (4 * i + 3) * ps, t[i][2]);
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
