#include "op_check.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "backends.h"
#include "ggml.h"

namespace sdcpp {

namespace {

bool computes(const ggml_tensor* t) {
    switch (t->op) {
        case GGML_OP_NONE: case GGML_OP_VIEW: case GGML_OP_RESHAPE: case GGML_OP_PERMUTE: case GGML_OP_TRANSPOSE:
            return false;
        default:
            return true;
    }
}

// Bytes a (possibly strided) tensor spans from its data pointer.
size_t span(const ggml_tensor* t) { return ggml_nbytes(t); }

std::vector<float> as_f32(const ggml_tensor* shape, const void* bytes) {
    // Reads the logical elements of a tensor laid out with `shape`'s strides.
    std::vector<float> out;
    out.reserve(ggml_nelements(shape));
    const char* base = static_cast<const char*>(bytes);
    for (int64_t i3 = 0; i3 < shape->ne[3]; ++i3)
        for (int64_t i2 = 0; i2 < shape->ne[2]; ++i2)
            for (int64_t i1 = 0; i1 < shape->ne[1]; ++i1)
                for (int64_t i0 = 0; i0 < shape->ne[0]; ++i0) {
                    const char* p = base + i0 * shape->nb[0] + i1 * shape->nb[1] + i2 * shape->nb[2] + i3 * shape->nb[3];
                    if (shape->type == GGML_TYPE_F32) out.push_back(*reinterpret_cast<const float*>(p));
                    else if (shape->type == GGML_TYPE_F16) out.push_back(ggml_fp16_to_fp32(*reinterpret_cast<const ggml_fp16_t*>(p)));
                    else return {};
                }
    return out;
}

void describe(const ggml_tensor* t, char* buf, size_t n) {
    std::snprintf(buf, n, "%s[%lld,%lld,%lld,%lld|nb %zu,%zu,%zu,%zu]%s", ggml_type_name(t->type), (long long)t->ne[0],
                  (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3], t->nb[0], t->nb[1], t->nb[2], t->nb[3],
                  ggml_is_contiguous(t) ? "" : " non-contig");
}

uint64_t fnv(const std::vector<char>& b) {
    uint64_t h = 1469598103934665603ull;
    for (char c : b) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    return h;
}

struct State {
    double bound = 0;
    // each computed node's output bytes as it left the device, to catch a source that another
    // node overwrote before this one read it (an allocation fault rather than a kernel fault)
    std::unordered_map<const ggml_tensor*, uint64_t> produced;
    std::vector<std::vector<char>> srcs;  // the current node's sources as the device held them
};

State& state() {
    static State s;
    return s;
}

bool callback(ggml_tensor* t, bool ask, void*) {
    State& s = state();
    if (std::getenv("SDCPP_NODE_BY_NODE")) return ask ? computes(t) : true;
    if (!computes(t)) return false;
    if (ask) {
        s.srcs.assign(GGML_MAX_SRC, {});
        for (int i = 0; i < GGML_MAX_SRC && t->src[i]; ++i) {
            ggml_tensor* src = t->src[i];
            if (!src->data || (!src->buffer && !(src->view_src && src->view_src->buffer))) continue;
            s.srcs[i].resize(span(src));
            ggml_backend_tensor_get(src, s.srcs[i].data(), 0, span(src));
            auto it = s.produced.find(src);
            if (it != s.produced.end() && it->second != fnv(s.srcs[i]))
                std::fprintf(stderr, "[op-check] %s %s: source %d (%s, %s) changed since it was computed\n", ggml_op_desc(t),
                             t->name, i, src->name, ggml_op_desc(src));
        }
        return true;
    }
    // Rebuild the node over host copies and compute it on the CPU.
    ggml_init_params p{};
    p.mem_size = ggml_tensor_overhead() * (GGML_MAX_SRC + 2) + ggml_graph_overhead();
    p.no_alloc = true;
    ggml_context* ctx = ggml_init(p);
    ggml_tensor* node = ggml_new_tensor(ctx, t->type, GGML_MAX_DIMS, t->ne);
    std::memcpy(node->nb, t->nb, sizeof(t->nb));
    node->op = t->op;
    std::memcpy(node->op_params, t->op_params, sizeof(t->op_params));
    node->flags = 0;
    for (int i = 0; i < GGML_MAX_SRC && t->src[i]; ++i) {
        ggml_tensor* src = t->src[i];
        ggml_tensor* c = ggml_new_tensor(ctx, src->type, GGML_MAX_DIMS, src->ne);
        std::memcpy(c->nb, src->nb, sizeof(src->nb));
        c->data = s.srcs[i].empty() ? nullptr : s.srcs[i].data();
        node->src[i] = c;
    }
    std::vector<char> cpu_out(span(t)), dev_out(span(t));
    // An in-place node (its result a view of src0: ggml_set_inplace, the row stacking of
    // conv2d_strips.h) writes only part of its output; the CPU op starts from src0's bytes,
    // as the device did, rather than from zeros (it flagged every stacked chunk otherwise).
    if (t->view_src && !s.srcs[0].empty() && s.srcs[0].size() == cpu_out.size())
        std::memcpy(cpu_out.data(), s.srcs[0].data(), cpu_out.size());
    node->data = cpu_out.data();
    ggml_cgraph* g = ggml_new_graph(ctx);
    ggml_build_forward_expand(g, node);
    ggml_backend_tensor_get(t, dev_out.data(), 0, span(t));
    s.produced[t] = fnv(dev_out);
    const bool ok = compute_on_cpu(g, 1);
    std::vector<float> a = as_f32(t, cpu_out.data()), b = as_f32(t, dev_out.data());
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
        num += double(a[i] - b[i]) * (a[i] - b[i]);
        den += double(a[i]) * a[i];
    }
    if (std::getenv("SDCPP_TRACE_OPS")) {
        double sum = 0, asum = 0;
        for (float v : b) { sum += v; asum += std::fabs(v); }
        std::fprintf(stderr, "[op-trace] %-12s %-16s %.6g %.6g\n", ggml_op_desc(t), t->name, sum, asum);
    }
    const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
    if (!ok || !(rel <= s.bound)) {
        char d[256];
        describe(t, d, sizeof d);
        std::fprintf(stderr, "[op-check] %-12s %-24s rel %.3g%s out %s\n", ggml_op_desc(t), t->name, rel, ok ? "" : " (cpu failed)", d);
        for (int i = 0; i < GGML_MAX_SRC && t->src[i]; ++i) {
            describe(t->src[i], d, sizeof d);
            std::fprintf(stderr, "[op-check]     src%d %-24s %s%s\n", i, t->src[i]->name, d, s.srcs[i].empty() ? " (not read)" : "");
        }
    }
    ggml_free(ctx);
    return true;
}

}  // namespace

double op_check_bound() {
    const char* v = std::getenv("SDCPP_CHECK_OPS");
    return v && *v ? std::atof(v) : 0.0;
}

void install_op_check(ggml_backend_sched_t sched) {
    state().bound = op_check_bound();
    if (state().bound > 0 || std::getenv("SDCPP_NODE_BY_NODE")) ggml_backend_sched_set_eval_callback(sched, callback, nullptr);
}

}  // namespace sdcpp
