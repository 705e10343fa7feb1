// Portable reference of the int8 attention's micro-kernels (attention_int8.h): plain loops,
// the rules the vector variants repeat bit for bit.
#include "attention_int8.h"

namespace sdcpp::kernels::cpu {

using namespace int8_attention;

namespace {

inline int32_t lo16(uint32_t w) { return static_cast<int16_t>(w & 0xffffu); }
inline int32_t hi16(uint32_t w) { return static_cast<int16_t>(w >> 16); }

void scores(const uint32_t* q, int rows, const uint32_t* ktile, int64_t dpairs, int32_t* S) {
    for (int r = 0; r < rows; ++r)
        for (int j = 0; j < kKeys; ++j) {
            const uint32_t* kg = ktile + (j / 16) * dpairs * 16 + j % 16;
            int32_t s = 0;
            for (int64_t p = 0; p < dpairs; ++p)
                s += lo16(q[r * dpairs + p]) * lo16(kg[p * 16]) + hi16(q[r * dpairs + p]) * hi16(kg[p * 16]);
            S[r * kKeys + j] = s;
        }
}

void softmax(const int32_t* S, int rows, const float* sq, const float* sk, int valid, float* M, float* L, float* alpha,
             int16_t* P) {
    float s[kKeys];
    for (int r = 0; r < rows; ++r) {
        float mx = -INFINITY;
        for (int j = 0; j < kKeys; ++j) {
            s[j] = j < valid ? static_cast<float>(S[r * kKeys + j]) * sq[r] * sk[j] : -INFINITY;
            mx = std::max(mx, s[j]);
        }
        const float mnew = std::max(M[r], mx);
        alpha[r] = rescale(M[r], mnew);
        M[r] = mnew;
        int32_t sum = 0;
        for (int j = 0; j < kKeys; ++j) {
            const int32_t p = static_cast<int32_t>(std::nearbyint(exp2_neg(s[j] - mnew) * kP));
            P[r * kKeys + j] = static_cast<int16_t>(p);
            sum += p;
        }
        L[r] = std::fma(L[r], alpha[r], static_cast<float>(sum));
    }
}

void pv(const int16_t* P, int rows, const uint32_t* vtile, const float* vs, const float* alpha, int64_t dvp, float* O) {
    for (int r = 0; r < rows; ++r)
        for (int64_t c = 0; c < dvp; ++c) {
            int32_t acc = 0;
            for (int kp = 0; kp < kKeys / 2; ++kp) {
                const uint32_t w = vtile[kp * dvp + c];
                acc += P[r * kKeys + 2 * kp] * lo16(w) + P[r * kKeys + 2 * kp + 1] * hi16(w);
            }
            float& o = O[r * dvp + c];
            o = std::fma(static_cast<float>(acc), vs[c], o * alpha[r]);
        }
}

}  // namespace

const AttentionInt8Kernels& attention_int8_portable() {
    static const AttentionInt8Kernels t{Level::Portable, "portable", scores, softmax, pv};
    return t;
}

}  // namespace sdcpp::kernels::cpu
