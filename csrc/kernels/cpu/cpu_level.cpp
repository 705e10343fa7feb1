#include "cpu_level.h"

#include <algorithm>

#include <atomic>
#include <cstdlib>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

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

struct AmxBits {
    bool tile = false, int8 = false, bf16 = false;
};

// CPUID leaf 7 EDX: AMX-BF16 bit 22, AMX-TILE bit 24, AMX-INT8 bit 25 (read directly: not every
// compiler's __builtin_cpu_supports knows the AMX names).
AmxBits amx_cpuid() {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return {};
    return {((d >> 24) & 1u) != 0, ((d >> 25) & 1u) != 0, ((d >> 22) & 1u) != 0};
}

// Tile instructions fault unless the OS saves the tile state: XCR0 bits 17 (XTILECFG) and 18
// (XTILEDATA) set, and on Linux (5.16+) the process asked for the 8 KiB XTILEDATA state once
// (arch_prctl ARCH_REQ_XCOMP_PERM); the permission holds for every thread of the process.
bool amx_os_enabled() {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1u)) return false;  // OSXSAVE: xgetbv usable
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if (((lo >> 17) & 3u) != 3u) return false;
#if defined(__linux__)
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;  // other OSes: no AMX until someone checks how they grant it
#endif
}

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
    const AmxBits amx = amx_cpuid();
    if (bf16 && amx.tile && amx.int8 && amx_os_enabled()) d.levels.push_back(Level::Amx);
    d.features = {{"avx2", SD_HAS("avx2") != 0},         {"fma", SD_HAS("fma") != 0},
                  {"f16c", SD_HAS("f16c") != 0},         {"avx512f", SD_HAS("avx512f") != 0},
                  {"avx512_vnni", SD_HAS("avx512vnni") != 0}, {"avx512_bf16", SD_HAS("avx512bf16") != 0}};
    d.features.push_back({"amx_tile", amx.tile});
    d.features.push_back({"amx_bf16", amx.bf16});
    d.features.push_back({"amx_int8", amx.int8});
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
        case Level::Amx: return 4;
    }
    return 0;
}

Level cap_from_env() {
    const char* v = std::getenv("SDCPP_CPU_LEVEL");
    if (!v || !*v) return Level::Amx;
    try {
        return parse_level(v);
    } catch (const InvalidArgument&) {
        return Level::Amx;  // an unusable value must not stop the engine; system_info shows the level
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
        case Level::Amx: return "amx";
    }
    return "portable";
}

Level parse_level(const std::string& name) {
    for (Level l : {Level::Portable, Level::Neon, Level::Avx2, Level::Avx512, Level::Avx512Bf16, Level::Amx})
        if (name == level_name(l)) return l;
    throw InvalidArgument("unknown CPU level '" + name + "'; valid: portable, neon, avx2, avx512, avx512_bf16, amx");
}

const std::vector<Level>& supported_levels() { return detected().levels; }

bool supported(Level l) {
    const auto& v = supported_levels();
    return std::find(v.begin(), v.end(), l) != v.end();
}

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
