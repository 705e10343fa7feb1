// Random normal generators that reproduce PyTorch's torch.randn bit for bit.
//
//   "cpu"        torch.randn(shape, generator=torch.Generator().manual_seed(seed)) as torch
//                computes it on x86-64 CPUs with AVX2+FMA (every x86 CPU since ~2013; torch also
//                takes this path on AVX-512 machines): mt19937 uniforms, Box-Muller in blocks of
//                16 with torch's vectorised log/sincos (avx_mathfun). Emulated here lane by lane
//                in portable scalar code, so the numbers do not depend on the CPU we run on.
//   "cpu_scalar" the same generator through torch's non-vectorised kernel (torch on CPUs
//                without AVX2, or ATEN_CPU_CAPABILITY=default): libm logf/sincosf + fmaf. It
//                matches torch where both use the same libm (glibc here).
//   "cuda"       torch.randn(shape, device="cuda", generator=cuda_gen.manual_seed(seed)):
//                Philox4x32-10 with torch's per-thread subsequences and curand's Box-Muller
//                (A1111 "GPU" seeds). The integer stream is exact; the float transform uses
//                accurate sinf/cosf where the GPU uses __sincosf, so values can differ from a
//                GPU in the last bits (see docs in rng.cpp).
//
// Tensors of fewer than 16 elements take torch's scalar path (double Box-Muller with a cached
// second normal kept in the generator), exactly like torch. Successive randn calls continue
// the stream, as successive torch.randn calls on one generator do.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace sdcpp::sampling {

class Rng {
public:
    virtual ~Rng() = default;
    // Fill out[0..n) with standard normals; one call = one torch.randn of numel n.
    virtual void randn(float* out, size_t n) = 0;
    virtual std::unique_ptr<Rng> clone() const = 0;
    virtual std::string kind() const = 0;
    virtual uint64_t seed() const = 0;
};

// torch's CPUGeneratorImpl: mt19937 (seeded with the low 32 bits of the seed, as torch does)
// plus the cached second normal of the double Box-Muller path.
class TorchCpuRng final : public Rng {
public:
    TorchCpuRng(uint64_t seed, bool avx2_path);
    void randn(float* out, size_t n) override;
    std::unique_ptr<Rng> clone() const override { return std::make_unique<TorchCpuRng>(*this); }
    std::string kind() const override { return avx2_ ? "cpu" : "cpu_scalar"; }
    uint64_t seed() const override { return seed_; }

    // Raw draws (exposed for tests of the building blocks).
    uint32_t random() { return engine_(); }
    uint64_t random64();
    float uniform_float() { return static_cast<float>(engine_() & 0xFFFFFFu) * (1.0f / 16777216.0f); }
    double uniform_double();
    double normal_double();

private:
    uint64_t seed_;
    bool avx2_;
    std::mt19937 engine_;
    bool has_cached_normal_ = false;
    double cached_normal_ = 0.0;
};

// Philox4x32-10 as curand / torch's CUDA generator use it.
struct Philox4x32 {
    static void block(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);
};

class TorchCudaRng final : public Rng {
public:
    // max_threads: the launch width of torch's normal kernel on the GPU being imitated
    // (multiProcessorCount * maxThreadsPerMultiProcessor, rounded down to blocks of 256);
    // 0 = unlimited (each element gets its own thread, true for numel <= that width).
    TorchCudaRng(uint64_t seed, uint64_t max_threads = 0);
    void randn(float* out, size_t n) override;
    std::unique_ptr<Rng> clone() const override { return std::make_unique<TorchCudaRng>(*this); }
    std::string kind() const override { return "cuda"; }
    uint64_t seed() const override { return seed_; }
    uint64_t offset() const { return offset_; }  // torch's philox offset (a multiple of 4)

private:
    uint64_t seed_;
    uint64_t max_threads_;
    uint64_t offset_ = 0;
};

const std::vector<std::string>& rng_names();
// kind: one of rng_names(); throws InvalidArgument otherwise.
std::unique_ptr<Rng> make_rng(const std::string& kind, uint64_t seed, uint64_t cuda_max_threads = 0);

}  // namespace sdcpp::sampling
