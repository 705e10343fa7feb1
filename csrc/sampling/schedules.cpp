#include "schedules.h"

#include <algorithm>
#include <cmath>

#include "../runtime/error.h"

namespace sdcpp::sampling {

NoiseSchedule NoiseSchedule::from_betas(double beta_start, double beta_end, int T, const std::string& beta_schedule,
                                        bool float32_alphas) {
    SD_CHECK(T >= 2, "num_timesteps must be >= 2");
    SD_CHECK(beta_start > 0 && beta_end > 0 && beta_start < 1 && beta_end < 1, "betas must lie in (0, 1)");
    std::vector<double> ac(T);
    double prod = 1.0;
    for (int t = 0; t < T; ++t) {
        const double f = static_cast<double>(t) / (T - 1);
        double beta;
        if (beta_schedule == "scaled_linear") {
            const double s = std::sqrt(beta_start) + f * (std::sqrt(beta_end) - std::sqrt(beta_start));
            beta = s * s;
        } else if (beta_schedule == "linear") {
            beta = beta_start + f * (beta_end - beta_start);
        } else {
            throw InvalidArgument("beta_schedule must be 'scaled_linear' or 'linear', got '" + beta_schedule + "'");
        }
        prod *= 1.0 - beta;
        ac[t] = float32_alphas ? static_cast<double>(static_cast<float>(prod)) : prod;
    }
    return NoiseSchedule(std::move(ac));
}

NoiseSchedule::NoiseSchedule(std::vector<double> alphas_cumprod) : alphas_cumprod_(std::move(alphas_cumprod)) {
    SD_CHECK(alphas_cumprod_.size() >= 2, "alphas_cumprod needs at least 2 entries");
    sigmas_.resize(alphas_cumprod_.size());
    log_sigmas_.resize(alphas_cumprod_.size());
    for (size_t t = 0; t < alphas_cumprod_.size(); ++t) {
        const double a = alphas_cumprod_[t];
        SD_CHECK(a > 0 && a < 1, "alphas_cumprod must lie in (0, 1)");
        sigmas_[t] = std::sqrt((1.0 - a) / a);
        log_sigmas_[t] = std::log(sigmas_[t]);
        if (t > 0) SD_CHECK(sigmas_[t] > sigmas_[t - 1], "alphas_cumprod must decrease strictly");
    }
}

double NoiseSchedule::sigma_to_t(double sigma) const {
    const int T = num_timesteps();
    const double ls = std::log(sigma);
    // largest i with log_sigmas[i] <= ls (0 when sigma is below the table), capped at T-2
    int low = static_cast<int>(std::upper_bound(log_sigmas_.begin(), log_sigmas_.end(), ls) - log_sigmas_.begin()) - 1;
    low = std::clamp(low, 0, T - 2);
    const double lo = log_sigmas_[low], hi = log_sigmas_[low + 1];
    double w = (lo - ls) / (lo - hi);
    w = std::clamp(w, 0.0, 1.0);
    return (1.0 - w) * low + w * (low + 1);
}

double NoiseSchedule::t_to_sigma(double t) const {
    const int T = num_timesteps();
    t = std::clamp(t, 0.0, static_cast<double>(T - 1));
    const int low = static_cast<int>(std::floor(t));
    const int high = static_cast<int>(std::ceil(t));
    const double w = t - low;
    return std::exp((1.0 - w) * log_sigmas_[low] + w * log_sigmas_[high]);
}

const std::vector<std::string>& schedule_names() {
    static const std::vector<std::string> names = {"discrete", "karras", "exponential", "ays",
                                                   "sgm_uniform", "simple", "lcm", "trailing"};
    return names;
}

namespace {

// Align Your Steps (A. Sabour, S. Fidler, K. Kreis, "Align Your Steps: Optimizing Sampling
// Schedules in Diffusion Models", ICML 2024, arXiv:2404.14507): the 10-step noise levels NVIDIA
// published for SD 1.5 and SDXL on the project page (research.nvidia.com/labs/toronto-ai/AlignYourSteps,
// "How to use"), the same tables that ComfyUI's AlignYourStepsScheduler and A1111 carry.
const double kAysSD1[11] = {14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
                            0.9642583904,  0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582};
const double kAysSDXL[11] = {14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
                             0.5550693289,  0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582};

// Log-linear interpolation of a descending list onto m points evenly spaced in [0, 1].
std::vector<double> loglinear_interp(const double* levels, int len, int m) {
    std::vector<double> out(m);
    for (int i = 0; i < m; ++i) {
        const double x = (m == 1) ? 0.0 : static_cast<double>(i) / (m - 1) * (len - 1);
        int lo = static_cast<int>(std::floor(x));
        lo = std::clamp(lo, 0, len - 2);
        const double w = x - lo;
        out[i] = std::exp((1.0 - w) * std::log(levels[lo]) + w * std::log(levels[lo + 1]));
    }
    return out;
}

}  // namespace

std::vector<float> make_sigmas(const std::string& schedule, int n, const NoiseSchedule& ns, const std::string& family) {
    SD_CHECK(n >= 1, "the number of steps must be >= 1, got " + std::to_string(n));
    const int T = ns.num_timesteps();
    const double t_max = T - 1;
    std::vector<double> s;
    s.reserve(n + 1);
    if (schedule == "discrete") {
        // k-diffusion get_sigmas / sd.cpp discrete: t = linspace(T-1, 0, n)
        for (int i = 0; i < n; ++i) {
            const double t = (n == 1) ? t_max : t_max - t_max * i / (n - 1);
            s.push_back(ns.t_to_sigma(t));
        }
    } else if (schedule == "karras") {
        // Karras et al. 2022 eq. (5), rho = 7, the model's full sigma range.
        const double rho = 7.0;
        const double min_r = std::pow(ns.sigma_min(), 1.0 / rho), max_r = std::pow(ns.sigma_max(), 1.0 / rho);
        for (int i = 0; i < n; ++i) {
            const double ramp = (n == 1) ? 0.0 : static_cast<double>(i) / (n - 1);
            s.push_back(std::pow(max_r + ramp * (min_r - max_r), rho));
        }
    } else if (schedule == "exponential") {
        const double lmax = std::log(ns.sigma_max()), lmin = std::log(ns.sigma_min());
        for (int i = 0; i < n; ++i) {
            const double ramp = (n == 1) ? 0.0 : static_cast<double>(i) / (n - 1);
            s.push_back(std::exp(lmax + ramp * (lmin - lmax)));
        }
    } else if (schedule == "ays") {
        const double* levels;
        if (family == "sd1")
            levels = kAysSD1;
        else if (family == "sdxl")
            levels = kAysSDXL;
        else
            throw InvalidArgument("the ays schedule has tables for family 'sd1' and 'sdxl', got '" + family + "'");
        if (n == 10)
            s.assign(levels, levels + 10);
        else {
            s = loglinear_interp(levels, 11, n + 1);
            s.pop_back();
        }
    } else if (schedule == "sgm_uniform") {
        // t = linspace(T-1, 0, n+1)[:-1]
        for (int i = 0; i < n; ++i) s.push_back(ns.t_to_sigma(t_max - t_max * i / n));
    } else if (schedule == "simple") {
        // ComfyUI "simple": every (T/n)-th entry of the sigma table, from the top.
        const double ss = static_cast<double>(T) / n;
        for (int i = 0; i < n; ++i) {
            const int idx = std::max(0, T - 1 - static_cast<int>(i * ss));
            s.push_back(ns.sigmas()[idx]);
        }
    } else if (schedule == "lcm") {
        // diffusers LCMScheduler: k = T/50 grid {k-1, 2k-1, ...}, reversed, indices floor(j*50/n).
        const int original_steps = 50;
        SD_CHECK(n <= original_steps, "the lcm schedule supports at most 50 steps, got " + std::to_string(n));
        const int k = T / original_steps;
        const double step = static_cast<double>(original_steps) / n;
        for (int j = 0; j < n; ++j) {
            const int index = static_cast<int>(std::floor(j * step));
            const int t = (original_steps - index) * k - 1;
            s.push_back(ns.sigmas()[t]);
        }
    } else if (schedule == "trailing") {
        // diffusers timestep_spacing="trailing": t = round(T - i*T/n) - 1
        const double ratio = static_cast<double>(T) / n;
        for (int i = 0; i < n; ++i) {
            const int t = static_cast<int>(std::nearbyint(T - i * ratio)) - 1;
            s.push_back(ns.sigmas()[std::clamp(t, 0, T - 1)]);
        }
    } else {
        std::string msg = "unknown schedule '" + schedule + "'; valid: ";
        for (size_t i = 0; i < schedule_names().size(); ++i) msg += (i ? ", " : "") + schedule_names()[i];
        throw InvalidArgument(msg);
    }
    std::vector<float> out(s.begin(), s.end());
    out.push_back(0.0f);
    return out;
}

}  // namespace sdcpp::sampling
