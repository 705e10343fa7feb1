#include "backends.h"

#include <cstring>
#include <mutex>

#if defined(_WIN32)
#include <windows.h>
#else
#include <dlfcn.h>
#endif

#include "error.h"

namespace sdcpp {

namespace {

// The folder holding this extension (its backend modules sit beside it in a portable wheel).
std::string own_folder() {
#if defined(_WIN32)
    HMODULE self = nullptr;
    if (!GetModuleHandleExA(GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS | GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
                            reinterpret_cast<LPCSTR>(&own_folder), &self))
        return "";
    char path[MAX_PATH];
    const DWORD n = GetModuleFileNameA(self, path, MAX_PATH);
    std::string p(path, n);
    const size_t cut = p.find_last_of("\\/");
#else
    Dl_info info{};
    if (!dladdr(reinterpret_cast<void*>(&own_folder), &info) || !info.dli_fname) return "";
    std::string p(info.dli_fname);
    const size_t cut = p.find_last_of('/');
#endif
    return cut == std::string::npos ? std::string(".") : p.substr(0, cut);
}

std::string g_dir;

}  // namespace

void ensure_backends_loaded() {
#ifdef GGML_BACKEND_DL
    static std::once_flag once;
    std::call_once(once, [] {
        g_dir = own_folder();
        ggml_backend_load_all_from_path(g_dir.empty() ? nullptr : g_dir.c_str());
    });
#endif
}

std::string backend_dir() {
    ensure_backends_loaded();
    return g_dir;
}

ggml_backend_dev_t cpu_device() {
    ensure_backends_loaded();
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!dev)
        throw Error("ggml has no CPU backend" +
                    std::string(backend_dir().empty() ? " in this build"
                                                      : ": no libggml-cpu module loaded from " + backend_dir()));
    return dev;
}

namespace {
void* cpu_proc(const char* name) {
    return ggml_backend_reg_get_proc_address(ggml_backend_dev_backend_reg(cpu_device()), name);
}
}  // namespace

void set_cpu_threads(ggml_backend_t cpu, int n) {
    static auto fn = reinterpret_cast<ggml_backend_set_n_threads_t>(cpu_proc("ggml_backend_set_n_threads"));
    if (fn) fn(cpu, n);
}

ggml_backend_buffer_t cpu_buffer_from_ptr(void* ptr, size_t size) {
    return ggml_backend_dev_buffer_from_host_ptr(cpu_device(), ptr, size, size);
}

std::vector<std::pair<std::string, std::string>> cpu_backend_features() {
    std::vector<std::pair<std::string, std::string>> out;
    auto fn = reinterpret_cast<ggml_backend_get_features_t>(cpu_proc("ggml_backend_get_features"));
    if (!fn) return out;
    for (ggml_backend_feature* f = fn(ggml_backend_dev_backend_reg(cpu_device())); f && f->name; ++f)
        out.emplace_back(f->name, f->value ? f->value : "");
    return out;
}

bool cpu_backend_has(const char* feature) {
    static const auto features = cpu_backend_features();
    for (const auto& [name, value] : features)
        if (name == feature) return value != "0";
    return false;
}

bool compute_on_cpu(ggml_cgraph* graph, int threads) {
    ggml_backend_t cpu = ggml_backend_dev_init(cpu_device(), nullptr);
    if (!cpu) throw Error("failed to initialise the ggml CPU backend");
    set_cpu_threads(cpu, threads);
    const ggml_status s = ggml_backend_graph_compute(cpu, graph);
    ggml_backend_free(cpu);
    return s == GGML_STATUS_SUCCESS;
}

}  // namespace sdcpp
