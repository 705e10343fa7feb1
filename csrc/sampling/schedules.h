// The discrete DDPM noise schedule of Stable Diffusion and the sigma lists ("schedulers" in
// stable-diffusion.cpp's words) built from it. All in k-diffusion's sigma form:
// sigma_t = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t]), t = 0 .. T-1.
#pragma once
#include <string>
#include <vector>

namespace sdcpp::sampling {

class NoiseSchedule {
public:
    // beta_schedule: "scaled_linear" (SD: beta_t = (sqrt(b0) + t/(T-1) (sqrt(b1) - sqrt(b0)))^2)
    // or "linear" (beta_t = b0 + t/(T-1) (b1 - b0)), accumulated in double precision.
    // float32_alphas rounds alphas_cumprod to float32, as the LDM checkpoints store it and as
    // k-diffusion, A1111, ComfyUI (and, within a few ulp, diffusers) use it: this is what makes
    // sigma_min 0.0291675 rather than the exact 0.0291672. Sigmas are then computed in double.
    static NoiseSchedule from_betas(double beta_start = 0.00085, double beta_end = 0.012, int num_timesteps = 1000,
                                    const std::string& beta_schedule = "scaled_linear", bool float32_alphas = true);
    explicit NoiseSchedule(std::vector<double> alphas_cumprod);

    int num_timesteps() const { return static_cast<int>(alphas_cumprod_.size()); }
    const std::vector<double>& alphas_cumprod() const { return alphas_cumprod_; }
    const std::vector<double>& sigmas() const { return sigmas_; }
    double sigma_min() const { return sigmas_.front(); }
    double sigma_max() const { return sigmas_.back(); }

    // k-diffusion DiscreteSchedule: t(sigma) interpolates linearly between the neighbouring
    // log-sigmas of the table (clamped to [0, T-1]); sigma(t) interpolates log-sigma at a
    // fractional t.
    double sigma_to_t(double sigma) const;
    double t_to_sigma(double t) const;

private:
    std::vector<double> alphas_cumprod_, sigmas_, log_sigmas_;
};

// Names of the sigma lists: discrete karras exponential ays sgm_uniform simple lcm trailing.
const std::vector<std::string>& schedule_names();

// n steps -> n+1 sigmas, descending, the last one 0. `family` ("sd1" | "sdxl") picks the
// Align-Your-Steps table; other schedules ignore it. Throws InvalidArgument on bad input.
std::vector<float> make_sigmas(const std::string& schedule, int n, const NoiseSchedule& ns,
                               const std::string& family = "sd1");

}  // namespace sdcpp::sampling
