// ggml's backends as sdcpp reaches them. The engine talks to the CPU backend only through ggml's
// registry (a device, its proc addresses, generic buffer calls) and never links ggml-cpu's own
// symbols: in a portable build (GGML_BACKEND_DL, SD_NATIVE=OFF) the CPU backend is one of several
// shared modules, one per instruction-set level, and ggml loads the best one for the running CPU
// from the folder the extension lives in. A native (static) build registers it at link time;
// the same calls serve both.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "ggml-backend.h"

namespace sdcpp {

// Loads the dynamic backends once (portable builds; a no-op in static ones). Every use of the
// registry below calls it first.
void ensure_backends_loaded();

// The folder ggml loaded its backend modules from ("" in a static build).
std::string backend_dir();

// The CPU device (throws Error when the build has none).
ggml_backend_dev_t cpu_device();

// Thread count of a CPU backend, through the registry's "ggml_backend_set_n_threads".
void set_cpu_threads(ggml_backend_t cpu, int n);

// A CPU buffer over memory we own (a mapped file), without a copy.
ggml_backend_buffer_t cpu_buffer_from_ptr(void* ptr, size_t size);

// What the CPU backend in use was compiled for: ggml's feature list ("AVX2" -> "1", ...).
std::vector<std::pair<std::string, std::string>> cpu_backend_features();
bool cpu_backend_has(const char* feature);

// Runs a graph of context-allocated tensors on a fresh CPU backend (tests and kernel bindings).
bool compute_on_cpu(ggml_cgraph* graph, int threads);

}  // namespace sdcpp
