// Bindings of the VAE: sdcpp._core.VAE(store, config, prefix="vae").
#include <cstring>

#include "../model/vae.h"
#include "common.h"

namespace sdcpp::bind {

namespace {

template <typename T>
T cfg_value(const py::dict& d, const char* key, const T* fallback) {
    if (!d.contains(key) || d[key].is_none()) {
        if (!fallback) throw InvalidArgument(std::string("VAE config is missing '") + key + "'");
        return *fallback;
    }
    try {
        return d[key].cast<T>();
    } catch (const py::cast_error&) {
        throw InvalidArgument(std::string("VAE config '") + key + "' has the wrong type (" +
                              std::string(py::str(py::type::of(d[key]).attr("__name__"))) + ")");
    }
}

model::VAEConfig parse_config(const py::dict& d) {
    model::VAEConfig c;
    const model::VAEConfig def;
    c.block_out_channels = cfg_value<std::vector<int64_t>>(d, "block_out_channels", nullptr);
    c.layers_per_block = cfg_value<int>(d, "layers_per_block", nullptr);
    c.latent_channels = cfg_value<int64_t>(d, "latent_channels", nullptr);
    c.norm_groups = cfg_value<int>(d, "norm_groups", nullptr);
    c.in_channels = cfg_value<int64_t>(d, "in_channels", &def.in_channels);
    c.out_channels = cfg_value<int64_t>(d, "out_channels", &def.out_channels);
    c.norm_eps = cfg_value<float>(d, "norm_eps", &def.norm_eps);
    c.mid_attention = cfg_value<bool>(d, "mid_attention", &def.mid_attention);
    c.use_quant_conv = cfg_value<bool>(d, "use_quant_conv", &def.use_quant_conv);
    c.use_post_quant_conv = cfg_value<bool>(d, "use_post_quant_conv", &def.use_post_quant_conv);
    c.validate();
    return c;
}

const char* conv_mode_name(model::ConvMode m) {
    switch (m) {
        case model::ConvMode::Winograd: return "winograd";
        case model::ConvMode::Strips: return "strips";
        case model::ConvMode::Im2col: return "im2col";
        case model::ConvMode::Direct: return "direct";
    }
    return "?";
}

py::dict options_dict(const model::VAEOptions& o) {
    py::dict d;
    d["conv"] = conv_mode_name(o.conv);
    d["max_im2col_mb"] = double(o.max_im2col_bytes) / (1 << 20);
    d["max_attention_mb"] = double(o.max_attention_bytes) / (1 << 20);
    d["compute"] = o.compute == model::ComputeType::BF16 ? "bf16" : "f32";
    d["portable"] = o.portable;
    return d;
}

void check_array(const F32Array& a, const char* what) {
    require_ndim(a, 4, what);
}

}  // namespace

void bind_vae(py::module_& m) {
    py::class_<model::VAE, std::shared_ptr<model::VAE>>(m, "VAE")
        .def(py::init([](std::shared_ptr<WeightStore> store, const py::dict& config, const std::string& prefix) {
                 if (!store) throw InvalidArgument("VAE needs a WeightStore");
                 return std::make_shared<model::VAE>(std::move(store), parse_config(config), prefix);
             }),
             py::arg("store"), py::arg("config"), py::arg("prefix") = "vae")
        .def_property_readonly("has_encoder", &model::VAE::has_encoder)
        .def_property_readonly("has_decoder", &model::VAE::has_decoder)
        .def_property_readonly("factor", [](const model::VAE& v) { return v.config().factor(); })
        .def_property_readonly("latent_channels", [](const model::VAE& v) { return v.config().latent_channels; })
        .def_property_readonly("in_channels", [](const model::VAE& v) { return v.config().in_channels; })
        .def_property_readonly("out_channels", [](const model::VAE& v) { return v.config().out_channels; })
        .def("options", [](const model::VAE& v) { return options_dict(v.options()); })
        .def(
            "set_options",
            [](model::VAE& v, const std::string& conv, double max_im2col_mb, double max_attention_mb,
               const std::string& compute, bool portable) {
                model::VAEOptions o = v.options();
                if (conv == "winograd") o.conv = model::ConvMode::Winograd;
                else if (conv == "strips") o.conv = model::ConvMode::Strips;
                else if (conv == "im2col") o.conv = model::ConvMode::Im2col;
                else if (conv == "direct") o.conv = model::ConvMode::Direct;
                else throw InvalidArgument("conv must be 'winograd', 'strips', 'im2col' or 'direct', got '" + conv + "'");
                if (compute == "f32") o.compute = model::ComputeType::F32;
                else if (compute == "bf16") o.compute = model::ComputeType::BF16;
                else throw InvalidArgument("compute must be 'f32' or 'bf16', got '" + compute + "'");
                o.portable = portable;
                SD_CHECK(max_im2col_mb >= 1 && max_im2col_mb <= 1e6, "max_im2col_mb must be in [1, 1e6]");
                SD_CHECK(max_attention_mb >= 1 && max_attention_mb <= 1e6, "max_attention_mb must be in [1, 1e6]");
                o.max_im2col_bytes = size_t(max_im2col_mb * (1 << 20));
                o.max_attention_bytes = size_t(max_attention_mb * (1 << 20));
                v.set_options(o);
            },
            py::arg("conv") = "winograd", py::arg("max_im2col_mb") = 128.0, py::arg("max_attention_mb") = 256.0, py::arg("compute") = "f32", py::arg("portable") = false)
        .def(
            "decode",
            [](model::VAE& v, const F32Array& z) {
                check_array(z, "latent");
                const auto s = shape_of(z);
                v.check_decode_input(s[0], s[1], s[2], s[3]);
                const int64_t f = v.config().factor();
                F32Array out = new_f32({s[0], v.config().out_channels, s[2] * f, s[3] * f});
                const float* src = z.data();
                float* dst = out.mutable_data();
                {
                    py::gil_scoped_release nogil;
                    v.decode(src, s[0], s[2], s[3], dst);
                }
                return out;
            },
            py::arg("latent"))
        .def(
            "encode",
            [](model::VAE& v, const F32Array& x) {
                check_array(x, "image");
                const auto s = shape_of(x);
                v.check_encode_input(s[0], s[1], s[2], s[3]);
                const int64_t f = v.config().factor();
                F32Array out = new_f32({s[0], 2 * v.config().latent_channels, s[2] / f, s[3] / f});
                const float* src = x.data();
                float* dst = out.mutable_data();
                {
                    py::gil_scoped_release nogil;
                    v.encode(src, s[0], s[2], s[3], dst);
                }
                return out;
            },
            py::arg("image"))
        .def("clear", [](model::VAE& v) {
            py::gil_scoped_release nogil;
            v.clear();
        })
        .def_property_readonly("compute_buffer_size", &model::VAE::compute_buffer_size)
        .def("measure",
             [](model::VAE& v, bool decoder, int64_t h, int64_t w) {
                 py::gil_scoped_release nogil;
                 return v.measure(decoder, h, w);
             },
             py::arg("decoder"), py::arg("height"), py::arg("width"),
             "compute-buffer bytes of one image (latent h x w to decode, image h x w to encode), planned")
        .def("graph_nodes", &model::VAE::graph_nodes, py::arg("decoder"), py::arg("height"), py::arg("width"))
        .def("memory_trace", &model::VAE::memory_trace, py::arg("decoder"), py::arg("height"), py::arg("width"),
             "the tensors alive together at the graph's peak (diagnostics)");
}

}  // namespace sdcpp::bind
