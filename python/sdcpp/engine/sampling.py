"""Schedules, samplers and torch-compatible random numbers (the native sampling engine).

Everything runs in C++ (``sdcpp._core.sampling``); this module validates names and
arguments and gives numpy in, numpy out.

Random numbers (``rng``):

``"cpu"``
    bit-exact ``torch.randn(shape, generator=torch.Generator().manual_seed(seed))`` as
    torch computes it on x86-64 CPUs with AVX2 (what diffusers users get on CPU).
``"cpu_scalar"``
    the same generator through torch's portable kernel (torch on CPUs without AVX2, or
    ``ATEN_CPU_CAPABILITY=default``); exact where the C library's ``logf``/``sincosf`` are
    the ones torch uses.
``"cuda"``
    ``torch.randn(shape, device="cuda", generator=...)`` (A1111 "GPU" seeds): torch's
    Philox4x32-10 stream and thread mapping; the Box-Muller uses accurate sin/cos where a
    GPU uses ``__sincosf``, so values may differ from a GPU in the last bits.

Samplers work in k-diffusion's sigma form: ``x = x0 + sigma * noise`` and the denoiser
returns ``D(x, sigma)``, the x0 estimate. ``eps_denoiser`` wraps an eps- (or v-) model.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, Optional, Sequence, Union

import numpy as np

from .. import errors
from .native_call import call_native_with_callbacks

SAMPLERS = ("euler", "euler_a", "heun", "dpm2", "dpm++2m", "dpm++2s_a", "lcm", "ddim_trailing", "ipndm")
SCHEDULES = ("discrete", "karras", "exponential", "ays", "sgm_uniform", "simple", "lcm", "trailing")
RNGS = ("cpu", "cpu_scalar", "cuda")
FAMILIES = ("sd1", "sdxl")

DenoiserFn = Callable[[np.ndarray, float], np.ndarray]
StepCallbackFn = Callable[[int, int, np.ndarray], Optional[bool]]


def _native():
    from .weights import native

    return native().sampling


def _check_name(kind: str, value, valid: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in valid:
        raise errors.InvalidArgumentError(f"unknown {kind} {value!r}; valid names: {', '.join(valid)}")
    return value


def _seed(seed) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise errors.InvalidArgumentError(f"seed must be an integer, got {seed!r}")
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise errors.InvalidArgumentError(f"seed must lie in [0, 2**64), got {seed}")
    return seed


def _shape(shape) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        shape = tuple(int(d) for d in shape)
    except TypeError:
        raise errors.InvalidArgumentError(f"shape must be an int or a sequence of ints, got {shape!r}") from None
    if any(d < 0 for d in shape):
        raise errors.InvalidArgumentError(f"shape entries must be >= 0, got {shape}")
    return shape


# --------------------------------------------------------------------------------------------
# Random numbers


class Generator:
    """A stateful normal generator: successive ``randn`` calls continue one stream, exactly as
    successive ``torch.randn(..., generator=g)`` calls do (and samplers draw from it too)."""

    def __init__(self, seed: int, rng: str = "cpu", *, cuda_max_threads: Optional[int] = None):
        self._rng = _check_name("rng", rng, RNGS)
        self._seed = _seed(seed)
        threads = 0 if cuda_max_threads is None else int(cuda_max_threads)
        if threads < 0:
            raise errors.InvalidArgumentError("cuda_max_threads must be >= 0")
        self._native = call_native_with_callbacks(_native().Generator, self._rng, self._seed, threads)

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def rng(self) -> str:
        return self._rng

    def randn(self, shape) -> np.ndarray:
        """Standard normals of `shape` (float32), one torch.randn call's worth."""
        return call_native_with_callbacks(self._native.randn, list(_shape(shape)))

    def clone(self) -> "Generator":
        g = object.__new__(Generator)
        g._rng, g._seed, g._native = self._rng, self._seed, self._native.clone()
        return g

    def __repr__(self) -> str:
        return f"Generator(seed={self._seed}, rng={self._rng!r})"


def randn(shape, seed: int, rng: str = "cpu") -> np.ndarray:
    """``torch.randn(shape, generator=torch.Generator(<rng>).manual_seed(seed))`` as float32."""
    return Generator(seed, rng).randn(shape)


# --------------------------------------------------------------------------------------------
# Schedules


@lru_cache(maxsize=8)
def noise_schedule(beta_start: float = 0.00085, beta_end: float = 0.012, num_timesteps: int = 1000,
                   beta_schedule: str = "scaled_linear", float32_alphas: bool = True):
    """The model's discrete noise schedule (SD1/SD2/SDXL defaults), as a native object with
    ``sigmas``, ``alphas_cumprod``, ``sigma_min``, ``sigma_max``, ``sigma_to_t``, ``t_to_sigma``.

    alphas_cumprod is accumulated in float64 and (float32_alphas) rounded to float32, as LDM
    checkpoints store it and k-diffusion/A1111/ComfyUI/diffusers use it (sigma_min 0.0291675)."""
    return call_native_with_callbacks(_native().NoiseSchedule, float(beta_start), float(beta_end), int(num_timesteps), beta_schedule,
                 bool(float32_alphas))


def _schedule_or_default(ns):
    return noise_schedule() if ns is None else ns


def sigmas(schedule: str, n: int, *, family: str = "sd1", noise_schedule=None) -> np.ndarray:
    """n steps -> n+1 descending sigmas (float32), the last 0.

    discrete (t = linspace(999, 0, n)), karras (rho 7, the model's full sigma range),
    exponential, ays (Align Your Steps, `family` "sd1" or "sdxl"), sgm_uniform, simple,
    lcm (LCM's 50-step grid: 999, 759, 499, 259 for n=4), trailing (DDIM "trailing"
    timesteps: 999, 749, 499, 249 for n=4).
    """
    _check_name("schedule", schedule, SCHEDULES)
    _check_name("model family", family, FAMILIES)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise errors.InvalidArgumentError(f"the number of steps must be an integer >= 1, got {n!r}")
    return call_native_with_callbacks(_schedule_or_default(noise_schedule).get_sigmas, schedule, int(n), family)


def sigma_to_t(sigma, noise_schedule=None):
    """Fractional timestep of sigma (log-sigma interpolation, as k-diffusion and diffusers)."""
    ns = _schedule_or_default(noise_schedule)
    if np.ndim(sigma) == 0:
        return ns.sigma_to_t(float(sigma))
    return np.array([ns.sigma_to_t(float(s)) for s in np.asarray(sigma).ravel()]).reshape(np.shape(sigma))


def t_to_sigma(t, noise_schedule=None):
    ns = _schedule_or_default(noise_schedule)
    if np.ndim(t) == 0:
        return ns.t_to_sigma(float(t))
    return np.array([ns.t_to_sigma(float(v)) for v in np.asarray(t).ravel()]).reshape(np.shape(t))


def default_schedule(sampler: str) -> str:
    """The sigma list a sampler is meant for: lcm -> "lcm", ddim_trailing -> "trailing",
    every other sampler -> "discrete"."""
    _check_name("sampler", sampler, SAMPLERS)
    return {"lcm": "lcm", "ddim_trailing": "trailing"}.get(sampler, "discrete")


def model_calls(sampler: str, steps: int) -> int:
    """Denoiser evaluations of a `steps`-step run (heun, dpm2, dpm++2s_a: 2*steps - 1)."""
    _check_name("sampler", sampler, SAMPLERS)
    return _native().sampler_model_calls(sampler, int(steps))


def eps_denoiser(model_fn: Callable[[np.ndarray, float], np.ndarray], noise_schedule=None,
                 prediction: str = "epsilon") -> DenoiserFn:
    """k-diffusion form of a diffusers-style model ``model_fn(x_in, t) -> eps (or v)``:
    x_in = x / sqrt(sigma^2 + 1), t = t(sigma); D = x - sigma*eps, or for v-prediction
    D = x/(sigma^2+1) - sigma/sqrt(sigma^2+1) * v."""
    _check_name("prediction type", prediction, ("epsilon", "v_prediction"))
    ns = _schedule_or_default(noise_schedule)

    def denoise(x: np.ndarray, sigma: float) -> np.ndarray:
        s = np.float32(sigma)
        c_in = np.float32(1.0 / np.sqrt(float(sigma) ** 2 + 1.0))
        out = np.asarray(model_fn(x * c_in, ns.sigma_to_t(float(sigma))), dtype=np.float32)
        if prediction == "epsilon":
            return x - s * out
        c_skip = np.float32(1.0 / (float(sigma) ** 2 + 1.0))
        c_out = np.float32(-float(sigma) / np.sqrt(float(sigma) ** 2 + 1.0))
        return c_skip * x + c_out * out

    return denoise


# --------------------------------------------------------------------------------------------
# Sampling


def sample(sampler: str, denoiser_fn: DenoiserFn, x: np.ndarray, sigmas: np.ndarray,
           generator: Union[Generator, int, None] = None, callback: Optional[StepCallbackFn] = None, *,
           eta: Optional[float] = None, noise_schedule=None) -> np.ndarray:
    """Run `sampler` from x (already noised to sigmas[0]) down the sigma list.

    denoiser_fn(x, sigma) -> D, the x0 estimate, same shape as x (called from the native loop
    with the GIL held). generator: a Generator (or a seed for a "cpu" one) for the samplers
    that draw noise (euler_a, dpm++2s_a, lcm; ddim_trailing with eta > 0); noise is drawn
    one randn(x.shape) per injection, in the order diffusers' schedulers draw it.
    callback(step, total, x) runs after every step; returning False stops sampling with
    errors.Cancelled (its ``latent`` and ``steps_done`` hold the partial result); returning an
    array of x's shape replaces x from there on (inpainting's blend of the known region).
    eta: noise amount of euler_a/dpm++2s_a (default 1) and ddim_trailing (default 0).
    """
    _check_name("sampler", sampler, SAMPLERS)
    if not callable(denoiser_fn):
        raise errors.InvalidArgumentError("denoiser_fn must be callable (x, sigma) -> denoised x")
    if callback is not None and not callable(callback):
        raise errors.InvalidArgumentError("callback must be callable (step, total, x) or None")
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise errors.InvalidArgumentError(f"x must be a float array, got dtype {x.dtype}")
    if x.size == 0:
        raise errors.InvalidArgumentError("x is empty")
    sig = np.asarray(sigmas, dtype=np.float32)
    if sig.ndim != 1 or sig.size < 2:
        raise errors.InvalidArgumentError(f"sigmas must be a 1-D array of >= 2 values, got shape {sig.shape}")
    eta_v = -1.0 if eta is None else float(eta)
    if eta is not None and not (np.isfinite(eta_v) and eta_v >= 0):
        raise errors.InvalidArgumentError(f"eta must be a finite number >= 0, got {eta!r}")
    native = _native()
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        generator = Generator(generator)
    if generator is not None and not isinstance(generator, Generator):
        raise errors.InvalidArgumentError(f"generator must be a sampling.Generator, a seed or None, got {generator!r}")
    if generator is None and native.sampler_uses_noise(sampler, eta_v):
        raise errors.InvalidArgumentError(f"sampler {sampler!r} draws noise: pass a generator (or a seed)")
    ns = _schedule_or_default(noise_schedule)
    out, cancelled, done = call_native_with_callbacks(native.sample, sampler, denoiser_fn, np.ascontiguousarray(x, dtype=np.float32), sig,
                                 None if generator is None else generator._native, callback, eta_v, ns)
    if cancelled:
        exc = errors.Cancelled(f"sampling stopped by the callback after {done} of {sig.size - 1} steps")
        exc.latent = out
        exc.steps_done = done
        raise exc
    return out


__all__ = [
    "SAMPLERS", "SCHEDULES", "RNGS", "FAMILIES", "Generator", "randn", "noise_schedule", "sigmas", "sigma_to_t",
    "t_to_sigma", "default_schedule", "model_calls", "eps_denoiser", "sample",
]
