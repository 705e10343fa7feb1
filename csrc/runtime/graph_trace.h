// A diagnostic of a graph's memory: which intermediate tensors are alive together at the
// largest point of the graph's execution order, the way ggml-alloc sees it (a tensor lives
// from the node that computes it to the last node that reads it or a view of it; views and
// in-place ops share their source's memory; graph outputs live to the end). It ignores
// fragmentation and ggml-alloc's own in-place reuse, so the real compute buffer
// (GraphRunner::measure) is at least this peak. Used to decide what to cut (bench/README.md).
#pragma once
#include <string>

#include "ggml.h"

namespace sdcpp {

// A text report: the peak live bytes, the node where it is reached, and the `top` largest
// tensors alive there (node index, op, shape, MiB).
std::string live_set_report(ggml_cgraph* graph, int top = 12);

// Where ggml-alloc actually places the tensors of at least `min_bytes` (CPU buffer type,
// allocated but never touched, then released): node span, offset, size; to see how much of
// the buffer is fragmentation. Every tensor of `ctx` (the graph's own context: nodes and
// inputs) is left without data afterwards, as GraphRunner::measure leaves them.
std::string placement_report(ggml_cgraph* graph, ggml_context* ctx, size_t min_bytes);

}  // namespace sdcpp
