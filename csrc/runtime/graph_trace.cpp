#include "graph_trace.h"

#include <algorithm>
#include <cstdio>
#include <unordered_map>
#include <vector>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

namespace sdcpp {

namespace {

// The tensor whose memory `t` uses (ggml flattens view chains, so one step is enough).
const ggml_tensor* root_of(const ggml_tensor* t) { return t->view_src ? t->view_src : t; }

std::string describe(const ggml_tensor* t, int index) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "  node %5d  %-10s [%lld, %lld, %lld, %lld]  %8.1f MiB  %s\n", index, ggml_op_desc(t),
                  static_cast<long long>(t->ne[0]), static_cast<long long>(t->ne[1]), static_cast<long long>(t->ne[2]),
                  static_cast<long long>(t->ne[3]), double(ggml_nbytes(t)) / (1 << 20), t->name);
    return buf;
}

}  // namespace

std::string live_set_report(ggml_cgraph* graph, int top) {
    const int n = ggml_graph_n_nodes(graph);
    struct Span {
        int first = -1, last = -1;
    };
    std::unordered_map<const ggml_tensor*, Span> spans;  // memory-owning nodes only
    auto touch = [&](const ggml_tensor* t, int i) {
        auto it = spans.find(root_of(t));
        if (it != spans.end()) it->second.last = std::max(it->second.last, i);
    };
    for (int i = 0; i < n; ++i) {
        const ggml_tensor* node = ggml_graph_node(graph, i);
        if (!node->view_src) spans[node] = {i, i};
        touch(node, i);
        for (int j = 0; j < GGML_MAX_SRC; ++j)
            if (node->src[j]) touch(node->src[j], i);
    }
    for (auto& [t, s] : spans)
        if (t->flags & GGML_TENSOR_FLAG_OUTPUT) s.last = n - 1;
    // Live bytes per node: +size at first, -size after last.
    std::vector<long long> delta(size_t(n) + 1, 0);
    for (const auto& [t, s] : spans) {
        delta[size_t(s.first)] += static_cast<long long>(ggml_nbytes(t));
        delta[size_t(s.last) + 1] -= static_cast<long long>(ggml_nbytes(t));
    }
    long long live = 0, peak = 0;
    int at = 0;
    for (int i = 0; i < n; ++i) {
        live += delta[size_t(i)];
        if (live > peak) peak = live, at = i;
    }
    std::vector<std::pair<const ggml_tensor*, int>> alive;
    for (const auto& [t, s] : spans)
        if (s.first <= at && at <= s.last) alive.push_back({t, s.first});
    std::sort(alive.begin(), alive.end(), [](auto& a, auto& b) { return ggml_nbytes(a.first) > ggml_nbytes(b.first); });
    char head[160];
    std::snprintf(head, sizeof head, "peak live %.1f MiB at node %d of %d (%s), %zu tensors alive:\n",
                  double(peak) / (1 << 20), at, n, ggml_op_desc(ggml_graph_node(graph, at)), alive.size());
    std::string out = head;
    for (size_t k = 0; k < alive.size() && k < size_t(top); ++k) out += describe(alive[k].first, alive[k].second);
    return out;
}

std::string placement_report(ggml_cgraph* graph, ggml_context* ctx, size_t min_bytes) {
    ggml_gallocr_t ga = ggml_gallocr_new(ggml_backend_cpu_buffer_type());
    if (!ga || !ggml_gallocr_alloc_graph(ga, graph)) {
        if (ga) ggml_gallocr_free(ga);
        return "allocation failed\n";
    }
    const int n = ggml_graph_n_nodes(graph);
    std::unordered_map<const ggml_tensor*, std::pair<int, int>> spans;
    for (int i = 0; i < n; ++i) {
        const ggml_tensor* node = ggml_graph_node(graph, i);
        if (!node->view_src) spans[node] = {i, i};
        auto bump = [&](const ggml_tensor* t) {
            auto it = spans.find(root_of(t));
            if (it != spans.end()) it->second.second = std::max(it->second.second, i);
        };
        bump(node);
        for (int j = 0; j < GGML_MAX_SRC; ++j)
            if (node->src[j]) bump(node->src[j]);
    }
    const char* base = nullptr;
    for (const auto& [t, s] : spans)
        if (t->data && (!base || static_cast<const char*>(t->data) < base)) base = static_cast<const char*>(t->data);
    std::string out = "buffer " + std::to_string(ggml_gallocr_get_buffer_size(ga, 0) >> 20) + " MiB\n";
    for (int i = 0; i < n; ++i) {
        const ggml_tensor* t = ggml_graph_node(graph, i);
        auto it = spans.find(t);
        if (it == spans.end() || ggml_nbytes(t) < min_bytes || !t->data) continue;
        char buf[160];
        std::snprintf(buf, sizeof buf, "  nodes %5d-%5d  offset %7.1f MiB  size %7.1f MiB  [%lld %lld %lld]\n", it->second.first,
                      it->second.second, double(static_cast<const char*>(t->data) - base) / (1 << 20),
                      double(ggml_nbytes(t)) / (1 << 20), static_cast<long long>(t->ne[0]), static_cast<long long>(t->ne[1]),
                      static_cast<long long>(t->ne[2]));
        out += buf;
    }
    ggml_gallocr_free(ga);
    for (ggml_tensor* t = ggml_get_first_tensor(ctx); t; t = ggml_get_next_tensor(ctx, t)) {
        t->data = nullptr;
        t->buffer = nullptr;
    }
    return out;
}

}  // namespace sdcpp
