// The sampling loop: validation, one step rule per step (sampler_rules.cpp), progress and
// cancellation. Which samplers exist and what they need is the table in sampler_rules.cpp.
#include "samplers.h"

#include <cmath>

#include "../runtime/error.h"
#include "sampler_rules.h"

namespace sdcpp::sampling {

namespace {

const SamplerSpec& spec_or_throw(const std::string& sampler) {
    if (const SamplerSpec* s = find_sampler(sampler)) return *s;
    std::string msg = "unknown sampler '" + sampler + "'; valid: ";
    for (size_t i = 0; i < sampler_names().size(); ++i) msg += (i ? ", " : "") + sampler_names()[i];
    throw InvalidArgument(msg);
}

double eta_of(const SamplerSpec& s, const SamplerOptions& opts) { return opts.eta < 0 ? s.default_eta : opts.eta; }

void check_sigmas(const std::vector<float>& sigmas) {
    SD_CHECK(sigmas.size() >= 2, "sigmas needs at least 2 entries (one step), got " + std::to_string(sigmas.size()));
    for (size_t i = 0; i < sigmas.size(); ++i) {
        SD_CHECK(std::isfinite(sigmas[i]), "sigmas must be finite");
        if (i + 1 < sigmas.size()) {
            SD_CHECK(sigmas[i] > 0, "every sigma but the last must be > 0");
            SD_CHECK(sigmas[i + 1] <= sigmas[i], "sigmas must be non-increasing");
        }
    }
    SD_CHECK(sigmas.back() >= 0, "the last sigma must be >= 0");
}

}  // namespace

const std::vector<std::string>& sampler_names() {
    static const std::vector<std::string> names = [] {
        std::vector<std::string> v;
        for (const SamplerSpec& s : sampler_specs()) v.emplace_back(s.name);
        return v;
    }();
    return names;
}

bool sampler_uses_noise(const std::string& sampler, const SamplerOptions& opts) {
    const SamplerSpec* s = find_sampler(sampler);
    if (!s) return false;
    return s->always_draws || (s->eta_adds_noise && eta_of(*s, opts) > 0);
}

int sampler_model_calls(const std::string& sampler, int steps) {
    const SamplerSpec* s = find_sampler(sampler);
    const int per = s ? s->calls_per_step : 1;
    // the last step (to sigma 0) of a two-call sampler is a single Euler call
    return per * steps - (per - 1);
}

SampleResult sample(const std::string& sampler, Denoiser& model, float* x, size_t n, const std::vector<float>& sigmas,
                    Rng* rng, const SamplerOptions& opts, const StepCallback& callback) {
    const SamplerSpec& spec = spec_or_throw(sampler);
    SD_CHECK(n > 0, "the latent is empty");
    check_sigmas(sigmas);
    const double eta = eta_of(spec, opts);
    SD_CHECK(std::isfinite(eta), "eta must be finite");
    if (sampler_uses_noise(sampler, opts)) SD_CHECK(rng != nullptr, "sampler '" + sampler + "' needs a random generator");

    StepContext ctx{model, x, n, rng, sigmas, eta, opts, std::vector<float>(n), {}};
    std::unique_ptr<StepRule> rule = spec.make(n);
    const int steps = static_cast<int>(sigmas.size()) - 1;
    SampleResult result;
    for (int i = 0; i < steps; ++i) {
        rule->step(ctx, i);
        result.steps_done = i + 1;
        if (callback && !callback(StepInfo{i, steps, sigmas[i], sigmas[i + 1]}, x, n)) {
            result.cancelled = true;
            break;
        }
    }
    return result;
}

}  // namespace sdcpp::sampling
