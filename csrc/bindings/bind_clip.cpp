// Bindings of the CLIP text encoder: _core.ClipTextEncoder.
#include <memory>

#include "../model/clip.h"
#include "common.h"

namespace sdcpp::bind {

namespace {

model::ClipTextConfig clip_config(const py::dict& d) {
    model::ClipTextConfig c;
    c.hidden_size = cfg<int64_t>(d, "hidden_size");
    c.intermediate_size = cfg<int64_t>(d, "intermediate_size");
    c.num_heads = cfg<int64_t>(d, "num_heads");
    c.num_layers = cfg<int64_t>(d, "num_layers");
    c.vocab_size = cfg<int64_t>(d, "vocab_size");
    c.max_positions = cfg<int64_t>(d, "max_positions");
    c.act = model::parse_clip_activation(cfg<std::string>(d, "act"));
    c.eps = cfg<float>(d, "eps", 1e-5f);
    c.projection_dim = cfg<int64_t>(d, "projection_dim", int64_t(0));
    c.validate();
    return c;
}

// An int32, C-contiguous array of `ndim` dims; no silent casts (a float or int64 array is refused,
// so out-of-range values cannot wrap around).
py::array_t<int32_t, py::array::c_style> int32_array(const py::object& o, int ndim, const char* what) {
    if (!py::isinstance<py::array>(o)) throw InvalidArgument(std::string(what) + " must be a numpy int32 array");
    py::array a = py::reinterpret_borrow<py::array>(o);
    if (!a.dtype().is(py::dtype::of<int32_t>()))
        throw InvalidArgument(std::string(what) + " must have dtype int32, got " + std::string(py::str(a.dtype())));
    require_ndim(a, ndim, what);
    return py::array_t<int32_t, py::array::c_style>::ensure(a);
}

py::tuple encode(model::ClipTextEncoder& enc, const py::object& ids_obj, int layers, bool final_norm,
                 const py::object& pooled_obj, const py::object& extra_obj) {
    auto ids = int32_array(ids_obj, 2, "ids");
    const int64_t B = ids.shape(0), L = ids.shape(1);
    py::array_t<int32_t, py::array::c_style> pidx;
    const bool pooled = !pooled_obj.is_none();
    if (pooled) {
        pidx = int32_array(pooled_obj, 1, "pooled_index");
        SD_CHECK(pidx.shape(0) == B, "pooled_index must have one entry per row of ids (" + std::to_string(B) +
                                         "), got " + std::to_string(pidx.shape(0)));
    }
    auto hidden = new_f32({B, L, enc.config().hidden_size});
    py::object pooled_out = py::none();
    float* pooled_ptr = nullptr;
    if (pooled) {
        auto p = new_f32({B, enc.pooled_dim()});
        pooled_ptr = p.mutable_data();
        pooled_out = p;
    }
    py::array_t<float, py::array::c_style> extra;
    int64_t n_extra = 0;
    if (!extra_obj.is_none()) {
        extra = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(extra_obj);
        SD_CHECK(extra && extra.ndim() == 2 && extra.shape(1) == enc.config().hidden_size,
                 "extra embeddings must be a float32 array [n, " + std::to_string(enc.config().hidden_size) + "]");
        n_extra = extra.shape(0);
    }
    const float* extra_ptr = n_extra > 0 ? extra.data() : nullptr;
    const int32_t* ids_ptr = ids.data();
    const int32_t* pidx_ptr = pooled ? pidx.data() : nullptr;
    float* hidden_ptr = hidden.mutable_data();
    {
        py::gil_scoped_release nogil;
        enc.encode(ids_ptr, B, L, layers, final_norm, pidx_ptr, hidden_ptr, pooled_ptr, extra_ptr, n_extra);
    }
    return py::make_tuple(hidden, pooled_out);
}

}  // namespace

void bind_clip(py::module_& m) {
    py::class_<model::ClipTextEncoder, std::shared_ptr<model::ClipTextEncoder>>(m, "ClipTextEncoder")
        .def(py::init([](std::shared_ptr<WeightStore> store, const std::string& prefix, const py::dict& config) {
                 auto c = clip_config(config);
                 return std::make_shared<model::ClipTextEncoder>(std::move(store), prefix, c);
             }),
             py::arg("store"), py::arg("prefix"), py::arg("config"),
             "CLIP text transformer over the weights `prefix` + transformers names in `store`.")
        .def("encode", &encode, py::arg("ids"), py::arg("layers"), py::arg("final_norm") = true,
             py::arg("pooled_index") = py::none(), py::arg("extra") = py::none(),
             "ids int32 [B, L] -> (hidden f32 [B, L, hidden], pooled f32 [B, hidden|projection_dim] or None); "
             "extra f32 [n, hidden]: input embeddings of ids vocab_size .. vocab_size + n - 1.")
        .def("clear", &model::ClipTextEncoder::clear)
        .def_property_readonly("compute_buffer_size", &model::ClipTextEncoder::compute_buffer_size)
        .def_property_readonly("pooled_dim", &model::ClipTextEncoder::pooled_dim)
        .def_property_readonly("prefix", &model::ClipTextEncoder::prefix);
}

}  // namespace sdcpp::bind
