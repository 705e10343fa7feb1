// AVX-512 variant of the packed product: a 12 x 32 tile of C in 24 zmm accumulators; per k step
// two B loads and twelve broadcasts feed 24 FMAs, so the two FMA ports, not the loads, bound it.
#include "gemm.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include "gemm_pack.h"

#define SD_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c")))

namespace sdcpp::kernels::cpu {

namespace {

typedef __m512 V;
constexpr int L = 16;
constexpr int MR = 12, NR = 32;

SD_TARGET void row_to_f32(float* dst, const char* src, GemmB type, int64_t n) {
    int64_t i = 0;
    if (type == GemmB::F32) {
        std::memcpy(dst, src, static_cast<size_t>(n) * 4);
        return;
    }
    const uint16_t* h = reinterpret_cast<const uint16_t*>(src);
    if (type == GemmB::F16) {
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + i))));
        for (; i < n; ++i) dst[i] = gemm_detail::half_to_float(h[i]);
    } else {
        for (; i + 16 <= n; i += 16) {
            const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + i)));
            _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
        }
        for (; i < n; ++i) dst[i] = gemm_detail::bf16_to_float(h[i]);
    }
}
constexpr Level LEVEL = Level::Avx512;
#include "gemm_body.h"

}  // namespace

const GemmKernels* gemm_avx512() { return &kTable; }

}  // namespace sdcpp::kernels::cpu

#else
namespace sdcpp::kernels::cpu {
const GemmKernels* gemm_avx512() { return nullptr; }
}  // namespace sdcpp::kernels::cpu
#endif
