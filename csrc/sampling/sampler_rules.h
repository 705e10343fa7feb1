// One sampler = one small step rule. The loop in samplers.cpp validates, runs the rule's
// step for each i and reports progress; a rule keeps only its own state (history, buffers).
//
// Convention (k-diffusion's sigma form): x_sigma = x0 + sigma * noise, D(x, sigma) the
// denoiser's x0 estimate, d = (x - D) / sigma the ODE slope.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "samplers.h"

namespace sdcpp::sampling {

// What a rule needs from the loop: the model, the latent, the noise source.
struct StepContext {
    Denoiser& model;
    float* x;
    size_t n;
    Rng* rng;
    const std::vector<float>& sigmas;
    double eta;
    const SamplerOptions& opts;
    std::vector<float> den;    // D(x, sigma) of the step's first model call
    std::vector<float> noise;  // the last draw

    void denoise(const float* in, float sigma, float* out) { model.denoise(in, sigma, out, n); }
    // One randn(n) from the generator, in the order diffusers draws.
    const float* draw_noise();
};

struct StepRule {
    virtual ~StepRule() = default;
    virtual void step(StepContext& c, int i) = 0;
};

// The table every query about samplers reads: name, default eta, noise use, model calls.
struct SamplerSpec {
    const char* name;
    float default_eta;           // euler_a / dpm++2s_a: 1, others 0
    bool eta_adds_noise;         // draws noise when eta > 0
    bool always_draws;           // draws noise whatever eta (lcm)
    int calls_per_step;          // model calls per step but the last (heun, dpm2, dpm++2s_a: 2)
    std::unique_ptr<StepRule> (*make)(size_t n);
};

const std::vector<SamplerSpec>& sampler_specs();
const SamplerSpec* find_sampler(const std::string& name);

}  // namespace sdcpp::sampling
