// AVX-512 variant of the int8 attention's micro-kernels (attention_int8.h): 16 keys (scores)
// or 16 channels (P V) per vector, int16 pair products into int32 with vpdpwssd (AVX512-VNNI,
// one instruction) or vpmaddwd + vpaddd (the same sums without it); 4 query rows per register
// block. The softmax repeats the portable rules lane by lane, so the results agree bit for bit.
#include "attention_int8.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

namespace sdcpp::kernels::cpu {

using namespace int8_attention;

namespace {

#define SD_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,fma")))
#define SD_DOT(acc, a, b) _mm512_dpwssd_epi32(acc, a, b)
namespace vnni {
#include "attention_int8_avx512_body.h"
}  // namespace vnni
#undef SD_DOT
#undef SD_TARGET

#define SD_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma")))
#define SD_DOT(acc, a, b) _mm512_add_epi32(acc, _mm512_madd_epi16(a, b))
namespace plain {
#include "attention_int8_avx512_body.h"
}  // namespace plain
#undef SD_DOT
#undef SD_TARGET

}  // namespace

// The VNNI table (nullptr where the CPU lacks AVX512-VNNI) or the vpmaddwd + vpaddd one.
const AttentionInt8Kernels* attention_int8_avx512_with(bool vnni_dot) {
    static const AttentionInt8Kernels with_vnni{Level::Avx512, "avx512_vnni", vnni::scores, vnni::softmax, vnni::pv};
    static const AttentionInt8Kernels without{Level::Avx512, "avx512", plain::scores, plain::softmax, plain::pv};
    static const bool has_vnni = __builtin_cpu_supports("avx512vnni");
    return !vnni_dot ? &without : has_vnni ? &with_vnni : nullptr;
}

const AttentionInt8Kernels* attention_int8_avx512() {
    const AttentionInt8Kernels* t = attention_int8_avx512_with(true);
    return t ? t : attention_int8_avx512_with(false);
}

}  // namespace sdcpp::kernels::cpu

#else
namespace sdcpp::kernels::cpu {
const AttentionInt8Kernels* attention_int8_avx512_with(bool) { return nullptr; }
const AttentionInt8Kernels* attention_int8_avx512() { return nullptr; }
}  // namespace sdcpp::kernels::cpu
#endif
