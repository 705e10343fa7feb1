// The step rules of the samplers, each written from its published formula: Euler and Heun
// (Karras et al. 2022, "Elucidating the Design Space", Alg. 1-2), DPM2 (ibid., the midpoint in
// log sigma), DPM-Solver++(2M) and (2S) ancestral (Lu et al. 2022), LCM's consistency step
// (Luo et al. 2023, diffusers' LCMScheduler boundary condition), DDIM (Song et al. 2021) with
// trailing timesteps, and improved PNDM (Zhang & Chen 2022, fixed-step Adams-Bashforth).
#include "sampler_rules.h"

#include <algorithm>
#include <cmath>
#include <deque>

namespace sdcpp::sampling {

const float* StepContext::draw_noise() {
    noise.resize(n);
    rng->randn(noise.data(), n);
    return noise.data();
}

namespace {

using Vec = std::vector<float>;

// sigma_down, sigma_up of an ancestral step (k-diffusion's get_ancestral_step).
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

// x += d * dt with d = (x - D) / s.
void euler_update(float* x, const float* D, float s, float dt, size_t n) {
    for (size_t k = 0; k < n; ++k) x[k] = x[k] + ((x[k] - D[k]) / s) * dt;
}

struct Euler : StepRule {
    void step(StepContext& c, int i) override {
        const float s = c.sigmas[i], dt = c.sigmas[i + 1] - c.sigmas[i];
        c.denoise(c.x, s, c.den.data());
        euler_update(c.x, c.den.data(), s, dt, c.n);
    }
};

struct EulerAncestral : StepRule {
    void step(StepContext& c, int i) override {
        const float s = c.sigmas[i];
        double down, up;
        ancestral_step(s, c.sigmas[i + 1], c.eta, &down, &up);
        c.denoise(c.x, s, c.den.data());
        euler_update(c.x, c.den.data(), s, static_cast<float>(down) - s, c.n);
        if (c.eta > 0) {
            // diffusers draws on every step, the last one too (scaled by sigma_up = 0 there),
            // so the generator ends where diffusers' does.
            const float* z = c.draw_noise();
            const float fu = static_cast<float>(up);
            if (c.sigmas[i + 1] > 0 && up > 0)
                for (size_t k = 0; k < c.n; ++k) c.x[k] = c.x[k] + z[k] * fu;
        }
    }
};

struct Heun : StepRule {
    Vec d, x2;
    explicit Heun(size_t n) : d(n), x2(n) {}
    void step(StepContext& c, int i) override {
        float* x = c.x;
        float* D = c.den.data();
        const float s = c.sigmas[i], s1 = c.sigmas[i + 1], dt = s1 - s;
        c.denoise(x, s, D);
        for (size_t k = 0; k < c.n; ++k) d[k] = (x[k] - D[k]) / s;
        if (s1 == 0.0f) {  // the last step is plain Euler
            for (size_t k = 0; k < c.n; ++k) x[k] = x[k] + d[k] * dt;
            return;
        }
        for (size_t k = 0; k < c.n; ++k) x2[k] = x[k] + d[k] * dt;
        c.denoise(x2.data(), s1, D);
        for (size_t k = 0; k < c.n; ++k) {
            const float d2 = (x2[k] - D[k]) / s1;
            x[k] = x[k] + ((d[k] + d2) / 2.0f) * dt;
        }
    }
};

struct Dpm2 : StepRule {
    Vec d, x2;
    explicit Dpm2(size_t n) : d(n), x2(n) {}
    void step(StepContext& c, int i) override {
        float* x = c.x;
        float* D = c.den.data();
        const float s = c.sigmas[i], s1 = c.sigmas[i + 1];
        c.denoise(x, s, D);
        for (size_t k = 0; k < c.n; ++k) d[k] = (x[k] - D[k]) / s;
        if (s1 == 0.0f) {
            const float dt = s1 - s;
            for (size_t k = 0; k < c.n; ++k) x[k] = x[k] + d[k] * dt;
            return;
        }
        const float s_mid = static_cast<float>(std::exp(0.5 * (std::log(double(s)) + std::log(double(s1)))));
        const float dt1 = s_mid - s, dt2 = s1 - s;
        for (size_t k = 0; k < c.n; ++k) x2[k] = x[k] + d[k] * dt1;
        c.denoise(x2.data(), s_mid, D);
        for (size_t k = 0; k < c.n; ++k) x[k] = x[k] + ((x2[k] - D[k]) / s_mid) * dt2;
    }
};

struct DpmPP2M : StepRule {
    Vec old;
    bool have_old = false;
    explicit DpmPP2M(size_t n) : old(n) {}
    void step(StepContext& c, int i) override {
        float* x = c.x;
        float* D = c.den.data();
        const double s = c.sigmas[i], s1 = c.sigmas[i + 1];
        c.denoise(x, c.sigmas[i], D);
        if (s1 == 0.0) {
            std::copy(D, D + c.n, x);
        } else {
            const double t = -std::log(s), t1 = -std::log(s1), h = t1 - t;
            const float a = static_cast<float>(s1 / s), b = static_cast<float>(-std::expm1(-h));
            if (!have_old) {
                for (size_t k = 0; k < c.n; ++k) x[k] = a * x[k] + b * D[k];
            } else {
                const double h_last = t - (-std::log(double(c.sigmas[i - 1])));
                const double r = h_last / h;
                const float w1 = static_cast<float>(1.0 + 1.0 / (2.0 * r)), w0 = static_cast<float>(1.0 / (2.0 * r));
                for (size_t k = 0; k < c.n; ++k) x[k] = a * x[k] + b * (w1 * D[k] - w0 * old[k]);
            }
        }
        std::copy(D, D + c.n, old.begin());
        have_old = true;
    }
};

struct DpmPP2SAncestral : StepRule {
    Vec x2;
    explicit DpmPP2SAncestral(size_t n) : x2(n) {}
    void step(StepContext& c, int i) override {
        float* x = c.x;
        float* D = c.den.data();
        const double s = c.sigmas[i];
        double down, up;
        ancestral_step(s, c.sigmas[i + 1], c.eta, &down, &up);
        c.denoise(x, c.sigmas[i], D);
        if (down == 0.0) {
            euler_update(x, D, c.sigmas[i], static_cast<float>(down - s), c.n);
        } else {
            const double t = -std::log(s), t_next = -std::log(down), h = t_next - t;
            const double s_mid = std::exp(-(t + 0.5 * h));
            const float a1 = static_cast<float>(s_mid / s), b1 = static_cast<float>(-std::expm1(-0.5 * h));
            for (size_t k = 0; k < c.n; ++k) x2[k] = a1 * x[k] + b1 * D[k];
            c.denoise(x2.data(), static_cast<float>(s_mid), D);
            const float a = static_cast<float>(down / s), b = static_cast<float>(-std::expm1(-h));
            for (size_t k = 0; k < c.n; ++k) x[k] = a * x[k] + b * D[k];
        }
        if (c.sigmas[i + 1] > 0 && up > 0) {
            const float* z = c.draw_noise();
            const float fu = static_cast<float>(up);
            for (size_t k = 0; k < c.n; ++k) x[k] = x[k] + z[k] * fu;
        }
    }
};

struct Lcm : StepRule {
    void step(StepContext& c, int i) override {
        float* x = c.x;
        float* D = c.den.data();
        const float s = c.sigmas[i], s1 = c.sigmas[i + 1];
        c.denoise(x, s, D);
        if (c.opts.schedule) {
            // diffusers LCMScheduler: denoised = c_out * x0 + c_skip * x_t (x_t in VP scale),
            // sigma_data = 0.5, timestep_scaling = 10. Without the schedule: c_skip 0, c_out 1.
            const double st = c.opts.schedule->sigma_to_t(s) * 10.0;
            const double sd2 = 0.25;
            const float c_skip = static_cast<float>(sd2 / (st * st + sd2));
            const float c_out = static_cast<float>(st / std::sqrt(st * st + sd2));
            const float vp = static_cast<float>(1.0 / std::sqrt(double(s) * s + 1.0));
            for (size_t k = 0; k < c.n; ++k) D[k] = c_out * D[k] + c_skip * (x[k] * vp);
        }
        if (s1 > 0) {
            const float* z = c.draw_noise();
            for (size_t k = 0; k < c.n; ++k) x[k] = D[k] + s1 * z[k];
        } else {
            std::copy(D, D + c.n, x);
        }
    }
};

struct DdimTrailing : StepRule {
    void step(StepContext& c, int i) override {
        float* x = c.x;
        float* D = c.den.data();
        const double s = c.sigmas[i], s1 = c.sigmas[i + 1];
        c.denoise(x, c.sigmas[i], D);
        const float fs = c.sigmas[i];
        if (s1 == 0.0) {
            std::copy(D, D + c.n, x);
            if (c.eta > 0) c.draw_noise();  // diffusers draws (and multiplies by 0) on the last step
        } else if (c.eta == 0.0) {
            const float f1 = c.sigmas[i + 1];
            for (size_t k = 0; k < c.n; ++k) x[k] = D[k] + f1 * ((x[k] - D[k]) / fs);
        } else {
            // DDIM in VP form, divided by sqrt(alpha_prev) into sigma form.
            const double a_t = 1.0 / (1.0 + s * s), a_p = 1.0 / (1.0 + s1 * s1);
            const double var = (1.0 - a_p) / (1.0 - a_t) * (1.0 - a_t / a_p);
            const double std_t = c.eta * std::sqrt(std::max(0.0, var));
            const float dir = static_cast<float>(std::sqrt(std::max(0.0, (1.0 - a_p - std_t * std_t) / a_p)));
            const float nz = static_cast<float>(std_t / std::sqrt(a_p));
            const float* z = c.draw_noise();
            for (size_t k = 0; k < c.n; ++k) x[k] = D[k] + dir * ((x[k] - D[k]) / fs) + nz * z[k];
        }
    }
};

// Adams-Bashforth on d = (x - D) / sigma, orders 1..4 as history builds up.
struct Ipndm : StepRule {
    std::deque<Vec> hist;  // most recent last
    Vec d;
    explicit Ipndm(size_t n) : d(n) {}
    void step(StepContext& c, int i) override {
        float* x = c.x;
        const float* D = c.den.data();
        const float s = c.sigmas[i], dt = c.sigmas[i + 1] - c.sigmas[i];
        c.denoise(x, s, c.den.data());
        for (size_t k = 0; k < c.n; ++k) d[k] = (x[k] - D[k]) / s;
        const int order = std::min<int>(4, static_cast<int>(hist.size()) + 1);
        const size_t H = hist.size();
        for (size_t k = 0; k < c.n; ++k) {
            float slope;
            switch (order) {
                case 1: slope = d[k]; break;
                case 2: slope = (3.0f * d[k] - hist[H - 1][k]) / 2.0f; break;
                case 3: slope = (23.0f * d[k] - 16.0f * hist[H - 1][k] + 5.0f * hist[H - 2][k]) / 12.0f; break;
                default:
                    slope = (55.0f * d[k] - 59.0f * hist[H - 1][k] + 37.0f * hist[H - 2][k] - 9.0f * hist[H - 3][k]) / 24.0f;
            }
            x[k] = x[k] + slope * dt;
        }
        hist.push_back(d);
        if (hist.size() > 3) hist.pop_front();
    }
};

template <class R>
std::unique_ptr<StepRule> make_sized(size_t n) { return std::make_unique<R>(n); }
template <class R>
std::unique_ptr<StepRule> make_plain(size_t) { return std::make_unique<R>(); }

}  // namespace

const std::vector<SamplerSpec>& sampler_specs() {
    // name, default eta, eta adds noise, always draws, model calls per step, rule
    static const std::vector<SamplerSpec> specs = [] {
        std::vector<SamplerSpec> v;
        v.push_back({"euler", 0.0f, false, false, 1, make_plain<Euler>});
        v.push_back({"euler_a", 1.0f, true, false, 1, make_plain<EulerAncestral>});
        v.push_back({"heun", 0.0f, false, false, 2, make_sized<Heun>});
        v.push_back({"dpm2", 0.0f, false, false, 2, make_sized<Dpm2>});
        v.push_back({"dpm++2m", 0.0f, false, false, 1, make_sized<DpmPP2M>});
        v.push_back({"dpm++2s_a", 1.0f, true, false, 2, make_sized<DpmPP2SAncestral>});
        v.push_back({"lcm", 0.0f, false, true, 1, make_plain<Lcm>});
        v.push_back({"ddim_trailing", 0.0f, true, false, 1, make_plain<DdimTrailing>});
        v.push_back({"ipndm", 0.0f, false, false, 1, make_sized<Ipndm>});
        return v;
    }();
    return specs;
}

const SamplerSpec* find_sampler(const std::string& name) {
    for (const SamplerSpec& s : sampler_specs())
        if (name == s.name) return &s;
    return nullptr;
}

}  // namespace sdcpp::sampling
