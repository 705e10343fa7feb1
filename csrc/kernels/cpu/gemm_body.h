// The packed product's micro-kernel and B packing, written once over a vector type and included
// by each x86 variant file (gemm_avx2.cpp, gemm_avx512.cpp) inside its anonymous namespace, after
// it defines:
//   SD_TARGET           the function target attribute of the variant
//   V, L                a GCC/clang vector of L floats (its arithmetic compiles to the ISA; a*b+c
//                       contracts to FMA under the target's fma)
//   MR, NR              the register tile: MR rows of C by NR = 2 L columns, 2 MR accumulators
//   row_to_f32(dst, src, type, n)  one row of B (f32 / f16 / bf16) to f32, with the ISA's converts
//   LEVEL               the variant's level
// and includes gemm_pack.h (outside its namespaces); this then defines kTable.
static_assert(NR == 2 * L, "the micro-kernel holds two vectors per row of C");

SD_TARGET void pack_b(const void* B, GemmB type, int64_t ldb, int64_t n0, int64_t nn, int64_t k0, int64_t kc,
                      float* Bp) {
#define ROW_TO_F32 row_to_f32
    SDCPP_PACK_B_BODY(NR)
#undef ROW_TO_F32
}

// Per k: two loads of B and MR broadcasts of A feed 2 MR fused multiply-adds, so the FMA ports,
// not the loads, bound it.
SD_TARGET void micro(int64_t kc, const float* A, int64_t lda, const float* Bp, float* C, int64_t ldc, bool accumulate) {
    V c0[MR], c1[MR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) c0[i] = c1[i] = V{};
    for (int64_t k = 0; k < kc; ++k, Bp += NR) {
        V b0, b1;
        __builtin_memcpy(&b0, Bp, sizeof b0);
        __builtin_memcpy(&b1, Bp + L, sizeof b1);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
            const float a = A[i * lda + k];
            c0[i] = b0 * a + c0[i];
            c1[i] = b1 * a + c1[i];
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
        float* c = C + i * ldc;
        if (accumulate) {
            V o0, o1;
            __builtin_memcpy(&o0, c, sizeof o0);
            __builtin_memcpy(&o1, c + L, sizeof o1);
            c0[i] += o0;
            c1[i] += o1;
        }
        __builtin_memcpy(c, &c0[i], sizeof c0[i]);
        __builtin_memcpy(c + L, &c1[i], sizeof c1[i]);
    }
}

const GemmKernels kTable{LEVEL, MR, NR, micro, pack_b, row_to_f32};
