#include "graph.h"

#include "error.h"
#include "op_check.h"

#include <cstdio>
#include "ggml-alloc.h"
#include "ggml-backend.h"

namespace sdcpp {

BuiltGraph::~BuiltGraph() {
    if (ctx) ggml_free(ctx);
}

namespace {
bool is_view(const ggml_tensor* t) {
    return t->op == GGML_OP_NONE || t->op == GGML_OP_VIEW || t->op == GGML_OP_RESHAPE || t->op == GGML_OP_PERMUTE ||
           t->op == GGML_OP_TRANSPOSE;
}
}  // namespace

void BuiltGraph::restore_as_built() {
    ggml_tensor** nodes = ggml_graph_nodes(graph);
    for (size_t i = 0; i < sources.size(); ++i) {
        auto& [node, srcs] = sources[i];
        nodes[i] = node;
        for (int j = 0; j < GGML_MAX_SRC; ++j) node->src[j] = srcs[size_t(j)];
    }
}

GraphRunner::GraphRunner(DevicePtr device, size_t max_nodes) : device_(std::move(device)), max_nodes_(max_nodes) {}

GraphRunner::~GraphRunner() {
    cache_.clear();
    if (sched_) ggml_backend_sched_free(sched_);
}

void GraphRunner::ensure_sched() {
    if (sched_) return;
    std::vector<ggml_backend_t> backends;
    backends.push_back(device_->backend());
    if (!device_->is_cpu()) backends.push_back(device_->cpu());  // the CPU must come last
    sched_ = ggml_backend_sched_new(backends.data(), nullptr, static_cast<int>(backends.size()), max_nodes_,
                                    /*parallel=*/false, /*op_offload=*/true);
    if (!sched_) throw Error("failed to create the ggml scheduler");
}

BuiltGraph& GraphRunner::get(const std::string& key, const GraphBuilder& build) {
    auto it = cache_.find(key);
    if (it != cache_.end()) {
        lru_.remove(key);  // a handful of keys: a linear scan is nothing next to a graph run
        lru_.push_front(key);
        return *it->second;
    }
    auto g = std::make_unique<BuiltGraph>();
    ggml_init_params params{};
    params.mem_size = ggml_tensor_overhead() * max_nodes_ + ggml_graph_overhead_custom(max_nodes_, false);
    params.no_alloc = true;
    g->ctx = ggml_init(params);
    if (!g->ctx) throw Error("ggml_init failed for a graph context");
    g->graph = ggml_new_graph_custom(g->ctx, max_nodes_, false);
    build(g->ctx, *g);
    for (auto& kv : g->inputs) ggml_set_input(kv.second);
    for (ggml_tensor* out : g->outputs) {
        ggml_set_output(out);
        ggml_build_forward_expand(g->graph, out);
    }
    g->sources.resize(size_t(ggml_graph_n_nodes(g->graph)));
    for (int i = 0; i < ggml_graph_n_nodes(g->graph); ++i) {
        ggml_tensor* node = ggml_graph_node(g->graph, i);
        g->sources[size_t(i)].first = node;
        for (int j = 0; j < GGML_MAX_SRC; ++j) g->sources[size_t(i)].second[size_t(j)] = node->src[j];
    }
    // Keep the most recently used shapes only: each holds a context of tensor metadata (the
    // compute buffers are shared, see graph.h). Evicting the least recently used one, not the
    // first key in order (which could be the graph in use).
    while (cache_.size() >= kMaxGraphs && !lru_.empty()) {
        auto victim = cache_.find(lru_.back());
        if (victim != cache_.end()) {
            if (victim->second->id == last_id_) last_id_ = 0;
            cache_.erase(victim);
        }
        lru_.pop_back();
    }
    g->id = ++next_id_;
    auto& ref = *g;
    cache_[key] = std::move(g);
    lru_.push_front(key);
    return ref;
}

void GraphRunner::run(BuiltGraph& g, const std::map<std::string, const void*>& inputs) {
    ensure_sched();
    ggml_backend_sched_reset(sched_);
    // A graph that ran before still points into the compute buffers as they were then; another
    // graph may have grown (reallocated) them since, and ggml-alloc skips tensors whose data is
    // set, so it would write into freed memory. Let ggml-alloc place every graph tensor afresh.
    for (ggml_tensor* t = ggml_get_first_tensor(g.ctx); t; t = ggml_get_next_tensor(g.ctx, t)) {
        t->data = nullptr;
        t->buffer = nullptr;
    }
    // ggml-alloc also reuses the previous graph's placements (by node index) whenever node
    // counts match and sizes fit, which is only valid for that same graph: plan a different
    // graph afresh (two graphs of equal node count but different topology would share memory).
    if (g.id != last_id_) {
        g.restore_as_built();
        if (!ggml_backend_sched_reserve(sched_, g.graph))
            throw Error("out of memory on " + device_->info().name + " allocating the compute graph");
        last_id_ = g.id;
    }
    g.restore_as_built();
    if (!ggml_backend_sched_alloc_graph(sched_, g.graph))
        throw Error("out of memory on " + device_->info().name + " allocating the compute graph");
    for (auto& kv : g.inputs) {
        auto it = inputs.find(kv.first);
        if (it == inputs.end()) throw InvalidArgument("graph input '" + kv.first + "' was not provided");
        ggml_backend_tensor_set(kv.second, it->second, 0, ggml_nbytes(kv.second));
    }
    // Nodes the scheduler put on another backend than the device (the CPU fallback): the device
    // tests assert there are none (off_device_nodes()).
    last_off_device_ = 0;
    if (!device_->is_cpu()) {
        for (int i = 0; i < ggml_graph_n_nodes(g.graph); ++i) {
            ggml_tensor* node = ggml_graph_node(g.graph, i);
            // views (of an input the scheduler keeps on the CPU) compute nothing
            if (is_view(node)) continue;
            ggml_backend_t b = ggml_backend_sched_get_tensor_backend(sched_, node);
            if (b && b != device_->backend()) {
                ++last_off_device_;
                if (op_check_bound() > 0)
                    std::fprintf(stderr, "[op-check] %s %s runs on %s\n", ggml_op_desc(node), node->name, ggml_backend_name(b));
            }
        }
        total_off_device_ += last_off_device_;
    }
    ggml_backend_sched_set_eval_callback(sched_, nullptr, nullptr);
    install_op_check(sched_);
    enum ggml_status st = ggml_backend_sched_graph_compute(sched_, g.graph);
    if (st != GGML_STATUS_SUCCESS) throw Error(std::string("graph compute failed: ") + ggml_status_to_string(st));
}

size_t GraphRunner::measure(BuiltGraph& g) {
    std::vector<ggml_backend_t> backends;
    backends.push_back(device_->backend());
    if (!device_->is_cpu()) backends.push_back(device_->cpu());
    ggml_backend_sched_t s = ggml_backend_sched_new(backends.data(), nullptr, static_cast<int>(backends.size()),
                                                    max_nodes_, /*parallel=*/false, /*op_offload=*/true);
    if (!s) throw Error("failed to create the ggml scheduler");
    auto reset = [&] {
        for (ggml_tensor* t = ggml_get_first_tensor(g.ctx); t; t = ggml_get_next_tensor(g.ctx, t)) {
            t->data = nullptr;
            t->buffer = nullptr;
        }
    };
    reset();
    g.restore_as_built();
    const bool ok = ggml_backend_sched_reserve(s, g.graph);
    size_t total = 0;
    for (int i = 0; ok && i < ggml_backend_sched_get_n_backends(s); ++i)
        total += ggml_backend_sched_get_buffer_size(s, ggml_backend_sched_get_backend(s, i));
    ggml_backend_sched_free(s);
    reset();
    g.restore_as_built();  // s's copies are gone with it
    last_id_ = 0;  // the running scheduler plans its next graph afresh
    if (!ok) throw Error("out of memory on " + device_->info().name + " planning the compute graph");
    return total;
}

void GraphRunner::read_output(const BuiltGraph& g, size_t i, float* dst) const {
    SD_CHECK(i < g.outputs.size(), "no such graph output");
    ggml_tensor* t = g.outputs[i];
    SD_CHECK(t->type == GGML_TYPE_F32, "graph outputs must be f32");
    ggml_backend_tensor_get(t, dst, 0, ggml_nbytes(t));
}

void GraphRunner::clear() {
    cache_.clear();
    lru_.clear();
    last_id_ = 0;
    if (sched_) {
        ggml_backend_sched_free(sched_);
        sched_ = nullptr;
    }
}

size_t GraphRunner::compute_buffer_size() const {
    if (!sched_) return 0;
    size_t total = 0;
    for (int i = 0; i < ggml_backend_sched_get_n_backends(sched_); ++i)
        total += ggml_backend_sched_get_buffer_size(sched_, ggml_backend_sched_get_backend(sched_, i));
    return total;
}

}  // namespace sdcpp
