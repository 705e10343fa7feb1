#include "lowrank.h"

namespace sdcpp::kernels::cpu {

const LowRank& lowrank_at(Level level) {
    if (const LowRank* t = lowrank_avx512(); t && runs(level, t->level)) return *t;
    if (const LowRank* t = lowrank_avx2(); t && runs(level, t->level)) return *t;
    return lowrank_portable();
}

const LowRank& lowrank() { return lowrank_at(active_level()); }

}  // namespace sdcpp::kernels::cpu
