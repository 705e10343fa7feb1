// The CPU kernel seam as seen from Python: levels (detected, active, cap) and, for the tests,
// each element-wise kernel run at a given level on numpy arrays.
#include <cstring>
#include <optional>
#include <thread>
#include <vector>

#include "../kernels/cpu/cpu_level.h"
#include "../kernels/cpu/elementwise.h"
#include "../kernels/cpu/attention_int8.h"
#include "../kernels/cpu/fused_attention.h"
#include "../kernels/cpu/gemm.h"
#include "../kernels/cpu/gemm_bf16.h"
#include "../kernels/cpu/gemm_op.h"
#include "../kernels/cpu/conv_q8_op.h"
#include "../kernels/cpu/gemm_q8.h"
#include "../kernels/cpu/winograd_f23.h"
#include "../kernels/cpu/winograd_f43.h"
#include "../nn/conv2d.h"
#include "../nn/winograd_f23.h"
#include "../nn/winograd_q8.h"
#include "../nn/winograd_f43_strips.h"
#include "../runtime/backends.h"
#include "common.h"

namespace sdcpp::bind {

namespace kc = sdcpp::kernels::cpu;

namespace {

// The level named `level`; throws for one this CPU lacks.
kc::Level supported_level(const std::string& level) {
    const kc::Level l = kc::parse_level(level);
    if (!kc::supported(l)) throw InvalidArgument("this CPU does not support the level '" + level + "'");
    return l;
}

const kc::Elementwise& table_for(const std::string& level) { return kc::elementwise_at(supported_level(level)); }

// Runs work(ith, nth) on `threads` real threads (the caller's among them), as ggml's workers would.
template <class Work>
void on_threads(int threads, Work&& work) {
    std::vector<std::thread> pool;
    for (int i = 1; i < threads; ++i) pool.emplace_back([&, i] { work(i, threads); });
    work(0, threads);
    for (auto& th : pool) th.join();
}

// A float product's arguments (cpu_kernel_gemm, cpu_kernel_gemm_bf16): C = A B^T with A [M, K] f32
// and B [N, K] of `btype` (f32 / f16 / bf16); `c` is the new output.
kc::GemmArgs float_gemm_args(const F32Array& a, const py::array& b, const std::string& btype, int threads, F32Array& c) {
    require_ndim(a, 2, "a");
    require_ndim(b, 2, "b");
    kc::GemmB t;
    if (btype == "f32") t = kc::GemmB::F32;
    else if (btype == "f16") t = kc::GemmB::F16;
    else if (btype == "bf16") t = kc::GemmB::BF16;
    else throw InvalidArgument("btype must be f32, f16 or bf16, got '" + btype + "'");
    const size_t esz = t == kc::GemmB::F32 ? 4 : 2;
    if (static_cast<size_t>(b.itemsize()) != esz || !(b.flags() & py::array::c_style))
        throw InvalidArgument("b must be a C-contiguous array of " + std::to_string(esz) + "-byte values");
    if (a.shape(1) != b.shape(1)) throw InvalidArgument("a and b must have the same K");
    if (threads < 1) throw InvalidArgument("threads must be >= 1");
    const int64_t M = a.shape(0), K = a.shape(1), N = b.shape(0);
    c = new_f32({M, N});
    return kc::GemmArgs{a.data(), K, b.data(), t, static_cast<int64_t>(K * esz), c.mutable_data(), N, M, N, K};
}

// A test graph's context of `bytes` (tensors allocated in it) with sdcpp's kernels capped at
// `level`; the context is freed and the previous cap restored on leaving, a throw included.
class LevelGraph {
   public:
    LevelGraph(size_t bytes, const std::string& level) : cap_(kc::level_cap()) {
        const kc::Level l = supported_level(level);
        ggml_init_params ip{bytes + (size_t(64) << 20), nullptr, false};
        ctx_ = ggml_init(ip);
        if (!ctx_) throw std::runtime_error("ggml_init failed");
        kc::set_level_cap(l);
    }
    ~LevelGraph() {
        kc::set_level_cap(cap_);
        ggml_free(ctx_);
    }
    LevelGraph(const LevelGraph&) = delete;
    LevelGraph& operator=(const LevelGraph&) = delete;
    ggml_context* ctx() const { return ctx_; }

    // Runs the graph ending at `out` on the CPU backend.
    void compute(ggml_tensor* out, int threads, size_t max_nodes) const {
        ggml_cgraph* gf = ggml_new_graph_custom(ctx_, max_nodes, false);
        ggml_build_forward_expand(gf, out);
        if (!compute_on_cpu(gf, threads)) throw std::runtime_error("graph compute failed");
    }

   private:
    kc::Level cap_;
    ggml_context* ctx_ = nullptr;
};

// "q8_0" / "q5_0" / "q4_0" -> the integer product's B type and ggml's.
std::pair<kc::GemmQB, ggml_type> int8_btype(const std::string& name) {
    if (name == "q8_0") return {kc::GemmQB::Q8_0, GGML_TYPE_Q8_0};
    if (name == "q5_0") return {kc::GemmQB::Q5_0, GGML_TYPE_Q5_0};
    if (name == "q4_0") return {kc::GemmQB::Q4_0, GGML_TYPE_Q4_0};
    throw InvalidArgument("btype must be q8_0, q5_0 or q4_0, got '" + name + "'");
}

}  // namespace

void bind_kernels(py::module_& m) {
    m.def("cpu_levels", [] {
        std::vector<std::string> out;
        for (kc::Level l : kc::supported_levels()) out.emplace_back(kc::level_name(l));
        return out;
    }, "CPU levels this machine supports, portable first");
    m.def("cpu_level", [] { return std::string(kc::level_name(kc::active_level())); },
          "the level the custom CPU kernels use now");
    m.def("set_cpu_level", [](const std::string& cap) { return std::string(kc::level_name(kc::set_level_cap(kc::parse_level(cap)))); },
          py::arg("cap"), "cap the kernels' CPU level (as SDCPP_CPU_LEVEL does); returns the active level");
    m.def("cpu_kernels", [] {
        py::dict d;
        d["level"] = kc::level_name(kc::active_level());
        d["detected"] = kc::level_name(kc::detected_level());
        d["cap"] = kc::level_name(kc::level_cap());
        d["elementwise"] = kc::level_name(kc::elementwise().level);
        d["winograd"] = kc::level_name(kc::winograd_f43().level);
        d["winograd_f23"] = kc::level_name(kc::winograd_f23().level);
        d["gemm"] = kc::level_name(kc::gemm_kernels().level);
        d["gemm_q8_0"] = kc::level_name(kc::gemm_q8_kernels().level);
        d["gemm_bf16"] = kc::level_name(kc::gemm_bf16_kernels().level);
        d["attention_f32"] = !fused_attention::available_f32()                    ? "ggml_flash"
                             : kc::runs(kc::active_level(), kc::Level::Avx512) ? "avx512"
                                                                               : "avx2";
        d["attention_bf16"] = fused_attention::bf16_variant();
        d["attention_int8"] = fused_attention::int8_variant();
        py::dict f;
        for (const auto& [name, has] : kc::reported_features()) f[py::str(name)] = has;
        d["features"] = f;
        return d;
    }, "which variant each CPU kernel uses");

    // The Winograd F(4x4, 3x3) convolution (the VAE's; the U-Net's over its batch) as a graph
    // of its own (strips, transforms at `level`, the level cap restored afterwards):
    // x [N, C, H, W], w [OC, C, 3, 3], b [OC] or None, residual [N, OC, H*up, W*up] or None
    // -> [N, OC, H*up, W*up]. onto: "" (an output of its own), "residual" or "input" (written
    // over that tensor, winograd_f43_strips.h).
    m.def("cpu_winograd_conv3x3", [](F32Array x, F32Array w, std::optional<F32Array> b, std::optional<F32Array> residual,
                                     int up, const std::string& level, double strip_kb, int threads, const std::string& onto) {
        if (onto != "" && onto != "residual" && onto != "input") throw InvalidArgument("onto must be '', 'residual' or 'input'");
        require_ndim(x, 4, "x");
        require_ndim(w, 4, "w");
        const int64_t N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3), OC = w.shape(0);
        if (w.shape(1) != C || w.shape(2) != 3 || w.shape(3) != 3 || (b && b->size() != OC))
            throw InvalidArgument("x must be [N, C, H, W], w [OC, C, 3, 3] and b [OC]");
        if (up != 1 && up != 2) throw InvalidArgument("up must be 1 or 2");
        const int64_t OH = H * up, OW = W * up;
        if (residual && (residual->ndim() != 4 || residual->shape(0) != N || residual->shape(1) != OC ||
                         residual->shape(2) != OH || residual->shape(3) != OW))
            throw InvalidArgument("residual must be [N, OC, H*up, W*up]");
        const int64_t T = N * ((OW + 3) / 4) * ((OH + 3) / 4);
        const size_t bytes = sizeof(float) * size_t(36 * T * (C + OC) + 36 * C * OC + N * W * H * C + 9 * C * OC +
                                                    2 * N * OH * OW * OC + OC);
        LevelGraph lg(bytes, level);
        ggml_context* ctx = lg.ctx();
        F32Array y = new_f32({N, OC, OH, OW});
        ggml_tensor* tx = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, W, H, C, N);
        ggml_tensor* tw = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 3, 3, C, OC);
        ggml_tensor* tb = b ? ggml_new_tensor_1d(ctx, GGML_TYPE_F32, OC) : nullptr;
        ggml_tensor* tr = residual ? ggml_new_tensor_4d(ctx, GGML_TYPE_F32, OW, OH, OC, N) : nullptr;
        std::memcpy(tx->data, x.data(), ggml_nbytes(tx));
        std::memcpy(tw->data, w.data(), ggml_nbytes(tw));
        if (tb) std::memcpy(tb->data, b->data(), ggml_nbytes(tb));
        if (tr) std::memcpy(tr->data, residual->data(), ggml_nbytes(tr));
        ggml_tensor* out =
            winograd::conv3x3_f43(ctx, tx, tw, tb, tr, up, size_t(strip_kb * 1024), onto == "residual", onto == "input");
        lg.compute(out, threads, 16384);
        std::memcpy(y.mutable_data(), out->data, ggml_nbytes(out));
        return y;
    }, py::arg("x"), py::arg("w"), py::arg("b"), py::arg("residual"), py::arg("up"), py::arg("level"),
       py::arg("strip_kb") = 8192.0, py::arg("threads") = 2, py::arg("onto") = "");

    // The U-Net's Winograd F(2x2, 3x3) convolution as a graph of its own, transforms at `level`
    // (the level cap restored afterwards), the kernel stored as `wtype` (f32 / f16 / bf16,
    // rounded to nearest even): x [N, C, H, W], w [OC, C, 3, 3], b [OC] or None ->
    // (V [16, T, C], U [16, OC, C], y [N, OC, H, W]).
    m.def("cpu_winograd_f23_conv3x3", [](F32Array x, F32Array w, std::optional<F32Array> b, const std::string& wtype,
                                         const std::string& level, int threads) {
        require_ndim(x, 4, "x");
        require_ndim(w, 4, "w");
        const int64_t N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3), OC = w.shape(0);
        if (w.shape(1) != C || w.shape(2) != 3 || w.shape(3) != 3 || (b && b->size() != OC))
            throw InvalidArgument("x must be [N, C, H, W], w [OC, C, 3, 3] and b [OC]");
        ggml_type wt = GGML_TYPE_F32;
        if (wtype == "f16") wt = GGML_TYPE_F16;
        else if (wtype == "bf16") wt = GGML_TYPE_BF16;
        else if (wtype != "f32") throw InvalidArgument("wtype must be 'f32', 'f16' or 'bf16', got '" + wtype + "'");
        const int64_t T = N * ((W + 1) / 2) * ((H + 1) / 2);
        const size_t bytes = sizeof(float) * size_t(16 * T * (C + OC) + 16 * C * OC + N * W * H * (C + OC) + 9 * C * OC + OC);
        LevelGraph lg(bytes, level);
        ggml_context* ctx = lg.ctx();
        F32Array v = new_f32({16, T, C}), u = new_f32({16, OC, C}), y = new_f32({N, OC, H, W});
        ggml_tensor* tx = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, W, H, C, N);
        ggml_tensor* tw = ggml_new_tensor_4d(ctx, wt, 3, 3, C, OC);
        ggml_tensor* tb = b ? ggml_new_tensor_1d(ctx, GGML_TYPE_F32, OC) : nullptr;
        std::memcpy(tx->data, x.data(), ggml_nbytes(tx));
        if (wt == GGML_TYPE_F32) std::memcpy(tw->data, w.data(), ggml_nbytes(tw));
        else if (wt == GGML_TYPE_F16) ggml_fp32_to_fp16_row(w.data(), static_cast<ggml_fp16_t*>(tw->data), ggml_nelements(tw));
        else ggml_fp32_to_bf16_row(w.data(), static_cast<ggml_bf16_t*>(tw->data), ggml_nelements(tw));
        if (tb) std::memcpy(tb->data, b->data(), ggml_nbytes(tb));
        const winograd::Conv3x3Parts parts = winograd::conv3x3_parts(ctx, tx, tw, tb);
        lg.compute(parts.y, threads, 64);
        std::memcpy(v.mutable_data(), parts.v->data, ggml_nbytes(parts.v));
        std::memcpy(u.mutable_data(), parts.u->data, ggml_nbytes(parts.u));
        std::memcpy(y.mutable_data(), parts.y->data, ggml_nbytes(parts.y));
        return py::make_tuple(v, u, y);
    }, py::arg("x"), py::arg("w"), py::arg("b"), py::arg("wtype"), py::arg("level"), py::arg("threads") = 2);

    // Test hooks: one kernel at one level (work unit 0 of 1), on C-contiguous float32 arrays.
    // in_place: the result written over a copy of x (fused::group_norm_inplace's use).
    m.def("cpu_kernel_group_norm", [](F32Array x, F32Array w, F32Array b, int groups, float eps, bool silu, const std::string& level,
                                      bool in_place) {
        require_ndim(x, 4, "x");
        const auto& k = table_for(level);
        const int64_t N = x.shape(0), C = x.shape(1), HW = x.shape(2) * x.shape(3);
        if (groups < 1 || C % groups != 0) throw InvalidArgument("channels must be divisible by groups");
        if (w.size() != C || b.size() != C) throw InvalidArgument("w and b must have C values");
        F32Array y = new_f32(shape_of(x));
        if (in_place) std::memcpy(y.mutable_data(), x.data(), sizeof(float) * size_t(x.size()));
        kc::group_norm_rows(k, in_place ? y.data() : x.data(), y.mutable_data(), N, C, HW, groups, eps, silu, w.data(), b.data(),
                            0, 1);
        return y;
    }, py::arg("x"), py::arg("w"), py::arg("b"), py::arg("groups"), py::arg("eps"), py::arg("silu"), py::arg("level"),
       py::arg("in_place") = false);
    m.def("cpu_kernel_layer_norm", [](F32Array x, F32Array w, F32Array b, float eps, const std::string& level) {
        require_ndim(x, 2, "x");
        const auto& k = table_for(level);
        const int64_t C = x.shape(1);
        if (w.size() != C || b.size() != C) throw InvalidArgument("w and b must have C values");
        F32Array y = new_f32(shape_of(x));
        kc::layer_norm_rows(k, x.data(), y.mutable_data(), x.shape(0), C, w.data(), b.data(), eps, 0, 1);
        return y;
    });
    m.def("cpu_kernel_geglu", [](F32Array x, const std::string& level) {
        require_ndim(x, 2, "x");
        const auto& k = table_for(level);
        if (x.shape(1) % 2) throw InvalidArgument("x rows must hold 2F values");
        const int64_t F = x.shape(1) / 2;
        F32Array y = new_f32({x.shape(0), F});
        kc::geglu_rows(k, x.data(), y.mutable_data(), x.shape(0), F, 0, 1);
        return y;
    });
    // x [batch, R, C] -> [batch, C, R] by one level's tiles, the work split into `units` units run
    // one after another (each unit's share of the tiles is what one thread would write).
    m.def("cpu_kernel_transpose", [](F32Array x, const std::string& level, int units) {
        require_ndim(x, 3, "x");
        if (units < 1) throw InvalidArgument("units must be >= 1");
        const auto& k = table_for(level);
        F32Array y = new_f32({x.shape(0), x.shape(2), x.shape(1)});
        for (int u = 0; u < units; ++u) kc::transpose_rows(k, x.data(), y.mutable_data(), x.shape(0), x.shape(1), x.shape(2), u, units);
        return y;
    }, py::arg("x"), py::arg("level"), py::arg("units") = 1);
    m.def("cpu_kernel_activation", [](F32Array x, const std::string& act, const std::string& level) {
        require_ndim(x, 2, "x");
        const auto& k = table_for(level);
        F32Array y = new_f32({x.shape(0), x.shape(1)});
        if (act == "quick_gelu")
            kc::quick_gelu_rows(k, x.data(), y.mutable_data(), x.shape(0), x.shape(1), 0, 1);
        else if (act == "gelu")
            kc::gelu_rows(k, x.data(), y.mutable_data(), x.shape(0), x.shape(1), 0, 1);
        else
            throw InvalidArgument("activation must be 'quick_gelu' or 'gelu', got '" + act + "'");
        return y;
    });
    // The packed product at one level: C = A B^T, A [M, K] f32, B [N, K] as float32, or as
    // uint16 holding f16 / bf16 bits (btype "f16" / "bf16"); `threads` real threads (GIL released).
    // The Winograd F(4x4, 3x3) kernel transform of one level alone: w [OC, C, 3, 3] ->
    // U [36, OC, C] (U[p, oc, c] = (G g G^T)[p / 6, p % 6] of w[oc, c]).
    m.def("cpu_winograd_f43_kernel", [](F32Array w, const std::string& level) {
        require_ndim(w, 4, "w");
        const int64_t OC = w.shape(0), C = w.shape(1);
        if (w.shape(2) != 3 || w.shape(3) != 3) throw InvalidArgument("w must be [OC, C, 3, 3]");
        const kc::WinogradF43& k = kc::winograd_f43_at(supported_level(level));
        F32Array u = new_f32({36, OC, C});
        for (int64_t oc = 0; oc < OC; ++oc) k.kernel(w.data() + oc * 9 * C, C, u.mutable_data() + oc * C, OC * C);
        return u;
    }, py::arg("w"), py::arg("level"));

    m.def("cpu_kernel_gemm", [](F32Array a, py::array b, const std::string& btype, const std::string& level, int threads) {
        const kc::GemmKernels& k = kc::gemm_kernels_at(supported_level(level));
        F32Array c;
        const kc::GemmArgs g = float_gemm_args(a, b, btype, threads, c);
        {
            py::gil_scoped_release nogil;
            on_threads(threads, [&](int ith, int nth) { kc::gemm_batched(k, g, 1, 0, 0, 0, ith, nth); });
        }
        return c;
    }, py::arg("a"), py::arg("b"), py::arg("btype"), py::arg("level"), py::arg("threads") = 1);

    // The int8 attention (attention_int8.h) with one variant's micro-kernels ("portable", "avx2",
    // "avx512" or "avx512_vnni", which this CPU must have): q [N, Lq, D], k, v [N, Lk, D] ->
    // [N, Lq, D]; `threads` real threads (GIL released) for the packing and the attention.
    m.def("cpu_kernel_attention_int8", [](F32Array q, F32Array k, F32Array v, int heads, const std::string& variant, int threads) {
        const kc::AttentionInt8Kernels* t = nullptr;
        if (variant == "portable") t = &kc::attention_int8_portable();
        else if (variant == "avx2" && kc::supported(kc::Level::Avx2)) t = kc::attention_int8_avx2();
        else if (variant == "avx512" && kc::supported(kc::Level::Avx512)) t = kc::attention_int8_avx512_with(false);
        else if (variant == "avx512_vnni" && kc::supported(kc::Level::Avx512)) t = kc::attention_int8_avx512_with(true);
        if (!t) throw InvalidArgument("no int8 attention variant '" + variant + "' on this CPU");
        if (q.ndim() != 3 || k.ndim() != 3 || v.ndim() != 3) throw InvalidArgument("q, k, v must be [N, L, D]");
        const int64_t N = q.shape(0), Lq = q.shape(1), D = q.shape(2), Lk = k.shape(1);
        if (k.shape(0) != N || v.shape(0) != N || k.shape(2) != D || v.shape(2) != D || v.shape(1) != Lk || Lk < 1)
            throw InvalidArgument("q, k, v shapes do not agree");
        if (heads < 1 || D % heads != 0) throw InvalidArgument("heads must divide the width");
        if (threads < 1) throw InvalidArgument("threads must be >= 1");
        F32Array out = new_f32({N, Lq, D});
        const kc::AttentionInt8Args a{q.data(), D, Lq * D, k.data(), D, Lk * D, v.data(), D, Lk * D,
                                      out.mutable_data(), D, Lq * D, N, Lq, Lk, D / heads, heads};
        {
            py::gil_scoped_release nogil;
            std::vector<uint32_t> packed(static_cast<size_t>(kc::packed_int8_words(a)));
            on_threads(threads, [&](int ith, int nth) { kc::pack_int8(a, packed.data(), ith, nth); });
            on_threads(threads, [&](int ith, int nth) { kc::attend_int8(*t, a, packed.data(), ith, nth); });
        }
        return out;
    }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("heads"), py::arg("variant"), py::arg("threads") = 1);

    // The bf16 product (gemm_bf16.h) at one level: arguments as cpu_kernel_gemm; levels below amx
    // (or without AMX-BF16) run the portable reference.
    m.def("cpu_kernel_gemm_bf16", [](F32Array a, py::array b, const std::string& btype, const std::string& level, int threads) {
        const kc::GemmBf16Kernels& k = kc::gemm_bf16_kernels_at(supported_level(level));
        F32Array c;
        const kc::GemmArgs g = float_gemm_args(a, b, btype, threads, c);
        {
            py::gil_scoped_release nogil;
            on_threads(threads, [&](int ith, int nth) { kc::gemm_bf16_batched(k, g, 1, 0, 0, 0, ith, nth); });
        }
        return c;
    }, py::arg("a"), py::arg("b"), py::arg("btype"), py::arg("level"), py::arg("threads") = 1);

    // The integer product at one level: C = A B^T, A [M, K] f32, B [N, K / 32 * block bytes] uint8
    // holding ggml blocks of `btype` (q8_0 / q5_0 / q4_0); `threads` real threads (GIL released).
    m.def("cpu_kernel_gemm_q8", [](F32Array a, py::array_t<uint8_t, py::array::c_style> b, const std::string& level,
                                   int threads, const std::string& btype) {
        require_ndim(a, 2, "a");
        const kc::GemmQB bt = int8_btype(btype).first;
        const int64_t bb = kc::gemm_qb_block_bytes(bt);
        if (b.ndim() != 2) throw InvalidArgument("b must be [N, K / 32 * block bytes] uint8");
        const kc::Level l = supported_level(level);
        const int64_t M = a.shape(0), K = a.shape(1), N = b.shape(0);
        if (K % kc::kQ8Block || b.shape(1) != K / kc::kQ8Block * bb)
            throw InvalidArgument("K must be a multiple of 32 and b rows K / 32 * " + std::to_string(bb) + " bytes");
        if (threads < 1) throw InvalidArgument("threads must be >= 1");
        F32Array c = new_f32({M, N});
        kc::GemmQ8Args g{a.data(), K, b.data(), static_cast<int64_t>(b.shape(1)), c.mutable_data(), N, M, N, K, bt};
        const kc::GemmQ8Kernels& k = kc::gemm_q8_kernels_at(l);
        {
            py::gil_scoped_release nogil;
            on_threads(threads, [&](int ith, int nth) { kc::gemm_q8_batched(k, g, 1, 0, 0, 0, ith, nth); });
        }
        return c;
    }, py::arg("a"), py::arg("b"), py::arg("level"), py::arg("threads") = 1, py::arg("btype") = "q8_0");

    // mul_mat of quantized weights in a CPU graph: x [B, M, K] f32 against w [N, K / 32 * block
    // bytes] uint8 (ggml blocks of `btype`, broadcast over B) -> [B, M, N], through ggml_mul_mat ("ggml") or the
    // graph op nn::linear uses (fused::mul_mat with custom ops, "sdcpp") at `level`.
    m.def("cpu_mul_mat_q8", [](F32Array x, py::array_t<uint8_t, py::array::c_style> w, const std::string& via,
                               const std::string& level, int threads, const std::string& btype) {
        require_ndim(x, 3, "x");
        const auto [bt, gt] = int8_btype(btype);
        const int64_t bb = kc::gemm_qb_block_bytes(bt);
        if (w.ndim() != 2) throw InvalidArgument("w must be [N, K / 32 * block bytes] uint8");
        const int64_t B = x.shape(0), M = x.shape(1), K = x.shape(2), N = w.shape(0);
        if (K % kc::kQ8Block || w.shape(1) != K / kc::kQ8Block * bb)
            throw InvalidArgument("K must be a multiple of 32 and w rows K / 32 * " + std::to_string(bb) + " bytes");
        if (via != "ggml" && via != "sdcpp") throw InvalidArgument("via must be 'ggml' or 'sdcpp', got '" + via + "'");
        LevelGraph lg(sizeof(float) * size_t(B * M * (K + N)) + size_t(w.nbytes()) + (size_t(1) << 20), level);
        ggml_context* ctx = lg.ctx();
        ggml_tensor* tx = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, K, M, B);
        ggml_tensor* tw = ggml_new_tensor_2d(ctx, gt, K, N);
        std::memcpy(tx->data, x.data(), ggml_nbytes(tx));
        std::memcpy(tw->data, w.data(), ggml_nbytes(tw));
        if (via == "sdcpp" && !fused::matmul_applies(tw, tx)) throw InvalidArgument("the integer product does not apply (portable level or SDCPP_INT8_GEMM=0)");
        ggml_tensor* out = via == "ggml" ? ggml_mul_mat(ctx, tw, tx) : fused::mul_mat(ctx, tw, tx, true);
        lg.compute(out, threads, 16);
        F32Array y = new_f32({B, M, N});
        std::memcpy(y.mutable_data(), out->data, ggml_nbytes(out));
        return y;
    }, py::arg("x"), py::arg("w"), py::arg("via"), py::arg("level"), py::arg("threads") = 2, py::arg("btype") = "q8_0");
    // nn::conv2d with a quantized kernel in a CPU graph at `level`: x [N, C, H, W] f32, w [OC,
    // C*k*k / 32 * block bytes] uint8 (ggml blocks of `btype`, K ordered c*k*k + ky*k + kx), b
    // [OC] or None, residual [N, OC, OH, OW] or None -> [N, OC, OH, OW], of the 2x upsampling
    // of x when up = 2. via "direct": the one-op convolution (kernels/cpu/conv_q8.h; an error
    // where it does not apply), "im2col": im2col + mul_mat with custom ops (sdcpp's integer
    // product), "ggml": without custom ops (ggml's im2col and products).
    m.def("cpu_conv2d_q8", [](F32Array x, py::array_t<uint8_t, py::array::c_style> w, std::optional<F32Array> b,
                              std::optional<F32Array> residual, int k, int stride, int pad, int up, const std::string& btype,
                              const std::string& via, const std::string& level, int threads) {
        require_ndim(x, 4, "x");
        const auto [bt, gt] = int8_btype(btype);
        const int64_t bb = kc::gemm_qb_block_bytes(bt);
        const int64_t N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3);
        if (k < 1 || stride < 1 || pad < 0 || (up != 1 && up != 2)) throw InvalidArgument("need k >= 1, stride >= 1, pad >= 0, up 1 or 2");
        const int64_t K = C * k * k;
        if (w.ndim() != 2 || K % kc::kQ8Block || w.shape(1) != K / kc::kQ8Block * bb)
            throw InvalidArgument("C*k*k must be a multiple of 32 and w [OC, C*k*k / 32 * " + std::to_string(bb) + "] uint8");
        const int64_t OC = w.shape(0);
        const int64_t OW = (W * up + 2 * pad - k) / stride + 1, OH = (H * up + 2 * pad - k) / stride + 1;
        if (OW < 1 || OH < 1) throw InvalidArgument("the kernel does not fit the image");
        if (b && b->size() != OC) throw InvalidArgument("b must have OC values");
        if (residual && (residual->ndim() != 4 || residual->shape(0) != N || residual->shape(1) != OC ||
                         residual->shape(2) != OH || residual->shape(3) != OW))
            throw InvalidArgument("residual must be [N, OC, OH, OW]");
        const bool winograd = via == "winograd" || via == "winograd_f43";
        if (via != "direct" && via != "im2col" && via != "ggml" && !winograd)
            throw InvalidArgument("via must be 'direct', 'im2col', 'ggml', 'winograd' or 'winograd_f43', got '" + via + "'");
        if (threads < 1) throw InvalidArgument("threads must be >= 1");
        const size_t bytes = sizeof(float) * size_t(4 * N * C * H * W + 2 * K * OH * OW * N + 4 * OC * OH * OW * N + OC) +
                             sizeof(float) * size_t(8 * (C + OC) * (OH + 1) * (OW + 1) * N) + 3 * size_t(w.nbytes());  // + Winograd's V, M, U
        LevelGraph lg(bytes, level);
        ggml_context* ctx = lg.ctx();
        ggml_tensor* tx = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, W, H, C, N);
        ggml_tensor* tw = ggml_new_tensor_2d(ctx, gt, K, OC);
        ggml_tensor* tb = b ? ggml_new_tensor_1d(ctx, GGML_TYPE_F32, OC) : nullptr;
        ggml_tensor* tr = residual ? ggml_new_tensor_4d(ctx, GGML_TYPE_F32, OW, OH, OC, N) : nullptr;
        std::memcpy(tx->data, x.data(), ggml_nbytes(tx));
        std::memcpy(tw->data, w.data(), ggml_nbytes(tw));
        if (tb) std::memcpy(tb->data, b->data(), ggml_nbytes(tb));
        if (tr) std::memcpy(tr->data, residual->data(), ggml_nbytes(tr));
        if (via == "direct" && !(fused::conv_q8_enabled() && fused::conv_q8_applies(tx, tw, k, stride, pad, up, tb, tr)))
            throw InvalidArgument("the direct quantized convolution does not apply (portable level, SDCPP_INT8_GEMM=0 or SDCPP_CONV_Q8=0)");
        if (winograd && !(winograd::q8_enabled() && k == 3 && stride == 1 && pad == 1 && winograd::conv3x3_q8_applies(tx, tw)))
            throw InvalidArgument("the int8 Winograd convolution does not apply (3x3 stride 1 pad 1, C % 32, OC >= 32, not portable, SDCPP_WINOGRAD_Q8 not 0)");
        nn::ConvOptions opt;
        opt.custom_ops = via != "ggml";
        opt.direct_q8 = via == "direct";
        if (winograd) {
            opt.algo = nn::ConvAlgo::Winograd;
            opt.winograd_min_pixels = 0;
            opt.winograd_q8_min_pixels = 0;
            opt.winograd_q8_f43 = via == "winograd_f43";
            opt.winograd_f43_min_pixels = 0;
        }
        nn::ConvGeometry geo = nn::ConvGeometry::same(stride, pad);
        geo.up = up;
        ggml_tensor* out = nn::conv2d(ctx, tx, tw, tb, geo, opt, tr);
        lg.compute(out, threads, 64);
        F32Array y = new_f32({N, OC, OH, OW});
        std::memcpy(y.mutable_data(), out->data, ggml_nbytes(out));
        return y;
    }, py::arg("x"), py::arg("w"), py::arg("b"), py::arg("residual"), py::arg("k"), py::arg("stride"), py::arg("pad"),
       py::arg("up"), py::arg("btype"), py::arg("via"), py::arg("level"), py::arg("threads") = 2);
}

}  // namespace sdcpp::bind
