// A debugging aid for non-CPU backends: SDCPP_CHECK_OPS=<bound> makes every graph run node by
// node, and each computed node is recomputed on the CPU from the very source bytes the device
// read (snapshotted just before the node runs). Nodes whose device result differs from the CPU's
// by more than <bound> (relative L2) are printed with their op, shapes, strides and types. It is
// how a wrong op is pinned down with the real shapes of a real model (docs/build.md, "Vulkan").
// Slow (one synchronisation and one CPU op per node): never on by default.
//
// SDCPP_NODE_BY_NODE=1 only runs each graph node by node (one ggml graph compute per node, no
// CPU recheck): the workaround for lavapipe (Mesa 22.3), where whole-graph submits of ggml-vulkan
// corrupt the heap after a few runs (docs/build.md, "Vulkan").
#pragma once
#include "ggml-backend.h"

namespace sdcpp {

// The bound from SDCPP_CHECK_OPS (0 when unset: no checking).
double op_check_bound();

// Installs the checker as the scheduler's eval callback (a no-op when the bound is 0).
void install_op_check(ggml_backend_sched_t sched);

}  // namespace sdcpp
