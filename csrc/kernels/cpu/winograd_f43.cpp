#include "winograd_f43.h"

namespace sdcpp::kernels::cpu {

const WinogradF43& winograd_f43_at(Level level) {
    if (const WinogradF43* t = winograd_f43_avx512(); t && runs(level, t->level)) return *t;
    if (const WinogradF43* t = winograd_f43_avx2(); t && runs(level, t->level)) return *t;
    return winograd_f43_portable();
}

const WinogradF43& winograd_f43() { return winograd_f43_at(active_level()); }

}  // namespace sdcpp::kernels::cpu
