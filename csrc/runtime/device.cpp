#include "device.h"

#include <algorithm>
#include <cctype>
#include <cstdint>

#include "backends.h"
#include "error.h"

namespace sdcpp {

namespace {

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    return s;
}

const char* type_name(enum ggml_backend_dev_type t) {
    switch (t) {
        case GGML_BACKEND_DEVICE_TYPE_CPU: return "cpu";
        case GGML_BACKEND_DEVICE_TYPE_GPU: return "gpu";
        case GGML_BACKEND_DEVICE_TYPE_IGPU: return "igpu";
        default: return "accel";
    }
}

DeviceInfo describe(ggml_backend_dev_t dev) {
    DeviceInfo d;
    d.name = ggml_backend_dev_name(dev);
    d.description = ggml_backend_dev_description(dev);
    d.backend = ggml_backend_reg_name(ggml_backend_dev_backend_reg(dev));
    d.type = type_name(ggml_backend_dev_type(dev));
    ggml_backend_dev_memory(dev, &d.memory_free, &d.memory_total);
    return d;
}

// Which CMake option brings each backend in, for the error message.
std::string build_hint(const std::string& family) {
    if (family == "cuda") return "rebuild sdcpp with CMAKE_ARGS=\"-DSD_CUDA=ON\" pip install sdcpp --no-binary sdcpp";
    if (family == "vulkan") return "rebuild sdcpp with CMAKE_ARGS=\"-DSD_VULKAN=ON\" pip install sdcpp --no-binary sdcpp";
    if (family == "metal") return "rebuild sdcpp with CMAKE_ARGS=\"-DSD_METAL=ON\" pip install sdcpp --no-binary sdcpp";
    return "";
}

// The largest f32 tensor `backend` takes in an ADD, found by asking ggml_backend_supports_op
// about data-less tensors (rows of 4 KiB, up to 1 TiB): ggml's backends check tensor sizes
// against their limits there, before looking at the op (ggml-vulkan: maxStorageBufferRange
// and the largest buffer). SIZE_MAX when every size probed is taken.
size_t probe_max_tensor_bytes(ggml_backend_t backend) {
    const int64_t row = 1024;  // f32 elements per row
    const size_t row_bytes = row * sizeof(float);
    ggml_init_params params{64 * ggml_tensor_overhead(), nullptr, /*no_alloc=*/true};
    ggml_context* ctx = ggml_init(params);
    SD_CHECK(ctx != nullptr, "failed to create a ggml context");
    auto takes = [&](int64_t rows) {
        ggml_tensor* a = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, row, rows);
        ggml_tensor* b = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, row, rows);
        return ggml_backend_supports_op(backend, ggml_add(ctx, a, b));
    };
    int64_t lo = 0, hi = int64_t(1) << 28;  // rows taken / not taken
    if (takes(hi)) {
        ggml_free(ctx);
        return SIZE_MAX;
    }
    while (hi - lo > 1) {  // ~28 probes of 3 tensors each: a fresh context every 18 probes
        const int64_t mid = lo + (hi - lo) / 2;
        if (ggml_get_mem_size(ctx) - ggml_used_mem(ctx) < 4 * ggml_tensor_overhead()) {
            ggml_free(ctx);
            ctx = ggml_init(params);
            SD_CHECK(ctx != nullptr, "failed to create a ggml context");
        }
        (takes(mid) ? lo : hi) = mid;
    }
    ggml_free(ctx);
    return size_t(lo) * row_bytes;
}

}  // namespace

std::vector<DeviceInfo> Device::list() {
    ensure_backends_loaded();
    std::vector<DeviceInfo> out;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) out.push_back(describe(ggml_backend_dev_get(i)));
    return out;
}

Device::Device(const std::string& spec_in, int n_threads) {
    std::string spec = lower(spec_in);
    std::string family = spec;
    int index = 0;
    auto colon = spec.find(':');
    if (colon != std::string::npos) {
        family = spec.substr(0, colon);
        const std::string idx = spec.substr(colon + 1);
        SD_CHECK(!idx.empty() && std::all_of(idx.begin(), idx.end(), ::isdigit),
                 "device '" + spec_in + "': the index after ':' must be a number, e.g. 'cuda:1'");
        index = std::stoi(idx);
    }
    static const char* known[] = {"auto", "cpu", "cuda", "vulkan", "metal"};
    SD_CHECK(std::find(std::begin(known), std::end(known), family) != std::end(known),
             "unknown device '" + spec_in + "': use auto, cpu, cuda, cuda:N, vulkan, vulkan:N or metal");

    ggml_backend_dev_t cpu_dev = cpu_device();

    ggml_backend_dev_t chosen = nullptr;
    if (family == "auto") {
        chosen = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_GPU);
        if (!chosen) chosen = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_IGPU);
        if (!chosen) chosen = cpu_dev;
    } else if (family == "cpu") {
        chosen = cpu_dev;
    } else {
        int seen = 0;
        bool backend_present = false;
        for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
            ggml_backend_dev_t dev = ggml_backend_dev_get(i);
            if (lower(ggml_backend_reg_name(ggml_backend_dev_backend_reg(dev))) != family) continue;
            backend_present = true;
            if (seen++ == index) { chosen = dev; break; }
        }
        if (!chosen) {
            bool compiled = ggml_backend_reg_by_name(family == "cuda" ? "CUDA" : family == "vulkan" ? "Vulkan" : "Metal") != nullptr;
            if (!compiled)
                throw InvalidArgument("device '" + spec_in + "' is not available: this build of sdcpp has no " + family +
                                      " backend; " + build_hint(family));
            throw InvalidArgument("device '" + spec_in + "' is not available: the " + family + " backend found " +
                                  std::to_string(seen) + " device(s)" + (backend_present ? "" : " (none)"));
        }
    }

    cpu_ = ggml_backend_dev_init(cpu_dev, nullptr);
    if (!cpu_) throw Error("failed to initialise the ggml CPU backend");
    if (chosen == cpu_dev) {
        backend_ = cpu_;
    } else {
        backend_ = ggml_backend_dev_init(chosen, nullptr);
        if (!backend_) {
            ggml_backend_free(cpu_);
            throw Error("failed to initialise ggml device " + std::string(ggml_backend_dev_name(chosen)));
        }
    }
    info_ = describe(chosen);
    if (backend_ != cpu_) max_tensor_bytes_ = probe_max_tensor_bytes(backend_);
    set_threads(n_threads);
}

Device::~Device() {
    if (backend_ && backend_ != cpu_) ggml_backend_free(backend_);
    if (cpu_) ggml_backend_free(cpu_);
}

void Device::set_threads(int n) {
    SD_CHECK(n >= 1 && n <= 1024, "threads must be between 1 and 1024, got " + std::to_string(n));
    n_threads_ = n;
    set_cpu_threads(cpu_, n);
}

}  // namespace sdcpp
