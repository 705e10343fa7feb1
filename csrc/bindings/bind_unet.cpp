// Bindings of the unet part of the engine (filled in by its owner).
#include "common.h"

namespace sdcpp::bind {

void bind_unet(py::module_& m) { (void)m; }

}  // namespace sdcpp::bind
