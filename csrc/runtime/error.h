// Errors of the native engine. Everything that bad input can trigger is checked before
// ggml is called (ggml aborts on a failed assert) and thrown as sdcpp::Error; the bindings
// turn it into sdcpp.errors.BackendError / InvalidArgumentError.
#pragma once
#include <stdexcept>
#include <string>

namespace sdcpp {

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A caller passed a value the engine cannot work with (shape, dtype, name).
struct InvalidArgument : Error {
    using Error::Error;
};

#define SD_CHECK(cond, msg)                                   \
    do {                                                      \
        if (!(cond)) throw ::sdcpp::InvalidArgument(msg);     \
    } while (0)

}  // namespace sdcpp
