// Bindings of the tiny autoencoder: sdcpp._core.TinyAutoencoder(store, prefix, decoder_ops,
// encoder_ops, latent_channels); ops are (kind, name, stride) tuples (model/taesd.h).
#include "../model/taesd.h"
#include "common.h"

namespace sdcpp::bind {

namespace {

std::vector<model::TinyOp> ops_of(const py::list& items) {
    std::vector<model::TinyOp> ops;
    for (const py::handle& it : items) {
        auto t = it.cast<py::tuple>();
        if (t.size() != 3) throw InvalidArgument("tiny autoencoder ops are (kind, name, stride) tuples");
        ops.push_back({t[0].cast<std::string>(), t[1].cast<std::string>(), t[2].cast<int>()});
    }
    return ops;
}

std::vector<int64_t> nchw(const F32Array& a, int64_t channels, const char* what) {
    require_ndim(a, 4, what);
    if (a.shape(1) != channels)
        throw InvalidArgument(std::string(what) + " must have " + std::to_string(channels) + " channels, got " +
                              std::to_string(a.shape(1)));
    return {a.shape(0), a.shape(1), a.shape(2), a.shape(3)};
}

}  // namespace

void bind_taesd(py::module_& m) {
    py::class_<model::TinyAutoencoder, std::shared_ptr<model::TinyAutoencoder>>(m, "TinyAutoencoder")
        .def(py::init([](std::shared_ptr<WeightStore> store, const std::string& prefix, const py::list& dec,
                         const py::list& enc, int64_t latent_channels) {
                 return std::make_shared<model::TinyAutoencoder>(std::move(store), prefix, ops_of(dec), ops_of(enc),
                                                                 latent_channels);
             }),
             py::arg("store"), py::arg("prefix"), py::arg("decoder"), py::arg("encoder"), py::arg("latent_channels"))
        .def("decode",
             [](model::TinyAutoencoder& t, const F32Array& z, int64_t latent_channels) {
                 const auto s = nchw(z, latent_channels, "latent");
                 const int64_t f = t.factor();
                 F32Array out = new_f32({s[0], 3, s[2] * f, s[3] * f});
                 const float* src = z.data();
                 float* dst = out.mutable_data();
                 {
                     py::gil_scoped_release nogil;
                     t.decode(src, s[0], s[2], s[3], dst);
                 }
                 return out;
             },
             py::arg("latent"), py::arg("latent_channels"))
        .def("encode",
             [](model::TinyAutoencoder& t, const F32Array& x, int64_t latent_channels) {
                 const auto s = nchw(x, 3, "image");
                 const int64_t f = t.factor();
                 if (s[2] % f || s[3] % f)
                     throw InvalidArgument("image sides must be multiples of " + std::to_string(f));
                 F32Array out = new_f32({s[0], latent_channels, s[2] / f, s[3] / f});
                 const float* src = x.data();
                 float* dst = out.mutable_data();
                 {
                     py::gil_scoped_release nogil;
                     t.encode(src, s[0], s[2], s[3], dst);
                 }
                 return out;
             },
             py::arg("image"), py::arg("latent_channels"))
        .def_property_readonly("factor", &model::TinyAutoencoder::factor)
        .def_property_readonly("has_decoder", &model::TinyAutoencoder::has_decoder)
        .def_property_readonly("has_encoder", &model::TinyAutoencoder::has_encoder)
        .def_property_readonly("compute_buffer_size", &model::TinyAutoencoder::compute_buffer_size)
        .def("clear", &model::TinyAutoencoder::clear);
}

}  // namespace sdcpp::bind
