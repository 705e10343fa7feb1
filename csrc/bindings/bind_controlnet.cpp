// Bindings of ControlNet: sdcpp._core.ControlNet(store, config: dict).
#include <optional>

#include "../model/controlnet.h"
#include "common.h"

namespace sdcpp::bind {

// bind_unet.cpp: a ControlNet's config is a U-Net config (its up blocks are never walked).
UNetConfig parse_unet_config(const py::dict& d);
F32Array unet_f32_input(const py::handle& h, const char* what, const std::vector<int64_t>& shape);
Compute parse_compute(const std::string& c);
std::string compute_name(Compute c);

namespace {

ControlNetConfig parse_controlnet_config(const py::dict& d) {
    ControlNetConfig c;
    c.unet = parse_unet_config(d);
    try {
        c.cond_channels = cfg<int>(d, "conditioning_channels", 3);
        c.embedding_channels = cfg<std::vector<int>>(d, "conditioning_embedding_out_channels");
    } catch (const py::cast_error&) {
        throw InvalidArgument("ControlNet config: conditioning_channels / conditioning_embedding_out_channels have the wrong type");
    }
    return c;
}

}  // namespace

void bind_controlnet(py::module_& m) {
    py::class_<ControlNet, std::shared_ptr<ControlNet>>(m, "ControlNet")
        .def(py::init([](std::shared_ptr<WeightStore> store, py::dict config) {
                 ControlNetConfig cfg = parse_controlnet_config(config);
                 if (!store) throw InvalidArgument("ControlNet: store is None");
                 py::gil_scoped_release nogil;
                 return std::make_shared<ControlNet>(std::shared_ptr<const WeightStore>(store), std::move(cfg));
             }),
             py::arg("store"), py::arg("config"))
        .def(
            "forward",
            [](ControlNet& cn, py::handle latent_h, py::handle t_h, py::handle ctx_h, py::handle cond_h, py::handle text_h,
               py::handle ids_h, float scale) {
                const auto& cfg = cn.config().unet;
                F32Array latent = unet_f32_input(latent_h, "latent", {-1, cfg.in_channels, -1, -1});
                const int64_t B = latent.shape(0), H = latent.shape(2), W = latent.shape(3);
                F32Array t = unet_f32_input(t_h, "timestep", {B});
                F32Array context = unet_f32_input(ctx_h, "context", {B, -1, cfg.cross_attention_dim});
                const int64_t L = context.shape(1), f = cn.cond_factor();
                F32Array cond = unet_f32_input(cond_h, "control image", {B, cn.config().cond_channels, H * f, W * f});
                std::optional<F32Array> text, ids;
                if (!text_h.is_none()) text = unet_f32_input(text_h, "text_embeds", {B, cfg.pooled_dim()});
                if (!ids_h.is_none()) ids = unet_f32_input(ids_h, "time_ids", {B, 6});
                cn.check_shapes(B, H, W, L, text.has_value(), ids.has_value());
                std::vector<F32Array> outs;
                std::vector<float*> ptrs;
                for (const auto& s : cn.residual_shapes(H, W)) {
                    outs.push_back(new_f32({B, s[0], s[1], s[2]}));
                    ptrs.push_back(outs.back().mutable_data());
                }
                const float* ptext = text ? text->data() : nullptr;
                const float* pids = ids ? ids->data() : nullptr;
                {
                    py::gil_scoped_release nogil;
                    cn.forward(B, H, W, L, latent.data(), t.data(), context.data(), cond.data(), ptext, pids, scale, ptrs);
                }
                py::list r;
                for (auto& o : outs) r.append(o);
                return r;
            },
            py::arg("latent"), py::arg("timestep"), py::arg("context"), py::arg("cond"), py::arg("text_embeds") = py::none(),
            py::arg("time_ids") = py::none(), py::arg("scale") = 1.0f)
        .def_property_readonly("cond_factor", &ControlNet::cond_factor)
        .def_property_readonly("residual_count", &ControlNet::residual_count)
        .def_property_readonly("unused_weights", &ControlNet::unused_weights)
        .def_property(
            "fused", [](const ControlNet& c) { return c.options().fused; },
            [](ControlNet& c, bool f) {
                UNetOptions o = c.options();
                o.fused = f;
                c.set_options(o);
            })
        // The U-Net's compute option (UNetOptions::compute): the encoder's linear layers,
        // convolutions and attention and the embedding / zero convolutions build through the same
        // lowering, so "bf16" means what it means for the U-Net; the graph cache keys on it.
        .def_property(
            "compute", [](const ControlNet& c) { return compute_name(c.options().compute); },
            [](ControlNet& c, const std::string& v) {
                UNetOptions o = c.options();
                o.compute = parse_compute(v);
                c.set_options(o);
            })
        .def("clear", &ControlNet::clear);
}

}  // namespace sdcpp::bind
