// sdcpp._core: the native engine as seen from Python.
#include "common.h"

PYBIND11_MODULE(_core, m) {
    m.doc() = "sdcpp native engine (ggml)";
    // sdcpp::InvalidArgument -> ValueError subclass registered from Python (sdcpp.errors maps it);
    // every other sdcpp::Error -> RuntimeError subclass.
    static py::exception<sdcpp::InvalidArgument> invalid(m, "InvalidArgument", PyExc_ValueError);
    static py::exception<sdcpp::Error> error(m, "NativeError", PyExc_RuntimeError);
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const sdcpp::InvalidArgument& e) {
            py::set_error(invalid, e.what());
        } catch (const sdcpp::Error& e) {
            py::set_error(error, e.what());
        }
    });
    sdcpp::bind::bind_runtime(m);
    sdcpp::bind::bind_clip(m);
    sdcpp::bind::bind_unet(m);
    sdcpp::bind::bind_vae(m);
    sdcpp::bind::bind_taesd(m);
    sdcpp::bind::bind_sampling(m);
    sdcpp::bind::bind_kernels(m);
    sdcpp::bind::bind_controlnet(m);
}
