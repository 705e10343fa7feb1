// The CPU kernel seam as seen from Python: levels (detected, active, cap) and, for the tests,
// each element-wise kernel run at a given level on numpy arrays.
#include "../kernels/cpu/cpu_level.h"
#include "../kernels/cpu/elementwise.h"
#include "../kernels/cpu/fused_attention.h"
#include "common.h"

namespace sdcpp::bind {

namespace kc = sdcpp::kernels::cpu;

namespace {

const kc::Elementwise& table_for(const std::string& level) {
    const kc::Level l = kc::parse_level(level);
    bool supported = false;
    for (kc::Level s : kc::supported_levels()) supported = supported || s == l;
    if (!supported) throw InvalidArgument("this CPU does not support the level '" + level + "'");
    return kc::elementwise_at(l);
}

}  // namespace

void bind_kernels(py::module_& m) {
    m.def("cpu_levels", [] {
        std::vector<std::string> out;
        for (kc::Level l : kc::supported_levels()) out.emplace_back(kc::level_name(l));
        return out;
    }, "CPU levels this machine supports, portable first");
    m.def("cpu_level", [] { return std::string(kc::level_name(kc::active_level())); },
          "the level the custom CPU kernels use now");
    m.def("set_cpu_level", [](const std::string& cap) { return std::string(kc::level_name(kc::set_level_cap(kc::parse_level(cap)))); },
          py::arg("cap"), "cap the kernels' CPU level (as SDCPP_CPU_LEVEL does); returns the active level");
    m.def("cpu_kernels", [] {
        py::dict d;
        d["level"] = kc::level_name(kc::active_level());
        d["detected"] = kc::level_name(kc::detected_level());
        d["cap"] = kc::level_name(kc::level_cap());
        d["elementwise"] = kc::level_name(kc::elementwise().level);
        d["attention_f32"] = !fused_attention::available_f32()                    ? "ggml_flash"
                             : kc::runs(kc::active_level(), kc::Level::Avx512) ? "avx512"
                                                                               : "avx2";
        d["attention_bf16"] = fused_attention::available_bf16() ? "avx512_bf16" : "ggml_flash";
        py::dict f;
        for (const auto& [name, has] : kc::reported_features()) f[py::str(name)] = has;
        d["features"] = f;
        return d;
    }, "which variant each CPU kernel uses");

    // Test hooks: one kernel at one level (work unit 0 of 1), on C-contiguous float32 arrays.
    m.def("cpu_kernel_group_norm", [](F32Array x, F32Array w, F32Array b, int groups, float eps, bool silu, const std::string& level) {
        require_ndim(x, 4, "x");
        const auto& k = table_for(level);
        const int64_t N = x.shape(0), C = x.shape(1), HW = x.shape(2) * x.shape(3);
        if (groups < 1 || C % groups != 0) throw InvalidArgument("channels must be divisible by groups");
        if (w.size() != C || b.size() != C) throw InvalidArgument("w and b must have C values");
        F32Array y = new_f32(shape_of(x));
        kc::group_norm_rows(k, x.data(), y.mutable_data(), N, C, HW, groups, eps, silu, w.data(), b.data(), 0, 1);
        return y;
    });
    m.def("cpu_kernel_layer_norm", [](F32Array x, F32Array w, F32Array b, float eps, const std::string& level) {
        require_ndim(x, 2, "x");
        const auto& k = table_for(level);
        const int64_t C = x.shape(1);
        if (w.size() != C || b.size() != C) throw InvalidArgument("w and b must have C values");
        F32Array y = new_f32(shape_of(x));
        kc::layer_norm_rows(k, x.data(), y.mutable_data(), x.shape(0), C, w.data(), b.data(), eps, 0, 1);
        return y;
    });
    m.def("cpu_kernel_geglu", [](F32Array x, const std::string& level) {
        require_ndim(x, 2, "x");
        const auto& k = table_for(level);
        if (x.shape(1) % 2) throw InvalidArgument("x rows must hold 2F values");
        const int64_t F = x.shape(1) / 2;
        F32Array y = new_f32({x.shape(0), F});
        kc::geglu_rows(k, x.data(), y.mutable_data(), x.shape(0), F, 0, 1);
        return y;
    });
    m.def("cpu_kernel_activation", [](F32Array x, const std::string& act, const std::string& level) {
        require_ndim(x, 2, "x");
        const auto& k = table_for(level);
        F32Array y = new_f32({x.shape(0), x.shape(1)});
        if (act == "quick_gelu")
            kc::quick_gelu_rows(k, x.data(), y.mutable_data(), x.shape(0), x.shape(1), 0, 1);
        else if (act == "gelu")
            kc::gelu_rows(k, x.data(), y.mutable_data(), x.shape(0), x.shape(1), 0, 1);
        else
            throw InvalidArgument("activation must be 'quick_gelu' or 'gelu', got '" + act + "'");
        return y;
    });
}

}  // namespace sdcpp::bind
