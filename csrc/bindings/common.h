// Helpers shared by the binding files. Only csrc/bindings/ knows pybind11.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "../runtime/error.h"

namespace py = pybind11;

namespace sdcpp::bind {

// A C-contiguous float32 array (copies only when the input is not already one).
using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

inline std::vector<int64_t> shape_of(const py::array& a) {
    return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

inline void require_ndim(const py::array& a, int ndim, const char* what) {
    if (a.ndim() != ndim)
        throw InvalidArgument(std::string(what) + " must have " + std::to_string(ndim) + " dimensions, got " +
                              std::to_string(a.ndim()));
}

inline F32Array new_f32(const std::vector<int64_t>& shape) {
    return F32Array(std::vector<py::ssize_t>(shape.begin(), shape.end()));
}

// Config dict access with clear errors for missing keys.
template <typename T>
T cfg(const py::dict& d, const char* key) {
    if (!d.contains(key)) throw InvalidArgument(std::string("config is missing '") + key + "'");
    return d[key].cast<T>();
}
template <typename T>
T cfg(const py::dict& d, const char* key, T fallback) {
    return d.contains(key) && !d[key].is_none() ? d[key].cast<T>() : fallback;
}

// Each part of the engine adds its classes to the module.
void bind_runtime(py::module_& m);
void bind_clip(py::module_& m);
void bind_unet(py::module_& m);
void bind_vae(py::module_& m);
void bind_taesd(py::module_& m);
void bind_sampling(py::module_& m);
void bind_kernels(py::module_& m);
void bind_controlnet(py::module_& m);

}  // namespace sdcpp::bind
