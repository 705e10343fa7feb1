#include "cpu_level.h"

#include <atomic>
#include <cstdlib>

#include "../../runtime/error.h"

namespace sdcpp::kernels::cpu {

namespace {

struct Detected {
    std::vector<Level> levels;
    std::vector<std::pair<std::string, bool>> features;
};

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// GCC's and Clang's __builtin_cpu_supports check CPUID and, for AVX/AVX-512, that the OS saves
// the wider registers (XGETBV), so a hypervisor that hides AVX-512 state reports no AVX-512.
#define SD_HAS(f) __builtin_cpu_supports(f)
Detected detect() {
    __builtin_cpu_init();
    Detected d;
    d.levels.push_back(Level::Portable);
    const bool avx2 = SD_HAS("avx2") && SD_HAS("fma") && SD_HAS("f16c");
    const bool avx512 = avx2 && SD_HAS("avx512f") && SD_HAS("avx512bw") && SD_HAS("avx512dq") && SD_HAS("avx512vl");
    const bool bf16 = avx512 && SD_HAS("avx512bf16");
    if (avx2) d.levels.push_back(Level::Avx2);
    if (avx512) d.levels.push_back(Level::Avx512);
    if (bf16) d.levels.push_back(Level::Avx512Bf16);
    d.features = {{"avx2", SD_HAS("avx2") != 0},         {"fma", SD_HAS("fma") != 0},
                  {"f16c", SD_HAS("f16c") != 0},         {"avx512f", SD_HAS("avx512f") != 0},
                  {"avx512_vnni", SD_HAS("avx512vnni") != 0}, {"avx512_bf16", SD_HAS("avx512bf16") != 0}};
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
    d.features.push_back({"amx_tile", SD_HAS("amx-tile") != 0});
    d.features.push_back({"amx_bf16", SD_HAS("amx-bf16") != 0});
    d.features.push_back({"amx_int8", SD_HAS("amx-int8") != 0});
#endif
    return d;
}
#undef SD_HAS
#elif defined(__aarch64__)
Detected detect() {
    // Advanced SIMD (NEON) is part of every AArch64 CPU.
    return {{Level::Portable, Level::Neon}, {{"neon", true}}};
}
#else
Detected detect() { return {{Level::Portable}, {}}; }
#endif

const Detected& detected() {
    static const Detected d = detect();
    return d;
}

int rank(Level l) {
    switch (l) {
        case Level::Portable: return 0;
        case Level::Neon:
        case Level::Avx2: return 1;
        case Level::Avx512: return 2;
        case Level::Avx512Bf16: return 3;
    }
    return 0;
}

Level cap_from_env() {
    const char* v = std::getenv("SDCPP_CPU_LEVEL");
    if (!v || !*v) return Level::Avx512Bf16;
    try {
        return parse_level(v);
    } catch (const InvalidArgument&) {
        return Level::Avx512Bf16;  // an unusable value must not stop the engine; system_info shows the level
    }
}

std::atomic<int>& cap_storage() {
    static std::atomic<int> cap{static_cast<int>(cap_from_env())};
    return cap;
}

}  // namespace

const char* level_name(Level l) {
    switch (l) {
        case Level::Portable: return "portable";
        case Level::Neon: return "neon";
        case Level::Avx2: return "avx2";
        case Level::Avx512: return "avx512";
        case Level::Avx512Bf16: return "avx512_bf16";
    }
    return "portable";
}

Level parse_level(const std::string& name) {
    for (Level l : {Level::Portable, Level::Neon, Level::Avx2, Level::Avx512, Level::Avx512Bf16})
        if (name == level_name(l)) return l;
    throw InvalidArgument("unknown CPU level '" + name + "'; valid: portable, neon, avx2, avx512, avx512_bf16");
}

const std::vector<Level>& supported_levels() { return detected().levels; }

Level detected_level() { return detected().levels.back(); }

bool runs(Level have, Level need) {
    if (need == Level::Portable) return true;
    const bool arm = need == Level::Neon, have_arm = have == Level::Neon;
    return arm == have_arm && rank(have) >= rank(need);
}

Level level_cap() { return static_cast<Level>(cap_storage().load(std::memory_order_relaxed)); }

Level active_level() {
    const Level cap = level_cap();
    Level best = Level::Portable;
    for (Level l : supported_levels())
        if (rank(l) <= rank(cap)) best = l;
    return best;
}

Level set_level_cap(Level cap) {
    cap_storage().store(static_cast<int>(cap), std::memory_order_relaxed);
    return active_level();
}

std::vector<std::pair<std::string, bool>> reported_features() { return detected().features; }

}  // namespace sdcpp::kernels::cpu
