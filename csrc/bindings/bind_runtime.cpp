// Bindings of the runtime: devices, the weight store, system information.
#include <cctype>
#include <thread>

#include "../runtime/backends.h"
#include "../runtime/device.h"
#include "../runtime/graph.h"
#include "../runtime/lora_merge.h"
#include "../runtime/weights.h"
#include "common.h"
#include "ggml.h"

namespace sdcpp::bind {

namespace {

py::dict device_info_dict(const DeviceInfo& d) {
    py::dict out;
    out["name"] = d.name;
    out["description"] = d.description;
    out["backend"] = d.backend;
    out["type"] = d.type;
    out["memory_free"] = d.memory_free;
    out["memory_total"] = d.memory_total;
    return out;
}

// CPU features the CPU backend in use was compiled with, lower-cased as system_info() names them
// ("avx2": True, ...; "llamafile", "openmp" too). In a portable build this is the variant ggml
// chose for this CPU.
py::dict compiled_cpu_features() {
    py::dict f;
    for (const auto& [name, value] : cpu_backend_features()) {
        std::string key = name;
        for (char& c : key) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        f[py::str(key)] = value != "0";
    }
    return f;
}

ggml_type array_type(const py::array& a, const std::string& name) {
    if (py::isinstance<py::array_t<float>>(a)) return GGML_TYPE_F32;
    if (a.dtype().kind() == 'f' && a.itemsize() == 2) return GGML_TYPE_F16;
    // bfloat16 arrives as uint16 bit patterns (numpy has no bf16).
    if (a.dtype().kind() == 'u' && a.itemsize() == 2) return GGML_TYPE_BF16;
    throw InvalidArgument("weight '" + name + "': arrays must be float32, float16 or uint16 (bf16 bits), got " +
                          std::string(py::str(a.dtype())));
}

}  // namespace

void bind_runtime(py::module_& m) {
    m.def("ggml_version", []() { return std::string(ggml_version()); });
    m.def("ggml_commit", []() { return std::string(ggml_commit()); });
    m.def("compiled_cpu_features", &compiled_cpu_features);
    // where a portable build loaded its backend modules from ("" when ggml is linked in)
    m.def("backend_dir", &backend_dir);
    // graph nodes ggml's scheduler has placed off the model's device (the CPU fallback), summed
    // over every graph run in this process: the device tests assert it stays 0
    m.def("off_device_nodes", []() { return GraphRunner::total_off_device_nodes(); });
    m.def("list_devices", []() {
        py::list out;
        for (const auto& d : Device::list()) out.append(device_info_dict(d));
        return out;
    });

    py::class_<Device, DevicePtr>(m, "Device")
        .def(py::init<const std::string&, int>(), py::arg("spec") = "auto", py::arg("threads") = 1)
        .def_property_readonly("info", [](const Device& d) { return device_info_dict(d.info()); })
        .def_property_readonly("is_cpu", &Device::is_cpu)
        // None on the CPU (no limit); the largest tensor the device's ops take otherwise
        .def_property_readonly("max_tensor_bytes",
                               [](const Device& d) -> py::object {
                                   if (d.max_tensor_bytes() == SIZE_MAX) return py::none();
                                   return py::int_(d.max_tensor_bytes());
                               })
        .def_property("threads", &Device::threads, &Device::set_threads);

    py::class_<WeightStore, std::shared_ptr<WeightStore>>(m, "WeightStore")
        .def(py::init<DevicePtr, bool>(), py::arg("device"), py::arg("repack") = true)
        .def("repacked", &WeightStore::repacked)
        .def("declare",
             [](WeightStore& s, const std::string& name, const std::vector<int64_t>& shape, const std::string& type) {
                 s.declare(name, shape, parse_type(type));
             },
             py::arg("name"), py::arg("shape"), py::arg("type"))
        .def("map_to_file", &WeightStore::map_to_file, py::arg("name"), py::arg("file"), py::arg("offset"),
             "Zero copy: use the file's bytes at offset (stored type, C order, element-aligned) in place")
        .def_static("mapping_supported", &WeightStore::mapping_supported)
        .def("is_mapped", &WeightStore::is_mapped)
        .def("is_paged", &WeightStore::is_paged)
        .def_property_readonly("mapped_nbytes", &WeightStore::mapped_nbytes)
        .def("spill_to", &WeightStore::spill_to, py::arg("dir"),
             "Before allocate (CPU): keep the unmapped tensors in an unlinked temporary file under dir")
        .def_property_readonly("spilled_nbytes", &WeightStore::spilled_nbytes)
        .def("release_pages",
             [](const WeightStore& s, const std::string& name) {
                 const ggml_tensor* t = s.get(name);
                 const char* p = static_cast<const char*>(t->data);
                 return s.is_paged(name) ? s.release_mapped_range(p, p + ggml_nbytes(t)) : size_t(0);
             },
             py::arg("name"), "Drop one mapped or spilled tensor's unwritten pages from RSS; returns the bytes advised")
        .def("release_mapped_pages",
             [](WeightStore& s) {
                 py::gil_scoped_release nogil;
                 return s.release_mapped_pages();
             },
             "Drop the unwritten mapped pages from this process's RSS (madvise DONTNEED); returns the bytes advised")
        .def("allocate", [](WeightStore& s) {
            py::gil_scoped_release nogil;
            s.allocate();
        })
        .def("set",
             [](WeightStore& s, const std::string& name, py::array a) {
                 const ggml_type src = array_type(a, name);
                 // Non-contiguous views are copied into a contiguous buffer here.
                 py::array c = py::array::ensure(a, py::array::c_style);
                 if (!c) throw InvalidArgument("weight '" + name + "': cannot make the array contiguous");
                 const auto shape = shape_of(c);
                 const auto want = s.shape(name);
                 if (shape != want) {
                     std::string a_s, w_s;
                     for (auto d : shape) a_s += std::to_string(d) + ",";
                     for (auto d : want) w_s += std::to_string(d) + ",";
                     throw InvalidArgument("weight '" + name + "': array shape (" + a_s + ") != declared (" + w_s + ")");
                 }
                 const void* data = c.data();
                 const size_t n = static_cast<size_t>(c.size());
                 py::gil_scoped_release nogil;
                 s.set(name, data, src, n);
             },
             py::arg("name"), py::arg("array"))
        .def("set_blocks",
             [](WeightStore& s, const std::string& name, py::array_t<uint8_t, py::array::c_style> blocks,
                const std::string& type) {
                 // Raw ggml blocks (a GGUF tensor's bytes) of `type`, holding the declared shape's values.
                 const ggml_type src = parse_type(type);
                 if (!ggml_is_quantized(src))
                     throw InvalidArgument("weight '" + name + "': set_blocks takes a quantized type, got '" + type + "'");
                 int64_t count = 1;
                 for (int64_t d : s.shape(name)) count *= d;
                 if (count % ggml_blck_size(src) != 0)
                     throw InvalidArgument("weight '" + name + "': " + std::to_string(count) + " values are not whole " +
                                           type + " blocks");
                 const size_t want = static_cast<size_t>(count / ggml_blck_size(src)) * ggml_type_size(src);
                 if (static_cast<size_t>(blocks.nbytes()) != want)
                     throw InvalidArgument("weight '" + name + "': " + std::to_string(blocks.nbytes()) + " bytes of " + type +
                                           " blocks, expected " + std::to_string(want));
                 const void* data = blocks.data();
                 py::gil_scoped_release nogil;
                 s.set(name, data, src, static_cast<size_t>(count));
             },
             py::arg("name"), py::arg("blocks"), py::arg("type"))
        .def("merge_low_rank",
             [](WeightStore& s, const std::string& name, py::array original, py::list terms, int threads) {
                 // original: the checkpoint's tensor (float32, float16 or uint16 bf16 bits), any shape
                 // with the weight's element count; terms: [(up [out, r], down [r, K], scale), ...],
                 // up and down float32, float16 or bf16 bits (both the same).
                 const ggml_type src = array_type(original, name);
                 py::array orig = py::array::ensure(original, py::array::c_style);
                 if (!orig) throw InvalidArgument("weight '" + name + "': cannot make the original contiguous");
                 if (terms.empty()) throw InvalidArgument("weight '" + name + "': no LoRA terms");
                 std::vector<py::array> keep;
                 std::vector<LowRankTerm> ts;
                 int64_t out = -1, K = -1;
                 for (const auto& item : terms) {
                     auto tup = item.cast<py::tuple>();
                     if (tup.size() != 3) throw InvalidArgument("weight '" + name + "': a term is (up, down, scale)");
                     // up and down as the LoRA file holds them (float32, float16 or bf16 bits);
                     // other dtypes are converted to float32 here
                     py::array up = tup[0].cast<py::array>(), down = tup[1].cast<py::array>();
                     auto plain = [](const py::array& a) {
                         return a.dtype().kind() == 'u' ? a.itemsize() == 2 : (a.dtype().kind() == 'f' && a.itemsize() <= 4);
                     };
                     if (!up.dtype().is(down.dtype()))
                         throw InvalidArgument("weight '" + name + "': up and down of a term must have one dtype");
                     if (!plain(up)) {
                         up = F32Array::ensure(up);
                         down = F32Array::ensure(down);
                     }
                     up = py::array::ensure(up, py::array::c_style);
                     down = py::array::ensure(down, py::array::c_style);
                     if (!up || !down || up.ndim() != 2 || down.ndim() != 2 || up.shape(1) != down.shape(0))
                         throw InvalidArgument("weight '" + name + "': a term needs up [out, r] and down [r, K] of one rank");
                     if ((out >= 0 && up.shape(0) != out) || (K >= 0 && down.shape(1) != K))
                         throw InvalidArgument("weight '" + name + "': the terms disagree on the weight's shape");
                     out = up.shape(0);
                     K = down.shape(1);
                     ts.push_back({up.data(), down.data(), array_type(up, name), up.shape(1), tup[2].cast<float>()});
                     keep.push_back(up);
                     keep.push_back(down);
                 }
                 if (out * K != static_cast<int64_t>(orig.size()))
                     throw InvalidArgument("weight '" + name + "': the original holds " + std::to_string(orig.size()) +
                                           " values, the terms make " + std::to_string(out) + " x " + std::to_string(K));
                 const void* data = orig.data();
                 const int n = threads > 0 ? threads : s.device()->threads();
                 py::gil_scoped_release nogil;
                 merge_low_rank(s, name, data, src, out, ts, n);
             },
             py::arg("name"), py::arg("original"), py::arg("terms"), py::arg("threads") = 0,
             "Write original + sum(scale * up @ down) into the weight, converted to its stored type (multi-threaded)")
        .def("types",
             [](const WeightStore& s) {
                 py::dict out;
                 for (const auto& n : s.names()) out[py::str(n)] = std::string(ggml_type_name(s.type(n)));
                 return out;
             })
        .def("get",
             [](const WeightStore& s, const std::string& name) {
                 auto shape = s.shape(name);
                 std::vector<float> v;
                 {
                     py::gil_scoped_release nogil;
                     v = s.get_f32(name);
                 }
                 auto out = new_f32(shape);
                 std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(float));
                 return out;
             })
        .def("type", [](const WeightStore& s, const std::string& name) { return std::string(ggml_type_name(s.get(name)->type)); })
        .def("shape", &WeightStore::shape)
        .def("has", &WeightStore::has)
        .def("names", &WeightStore::names)
        .def_property_readonly("nbytes", &WeightStore::nbytes)
        .def_property_readonly("allocated", &WeightStore::allocated);
}

}  // namespace sdcpp::bind
