// The AVX-512 int8 attention micro-kernels (attention_int8_avx512.cpp), compiled twice: with
// SD_DOT = vpdpwssd (AVX512-VNNI) and with vpmaddwd + vpaddd, each under its own SD_TARGET so
// the table without VNNI never holds a VNNI instruction. Included inside a namespace.

constexpr int R = 4;  // query rows per register block

// acc + the pair products of a and b (int16 pairs per int32 lane)
SD_TARGET inline __m512i dot2(__m512i acc, __m512i a, __m512i b) { return SD_DOT(acc, a, b); }

SD_TARGET inline __m512 exp2_neg16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-127.0f));
    const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(kExp2[0]);
    for (int i = 1; i < kExp2Terms; ++i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2[i]));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

SD_TARGET void scores(const uint32_t* q, int rows, const uint32_t* ktile, int64_t dpairs, int32_t* S) {
    constexpr int G = kKeys / 16;
    for (int r0 = 0; r0 < rows; r0 += R) {
        __m512i acc[R][G];
        for (int r = 0; r < R; ++r)
            for (int g = 0; g < G; ++g) acc[r][g] = _mm512_setzero_si512();
        for (int64_t p = 0; p < dpairs; ++p) {
            __m512i kv[G];
            for (int g = 0; g < G; ++g) kv[g] = _mm512_loadu_si512(ktile + (g * dpairs + p) * 16);
            for (int r = 0; r < R; ++r) {
                const __m512i qb = _mm512_set1_epi32(static_cast<int>(q[(r0 + r) * dpairs + p]));
                for (int g = 0; g < G; ++g) acc[r][g] = dot2(acc[r][g], qb, kv[g]);
            }
        }
        for (int r = 0; r < R; ++r)
            for (int g = 0; g < G; ++g) _mm512_storeu_si512(S + (r0 + r) * kKeys + g * 16, acc[r][g]);
    }
}

SD_TARGET void softmax(const int32_t* S, int rows, const float* sq, const float* sk, int valid, float* M, float* L,
                       float* alpha, int16_t* P) {
    constexpr int NV = kKeys / 16;
    __mmask16 in[NV];  // the tile's keys (past Lk: -inf)
    for (int i = 0; i < NV; ++i) {
        const int nv = std::max(0, std::min(16, valid - 16 * i));
        in[i] = static_cast<__mmask16>(nv >= 16 ? 0xffffu : (1u << nv) - 1u);
    }
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    for (int r = 0; r < rows; ++r) {
        __m512 s[NV];
        __m512 mx = ninf;
        const __m512 qs = _mm512_set1_ps(sq[r]);
        for (int i = 0; i < NV; ++i) {
            const __m512 si = _mm512_cvtepi32_ps(_mm512_loadu_si512(S + r * kKeys + 16 * i));
            s[i] = _mm512_mask_mov_ps(ninf, in[i], _mm512_mul_ps(_mm512_mul_ps(si, qs), _mm512_loadu_ps(sk + 16 * i)));
            mx = _mm512_max_ps(mx, s[i]);
        }
        const float mnew = std::max(M[r], _mm512_reduce_max_ps(mx));
        alpha[r] = rescale(M[r], mnew);
        M[r] = mnew;
        const __m512 mv = _mm512_set1_ps(mnew);
        __m512i sum = _mm512_setzero_si512();
        for (int i = 0; i < NV; ++i) {
            const __m512i p = _mm512_cvtps_epi32(_mm512_mul_ps(exp2_neg16(_mm512_sub_ps(s[i], mv)), _mm512_set1_ps(kP)));
            sum = _mm512_add_epi32(sum, p);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(P + r * kKeys + 16 * i), _mm512_cvtepi32_epi16(p));
        }
        L[r] = std::fma(L[r], alpha[r], static_cast<float>(_mm512_reduce_add_epi32(sum)));
    }
}

// R rows x NC vectors of 16 channels starting at c; the last one only on the lanes of `tail`
// (dvp is a multiple of 8: a last half vector).
template <int NC>
SD_TARGET inline void pv_block(const int16_t* P, const uint32_t* vtile, const float* vs, const float* alpha, int64_t dvp,
                               float* O, int r0, int64_t c, __mmask16 tail) {
    __m512i acc[R][NC];
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < NC; ++j) acc[r][j] = _mm512_setzero_si512();
    for (int kp = 0; kp < kKeys / 2; ++kp) {
        __m512i vv[NC];
        for (int j = 0; j < NC; ++j)
            vv[j] = _mm512_maskz_loadu_epi32(j == NC - 1 ? tail : static_cast<__mmask16>(0xffff), vtile + kp * dvp + c + 16 * j);
        for (int r = 0; r < R; ++r) {
            int32_t pw;
            std::memcpy(&pw, P + (r0 + r) * kKeys + 2 * kp, 4);
            const __m512i pb = _mm512_set1_epi32(pw);
            for (int j = 0; j < NC; ++j) acc[r][j] = dot2(acc[r][j], pb, vv[j]);
        }
    }
    for (int r = 0; r < R; ++r) {
        const __m512 a = _mm512_set1_ps(alpha[r0 + r]);
        for (int j = 0; j < NC; ++j) {
            const __mmask16 m = j == NC - 1 ? tail : static_cast<__mmask16>(0xffff);
            float* o = O + (r0 + r) * dvp + c + 16 * j;
            _mm512_mask_storeu_ps(o, m, _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][j]), _mm512_maskz_loadu_ps(m, vs + c + 16 * j),
                                                        _mm512_mul_ps(_mm512_maskz_loadu_ps(m, o), a)));
        }
    }
}

SD_TARGET void pv(const int16_t* P, int rows, const uint32_t* vtile, const float* vs, const float* alpha, int64_t dvp,
                  float* O) {
    const int64_t nvec = (dvp + 15) / 16;
    const __mmask16 tail = dvp % 16 ? static_cast<__mmask16>(0x00ff) : static_cast<__mmask16>(0xffff);
    for (int r0 = 0; r0 < rows; r0 += R)
        for (int64_t c0 = 0; c0 < nvec;) {
            const int64_t nc = std::min<int64_t>(4, nvec - c0);
            const __mmask16 t = c0 + nc == nvec ? tail : static_cast<__mmask16>(0xffff);
            switch (nc) {
                case 1: pv_block<1>(P, vtile, vs, alpha, dvp, O, r0, c0 * 16, t); break;
                case 2: pv_block<2>(P, vtile, vs, alpha, dvp, O, r0, c0 * 16, t); break;
                case 3: pv_block<3>(P, vtile, vs, alpha, dvp, O, r0, c0 * 16, t); break;
                default: pv_block<4>(P, vtile, vs, alpha, dvp, O, r0, c0 * 16, t); break;
            }
            c0 += nc;
        }
}
