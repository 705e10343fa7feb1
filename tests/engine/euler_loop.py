"""The Euler discrete sampler of the end-to-end tests (diffusers' EulerDiscreteScheduler:
epsilon prediction, SD's scaled-linear schedule, linspace timesteps) written out once in numpy,
for driving two U-Nets (ours and diffusers') through the same sigmas without the pipelines:
x += (sigma' - sigma) * (uncond + cfg * (cond - uncond))."""
from __future__ import annotations

import numpy as np


def euler(eps_fn, latents: np.ndarray, steps: int = 4, cfg: float = 7.0) -> np.ndarray:
    """Final latents; `eps_fn(x [2B..], t) -> (uncond, cond)` on the doubled batch."""
    from diffusers import EulerDiscreteScheduler

    sch = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                 timestep_spacing="linspace")
    sch.set_timesteps(steps)
    sigmas = sch.sigmas.numpy().astype(np.float64)
    x = latents.astype(np.float64) * float(sch.init_noise_sigma)
    for i, t in enumerate(sch.timesteps.numpy()):
        inp = (x / np.sqrt(sigmas[i] ** 2 + 1)).astype(np.float32)
        u, c = eps_fn(np.concatenate([inp, inp]), float(t))
        x = x + (sigmas[i + 1] - sigmas[i]) * (u + cfg * (c - u)).astype(np.float64)
    return x.astype(np.float32)
