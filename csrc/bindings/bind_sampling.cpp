// Bindings of the sampling part: _core.sampling.{Generator, NoiseSchedule, sample, ...}.
#include <mutex>

#include "../sampling/rng.h"
#include "../sampling/samplers.h"
#include "../sampling/schedules.h"
#include "common.h"

namespace sdcpp::bind {

namespace {

using namespace sdcpp::sampling;

// A stateful generator shared between Python calls (randn and sample draw from it in turn).
// The mutex is recursive: a Python denoiser may draw from the generator its sampler holds.
struct PyGenerator {
    std::unique_ptr<Rng> rng;
    std::recursive_mutex mutex;
    explicit PyGenerator(std::unique_ptr<Rng> r) : rng(std::move(r)) {}
};

size_t numel_of(const std::vector<int64_t>& shape) {
    size_t n = 1;
    for (int64_t d : shape) {
        if (d < 0) throw InvalidArgument("shape entries must be >= 0");
        n *= static_cast<size_t>(d);
    }
    return n;
}

std::vector<int64_t> shape_arg(const py::object& shape) {
    if (py::isinstance<py::int_>(shape)) return {shape.cast<int64_t>()};
    std::vector<int64_t> out;
    for (auto v : shape) out.push_back(v.cast<int64_t>());
    return out;
}

// Calls a Python function (x: ndarray, sigma: float) -> ndarray with the GIL re-acquired.
struct PyDenoiser final : Denoiser {
    py::function fn;
    std::vector<py::ssize_t> shape;
    PyDenoiser(py::function f, std::vector<py::ssize_t> s) : fn(std::move(f)), shape(std::move(s)) {}

    void denoise(const float* x, float sigma, float* out, size_t n) override {
        py::gil_scoped_acquire gil;
        if (PyErr_CheckSignals() != 0) throw py::error_already_set();
        F32Array xin(shape);
        std::copy(x, x + n, xin.mutable_data());
        py::object res = fn(xin, sigma);
        F32Array r = F32Array::ensure(res);
        if (!r) throw InvalidArgument("the denoiser must return a float array");
        if (static_cast<size_t>(r.size()) != n)
            throw InvalidArgument("the denoiser returned " + std::to_string(r.size()) + " values for a latent of " +
                                  std::to_string(n));
        std::copy(r.data(), r.data() + n, out);
    }
};

}  // namespace

void bind_sampling(py::module_& parent) {
    py::module_ m = parent.def_submodule("sampling", "schedules, samplers and torch-compatible random generators");

    m.def("rng_names", &rng_names);
    m.def("schedule_names", &schedule_names);
    m.def("sampler_names", &sampler_names);
    m.def("sampler_model_calls", &sampler_model_calls, py::arg("sampler"), py::arg("steps"));
    m.def(
        "sampler_uses_noise",
        [](const std::string& s, float eta) {
            SamplerOptions o;
            o.eta = eta;
            return sampler_uses_noise(s, o);
        },
        py::arg("sampler"), py::arg("eta") = -1.0f);

    m.def(
        "philox4x32_10",
        [](std::array<uint32_t, 4> ctr, std::array<uint32_t, 2> key) {
            std::array<uint32_t, 4> out;
            Philox4x32::block(ctr.data(), key.data(), out.data());
            return out;
        },
        py::arg("counter"), py::arg("key"), "One Philox4x32-10 block (for tests).");

    py::class_<PyGenerator>(m, "Generator")
        .def(py::init([](const std::string& kind, uint64_t seed, uint64_t cuda_max_threads) {
                 return new PyGenerator(make_rng(kind, seed, cuda_max_threads));
             }),
             py::arg("kind"), py::arg("seed"), py::arg("cuda_max_threads") = 0)
        .def_property_readonly("kind", [](PyGenerator& g) { return g.rng->kind(); })
        .def_property_readonly("seed", [](PyGenerator& g) { return g.rng->seed(); })
        .def("clone",
             [](PyGenerator& g) {
                 std::lock_guard<std::recursive_mutex> lock(g.mutex);
                 return new PyGenerator(g.rng->clone());
             })
        .def(
            "randn",
            [](PyGenerator& g, const py::object& shape) {
                auto sh = shape_arg(shape);
                const size_t n = numel_of(sh);
                F32Array out = new_f32(sh);
                float* p = out.mutable_data();
                {
                    py::gil_scoped_release release;
                    std::lock_guard<std::recursive_mutex> lock(g.mutex);
                    g.rng->randn(p, n);
                }
                return out;
            },
            py::arg("shape"));

    py::class_<NoiseSchedule>(m, "NoiseSchedule")
        .def(py::init(&NoiseSchedule::from_betas), py::arg("beta_start") = 0.00085, py::arg("beta_end") = 0.012,
             py::arg("num_timesteps") = 1000, py::arg("beta_schedule") = "scaled_linear",
             py::arg("float32_alphas") = true)
        .def_static(
            "from_alphas_cumprod",
            [](py::array_t<double, py::array::c_style | py::array::forcecast> a) {
                require_ndim(a, 1, "alphas_cumprod");
                return NoiseSchedule(std::vector<double>(a.data(), a.data() + a.size()));
            },
            py::arg("alphas_cumprod"))
        .def_property_readonly("num_timesteps", &NoiseSchedule::num_timesteps)
        .def_property_readonly("sigma_min", &NoiseSchedule::sigma_min)
        .def_property_readonly("sigma_max", &NoiseSchedule::sigma_max)
        .def_property_readonly("alphas_cumprod",
                               [](const NoiseSchedule& s) {
                                   const auto& v = s.alphas_cumprod();
                                   return py::array_t<double>(v.size(), v.data());
                               })
        .def_property_readonly("sigmas",
                               [](const NoiseSchedule& s) {
                                   const auto& v = s.sigmas();
                                   return py::array_t<double>(v.size(), v.data());
                               })
        .def("sigma_to_t", &NoiseSchedule::sigma_to_t, py::arg("sigma"))
        .def("t_to_sigma", &NoiseSchedule::t_to_sigma, py::arg("t"))
        .def(
            "get_sigmas",
            [](const NoiseSchedule& s, const std::string& name, int n, const std::string& family) {
                auto v = make_sigmas(name, n, s, family);
                return F32Array(static_cast<py::ssize_t>(v.size()), v.data());
            },
            py::arg("schedule"), py::arg("steps"), py::arg("family") = "sd1");

    m.def(
        "sample",
        [](const std::string& sampler, py::function denoiser, F32Array x, F32Array sigmas, PyGenerator* generator,
           py::object callback, float eta, const NoiseSchedule* schedule) {
            require_ndim(sigmas, 1, "sigmas");
            std::vector<float> sig(sigmas.data(), sigmas.data() + sigmas.size());
            std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
            const size_t n = static_cast<size_t>(x.size());
            F32Array out(shape);
            std::copy(x.data(), x.data() + n, out.mutable_data());
            float* p = out.mutable_data();

            SamplerOptions opts;
            opts.eta = eta;
            opts.schedule = schedule;
            PyDenoiser model(std::move(denoiser), shape);
            StepCallback cb;
            if (!callback.is_none()) {
                cb = [&callback, &shape](const StepInfo& info, float* xs, size_t nn) -> bool {
                    py::gil_scoped_acquire gil;
                    F32Array xa(shape);
                    std::copy(xs, xs + nn, xa.mutable_data());
                    py::object r = callback(info.step, info.total, xa);
                    if (py::isinstance<py::array>(r)) {  // a replacement for x (same size)
                        auto arr = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(r);
                        SD_CHECK(arr && static_cast<size_t>(arr.size()) == nn,
                                 "the step callback returned an array of another size than x");
                        std::copy(arr.data(), arr.data() + nn, xs);
                        return true;
                    }
                    return r.ptr() != Py_False;
                };
            }
            SampleResult res;
            {
                py::gil_scoped_release release;
                std::unique_lock<std::recursive_mutex> lock;
                if (generator) lock = std::unique_lock<std::recursive_mutex>(generator->mutex);
                res = sdcpp::sampling::sample(sampler, model, p, n, sig, generator ? generator->rng.get() : nullptr, opts,
                                              cb);
            }
            return py::make_tuple(out, res.cancelled, res.steps_done);
        },
        py::arg("sampler"), py::arg("denoiser"), py::arg("x"), py::arg("sigmas"), py::arg("generator") = nullptr,
        py::arg("callback") = py::none(), py::arg("eta") = -1.0f, py::arg("schedule") = nullptr,
        "Run a sampler; returns (x, cancelled, steps_done).");
}

}  // namespace sdcpp::bind
