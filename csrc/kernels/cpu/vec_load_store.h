// Unaligned loads and stores of a GCC/clang vector type T (or a plain float) for the kernel
// bodies written once over a vector type (winograd_f23_body.h, winograd_f43_body.h). Included by
// those bodies inside each variant file's anonymous namespace, after it defines SD_TARGET, so
// the functions take the variant's ISA.
#pragma once

template <typename T>
SD_TARGET inline T ld(const float* p) {
    T v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}
template <typename T>
SD_TARGET inline void st(float* p, const T& v) {
    __builtin_memcpy(p, &v, sizeof v);
}
