// Samplers in k-diffusion's sigma form (Karras et al. 2022; k-diffusion sampling.py; the
// update rules in docs/reference/ARCHITECTURES.md §6.2). Written here from the formulas.
#include "samplers.h"

#include <algorithm>
#include <cmath>
#include <deque>

#include "../runtime/error.h"

namespace sdcpp::sampling {

namespace {

using Vec = std::vector<float>;

// sigma_down, sigma_up of an ancestral step (k-diffusion get_ancestral_step).
void ancestral_step(double s_from, double s_to, double eta, double* down, double* up) {
    if (eta <= 0.0 || s_to <= 0.0) {
        *up = 0.0;
        *down = s_to;
        return;
    }
    const double u = std::min(s_to, eta * std::sqrt(s_to * s_to * (s_from * s_from - s_to * s_to) / (s_from * s_from)));
    *up = u;
    *down = std::sqrt(std::max(0.0, s_to * s_to - u * u));
}

struct Ctx {
    Denoiser& model;
    float* x;
    size_t n;
    Rng* rng;
    Vec den, tmp, noise;

    Ctx(Denoiser& m, float* x_, size_t n_, Rng* r) : model(m), x(x_), n(n_), rng(r), den(n_), tmp(n_) {}

    void denoise(const float* in, float sigma, float* out) { model.denoise(in, sigma, out, n); }
    const float* draw_noise() {
        noise.resize(n);
        rng->randn(noise.data(), n);
        return noise.data();
    }
};

bool is_known(const std::string& s) {
    const auto& v = sampler_names();
    return std::find(v.begin(), v.end(), s) != v.end();
}

float default_eta(const std::string& sampler) {
    if (sampler == "euler_a" || sampler == "dpm++2s_a") return 1.0f;
    return 0.0f;
}

}  // namespace

const std::vector<std::string>& sampler_names() {
    static const std::vector<std::string> names = {"euler", "euler_a",   "heun", "dpm2",         "dpm++2m",
                                                   "dpm++2s_a", "lcm", "ddim_trailing", "ipndm"};
    return names;
}

bool sampler_uses_noise(const std::string& sampler, const SamplerOptions& opts) {
    const float eta = opts.eta < 0 ? default_eta(sampler) : opts.eta;
    if (sampler == "lcm") return true;
    if (sampler == "euler_a" || sampler == "dpm++2s_a" || sampler == "ddim_trailing") return eta > 0;
    return false;
}

int sampler_model_calls(const std::string& sampler, int steps) {
    if (sampler == "heun" || sampler == "dpm2" || sampler == "dpm++2s_a") return 2 * steps - 1;
    return steps;
}

SampleResult sample(const std::string& sampler, Denoiser& model, float* x, size_t n, const std::vector<float>& sigmas,
                    Rng* rng, const SamplerOptions& opts, const StepCallback& callback) {
    if (!is_known(sampler)) {
        std::string msg = "unknown sampler '" + sampler + "'; valid: ";
        for (size_t i = 0; i < sampler_names().size(); ++i) msg += (i ? ", " : "") + sampler_names()[i];
        throw InvalidArgument(msg);
    }
    SD_CHECK(n > 0, "the latent is empty");
    SD_CHECK(sigmas.size() >= 2, "sigmas needs at least 2 entries (one step), got " + std::to_string(sigmas.size()));
    for (size_t i = 0; i < sigmas.size(); ++i) {
        SD_CHECK(std::isfinite(sigmas[i]), "sigmas must be finite");
        if (i + 1 < sigmas.size()) {
            SD_CHECK(sigmas[i] > 0, "every sigma but the last must be > 0");
            SD_CHECK(sigmas[i + 1] <= sigmas[i], "sigmas must be non-increasing");
        }
    }
    SD_CHECK(sigmas.back() >= 0, "the last sigma must be >= 0");
    const double eta = opts.eta < 0 ? default_eta(sampler) : opts.eta;
    SD_CHECK(std::isfinite(eta), "eta must be finite");
    if (sampler_uses_noise(sampler, opts)) SD_CHECK(rng != nullptr, "sampler '" + sampler + "' needs a random generator");

    Ctx c(model, x, n, rng);
    const int steps = static_cast<int>(sigmas.size()) - 1;
    SampleResult result;
    auto after_step = [&](int i) -> bool {
        result.steps_done = i + 1;
        if (callback && !callback(StepInfo{i, steps, sigmas[i], sigmas[i + 1]}, x, n)) {
            result.cancelled = true;
            return false;
        }
        return true;
    };

    float* D = c.den.data();
    if (sampler == "euler") {
        for (int i = 0; i < steps; ++i) {
            const float s = sigmas[i], dt = sigmas[i + 1] - sigmas[i];
            c.denoise(x, s, D);
            for (size_t k = 0; k < n; ++k) x[k] = x[k] + ((x[k] - D[k]) / s) * dt;
            if (!after_step(i)) return result;
        }
    } else if (sampler == "euler_a") {
        for (int i = 0; i < steps; ++i) {
            const float s = sigmas[i];
            double down, up;
            ancestral_step(s, sigmas[i + 1], eta, &down, &up);
            c.denoise(x, s, D);
            const float dt = static_cast<float>(down) - s;
            for (size_t k = 0; k < n; ++k) x[k] = x[k] + ((x[k] - D[k]) / s) * dt;
            if (eta > 0) {
                // diffusers draws on every step, the last one too (scaled by sigma_up = 0 there),
                // so the generator ends where diffusers' does.
                const float* z = c.draw_noise();
                const float fu = static_cast<float>(up);
                if (sigmas[i + 1] > 0 && up > 0)
                    for (size_t k = 0; k < n; ++k) x[k] = x[k] + z[k] * fu;
            }
            if (!after_step(i)) return result;
        }
    } else if (sampler == "heun") {
        Vec d(n), x2(n);
        for (int i = 0; i < steps; ++i) {
            const float s = sigmas[i], s1 = sigmas[i + 1], dt = s1 - s;
            c.denoise(x, s, D);
            for (size_t k = 0; k < n; ++k) d[k] = (x[k] - D[k]) / s;
            if (s1 == 0.0f) {
                for (size_t k = 0; k < n; ++k) x[k] = x[k] + d[k] * dt;
            } else {
                for (size_t k = 0; k < n; ++k) x2[k] = x[k] + d[k] * dt;
                c.denoise(x2.data(), s1, D);
                for (size_t k = 0; k < n; ++k) {
                    const float d2 = (x2[k] - D[k]) / s1;
                    x[k] = x[k] + ((d[k] + d2) / 2.0f) * dt;
                }
            }
            if (!after_step(i)) return result;
        }
    } else if (sampler == "dpm2") {
        Vec d(n), x2(n);
        for (int i = 0; i < steps; ++i) {
            const float s = sigmas[i], s1 = sigmas[i + 1];
            c.denoise(x, s, D);
            for (size_t k = 0; k < n; ++k) d[k] = (x[k] - D[k]) / s;
            if (s1 == 0.0f) {
                const float dt = s1 - s;
                for (size_t k = 0; k < n; ++k) x[k] = x[k] + d[k] * dt;
            } else {
                const float s_mid = static_cast<float>(std::exp(0.5 * (std::log(double(s)) + std::log(double(s1)))));
                const float dt1 = s_mid - s, dt2 = s1 - s;
                for (size_t k = 0; k < n; ++k) x2[k] = x[k] + d[k] * dt1;
                c.denoise(x2.data(), s_mid, D);
                for (size_t k = 0; k < n; ++k) x[k] = x[k] + ((x2[k] - D[k]) / s_mid) * dt2;
            }
            if (!after_step(i)) return result;
        }
    } else if (sampler == "dpm++2m") {
        Vec old(n);
        bool have_old = false;
        for (int i = 0; i < steps; ++i) {
            const double s = sigmas[i], s1 = sigmas[i + 1];
            c.denoise(x, sigmas[i], D);
            if (s1 == 0.0) {
                std::copy(D, D + n, x);
            } else {
                const double t = -std::log(s), t1 = -std::log(s1), h = t1 - t;
                const float a = static_cast<float>(s1 / s), b = static_cast<float>(-std::expm1(-h));
                if (!have_old) {
                    for (size_t k = 0; k < n; ++k) x[k] = a * x[k] + b * D[k];
                } else {
                    const double h_last = t - (-std::log(double(sigmas[i - 1])));
                    const double r = h_last / h;
                    const float w1 = static_cast<float>(1.0 + 1.0 / (2.0 * r)), w0 = static_cast<float>(1.0 / (2.0 * r));
                    for (size_t k = 0; k < n; ++k) x[k] = a * x[k] + b * (w1 * D[k] - w0 * old[k]);
                }
            }
            std::copy(D, D + n, old.begin());
            have_old = true;
            if (!after_step(i)) return result;
        }
    } else if (sampler == "dpm++2s_a") {
        Vec x2(n);
        for (int i = 0; i < steps; ++i) {
            const double s = sigmas[i];
            double down, up;
            ancestral_step(s, sigmas[i + 1], eta, &down, &up);
            c.denoise(x, sigmas[i], D);
            if (down == 0.0) {
                const float dt = static_cast<float>(down - s), fs = sigmas[i];
                for (size_t k = 0; k < n; ++k) x[k] = x[k] + ((x[k] - D[k]) / fs) * dt;
            } else {
                const double t = -std::log(s), t_next = -std::log(down), h = t_next - t;
                const double s_mid = std::exp(-(t + 0.5 * h));
                const float a1 = static_cast<float>(s_mid / s), b1 = static_cast<float>(-std::expm1(-0.5 * h));
                for (size_t k = 0; k < n; ++k) x2[k] = a1 * x[k] + b1 * D[k];
                c.denoise(x2.data(), static_cast<float>(s_mid), D);
                const float a = static_cast<float>(down / s), b = static_cast<float>(-std::expm1(-h));
                for (size_t k = 0; k < n; ++k) x[k] = a * x[k] + b * D[k];
            }
            if (sigmas[i + 1] > 0 && up > 0) {
                const float* z = c.draw_noise();
                const float fu = static_cast<float>(up);
                for (size_t k = 0; k < n; ++k) x[k] = x[k] + z[k] * fu;
            }
            if (!after_step(i)) return result;
        }
    } else if (sampler == "lcm") {
        for (int i = 0; i < steps; ++i) {
            const float s = sigmas[i], s1 = sigmas[i + 1];
            c.denoise(x, s, D);
            if (opts.schedule) {
                // diffusers LCMScheduler: denoised = c_out * x0 + c_skip * x_t (x_t in VP scale),
                // sigma_data = 0.5, timestep_scaling = 10.
                const double st = opts.schedule->sigma_to_t(s) * 10.0;
                const double sd2 = 0.25;
                const float c_skip = static_cast<float>(sd2 / (st * st + sd2));
                const float c_out = static_cast<float>(st / std::sqrt(st * st + sd2));
                const float vp = static_cast<float>(1.0 / std::sqrt(double(s) * s + 1.0));
                for (size_t k = 0; k < n; ++k) D[k] = c_out * D[k] + c_skip * (x[k] * vp);
            }
            if (s1 > 0) {
                const float* z = c.draw_noise();
                for (size_t k = 0; k < n; ++k) x[k] = D[k] + s1 * z[k];
            } else {
                std::copy(D, D + n, x);
            }
            if (!after_step(i)) return result;
        }
    } else if (sampler == "ddim_trailing") {
        for (int i = 0; i < steps; ++i) {
            const double s = sigmas[i], s1 = sigmas[i + 1];
            c.denoise(x, sigmas[i], D);
            const float fs = sigmas[i];
            if (s1 == 0.0) {
                std::copy(D, D + n, x);
                if (eta > 0) c.draw_noise();  // diffusers draws (and multiplies by 0) on the last step
            } else if (eta == 0.0) {
                const float f1 = sigmas[i + 1];
                for (size_t k = 0; k < n; ++k) x[k] = D[k] + f1 * ((x[k] - D[k]) / fs);
            } else {
                // DDIM (Song et al. 2021) in VP form, divided by sqrt(alpha_prev) into sigma form.
                const double a_t = 1.0 / (1.0 + s * s), a_p = 1.0 / (1.0 + s1 * s1);
                const double var = (1.0 - a_p) / (1.0 - a_t) * (1.0 - a_t / a_p);
                const double std_t = eta * std::sqrt(std::max(0.0, var));
                const float dir = static_cast<float>(std::sqrt(std::max(0.0, (1.0 - a_p - std_t * std_t) / a_p)));
                const float nz = static_cast<float>(std_t / std::sqrt(a_p));
                const float* z = c.draw_noise();
                for (size_t k = 0; k < n; ++k) x[k] = D[k] + dir * ((x[k] - D[k]) / fs) + nz * z[k];
            }
            if (!after_step(i)) return result;
        }
    } else if (sampler == "ipndm") {
        // improved PNDM (Zhang & Chen 2022): Adams-Bashforth on d = (x - D)/sigma with
        // lower-order warm start, fixed-step coefficients.
        std::deque<Vec> hist;  // most recent last
        Vec d(n);
        for (int i = 0; i < steps; ++i) {
            const float s = sigmas[i], dt = sigmas[i + 1] - sigmas[i];
            c.denoise(x, s, D);
            for (size_t k = 0; k < n; ++k) d[k] = (x[k] - D[k]) / s;
            const int order = std::min<int>(4, static_cast<int>(hist.size()) + 1);
            const size_t H = hist.size();
            for (size_t k = 0; k < n; ++k) {
                float slope;
                switch (order) {
                    case 1: slope = d[k]; break;
                    case 2: slope = (3.0f * d[k] - hist[H - 1][k]) / 2.0f; break;
                    case 3: slope = (23.0f * d[k] - 16.0f * hist[H - 1][k] + 5.0f * hist[H - 2][k]) / 12.0f; break;
                    default:
                        slope = (55.0f * d[k] - 59.0f * hist[H - 1][k] + 37.0f * hist[H - 2][k] - 9.0f * hist[H - 3][k]) /
                                24.0f;
                }
                x[k] = x[k] + slope * dt;
            }
            hist.push_back(d);
            if (hist.size() > 3) hist.pop_front();
            if (!after_step(i)) return result;
        }
    }
    return result;
}

}  // namespace sdcpp::sampling
