// torch-compatible normal generators (see rng.h).
//
// Every floating-point operation below is written out one by one: where torch's compiled
// kernel fuses a multiply and an add (FMA) we call std::fma, everywhere else the product is
// rounded on its own. The compiler must not contract a*b+c on its own, hence the pragmas.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#elif defined(_MSC_VER)
#pragma fp_contract(off)
#endif

#include "rng.h"

#include <cmath>
#include <cstring>

#include "../runtime/error.h"

namespace sdcpp::sampling {

namespace {

inline uint32_t f2u(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float u2f(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float c(uint32_t bits) { return u2f(bits); }

// ---- torch's AVX2 Box-Muller (NormalFill16<float> with avx_mathfun.h), one lane ----------
// Transcribed from the instruction sequence of torch 2.13's x86-64 build (GCC, -mavx2 -mfma):
// the polynomial steps are fused multiply-adds there, so they are std::fma here.
// Origin of the algorithm and constants: avx_mathfun.h (Giovanni Garberoglio, 2012), the AVX
// port of sse_mathfun.h (Julien Pommier, 2007), both under the zlib licence, with polynomial
// coefficients from the Cephes library (Stephen L. Moshier). Reproducing torch's bits needs
// the same constants; see THIRD_PARTY_NOTICES.md.

// log256_ps for x in (0, 1] (the only inputs Box-Muller gives it).
float avx2_log(float x) {
    const float min_norm = c(0x00800000u);
    if (!(x > min_norm)) x = min_norm;  // _mm256_max_ps(x, min_norm_pos)
    uint32_t bits = f2u(x);
    int32_t imm0 = static_cast<int32_t>(bits >> 23);
    bits = (bits & ~0x7f800000u) | f2u(0.5f);
    x = u2f(bits);
    imm0 -= 0x7f;
    float e = static_cast<float>(imm0);
    e = e + 1.0f;
    const bool mask = x < c(0x3f3504f3u);  // cephes_SQRTHF
    const float tmp = mask ? x : 0.0f;
    x = x + -1.0f;
    e = e - (mask ? 1.0f : 0.0f);
    x = x + tmp;
    const float z = x * x;
    float y = std::fma(c(0x3d9021bbu), x, c(0xbdebd1b8u));  // p0*x + p1
    y = std::fma(y, x, c(0x3def251au));                     // p2
    y = std::fma(y, x, c(0xbdfe5d4fu));                     // p3
    y = std::fma(y, x, c(0x3e11e9bfu));                     // p4
    y = std::fma(y, x, c(0xbe2aae50u));                     // p5
    y = std::fma(y, x, c(0x3e4cceacu));                     // p6
    y = std::fma(y, x, c(0xbe7ffffcu));                     // p7
    y = std::fma(y, x, c(0x3eaaaaaau));                     // p8
    y = x * y;
    const float eq1 = e * c(0xb95e8083u);                    // e * q1
    y = std::fma(y, z, eq1);
    y = std::fma(-z, 0.5f, y);                               // y - 0.5*z
    x = x + y;
    return std::fma(e, c(0x3f318000u), x);                   // + e * q2
}

// sincos256_ps for theta >= 0.
void avx2_sincos(float theta, float* s, float* co) {
    const uint32_t sign_in = f2u(theta) & 0x80000000u;
    const float ax = u2f(f2u(theta) & 0x7fffffffu);
    const float y0 = ax * c(0x3fa2f983u);  // * 4/pi
    int32_t j = static_cast<int32_t>(y0);  // cvttps2dq (truncation)
    j = (j + 1) & ~1;
    const float yf = static_cast<float>(j);
    const uint32_t swap_sin = static_cast<uint32_t>(j & 4) << 29;
    const bool poly_mask = (j & 2) == 0;
    const uint32_t sign_sin = sign_in ^ swap_sin;
    float x = std::fma(yf, c(0xbf490000u), ax);  // - y*DP1
    x = std::fma(c(0xb97da000u), yf, x);         // - y*DP2
    x = std::fma(yf, c(0xb3222169u), x);         // - y*DP3
    const uint32_t sign_cos = static_cast<uint32_t>(~(j - 2) & 4) << 29;
    const float z = x * x;
    const float half_z = z * 0.5f;
    float yc = std::fma(c(0x37ccf5ceu), z, c(0xbab6061au));  // coscof p0*z + p1
    yc = std::fma(yc, z, c(0x3d2aaaa5u));                      // + p2
    yc = z * yc;
    yc = std::fma(z, yc, -half_z);
    yc = yc + 1.0f;
    float ys = std::fma(c(0xb94ca1f9u), z, c(0x3c08839eu));  // sincof p0*z + p1
    ys = std::fma(ys, z, c(0xbe2aaaa3u));                      // + p2
    ys = z * ys;
    ys = std::fma(x, ys, x);
    const float ysin2 = poly_mask ? ys : 0.0f;
    const float ysin1 = poly_mask ? 0.0f : yc;
    const float yc2 = yc - ysin1;
    const float ys2 = ys - ysin2;
    const float sin_v = ysin2 + ysin1;
    const float cos_v = ys2 + yc2;
    *s = u2f(f2u(sin_v) ^ sign_sin);
    *co = u2f(f2u(cos_v) ^ sign_cos);
}

void normal_fill_16_avx2(float* data) {
    const float two_pi = c(0x40c90fdbu);  // (float)(2*pi)
    for (int j = 0; j < 8; ++j) {
        const float u1 = 1.0f - data[j];
        const float u2 = data[j + 8];
        const float radius = std::sqrt(-2.0f * avx2_log(u1));
        const float theta = two_pi * u2;
        float s, co;
        avx2_sincos(theta, &s, &co);
        // torch: fmadd(radius*cos, std=1, mean=0); "+ 0.0f" gives the same result (also for -0).
        data[j] = radius * co + 0.0f;
        data[j + 8] = radius * s + 0.0f;
    }
}

// torch's portable NormalFill16 (DEFAULT capability): libm logf/sincosf, theta in double.
void normal_fill_16_scalar(float* data) {
    for (int j = 0; j < 8; ++j) {
        const float u1 = 1.0f - data[j];
        const float u2 = data[j + 8];
        const float radius = std::sqrt(-2.0f * std::log(u1));
        const float theta = static_cast<float>(2.0 * 3.14159265358979323846 * static_cast<double>(u2));
        float s, co;
#if defined(__GLIBC__)
        ::sincosf(theta, &s, &co);
#else
        s = std::sin(theta);
        co = std::cos(theta);
#endif
        data[j] = std::fma(radius * co, 1.0f, 0.0f);
        data[j + 8] = std::fma(radius * s, 1.0f, 0.0f);
    }
}

}  // namespace

// ------------------------------------------------------------------------------------------
// TorchCpuRng

TorchCpuRng::TorchCpuRng(uint64_t seed, bool avx2_path)
    : seed_(seed), avx2_(avx2_path), engine_(static_cast<uint32_t>(seed & 0xFFFFFFFFu)) {}

uint64_t TorchCpuRng::random64() {
    const uint64_t hi = engine_();
    const uint64_t lo = engine_();
    return (hi << 32) | lo;
}

double TorchCpuRng::uniform_double() {
    constexpr uint64_t mask = (uint64_t(1) << 53) - 1;
    return static_cast<double>(random64() & mask) * (1.0 / 9007199254740992.0);
}

double TorchCpuRng::normal_double() {
    if (has_cached_normal_) {
        has_cached_normal_ = false;
        return cached_normal_;
    }
    const double u1 = uniform_double();
    const double u2 = uniform_double();
    const double r = std::sqrt(-2.0 * std::log1p(-u2));
    const double theta = 2.0 * 3.14159265358979323846 * u1;
    cached_normal_ = r * std::sin(theta);
    has_cached_normal_ = true;
    return r * std::cos(theta);
}

void TorchCpuRng::randn(float* out, size_t n) {
    if (n == 0) return;
    if (n < 16) {
        for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(normal_double());
        return;
    }
    for (size_t i = 0; i < n; ++i) out[i] = uniform_float();
    auto fill16 = avx2_ ? normal_fill_16_avx2 : normal_fill_16_scalar;
    for (size_t i = 0; i + 16 <= n; i += 16) fill16(out + i);
    if (n % 16 != 0) {
        // torch redraws the last 16 uniforms and transforms them again.
        float* tail = out + n - 16;
        for (int i = 0; i < 16; ++i) tail[i] = uniform_float();
        fill16(tail);
    }
}

// ------------------------------------------------------------------------------------------
// Philox4x32-10 (Salmon et al. 2011; the constants curand and torch use)

void Philox4x32::block(const uint32_t ctr_in[4], const uint32_t key_in[2], uint32_t out[4]) {
    uint32_t ctr[4] = {ctr_in[0], ctr_in[1], ctr_in[2], ctr_in[3]};
    uint32_t key[2] = {key_in[0], key_in[1]};
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            key[0] += 0x9E3779B9u;
            key[1] += 0xBB67AE85u;
        }
        const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * ctr[0];
        const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * ctr[2];
        const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
        const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
        ctr[0] = hi1 ^ ctr[1] ^ key[0];
        ctr[1] = lo1;
        ctr[2] = hi0 ^ ctr[3] ^ key[1];
        ctr[3] = lo0;
    }
    for (int i = 0; i < 4; ++i) out[i] = ctr[i];
}

// ------------------------------------------------------------------------------------------
// TorchCudaRng
//
// torch (aten/src/ATen/native/cuda/DistributionTemplates.h, v2.13) draws randn for a float
// tensor of numel n with blocks of 256 threads, grid = min(ceil(n/256), SMs*blocks_per_SM);
// thread idx runs curand_init(seed, subsequence=idx, offset=generator offset) and, per loop
// round k, curand_normal4 -> 4 normals for elements idx + T*(4k + ii), T = 256*grid. The
// generator offset then grows by 4 * rounds. curand_init with an offset that is a multiple of
// 4 starts the Philox counter at (offset/4, 0, idx_lo, idx_hi); curand_normal4 turns the
// 4 words (a,b,c,d) of one block into (BM_sin(a,b), BM_cos(a,b), BM_sin(c,d), BM_cos(c,d)).
//
// Box-Muller as curand's _curand_box_muller: u = a*2^-32 + 2^-33, v = b*(2^-32*2pi) + half,
// s = sqrtf(-2 logf(u)), (s*sin v, s*cos v). On the GPU sin/cos are __sincosf (a hardware
// approximation) and v's multiply-add is fused; here v uses fmaf and sin/cos are libm's, so a
// GPU's values can differ in the last bits (abs. error of __sincosf ~ 2^-21).

TorchCudaRng::TorchCudaRng(uint64_t seed, uint64_t max_threads) : seed_(seed), max_threads_(max_threads) {}

namespace {

void box_muller_curand(uint32_t a, uint32_t b, float* r_sin, float* r_cos) {
    const float inv32 = 2.3283064e-10f;                 // 2^-32
    const float inv32_2pi = 2.3283064e-10f * 6.2831855f;  // 2^-32 * (float)2pi
    const float u = std::fma(static_cast<float>(a), inv32, inv32 / 2.0f);
    const float v = std::fma(static_cast<float>(b), inv32_2pi, inv32_2pi / 2.0f);
    const float s = std::sqrt(-2.0f * std::log(u));
    *r_sin = s * std::sin(v);
    *r_cos = s * std::cos(v);
}

}  // namespace

void TorchCudaRng::randn(float* out, size_t n) {
    if (n == 0) return;
    const uint64_t block = 256;
    uint64_t blocks = (n + block - 1) / block;
    if (max_threads_ > 0) blocks = std::min<uint64_t>(blocks, std::max<uint64_t>(1, max_threads_ / block));
    const uint64_t T = blocks * block;
    const uint64_t rounds = (n - 1) / (T * 4) + 1;
    const uint64_t base = offset_ / 4;
    const uint32_t key[2] = {static_cast<uint32_t>(seed_), static_cast<uint32_t>(seed_ >> 32)};
    for (size_t li = 0; li < n; ++li) {
        const uint64_t idx = li % T;
        const uint64_t q = li / T;
        const uint64_t k = q / 4, ii = q % 4;
        const uint64_t c01 = base + k;
        const uint32_t ctr[4] = {static_cast<uint32_t>(c01), static_cast<uint32_t>(c01 >> 32),
                                 static_cast<uint32_t>(idx), static_cast<uint32_t>(idx >> 32)};
        uint32_t w[4];
        Philox4x32::block(ctr, key, w);
        float s, co;
        if (ii < 2)
            box_muller_curand(w[0], w[1], &s, &co);
        else
            box_muller_curand(w[2], w[3], &s, &co);
        out[li] = (ii % 2 == 0) ? s : co;
    }
    offset_ += rounds * 4;
}

// ------------------------------------------------------------------------------------------

const std::vector<std::string>& rng_names() {
    static const std::vector<std::string> names = {"cpu", "cpu_scalar", "cuda"};
    return names;
}

std::unique_ptr<Rng> make_rng(const std::string& kind, uint64_t seed, uint64_t cuda_max_threads) {
    if (kind == "cpu") return std::make_unique<TorchCpuRng>(seed, true);
    if (kind == "cpu_scalar") return std::make_unique<TorchCpuRng>(seed, false);
    if (kind == "cuda") return std::make_unique<TorchCudaRng>(seed, cuda_max_threads);
    std::string msg = "unknown rng '" + kind + "'; valid: ";
    for (size_t i = 0; i < rng_names().size(); ++i) msg += (i ? ", " : "") + rng_names()[i];
    throw InvalidArgument(msg);
}

}  // namespace sdcpp::sampling
