// A compute device: one ggml backend picked through ggml's backend registry, plus the CPU
// backend that ggml's scheduler falls back to for ops the device lacks.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "ggml-backend.h"

namespace sdcpp {

struct DeviceInfo {
    std::string name;         // ggml device name, e.g. "CPU", "CUDA0", "Vulkan0"
    std::string description;  // human-readable
    std::string backend;      // registry name: "CPU", "CUDA", "Vulkan", "Metal", ...
    std::string type;         // "cpu" | "gpu" | "igpu" | "accel"
    size_t memory_free = 0;
    size_t memory_total = 0;
};

class Device {
   public:
    // spec: "auto" | "cpu" | "cuda" | "cuda:N" | "vulkan" | "vulkan:N" | "metal" (case-insensitive)
    Device(const std::string& spec, int n_threads);
    ~Device();
    Device(const Device&) = delete;
    Device& operator=(const Device&) = delete;

    ggml_backend_t backend() const { return backend_; }
    ggml_backend_t cpu() const { return cpu_; }
    bool is_cpu() const { return backend_ == cpu_; }
    const DeviceInfo& info() const { return info_; }
    int threads() const { return n_threads_; }
    void set_threads(int n);
    // The largest tensor (bytes) the device's ops take; SIZE_MAX on the CPU. A backend refuses
    // ops on tensors past its buffer or binding limits (lavapipe: 128 MiB storage-buffer
    // ranges) and ggml's scheduler then runs them on the CPU: graph builders keep score
    // matrices and im2col strips within this on a device.
    size_t max_tensor_bytes() const { return max_tensor_bytes_; }

    static std::vector<DeviceInfo> list();

   private:
    ggml_backend_t backend_ = nullptr;  // the chosen device (== cpu_ when the device is the CPU)
    ggml_backend_t cpu_ = nullptr;
    DeviceInfo info_;
    int n_threads_ = 1;
    size_t max_tensor_bytes_ = SIZE_MAX;
};

using DevicePtr = std::shared_ptr<Device>;

}  // namespace sdcpp
