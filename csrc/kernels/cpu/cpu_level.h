// The one place that decides which CPU instruction set the custom kernels use.
//
// Levels, lowest first: portable (plain C++), then avx2 (AVX2 + FMA + F16C: every AMD Zen,
// Intel since Haswell) or neon (arm64), avx512 (F + BW + DQ + VL), avx512_bf16 (adds
// AVX512-BF16), amx (adds AMX-TILE + AMX-INT8 tiles, Sapphire Rapids and later, and the OS's
// permission to use them, asked for once at detection). The level is detected at run time from CPUID (with the OS's register-state
// support), never from the build machine's flags, so one binary runs its best kernels on
// every CPU. SDCPP_CPU_LEVEL=<name> (read once, at first use) or set_level_cap() caps it:
// tests and benchmarks use that to run every variant the machine has.
#pragma once
#include <string>
#include <vector>

namespace sdcpp::kernels::cpu {

enum class Level : int { Portable = 0, Neon = 1, Avx2 = 2, Avx512 = 3, Avx512Bf16 = 4, Amx = 5 };

const char* level_name(Level l);
// "portable", "neon", "avx2", "avx512", "avx512_bf16", "amx"; throws InvalidArgument otherwise.
Level parse_level(const std::string& name);

// The levels this CPU (and OS) supports, portable first.
const std::vector<Level>& supported_levels();
// Whether this CPU (and OS) supports `l`.
bool supported(Level l);
// The highest supported level, uncapped.
Level detected_level();
// The level the kernels use now: the highest supported level not above the cap.
Level active_level();
// Cap the level (e.g. Avx2 on an AVX-512 machine); returns the resulting active level.
Level set_level_cap(Level cap);
Level level_cap();

// Whether `have` may run code written for `need` (same ISA family, not above).
bool runs(Level have, Level need);

// CPU features reported next to the level (AMX tiles, VNNI ...), for system_info.
std::vector<std::pair<std::string, bool>> reported_features();

}  // namespace sdcpp::kernels::cpu
