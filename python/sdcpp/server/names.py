"""A1111's sampler and scheduler names onto sdcpp's (docs/generation.md, "Samplers and schedules").

A1111 (1.9+) sends a sampler ("DPM++ 2M") and a separate scheduler ("Karras"); older clients send
one combined name ("DPM++ 2M Karras"). Both are accepted, and so are sdcpp's own names.
"""
from __future__ import annotations

from typing import Optional

from ..pipeline import SAMPLERS, SCHEDULERS

# A1111 label -> (sdcpp sampler, A1111 aliases). Labels are the ones A1111 lists in /samplers.
SAMPLER_LABELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Euler a": ("euler_a", ("k_euler_a", "k_euler_ancestral")),
    "Euler": ("euler", ("k_euler",)),
    "Heun": ("heun", ("k_heun",)),
    "DPM2": ("dpm2", ("k_dpm_2",)),
    "DPM++ 2M": ("dpm++2m", ("k_dpmpp_2m",)),
    "DPM++ 2S a": ("dpm++2s_a", ("k_dpmpp_2s_a",)),
    "LCM": ("lcm", ("k_lcm",)),
    "DDIM": ("ddim_trailing", ("ddim",)),
    "IPNDM": ("ipndm", ("ipndm",)),
}

# A1111 scheduler name/label -> sdcpp schedule; "automatic" is resolved per sampler below.
# "Uniform" and "Normal" are both the k-diffusion discrete schedule (timesteps linspace(999, 0)).
SCHEDULER_LABELS: dict[str, tuple[str, str]] = {   # name -> (label, sdcpp schedule)
    "automatic": ("Automatic", ""),
    "uniform": ("Uniform", "discrete"),
    "normal": ("Normal", "discrete"),
    "karras": ("Karras", "karras"),
    "exponential": ("Exponential", "exponential"),
    "sgm_uniform": ("SGM Uniform", "sgm_uniform"),
    "align_your_steps": ("Align Your Steps", "ays"),
    "simple": ("Simple", "simple"),
    "lcm": ("LCM", "lcm"),
    "trailing": ("Trailing", "trailing"),
}

# What "Automatic" means for each sampler: A1111 gives its DPM++ samplers Karras sigmas; LCM and
# (trailing) DDIM only make sense on their own schedules.
_AUTOMATIC = {"dpm++2m": "karras", "dpm++2s_a": "karras", "lcm": "lcm", "ddim_trailing": "trailing"}


def _norm(text: str) -> str:
    return " ".join(text.strip().lower().replace("_", " ").split())


_SAMPLER_LOOKUP: dict[str, str] = {}
for _label, (_ours, _aliases) in SAMPLER_LABELS.items():
    for _n in (_label, _ours, *_aliases):
        _SAMPLER_LOOKUP[_norm(_n)] = _ours
for _ours in SAMPLERS:
    _SAMPLER_LOOKUP.setdefault(_norm(_ours), _ours)

_SCHED_LOOKUP: dict[str, str] = {}
for _name, (_label, _ours) in SCHEDULER_LABELS.items():
    for _n in (_name, _label) + ((_ours,) if _ours else ()):
        _SCHED_LOOKUP[_norm(_n)] = _name
for _ours in SCHEDULERS:
    _SCHED_LOOKUP.setdefault(_norm(_ours), _ours)


class UnknownName(ValueError):
    def __init__(self, field: str, value: str, valid: list[str]):
        self.field = field
        super().__init__(f"unknown {field} {value!r}; valid: {', '.join(valid)}")


def resolve_sampler(name: Optional[str], scheduler: Optional[str], default: str = "Euler a") -> tuple[str, str]:
    """(sampler_name, scheduler) as an A1111 client sends them -> (sdcpp sampler, sdcpp schedule).
    Raises UnknownName naming the field that holds the bad value."""
    text = _norm(name or default)
    sampler = _SAMPLER_LOOKUP.get(text)
    if sampler is None:
        # An old combined name: "DPM++ 2M Karras" = sampler + trailing scheduler label.
        for sched_key in sorted(_SCHED_LOOKUP, key=len, reverse=True):
            if text.endswith(" " + sched_key) and _SAMPLER_LOOKUP.get(text[: -len(sched_key) - 1]):
                sampler = _SAMPLER_LOOKUP[text[: -len(sched_key) - 1]]
                if not scheduler:
                    scheduler = sched_key
                break
    if sampler is None:
        raise UnknownName("sampler_name", name or "", list(SAMPLER_LABELS))
    key = _SCHED_LOOKUP.get(_norm(scheduler or "automatic"))
    if key is None:
        raise UnknownName("scheduler", scheduler or "", [lbl for lbl, _ in SCHEDULER_LABELS.values()])
    if key in SCHEDULER_LABELS:
        schedule = SCHEDULER_LABELS[key][1] or _AUTOMATIC.get(sampler, "discrete")
    else:
        schedule = key   # one of sdcpp's own schedule names
    return sampler, schedule


def sampler_list() -> list[dict]:
    """GET /sdapi/v1/samplers, in A1111's shape."""
    return [{"name": label, "aliases": [ours, *aliases], "options": {}}
            for label, (ours, aliases) in SAMPLER_LABELS.items()]


def scheduler_list() -> list[dict]:
    """GET /sdapi/v1/schedulers, in A1111's shape."""
    return [{"name": name, "label": label, "aliases": None, "default_rho": 7.0 if name == "karras" else -1,
             "need_inner_model": False} for name, (label, _) in SCHEDULER_LABELS.items()]
