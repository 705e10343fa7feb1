"""The small engine that applies naming tables.

A naming scheme is data: an ordered list of ``Rule`` s, each a regular expression over a key
(the part after the component prefix) and the canonical name(s) it becomes. The first rule
whose pattern matches the whole key wins. A rule with no outputs marks the key as ignored.

Templates are ``str.format`` strings over the pattern's named groups. A field may carry a
*filter* after a colon, looked up in the scheme's ``filters``: a dict (value lookup) or a
function ``f(value, context) -> str``; e.g. ``"decoder.up_blocks.{i:reverse}.resnets.{j}"``.
``context`` is computed once per group of keys by the scheme's ``context`` function (e.g. the
number of VAE decoder levels, needed to undo the LDM decoder's reversed numbering).

Each output may transform the record (views over the same bytes, see
``sdcpp.io.records.TensorRecord``): ``TRANSPOSE``, ``squeeze(n)``, ``rows(k, n)``.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from ..io.records import TensorRecord

# --------------------------------------------------------------------------- transforms
Transform = Optional[tuple]
TRANSPOSE: Transform = ("transpose",)


def squeeze(ndim: int) -> Transform:
    """Drop trailing size-1 dims down to ``ndim`` (1x1 conv weight -> linear weight)."""
    return ("squeeze", ndim)


def rows(k: int, n: int) -> Transform:
    """Chunk ``k`` of ``n`` equal row chunks (q/k/v out of a fused in_proj)."""
    return ("rows", k, n)


def apply_transform(rec: TensorRecord, tf: Transform) -> Optional[TensorRecord]:
    """The transformed record, or None when the record's shape does not allow it."""
    if tf is None:
        return rec
    op = tf[0]
    if op == "transpose":
        return rec.transposed() if len(rec.shape) == 2 else None
    if op == "squeeze":
        ndim = tf[1]
        if len(rec.shape) == ndim:
            return rec
        out = rec.squeezed_to(ndim)
        return out if len(out.shape) == ndim else None
    if op == "rows":
        k, n = tf[1], tf[2]
        if not rec.shape or rec.shape[0] % n:
            return None
        step = rec.shape[0] // n
        return rec.select_rows(k * step, (k + 1) * step)
    raise ValueError(f"unknown transform {tf!r}")


# --------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Out:
    template: str
    transform: Transform = None


@dataclass(frozen=True)
class Rule:
    pattern: "re.Pattern[str]"
    outs: tuple[Out, ...]          # () = ignore the key

    @property
    def ignores(self) -> bool:
        return not self.outs


def R(pattern: str, *outs: Union[str, Out]) -> Rule:
    """Rule constructor: ``R(regex, "template")`` or ``R(regex, Out(...), Out(...))``."""
    return Rule(re.compile(pattern), tuple(o if isinstance(o, Out) else Out(o) for o in outs))


def IGNORE(pattern: str) -> Rule:
    return Rule(re.compile(pattern), ())


Filter = Union[Mapping[str, str], Callable[[str, Mapping[str, Any]], Any]]


class _Formatter(string.Formatter):
    def __init__(self, filters: Mapping[str, Filter], context: Mapping[str, Any]):
        self.filters, self.context = filters, context

    def format_field(self, value: Any, format_spec: str) -> str:
        if not format_spec:
            return str(value)
        f = self.filters[format_spec]
        out = f[value] if isinstance(f, Mapping) else f(value, self.context)
        return str(out)


# --------------------------------------------------------------------------- results
@dataclass
class MapResult:
    """Outcome of mapping a group of keys: canonical (component-relative) names -> records."""
    mapped: dict[str, TensorRecord] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)      # mapped name -> input key
    ignored: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def add(self, name: str, rec: TensorRecord, key: str) -> None:
        if name in self.mapped:          # two spellings of one tensor: keep the first, report the other
            self.unknown.append(key)
            return
        self.mapped[name] = rec
        self.source[name] = key


class Scheme:
    """Base: maps a group of keys (all under one prefix) to canonical names."""
    name = "scheme"

    def map(self, items: Mapping[str, TensorRecord]) -> MapResult:  # pragma: no cover - interface
        raise NotImplementedError


class TableScheme(Scheme):
    """A scheme that is nothing but an ordered rule table (plus optional filters/context)."""

    def __init__(self, name: str, rules: Iterable[Rule], filters: Optional[Mapping[str, Filter]] = None,
                 context: Optional[Callable[[Iterable[str]], Mapping[str, Any]]] = None):
        self.name = name
        self.rules = tuple(rules)
        self.filters = dict(filters or {})
        self._context = context

    def translate(self, key: str, context: Mapping[str, Any]) -> Optional[list[tuple[str, Transform]]]:
        """Canonical names (and transforms) of one key; [] = ignored, None = no rule matches."""
        fmt = _Formatter(self.filters, context)
        for rule in self.rules:
            m = rule.pattern.fullmatch(key)
            if m is None:
                continue
            groups = {k: v for k, v in m.groupdict().items() if v is not None}
            try:
                return [(fmt.format(o.template, **groups), o.transform) for o in rule.outs]
            except (KeyError, ValueError):      # a filter refused the value
                return None
        return None

    def map(self, items: Mapping[str, TensorRecord]) -> MapResult:
        context = self._context(items.keys()) if self._context else {}
        res = MapResult()
        for key in sorted(items):
            outs = self.translate(key, context)
            if outs is None:
                res.unknown.append(key)
            elif not outs:
                res.ignored.append(key)
            else:
                recs = [(name, apply_transform(items[key], tf)) for name, tf in outs]
                if any(r is None for _, r in recs):
                    res.unknown.append(key)
                    continue
                for name, r in recs:
                    res.add(name, r, key)
        return res
