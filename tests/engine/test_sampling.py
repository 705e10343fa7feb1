"""Schedules and samplers of sdcpp.engine.sampling against diffusers' schedulers (and, where
diffusers has no counterpart, against the published update formulas written here in numpy).

The toy model is an eps-model eps(x_in, t) = tanh(A*x_in + B*t/1000) with fixed random A, B,
run by torch in both worlds. diffusers drives it in its own VP/"scaled input" conventions; our
native samplers get the same model in k-diffusion form D(x, sigma) = x - sigma*eps(x/sqrt(sigma^2+1), t).
The latents come from our Generator, which is bit-identical to torch's, and stochastic samplers
share the seed with the torch generator diffusers draws from. Noise order: every diffusers
scheduler here draws one randn(latent shape) per step after the model call (EulerAncestral even on
its last step, where the noise is multiplied by 0; nothing is drawn after it, so the streams agree).
"""
from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from sdcpp import errors  # noqa: E402
from sdcpp.engine import sampling as S  # noqa: E402

CFG = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
SHAPE = (2, 4, 8, 8)
TOL = 5e-6  # relative L2; measured ~3e-7 .. 8e-7 (float32 rounding, float32 vs float64 schedule tables)

_rs = np.random.RandomState(1234)
A = torch.from_numpy(_rs.uniform(0.5, 1.5, SHAPE).astype(np.float32))
B = torch.from_numpy(_rs.uniform(-1.0, 1.0, SHAPE).astype(np.float32))


def eps_model(x: torch.Tensor, t) -> torch.Tensor:
    return torch.tanh(A * x + B * (torch.as_tensor(float(t), dtype=torch.float32) / 1000))


def rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)) / np.linalg.norm(b))


def sched(cls_name: str, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(diffusers, cls_name)(**CFG, **kw)


def run_diffusers(scheduler, n: int, seed: int, after=None, **step_kw):
    """A diffusers denoising loop (as the SD pipelines run it) with the toy model. `after`, a
    list, receives the generator's next randn after the loop (where the stream ended)."""
    scheduler.set_timesteps(n)
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(SHAPE, generator=g, dtype=torch.float32) * scheduler.init_noise_sigma
    takes_gen = "generator" in inspect.signature(scheduler.step).parameters
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(latents, t)
        kw = dict(step_kw, generator=g) if takes_gen else dict(step_kw)
        latents = scheduler.step(eps_model(x_in, t), t, latents, **kw).prev_sample
    if after is not None:
        after.append(torch.randn(SHAPE, generator=g).numpy())
    return latents.numpy()


def k_denoiser(t_table=None, calls=None):
    """D(x, sigma) for our samplers. t = t(sigma) by log-sigma interpolation, or, where diffusers
    feeds the model rounded timesteps, the timestep diffusers uses for that sigma."""
    def D(x, sigma):
        if calls is not None:
            calls.append(float(sigma))
        t = S.sigma_to_t(sigma)
        if t_table is not None:
            i = int(np.argmin(np.abs(t_table[0] - sigma)))
            if abs(t_table[0][i] - sigma) <= 1e-6 * max(1.0, sigma):
                t = float(t_table[1][i])
        xt = torch.from_numpy(x)
        c_in = float(sigma) ** 2 + 1.0
        return (xt - float(sigma) * eps_model(xt / c_in ** 0.5, t)).numpy()

    return D


def start_latent(seed: int, scale: float) -> tuple[np.ndarray, "S.Generator"]:
    g = S.Generator(seed)
    return g.randn(SHAPE) * np.float32(scale), g


def diffusers_sigma_table():
    s = sched("EulerDiscreteScheduler")
    ac = s.alphas_cumprod.numpy().astype(np.float64)
    return np.sqrt((1 - ac) / ac)


def ldm_sigma_table():
    """sigma_t of LDM's schedule buffer (float64 betas/cumprod stored as float32), in float64."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1.0 - betas, dim=0).to(torch.float32).numpy().astype(np.float64)
    return np.sqrt((1 - ac) / ac)


def kdiff_t_to_sigma(t, table):
    """k-diffusion DiscreteSchedule.t_to_sigma (log-sigma interpolation), numpy."""
    t = np.asarray(t, np.float64)
    lo, hi = np.floor(t).astype(int), np.ceil(t).astype(int)
    w = t - lo
    ls = np.log(table)
    return np.exp((1 - w) * ls[lo] + w * ls[hi])


# ---------------------------------------------------------------------------------------------
# schedules

def test_noise_schedule_matches_references():
    ns = S.noise_schedule()
    assert ns.num_timesteps == 1000
    # LDM's register_schedule (the buffer stored in SD checkpoints, used by k-diffusion, A1111,
    # ComfyUI): float64 betas and cumprod, stored as float32.
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    ldm = torch.cumprod(1.0 - betas, dim=0).to(torch.float32).numpy()
    assert np.array_equal(ns.alphas_cumprod.astype(np.float32), ldm)
    ldm_sigmas = ((1 - ldm.astype(np.float64)) / ldm) ** 0.5
    np.testing.assert_allclose(ns.sigmas, ldm_sigmas, rtol=1e-12)
    # diffusers computes the same in float32 (its alphas_cumprod drift a few ulp)
    ref = sched("EulerDiscreteScheduler").alphas_cumprod.numpy()
    np.testing.assert_allclose(ns.alphas_cumprod, ref, rtol=2e-6)
    table = diffusers_sigma_table()
    np.testing.assert_allclose(ns.sigmas, table, rtol=2e-5)
    assert abs(ns.sigma_min - table[0]) < 1e-7 and abs(ns.sigma_max - table[-1]) < 1e-4


def test_sigma_t_conversions():
    s = sched("EulerDiscreteScheduler")
    ac = s.alphas_cumprod.numpy()
    log_sigmas = np.log(((1 - ac) / ac) ** 0.5)
    for sigma in np.geomspace(0.02, 20, 37):
        ours = S.sigma_to_t(sigma)
        ref = float(s._sigma_to_t(np.array([sigma]), log_sigmas)[0])
        assert abs(ours - ref) < 2e-3, (sigma, ours, ref)  # diffusers' table is float32
        if 0.03 < sigma < 14.6:
            assert abs(S.t_to_sigma(ours) - sigma) < 1e-9 * sigma
    assert S.sigma_to_t(100.0) == 999.0 and S.sigma_to_t(1e-3) == 0.0


@pytest.mark.parametrize("n", [2, 4, 10, 28])
def test_discrete_matches_euler_linspace(n):
    # linspace(999, 0, n) hits integer timesteps for these n, where diffusers' linear sigma
    # interpolation and k-diffusion's log-sigma interpolation coincide.
    ref = sched("EulerDiscreteScheduler", timestep_spacing="linspace")
    ref.set_timesteps(n)
    ours = S.sigmas("discrete", n)
    assert ours.dtype == np.float32 and ours.shape == (n + 1,) and ours[-1] == 0
    # diffusers' float32 alphas_cumprod drift up to ~15 ulp from LDM's: ~2e-6 relative in sigma
    np.testing.assert_allclose(ours, ref.sigmas.numpy(), rtol=5e-6, atol=0)


@pytest.mark.parametrize("n", [1, 7, 30])
def test_discrete_formula(n):
    table = ldm_sigma_table()
    t = np.linspace(999, 0, n)
    np.testing.assert_allclose(S.sigmas("discrete", n)[:-1], kdiff_t_to_sigma(t, table), rtol=2e-6)


def karras_formula(n, smin, smax, rho=7.0):
    ramp = np.linspace(0, 1, n)
    return (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho


@pytest.mark.parametrize("n", [4, 10, 25])
def test_karras(n):
    table = ldm_sigma_table()
    ours = S.sigmas("karras", n)
    np.testing.assert_allclose(ours[:-1], karras_formula(n, table[0], table[-1]), rtol=2e-6)
    # diffusers picks its own range: the full one for DPMSolverMultistep and for Euler with
    # "linspace" spacing (which reaches t = 0), so there they coincide with ours.
    dpm = sched("DPMSolverMultistepScheduler", use_karras_sigmas=True)
    dpm.set_timesteps(n)
    np.testing.assert_allclose(ours, dpm.sigmas.numpy(), rtol=5e-6)
    eul = sched("EulerDiscreteScheduler", timestep_spacing="linspace", use_karras_sigmas=True)
    eul.set_timesteps(n)
    np.testing.assert_allclose(ours, eul.sigmas.numpy(), rtol=5e-6)


@pytest.mark.parametrize("n", [4, 13])
def test_exponential(n):
    table = ldm_sigma_table()
    ref = np.exp(np.linspace(np.log(table[-1]), np.log(table[0]), n))
    np.testing.assert_allclose(S.sigmas("exponential", n)[:-1], ref, rtol=2e-6)


# Align Your Steps noise levels as published by NVIDIA (10 steps, SD1.5 and SDXL).
AYS_PUBLISHED = {
    "sd1": [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
            0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582],
    "sdxl": [14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
             0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582],
}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("n", [10, 4, 20, 31])
def test_ays(family, n):
    levels = np.array(AYS_PUBLISHED[family])
    if n == 10:
        ref = levels[:-1]
    else:  # log-linear interpolation to n+1 points (the AYS recipe), last one replaced by 0
        xs = np.linspace(0, 1, len(levels))
        ys = np.log(levels[::-1])
        ref = np.exp(np.interp(np.linspace(0, 1, n + 1), xs, ys))[::-1][:-1]
    ours = S.sigmas("ays", n, family=family)
    assert ours[-1] == 0
    np.testing.assert_allclose(ours[:-1], ref, rtol=2e-6)


@pytest.mark.parametrize("n", [4, 9])
def test_sgm_uniform_and_simple(n):
    table = ldm_sigma_table()
    t = np.linspace(999, 0, n + 1)[:-1]
    np.testing.assert_allclose(S.sigmas("sgm_uniform", n)[:-1], kdiff_t_to_sigma(t, table), rtol=2e-6)
    ss = 1000 / n
    ref = [table[-(1 + int(x * ss))] for x in range(n)]
    np.testing.assert_allclose(S.sigmas("simple", n)[:-1], ref, rtol=2e-6)


@pytest.mark.parametrize("n", [1, 2, 4, 6, 8, 50])
def test_lcm_timesteps(n):
    ref = sched("LCMScheduler")
    ref.set_timesteps(n)
    t = np.rint(S.sigma_to_t(S.sigmas("lcm", n)[:-1])).astype(int)
    assert t.tolist() == ref.timesteps.tolist()
    if n == 4:
        assert t.tolist() == [999, 759, 499, 259]


@pytest.mark.parametrize("n", [1, 4, 10, 25])
def test_trailing_timesteps(n):
    ref = sched("DDIMScheduler", timestep_spacing="trailing")
    ref.set_timesteps(n)
    t = np.rint(S.sigma_to_t(S.sigmas("trailing", n)[:-1])).astype(int)
    assert t.tolist() == ref.timesteps.tolist()


def test_default_schedules():
    assert S.default_schedule("lcm") == "lcm"
    assert S.default_schedule("ddim_trailing") == "trailing"
    assert S.default_schedule("dpm++2m") == "discrete"


# ---------------------------------------------------------------------------------------------
# samplers vs diffusers

@pytest.mark.parametrize("n", [4, 10])
def test_euler(n):
    ref = run_diffusers(sched("EulerDiscreteScheduler", timestep_spacing="linspace"), n, seed=42)
    sig = S.sigmas("discrete", n)
    x, _ = start_latent(42, sig[0])  # diffusers' init_noise_sigma for "linspace" = sigma_max
    assert rel(S.sample("euler", k_denoiser(), x, sig), ref) < TOL


@pytest.mark.parametrize("n", [4, 10])
def test_euler_ancestral(n):
    after = []
    ref = run_diffusers(sched("EulerAncestralDiscreteScheduler", timestep_spacing="linspace"), n, seed=7, after=after)
    sig = S.sigmas("discrete", n)
    x, g = start_latent(7, sig[0])
    assert rel(S.sample("euler_a", k_denoiser(), x, sig, g), ref) < TOL
    assert np.array_equal(g.randn(SHAPE), after[0])  # the stream ends where diffusers' does


@pytest.mark.parametrize("n", [4, 10])
def test_heun(n):
    ref = run_diffusers(sched("HeunDiscreteScheduler", timestep_spacing="linspace"), n, seed=3)
    sig = S.sigmas("discrete", n)
    x, _ = start_latent(3, sig[0])
    calls = []
    assert rel(S.sample("heun", k_denoiser(calls=calls), x, sig), ref) < TOL
    assert len(calls) == S.model_calls("heun", n) == 2 * n - 1


@pytest.mark.parametrize("n", [4, 10])
def test_dpm2(n):
    ref = run_diffusers(sched("KDPM2DiscreteScheduler", timestep_spacing="linspace"), n, seed=5)
    sig = S.sigmas("discrete", n)
    x, _ = start_latent(5, sig[0])
    calls = []
    assert rel(S.sample("dpm2", k_denoiser(calls=calls), x, sig), ref) < TOL
    assert len(calls) == 2 * n - 1


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("n", [4, 10])
def test_dpmpp_2m(n, karras):
    sch = sched("DPMSolverMultistepScheduler", algorithm_type="dpmsolver++", solver_order=2,
                use_karras_sigmas=karras)
    ref = run_diffusers(sch, n, seed=11)
    dsig = sch.sigmas.numpy()
    if karras:  # the same list as ours (full range, rho 7)
        np.testing.assert_allclose(S.sigmas("karras", n), dsig, rtol=5e-6)
        sig = S.sigmas("karras", n)
    else:  # diffusers' own "linspace" spacing (not one of sd.cpp's schedules): use its list
        sig = dsig
    # diffusers' multistep solver starts from randn in VP scale: x_k = noise * sqrt(sigma^2+1);
    # with karras it feeds the model rounded timesteps, so the test model gets the same.
    x, _ = start_latent(11, (float(sig[0]) ** 2 + 1) ** 0.5)
    table = (dsig[:-1].astype(np.float64), sch.timesteps.numpy().astype(np.float64))
    assert rel(S.sample("dpm++2m", k_denoiser(table), x, sig), ref) < TOL


@pytest.mark.parametrize("n", [2, 4, 8])
def test_lcm(n):
    after = []
    ref = run_diffusers(sched("LCMScheduler"), n, seed=21, after=after)
    sig = S.sigmas("lcm", n)
    x, g = start_latent(21, (float(sig[0]) ** 2 + 1) ** 0.5)  # LCM starts from VP-scale noise
    assert rel(S.sample("lcm", k_denoiser(), x, sig, g), ref) < TOL
    assert np.array_equal(g.randn(SHAPE), after[0])


@pytest.mark.parametrize("n", [4, 10])
def test_ddim_trailing(n):
    sig = S.sigmas("trailing", n)
    x, _ = start_latent(13, (float(sig[0]) ** 2 + 1) ** 0.5)
    # set_alpha_to_one=True: the last step goes to sigma 0
    ref = run_diffusers(sched("DDIMScheduler", timestep_spacing="trailing", clip_sample=False,
                              set_alpha_to_one=True), n, seed=13)
    assert rel(S.sample("ddim_trailing", k_denoiser(), x, sig), ref) < TOL
    # SD's own config (set_alpha_to_one=False): the last step goes to sigma_min, and diffusers
    # returns the VP-scale latent x / sqrt(sigma_min^2 + 1)
    ref = run_diffusers(sched("DDIMScheduler", timestep_spacing="trailing", clip_sample=False,
                              set_alpha_to_one=False), n, seed=13)
    sig2 = sig.copy()
    sig2[-1] = np.float32(S.noise_schedule().sigma_min)
    out = S.sample("ddim_trailing", k_denoiser(), x, sig2) / np.float32((float(sig2[-1]) ** 2 + 1) ** 0.5)
    assert rel(out, ref) < TOL
    # eta = 1: stochastic DDIM, noise from the shared stream
    after = []
    ref = run_diffusers(sched("DDIMScheduler", timestep_spacing="trailing", clip_sample=False,
                              set_alpha_to_one=True), n, seed=17, after=after, eta=1.0)
    x, g = start_latent(17, (float(sig[0]) ** 2 + 1) ** 0.5)
    assert rel(S.sample("ddim_trailing", k_denoiser(), x, sig, g, eta=1.0), ref) < TOL
    assert np.array_equal(g.randn(SHAPE), after[0])


# ---------------------------------------------------------------------------------------------
# samplers without a diffusers counterpart: the published formulas in numpy (float64)

def np_denoiser(x, sigma):
    t = S.sigma_to_t(sigma)
    xin = torch.from_numpy((x / np.sqrt(sigma ** 2 + 1)).astype(np.float32))
    return x - sigma * eps_model(xin, t).numpy().astype(np.float64)


def ref_dpmpp_2s_ancestral(x, sigmas, noise_gen, eta=1.0):
    """k-diffusion sample_dpmpp_2s_ancestral (Lu et al. 2022, DPM-Solver++(2S) + ancestral noise)."""
    x = x.astype(np.float64)
    for i in range(len(sigmas) - 1):
        s, s1 = float(sigmas[i]), float(sigmas[i + 1])
        den = np_denoiser(x, s)
        up = min(s1, eta * np.sqrt(s1 ** 2 * (s ** 2 - s1 ** 2) / s ** 2))
        down = np.sqrt(s1 ** 2 - up ** 2)
        if down == 0:
            x = x + (x - den) / s * (down - s)
        else:
            t, t_next = -np.log(s), -np.log(down)
            h = t_next - t
            s_mid = np.exp(-(t + 0.5 * h))
            x2 = (s_mid / s) * x - np.expm1(-0.5 * h) * den
            den2 = np_denoiser(x2, s_mid)
            x = (down / s) * x - np.expm1(-h) * den2
        if s1 > 0:
            x = x + torch.randn(SHAPE, generator=noise_gen).numpy() * up
    return x


def ref_ipndm(x, sigmas):
    """iPNDM (Zhang & Chen 2022): 4th-order Adams-Bashforth on d = (x - D)/sigma, lower orders to start."""
    x = x.astype(np.float64)
    hist = []
    for i in range(len(sigmas) - 1):
        s, s1 = float(sigmas[i]), float(sigmas[i + 1])
        d = (x - np_denoiser(x, s)) / s
        if len(hist) == 0:
            slope = d
        elif len(hist) == 1:
            slope = (3 * d - hist[-1]) / 2
        elif len(hist) == 2:
            slope = (23 * d - 16 * hist[-1] + 5 * hist[-2]) / 12
        else:
            slope = (55 * d - 59 * hist[-1] + 37 * hist[-2] - 9 * hist[-3]) / 24
        x = x + slope * (s1 - s)
        hist = (hist + [d])[-3:]
    return x


@pytest.mark.parametrize("n", [4, 10])
def test_dpmpp_2s_ancestral(n):
    sig = S.sigmas("karras", n)
    x, g = start_latent(31, sig[0])
    tg = torch.Generator().manual_seed(31)
    torch.randn(SHAPE, generator=tg)  # the start latent
    ref = ref_dpmpp_2s_ancestral(x, sig, tg)
    calls = []
    assert rel(S.sample("dpm++2s_a", k_denoiser(calls=calls), x, sig, g), ref) < 2e-6
    assert len(calls) == 2 * n - 1


@pytest.mark.parametrize("n", [3, 10])
def test_ipndm(n):
    sig = S.sigmas("discrete", n)
    x, _ = start_latent(37, sig[0])
    assert rel(S.sample("ipndm", k_denoiser(), x, sig), ref_ipndm(x, sig)) < 2e-6


# ---------------------------------------------------------------------------------------------
# loop behaviour and argument checking

def test_callback_and_cancel():
    sig = S.sigmas("discrete", 6)
    x, _ = start_latent(1, sig[0])
    seen = []
    out = S.sample("euler", k_denoiser(), x, sig, callback=lambda i, total, xs: seen.append((i, total, xs.copy())))
    assert [s[:2] for s in seen] == [(i, 6) for i in range(6)]
    assert np.array_equal(seen[-1][2], out) and seen[0][2].shape == SHAPE

    seen.clear()

    def stop_after_two(i, total, xs):
        seen.append(xs.copy())
        return i < 1  # False after the second step

    with pytest.raises(errors.Cancelled) as info:
        S.sample("euler", k_denoiser(), x, sig, callback=stop_after_two)
    assert info.value.steps_done == 2 and np.array_equal(info.value.latent, seen[-1])


def test_denoiser_may_use_the_samplers_generator():
    import threading

    sig = S.sigmas("discrete", 3)
    x, g = start_latent(2, sig[0])
    D = k_denoiser()
    out = []
    th = threading.Thread(target=lambda: out.append(
        S.sample("euler_a", lambda xs, s: D(xs, s) + 0 * g.randn(xs.shape), x, sig, g)), daemon=True)
    th.start()
    th.join(30)
    assert out and out[0].shape == SHAPE, "sampling deadlocked"


def test_denoiser_errors_propagate():
    sig = S.sigmas("discrete", 3)
    x = np.zeros(SHAPE, np.float32)

    def boom(x, sigma):
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        S.sample("heun", boom, x, sig)
    with pytest.raises(errors.InvalidArgumentError, match="returned"):
        S.sample("euler", lambda x, s: x[:1], x, sig)


def test_bad_arguments():
    sig = S.sigmas("discrete", 3)
    x = np.zeros(SHAPE, np.float32)
    D = k_denoiser()
    with pytest.raises(errors.InvalidArgumentError, match="euler, euler_a, heun"):
        S.sample("dpmpp_3m", D, x, sig)
    with pytest.raises(errors.InvalidArgumentError, match="discrete, karras"):
        S.sigmas("cosine", 4)
    with pytest.raises(errors.InvalidArgumentError):
        S.sigmas("discrete", 0)
    with pytest.raises(errors.InvalidArgumentError):
        S.sigmas("ays", 4, family="sd3")
    with pytest.raises(errors.InvalidArgumentError):
        S.sigmas("lcm", 51)
    with pytest.raises(errors.InvalidArgumentError, match="generator"):
        S.sample("euler_a", D, x, sig)
    with pytest.raises(errors.InvalidArgumentError):
        S.sample("euler", D, x, sig[::-1].copy())  # increasing
    with pytest.raises(errors.InvalidArgumentError):
        S.sample("euler", D, x, sig[:1])
    with pytest.raises(errors.InvalidArgumentError):
        S.sample("euler", D, x, np.array([1.0, -1.0], np.float32))
    with pytest.raises(errors.InvalidArgumentError):
        S.sample("euler", D, x.astype(np.int32), sig)
    with pytest.raises(errors.InvalidArgumentError):
        S.sample("euler_a", D, x, sig, S.Generator(0), eta=-1)
    # a seed works as a generator
    assert S.sample("euler_a", D, x, sig, 3).shape == SHAPE
