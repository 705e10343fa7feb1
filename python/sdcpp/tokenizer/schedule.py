"""A1111 prompt editing and alternation: which plain prompt applies at which sampling step.

    [from:to:when]   "from" until step `when`, then "to"
    [from::when]     "from" until `when`, then nothing
    [to:when]        nothing until `when`, then "to"   (also written [:to:when])
    [a|b|c]          a on step 1, b on step 2, c on step 3, a on step 4 ...

`when` with a decimal point is a fraction of the steps (int(when * steps)), otherwise a step
number; both are capped at `steps`. Steps are counted from 1, and "until step w" includes w
(A1111's semantics). The constructs nest, and sit inside emphasis: ``([cat:dog:0.5]:1.2)``;
emphasis syntax itself ((word:1.1), [word], \\( escapes) is passed through untouched for the
emphasis parser. A prompt that does not parse is used as it is, as A1111 does.

``prompt_schedule(prompt, steps)`` -> ``[(end_step, text), ...]``: `text` applies to the steps up
to and including `end_step` (after the previous entry's); consecutive equal texts are merged, so
the conditioning is encoded again only when it changes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

_NUMBER = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*$")


class _Malformed(Exception):
    pass


@dataclass
class _Scheduled:
    before: list
    after: list
    when: str


@dataclass
class _Alternate:
    options: list


Node = Union[str, _Scheduled, _Alternate, tuple]   # tuple: (open, [nodes], close) emphasis group


def _parse(text: str, i: int, closer: str, in_brackets: bool):
    """Nodes from text[i:] up to `closer` (or the end when closer is ""), splitting at top-level
    ':' and '|' when `in_brackets`. Returns (parts, separators, next index)."""
    parts: list[list] = [[]]
    seps: list[str] = []
    buf = []

    def flush():
        if buf:
            parts[-1].append("".join(buf))
            buf.clear()

    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            buf.append(text[i:i + 2])
            i += 2
            continue
        if closer and c == closer:
            flush()
            return parts, seps, i + 1
        if c == "(":
            flush()
            inner, _, i = _parse(text, i + 1, ")", False)
            parts[-1].append(("(", inner[0], ")"))
            continue
        if c == "[":
            flush()
            inner, inner_seps, i = _parse(text, i + 1, "]", True)
            parts[-1].append(_bracket(inner, inner_seps))
            continue
        if c in ")]" and not closer:
            buf.append(c)          # a stray closer is text
            i += 1
            continue
        if in_brackets and c in ":|":
            flush()
            seps.append(c)
            parts.append([])
            i += 1
            continue
        buf.append(c)
        i += 1
    if closer:
        raise _Malformed(f"missing {closer!r}")
    flush()
    return parts, seps, i


def _bracket(parts: list[list], seps: list[str]) -> Node:
    if not seps:
        return ("[", parts[0], "]")
    if all(s == "|" for s in seps):
        return _Alternate(parts)
    if "|" in seps:
        raise _Malformed("':' and '|' mixed in one bracket")
    last = parts[-1]
    if len(last) == 1 and isinstance(last[0], str) and _NUMBER.match(last[0]):
        when = last[0].strip()
        if len(parts) == 2:
            return _Scheduled([], parts[0], when)
        if len(parts) == 3:
            return _Scheduled(parts[0], parts[1], when)
    raise _Malformed("a ':' in brackets that is not [from:to:when]")


def _when_step(when: str, steps: int) -> int:
    v = float(when)
    return min(steps, int(v * steps) if "." in when else int(v))


def _collect(nodes: list, steps: int, out: set) -> bool:
    """Boundary steps of the schedules in nodes; True when an alternation is present."""
    alt = False
    for n in nodes:
        if isinstance(n, _Scheduled):
            w = _when_step(n.when, steps)
            if w >= 1:
                out.add(w)
            alt |= _collect(n.before, steps, out) | _collect(n.after, steps, out)
        elif isinstance(n, _Alternate):
            alt = True
            for o in n.options:
                _collect(o, steps, out)
        elif isinstance(n, tuple):
            alt |= _collect(n[1], steps, out)
    return alt


def _at(nodes: list, step: int, steps: int) -> str:
    out = []
    for n in nodes:
        if isinstance(n, str):
            out.append(n)
        elif isinstance(n, tuple):
            out.append(n[0] + _at(n[1], step, steps) + n[2])
        elif isinstance(n, _Scheduled):
            out.append(_at(n.before if step <= _when_step(n.when, steps) else n.after, step, steps))
        else:
            out.append(_at(n.options[(step - 1) % len(n.options)], step, steps))
    return "".join(out)


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """[(end_step, plain prompt)] for a sampling run of `steps` steps (see the module doc)."""
    steps = max(1, int(steps))
    try:
        parts, seps, _ = _parse(prompt, 0, "", False)
    except _Malformed:
        return [(steps, prompt)]
    nodes = parts[0]
    bounds = {steps}
    if _collect(nodes, steps, bounds):
        bounds.update(range(1, steps + 1))
    out: list[tuple[int, str]] = []
    for b in sorted(bounds):
        text = _at(nodes, b, steps)
        if out and out[-1][1] == text:
            out[-1] = (b, text)
        else:
            out.append((b, text))
    return out


def text_at(schedule: list[tuple[int, str]], step: int) -> int:
    """Index of the schedule entry for 0-based sampling step `step`."""
    for i, (end, _) in enumerate(schedule):
        if step + 1 <= end:
            return i
    return len(schedule) - 1


__all__ = ["prompt_schedule", "text_at"]
