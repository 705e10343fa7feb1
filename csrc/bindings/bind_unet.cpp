// Bindings of the U-Net: sdcpp._core.UNet(store, config: dict).
#include <cstring>
#include <optional>

#include "../model/controlnet.h"
#include "../model/unet.h"
#include "../kernels/cpu/fused_attention.h"
#include "../runtime/backends.h"
#include "common.h"

namespace sdcpp::bind {

namespace {

// A config value with an error naming the key when it is missing or of the wrong type.
template <typename T>
T get(const py::dict& d, const char* key, const std::string& where) {
    if (!d.contains(key) || d[key].is_none())
        throw InvalidArgument("U-Net config: " + where + " is missing '" + key + "'");
    try {
        return d[key].cast<T>();
    } catch (const py::cast_error&) {
        throw InvalidArgument("U-Net config: " + where + "'" + key + "' has the wrong type (" +
                              std::string(py::str(py::type::of(d[key]))) + ")");
    }
}

py::dict as_dict(const py::handle& h, const std::string& what) {
    if (!py::isinstance<py::dict>(h)) throw InvalidArgument("U-Net config: " + what + " must be a dict");
    return py::reinterpret_borrow<py::dict>(h);
}

UNetBlockConfig parse_block(const py::handle& h, const std::string& where, const char* resample_key) {
    py::dict d = as_dict(h, where);
    UNetBlockConfig b;
    b.resnets = get<int>(d, "resnets", where + " ");
    b.depths = get<std::vector<int>>(d, "depths", where + " ");
    b.heads = d.contains("heads") && !d["heads"].is_none() ? get<int>(d, "heads", where + " ") : 1;
    b.resample = get<bool>(d, resample_key, where + " ");
    return b;
}

UNetConfig parse_config(const py::dict& d) {
    UNetConfig c;
    const std::string top;
    c.in_channels = get<int>(d, "in_channels", top);
    c.out_channels = get<int>(d, "out_channels", top);
    c.block_out_channels = get<std::vector<int>>(d, "block_out_channels", top);
    c.norm_groups = get<int>(d, "norm_groups", top);
    c.norm_eps = get<float>(d, "norm_eps", top);
    c.time_proj_dim = get<int>(d, "time_proj_dim", top);
    c.time_embed_dim = get<int>(d, "time_embed_dim", top);
    c.flip_sin_to_cos = get<bool>(d, "flip_sin_to_cos", top);
    c.freq_shift = get<float>(d, "freq_shift", top);
    c.cross_attention_dim = get<int>(d, "cross_attention_dim", top);
    c.use_linear_projection = get<bool>(d, "use_linear_projection", top);
    auto blocks = [&](const char* key, const char* resample_key) {
        if (!d.contains(key) || !py::isinstance<py::sequence>(d[key]) || py::isinstance<py::str>(d[key]))
            throw InvalidArgument(std::string("U-Net config: '") + key + "' must be a list of block dicts");
        std::vector<UNetBlockConfig> out;
        size_t i = 0;
        for (auto h : py::reinterpret_borrow<py::sequence>(d[key]))
            out.push_back(parse_block(h, std::string(key) + "[" + std::to_string(i++) + "]", resample_key));
        return out;
    };
    c.down = blocks("down", "downsample");
    c.up = blocks("up", "upsample");
    if (!d.contains("mid") || d["mid"].is_none()) {
        c.mid_type = "none";
    } else {
        py::dict m = as_dict(d["mid"], "'mid'");
        c.mid_type = get<std::string>(m, "type", "mid ");
        if (c.mid_type == "cross_attn") {
            c.mid_depth = get<int>(m, "depth", "mid ");
            c.mid_heads = get<int>(m, "heads", "mid ");
        }
    }
    if (d.contains("addition_embed") && !d["addition_embed"].is_none()) {
        py::dict a = as_dict(d["addition_embed"], "'addition_embed'");
        const auto type = get<std::string>(a, "type", "addition_embed ");
        if (type != "text_time")
            throw InvalidArgument("U-Net config: addition_embed type '" + type + "' is not supported (only 'text_time')");
        c.add_time_dim = get<int>(a, "time_embed_dim", "addition_embed ");
        c.add_in_dim = get<int>(a, "in_dim", "addition_embed ");
    }
    c.validate();
    return c;
}

// A C-contiguous float32 view of `a` after checking dtype and shape (-1 = any).
F32Array f32_input(const py::handle& h, const char* what, const std::vector<int64_t>& shape) {
    if (!py::isinstance<py::array>(h)) throw InvalidArgument(std::string(what) + " must be a numpy array");
    py::array a = py::reinterpret_borrow<py::array>(h);
    if (!py::isinstance<py::array_t<float>>(a))
        throw InvalidArgument(std::string(what) + " must be float32, got " + std::string(py::str(a.dtype())));
    require_ndim(a, static_cast<int>(shape.size()), what);
    for (size_t i = 0; i < shape.size(); ++i)
        if (shape[i] >= 0 && a.shape(i) != shape[i])
            throw InvalidArgument(std::string(what) + " has shape " + std::string(py::str(py::tuple(py::cast(shape_of(a))))) +
                                  ": dimension " + std::to_string(i) + " must be " + std::to_string(shape[i]));
    return F32Array::ensure(a);
}

nn::AttentionKernel parse_kernel(const std::string& k) {
    if (k == "auto") return nn::AttentionKernel::Auto;
    if (k == "mul_mat") return nn::AttentionKernel::MulMat;
    if (k == "flash") return nn::AttentionKernel::Flash;
    if (k == "int8") return nn::AttentionKernel::Int8;
    throw InvalidArgument("attention kernel must be 'auto', 'mul_mat', 'flash' or 'int8', got '" + k + "'");
}

const char* kernel_name(nn::AttentionKernel k) {
    switch (k) {
        case nn::AttentionKernel::MulMat: return "mul_mat";
        case nn::AttentionKernel::Flash: return "flash";
        case nn::AttentionKernel::Int8: return "int8";
        default: return "auto";
    }
}

// ConvImpl <-> UNet.conv / resolved_conv's spelling (resolve_conv never returns Auto).
ConvImpl parse_conv(const std::string& k) {
    if (k == "auto") return ConvImpl::Auto;
    if (k == "im2col") return ConvImpl::Im2col;
    if (k == "winograd") return ConvImpl::Winograd;
    if (k == "winograd_f43") return ConvImpl::WinogradF43;
    throw InvalidArgument("conv must be 'auto', 'im2col', 'winograd' or 'winograd_f43', got '" + k + "'");
}

const char* conv_name(ConvImpl c) {
    switch (c) {
        case ConvImpl::Im2col: return "im2col";
        case ConvImpl::Winograd: return "winograd";
        case ConvImpl::WinogradF43: return "winograd_f43";
        default: return "auto";
    }
}

}  // namespace

// Shared with bind_controlnet.cpp (a ControlNet's config is a U-Net config).
UNetConfig parse_unet_config(const py::dict& d) { return parse_config(d); }
F32Array unet_f32_input(const py::handle& h, const char* what, const std::vector<int64_t>& shape) {
    return f32_input(h, what, shape);
}
// UNetOptions::compute <-> "f32" / "bf16" (the ControlNet follows the U-Net's setting, so both
// bind it with one spelling and one error).
Compute parse_compute(const std::string& c) {
    if (c == "f32") return Compute::F32;
    if (c == "bf16") return Compute::BF16;
    throw InvalidArgument("compute must be 'f32' or 'bf16', got '" + c + "'");
}
std::string compute_name(Compute c) { return c == Compute::BF16 ? "bf16" : "f32"; }

void bind_unet(py::module_& m) {
    py::class_<UNet, std::shared_ptr<UNet>>(m, "UNet")
        .def(py::init([](std::shared_ptr<WeightStore> store, py::dict config) {
                 UNetConfig cfg = parse_config(config);
                 if (!store) throw InvalidArgument("U-Net: store is None");
                 py::gil_scoped_release nogil;
                 return std::make_shared<UNet>(std::shared_ptr<const WeightStore>(store), std::move(cfg));
             }),
             py::arg("store"), py::arg("config"))
        .def(
            "forward",
            [](UNet& u, py::handle latent_h, py::handle t_h, py::handle ctx_h, py::handle text_h, py::handle ids_h,
               py::handle res_h) {
                const auto& cfg = u.config();
                F32Array latent = f32_input(latent_h, "latent", {-1, cfg.in_channels, -1, -1});
                const int64_t B = latent.shape(0), H = latent.shape(2), W = latent.shape(3);
                F32Array t = f32_input(t_h, "timestep", {B});
                F32Array context = f32_input(ctx_h, "context", {B, -1, cfg.cross_attention_dim});
                const int64_t L = context.shape(1);
                std::optional<F32Array> text, ids;
                if (!text_h.is_none()) text = f32_input(text_h, "text_embeds", {B, cfg.pooled_dim()});
                if (!ids_h.is_none()) ids = f32_input(ids_h, "time_ids", {B, 6});
                u.check_shapes(B, H, W, L, text.has_value(), ids.has_value());
                // ControlNet residuals: a list of [B, C, h, w] arrays in the skips' shapes, then the mid block's
                std::vector<F32Array> res;
                std::vector<const float*> res_ptrs;
                if (!res_h.is_none()) {
                    if (!py::isinstance<py::sequence>(res_h)) throw InvalidArgument("residuals must be a list of arrays");
                    auto seq = py::reinterpret_borrow<py::sequence>(res_h);
                    const auto shapes = unet_residual_shapes(cfg, H, W);
                    if (seq.size() != shapes.size())
                        throw InvalidArgument("residuals: " + std::to_string(seq.size()) + " arrays given, this U-Net takes " +
                                              std::to_string(shapes.size()));
                    for (size_t i = 0; i < shapes.size(); ++i) {
                        const std::string what = "residuals[" + std::to_string(i) + "]";
                        res.push_back(f32_input(seq[i], what.c_str(), {B, shapes[i][0], shapes[i][1], shapes[i][2]}));
                        res_ptrs.push_back(res.back().data());
                    }
                }
                F32Array out = new_f32({B, cfg.out_channels, H, W});
                const float* pl = latent.data();
                const float* pt = t.data();
                const float* pc = context.data();
                const float* ptext = text ? text->data() : nullptr;
                const float* pids = ids ? ids->data() : nullptr;
                float* po = out.mutable_data();
                {
                    py::gil_scoped_release nogil;
                    u.forward(B, H, W, L, pl, pt, pc, ptext, pids, po, res_ptrs.empty() ? nullptr : res_ptrs.data());
                }
                return out;
            },
            py::arg("latent"), py::arg("timestep"), py::arg("context"), py::arg("text_embeds") = py::none(),
            py::arg("time_ids") = py::none(), py::arg("residuals") = py::none())
        .def_property(
            "attention",
            [](const UNet& u) { return std::string(kernel_name(u.options().attention)); },
            [](UNet& u, const std::string& k) {
                UNetOptions o = u.options();
                o.attention = parse_kernel(k);
                u.set_options(o);
            })
        .def_property(
            "conv",
            [](const UNet& u) { return std::string(conv_name(u.options().conv)); },
            [](UNet& u, const std::string& k) {
                UNetOptions o = u.options();
                o.conv = parse_conv(k);
                u.set_options(o);
            })
        .def_property(
            "compute",
            [](const UNet& u) { return compute_name(u.options().compute); },
            [](UNet& u, const std::string& c) {
                UNetOptions o = u.options();
                o.compute = parse_compute(c);
                u.set_options(o);
            })
        .def_property(
            "fused",
            [](const UNet& u) { return u.options().fused; },
            [](UNet& u, bool f) {
                UNetOptions o = u.options();
                o.fused = f;
                u.set_options(o);
            })
        .def_property(
            "max_attention_mb",
            [](const UNet& u) -> py::object {
                const size_t b = u.options().max_attention_bytes;
                if (b == SIZE_MAX) return py::none();
                return py::float_(double(b) / (1 << 20));
            },
            [](UNet& u, py::object mb) {
                UNetOptions o = u.options();
                if (mb.is_none()) {
                    o.max_attention_bytes = SIZE_MAX;
                } else {
                    const double v = mb.cast<double>();
                    if (!(v > 0 && v < 1e9)) throw InvalidArgument("max_attention_mb must be positive (None: no limit)");
                    o.max_attention_bytes = std::max<size_t>(1, size_t(v * (1 << 20)));
                }
                u.set_options(o);
            })
        .def_property(
            "stream_weights",
            [](const UNet& u) { return u.options().stream_weights; },
            [](UNet& u, bool f) {
                UNetOptions o = u.options();
                o.stream_weights = f;
                u.set_options(o);
            })
        .def_property_readonly("resolved_conv", [](const UNet& u) { return std::string(conv_name(u.resolved_conv())); })
        .def_property_readonly("resolved_attention", [](const UNet& u) { return std::string(kernel_name(u.resolved_attention())); })
        .def_property_readonly("unused_weights", &UNet::unused_weights)
        .def_property_readonly("spatial_multiple", &UNet::spatial_multiple)
        .def_property_readonly("pooled_dim", [](const UNet& u) { return u.config().add_time_dim > 0 ? u.config().pooled_dim() : 0; })
        .def_property_readonly("compute_buffer_size", &UNet::compute_buffer_size)
        .def("measure",
             [](UNet& u, int64_t B, int64_t H, int64_t W, int64_t L) {
                 py::gil_scoped_release nogil;
                 return u.measure(B, H, W, L);
             },
             py::arg("batch"), py::arg("height"), py::arg("width"), py::arg("context_length"),
             "compute-buffer bytes a forward pass of these shapes needs (planned, nothing computed)")
        .def("graph_nodes", &UNet::graph_nodes, py::arg("batch"), py::arg("height"), py::arg("width"), py::arg("context_length"))
        .def("profile",
             [](UNet& u, int64_t B, int64_t H, int64_t W, int64_t L) {
                 std::vector<UNet::NodeTime> r;
                 {
                     py::gil_scoped_release nogil;
                     r = u.profile(B, H, W, L);
                 }
                 py::list out;
                 for (const auto& n : r) out.append(py::make_tuple(n.op, n.name, n.shape, n.src0, n.src1, n.us, n.cpu_us));
                 return out;
             },
             py::arg("batch"), py::arg("height"), py::arg("width"), py::arg("context_length"))
        .def("clear", &UNet::clear);
    // One nn::attention call on the CPU (tests of the attention kernels): q [N, Lq, D], k, v [N, Lk, D];
    // "fused" = the flash kernel with custom ops allowed.
    m.def(
        "unet_attention",
        [](F32Array q, F32Array k, F32Array v, int heads, const std::string& kernel, const std::string& type, bool causal,
           int64_t max_score_bytes) {
            require_ndim(q, 3, "q");
            require_ndim(k, 3, "k");
            require_ndim(v, 3, "v");
            const int64_t N = q.shape(0), Lq = q.shape(1), D = q.shape(2), Lk = k.shape(1);
            if (k.shape(0) != N || v.shape(0) != N || k.shape(2) != D || v.shape(2) != D || v.shape(1) != Lk)
                throw InvalidArgument("q, k, v shapes do not agree");
            if (heads < 1 || D % heads != 0) throw InvalidArgument("heads must divide the width");
            if (N * Lq * D > (1 << 26) || N * Lk * D > (1 << 26)) throw InvalidArgument("too large for a test");
            const ggml_type t = parse_type(type);
            if (t != GGML_TYPE_F32 && t != GGML_TYPE_F16 && t != GGML_TYPE_BF16) throw InvalidArgument("type must be f32, f16 or bf16");
            // kernel "fused": the fused CPU kernels of kernels/cpu/fused_attention.h (bf16 or f32 by `type`)
            const bool fused = kernel == "fused";
            if (fused && t == GGML_TYPE_BF16 && !fused_attention::available_bf16()) throw InvalidArgument("the CPU level is below avx512_bf16");
            if (fused && t == GGML_TYPE_F32 && !fused_attention::available_f32()) throw InvalidArgument("the CPU level is below avx512");
            if (fused && t == GGML_TYPE_F16) throw InvalidArgument("the fused kernel takes f32 or bf16");
            const nn::AttentionKernel kern = fused ? nn::AttentionKernel::Flash : parse_kernel(kernel);
            if (kern == nn::AttentionKernel::Auto) throw InvalidArgument("kernel must be 'mul_mat', 'flash' or 'fused'");
            if (causal && Lq != Lk) throw InvalidArgument("causal attention needs as many queries as keys");
            if (max_score_bytes < 0) throw InvalidArgument("max_score_bytes must be >= 0 (0: no limit)");
            F32Array out = new_f32({N, Lq, D});
            {
                py::gil_scoped_release nogil;
                const size_t mem = static_cast<size_t>(4) * (N * Lq * Lk * 16 + (N * (Lq + 2 * Lk) * D) * 8) + (64 << 20);
                ggml_init_params params{mem, nullptr, false};
                ggml_context* ctx = ggml_init(params);
                if (!ctx) throw Error("ggml_init failed");
                ggml_tensor* tq = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, D, Lq, N);
                ggml_tensor* tk = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, D, Lk, N);
                ggml_tensor* tv = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, D, Lk, N);
                std::memcpy(tq->data, q.data(), ggml_nbytes(tq));
                std::memcpy(tk->data, k.data(), ggml_nbytes(tk));
                std::memcpy(tv->data, v.data(), ggml_nbytes(tv));
                nn::AttentionOptions ao;  // "fused" = the flash kernel with custom ops allowed
                ao.kernel = kern;
                ao.custom_ops = fused || kern == nn::AttentionKernel::Int8;
                ao.int8_min_keys = 0;  // "int8": the int8 kernel at every size (tests)
                ao.type = t;
                ao.causal = causal;
                if (max_score_bytes > 0) ao.max_score_bytes = static_cast<size_t>(max_score_bytes);
                ggml_tensor* o = nn::attention(ctx, tq, tk, tv, heads, ao);
                ggml_cgraph* g = ggml_new_graph(ctx);
                ggml_build_forward_expand(g, o);
                if (!compute_on_cpu(g, 2)) throw Error("graph compute failed");
                std::memcpy(out.mutable_data(), o->data, ggml_nbytes(o));
                ggml_free(ctx);
            }
            return out;
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("heads"), py::arg("kernel"), py::arg("type") = "f32",
        py::arg("causal") = false, py::arg("max_score_bytes") = 0);
    m.def("unet_timestep_embedding",
          [](F32Array t, int dim, bool flip, float shift) {
              require_ndim(t, 1, "timesteps");
              if (dim < 1 || dim > 1 << 20) throw InvalidArgument("dim must be 1..2^20");
              if (!(shift < dim / 2)) throw InvalidArgument("freq_shift must be smaller than dim / 2");
              F32Array out = new_f32({static_cast<int64_t>(t.shape(0)), dim});
              timestep_sinusoid(t.data(), t.shape(0), dim, flip, shift, out.mutable_data());
              return out;
          },
          py::arg("timesteps"), py::arg("dim"), py::arg("flip_sin_to_cos") = true, py::arg("freq_shift") = 0.0f);
}

}  // namespace sdcpp::bind
