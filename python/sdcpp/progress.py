"""Progress bars for the phases of a call: loading weights, sampling steps, VAE decoding.

``Phases(enabled)`` hands out one bar per phase (tqdm on stderr when it is installed and stderr
is a terminal; nothing otherwise, and nothing when disabled), so the CLI shows every phase that
takes seconds, not only the sampling steps, and logs and error messages stay clean.
"""
from __future__ import annotations

from typing import Optional


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class Phases:
    def __init__(self, enabled: bool):
        self.enabled = bool(enabled)

    def bar(self, desc: str, total: int, unit: str = "it", scale: bool = False):
        """A bar for one phase; `scale` shows large counts as k/M/G."""
        if not self.enabled:
            return _NullBar()
        try:
            from tqdm import tqdm
        except ImportError:
            return _NullBar()
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, leave=desc == "sample",
                    disable=None)   # None: only on a terminal


def phases(progress: Optional[bool]) -> Phases:
    return Phases(bool(progress))


__all__ = ["Phases", "phases"]
