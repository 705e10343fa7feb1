// Bindings of the vae part of the engine (filled in by its owner).
#include "common.h"

namespace sdcpp::bind {

void bind_vae(py::module_& m) { (void)m; }

}  // namespace sdcpp::bind
