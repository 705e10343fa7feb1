// The sampling loop: k-diffusion-style samplers over a flat float32 latent (the whole batch),
// driven by an abstract denoiser, so the native U-Net + CFG can be plugged in without Python.
//
// Convention (k-diffusion, "sigma form"): x_sigma = x0 + sigma * noise; the denoiser returns
// the x0 estimate D(x, sigma) (for an eps-model: D = x - sigma * eps(x / sqrt(sigma^2+1), t(sigma))).
// sigmas: n+1 descending values (the last normally 0); x starts as noise * sigmas[0] (or with
// diffusers' VP samplers' sqrt(sigma^2+1) scaling: that is the caller's choice).
#pragma once
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "rng.h"
#include "schedules.h"

namespace sdcpp::sampling {

struct Denoiser {
    virtual ~Denoiser() = default;
    // out[0..n) = D(x, sigma) for the whole batch.
    virtual void denoise(const float* x, float sigma, float* out, size_t n) = 0;
};

struct StepInfo {
    int step;          // 0-based index of the step just completed
    int total;         // number of steps (sigmas.size() - 1)
    float sigma;       // sigma at the start of the step
    float sigma_next;  // sigma the step went to
};
// Called after every step with the current x; return false to stop sampling.
// After each step; may rewrite x in place (inpainting blends the known region back), returns
// false to stop.
using StepCallback = std::function<bool(const StepInfo&, float* x, size_t n)>;

struct SamplerOptions {
    // Noise amount for euler_a / dpm++2s_a (default 1) and ddim_trailing (default 0);
    // negative = the sampler's default.
    float eta = -1.0f;
    // The model's schedule: lcm uses it for the exact consistency boundary condition
    // (c_skip, c_out at t(sigma)); without it lcm uses c_skip = 0, c_out = 1 like k-diffusion.
    const NoiseSchedule* schedule = nullptr;
};

struct SampleResult {
    bool cancelled = false;
    int steps_done = 0;
};

// Names: euler euler_a heun dpm2 dpm++2m dpm++2s_a lcm ddim_trailing ipndm.
const std::vector<std::string>& sampler_names();
// Whether `sampler` draws noise (from `rng`) with the given options.
bool sampler_uses_noise(const std::string& sampler, const SamplerOptions& opts = {});
// Model evaluations for a run of `steps` steps ending at sigma 0.
int sampler_model_calls(const std::string& sampler, int steps);

// Runs the sampler in place on x[0..n). Noise is drawn from rng with one randn(n) per noise
// injection, in the order diffusers' schedulers draw it (after the model call of the step;
// euler_a and ddim_trailing with eta > 0 also draw on the last step, as diffusers does, so the
// generator ends in the same state; lcm draws on every step but the last).
// Throws InvalidArgument for unknown names / bad sigmas / missing rng before any model call.
SampleResult sample(const std::string& sampler, Denoiser& model, float* x, size_t n, const std::vector<float>& sigmas,
                    Rng* rng, const SamplerOptions& opts = {}, const StepCallback& callback = nullptr);

}  // namespace sdcpp::sampling
