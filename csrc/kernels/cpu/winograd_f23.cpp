#include "winograd_f23.h"

namespace sdcpp::kernels::cpu {

const WinogradF23& winograd_f23_at(Level level) {
    if (const WinogradF23* t = winograd_f23_avx512(); t && runs(level, t->level)) return *t;
    if (const WinogradF23* t = winograd_f23_avx2(); t && runs(level, t->level)) return *t;
    return winograd_f23_portable();
}

const WinogradF23& winograd_f23() { return winograd_f23_at(active_level()); }

}  // namespace sdcpp::kernels::cpu
