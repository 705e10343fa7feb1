// GraphRunner: builds a compute graph once per input shape, allocates it through ggml's
// scheduler on the model's device (falling back to the CPU for ops the device lacks), caches
// it, and runs it. Weights are never copied: graphs reference WeightStore tensors directly.
//
// Memory: all graphs of a runner share ONE set of compute buffers (the scheduler's, one per
// backend), re-planned whenever another graph runs; it grows to the largest graph run since
// the last clear() and never holds two shapes' buffers side by side. The cached graphs
// themselves are only tensor metadata (no data), kept for the kMaxGraphs most recently used
// shapes. clear() frees both; the Python pipeline calls it when a smaller shape follows a
// larger one (sdcpp.memory) so the buffers shrink again.
#pragma once
#include <array>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "device.h"
#include "ggml.h"

namespace sdcpp {

// One built graph: its context, inputs by name, and outputs in order.
struct BuiltGraph {
    ggml_context* ctx = nullptr;
    ggml_cgraph* graph = nullptr;
    std::map<std::string, ggml_tensor*> inputs;
    std::vector<ggml_tensor*> outputs;
    uint64_t id = 0;  // unique per GraphRunner (a new graph may reuse a freed one's address)
    // Every node's sources as built. ggml's scheduler rewrites node->src in place to point at
    // its copies of a source on another backend (a graph input the scheduler keeps on the CPU,
    // an op falling back to the CPU), and those copies live in the scheduler's own context,
    // which the next split frees. A cached graph split again would then read the stale copy,
    // which nobody fills (zeros on Vulkan: wrong results), or freed memory (the CLIP abort):
    // The node order, too, is put back: a backend's graph_optimize (ggml-vulkan's) reorders
    // the caller's node array in place, starting from the order it finds, so a cached graph
    // split again came out in another order each run. ggml-alloc, which reuses the previous
    // placements by node index when the node count matches and the sizes fit, then gave
    // tensors another tensor's offsets (live tensors could overlap), and the compute buffer
    // grew from run to run of the same graph.
    // restore_as_built() puts the sources and the order back before each split.
    std::vector<std::pair<ggml_tensor*, std::array<ggml_tensor*, GGML_MAX_SRC>>> sources;  // in build order
    void restore_as_built();
    ~BuiltGraph();
};

// A builder receives an empty no-alloc context and fills inputs/outputs of `g`.
using GraphBuilder = std::function<void(ggml_context* ctx, BuiltGraph& g)>;

class GraphRunner {
   public:
    GraphRunner(DevicePtr device, size_t max_nodes = 16384);
    ~GraphRunner();
    GraphRunner(const GraphRunner&) = delete;
    GraphRunner& operator=(const GraphRunner&) = delete;

    // The graph for `key` (a description of the input shapes), built on first use.
    BuiltGraph& get(const std::string& key, const GraphBuilder& build);

    // Allocate (reusing the scheduler's buffers), copy inputs, compute. Inputs are raw host
    // bytes matching each input tensor exactly.
    void run(BuiltGraph& g, const std::map<std::string, const void*>& inputs);
    // Copy output i back to the host as float32 (outputs are f32 by construction).
    void read_output(const BuiltGraph& g, size_t i, float* dst) const;

    // Bytes of compute buffers `g` needs on this runner's device, planned on a scheduler of its
    // own and freed again (nothing is computed; host buffers are only reserved, never touched,
    // so this costs no resident memory): the pre-flight memory check.
    size_t measure(BuiltGraph& g);

    void clear();  // drop cached graphs and compute buffers (frees memory)
    size_t compute_buffer_size() const;
    size_t cached_graphs() const { return cache_.size(); }
    static constexpr size_t kMaxGraphs = 8;
    const DevicePtr& device() const { return device_; }
    // Nodes of the last run / of all runs that the scheduler placed off the device (on the CPU
    // fallback); always 0 on the CPU.
    size_t last_off_device_nodes() const { return last_off_device_; }
    static size_t total_off_device_nodes() { return total_off_device_; }

   private:
    DevicePtr device_;
    size_t max_nodes_;
    ggml_backend_sched_t sched_ = nullptr;
    std::map<std::string, std::unique_ptr<BuiltGraph>> cache_;
    std::list<std::string> lru_;  // cache_ keys, most recently used first
    uint64_t next_id_ = 0;
    uint64_t last_id_ = 0;  // the graph whose placements ggml-alloc holds
    size_t last_off_device_ = 0;
    static inline size_t total_off_device_ = 0;
    void ensure_sched();
};

}  // namespace sdcpp
