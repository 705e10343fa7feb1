"""JSON from files that may be hostile: nesting depth checked before parsing.

Python's ``json`` recurses once per nesting level; a few kilobytes of ``[[[[...`` escape it as
``RecursionError``. ``loads_json`` first measures the depth in C-speed passes (strings cut out
with one regex, brackets counted with numpy, in chunks so memory stays a few MB) and refuses
anything deeper than ``MAX_JSON_DEPTH`` with the caller's typed error naming the file.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..errors import CorruptFileError
from .limits import MAX_JSON_DEPTH

# A JSON string literal (escapes included), the "unrolled loop" form so matching is linear.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_CHUNK = 1 << 20


def json_depth(raw: bytes) -> int:
    """Greatest bracket nesting of `raw` outside string literals (exact for valid JSON)."""
    if raw.count(b"[") + raw.count(b"{") <= 1:
        return int(b"[" in raw or b"{" in raw)
    stripped = _STRING.sub(b'""', raw)
    depth, deepest = 0, 0
    for i in range(0, len(stripped), _CHUNK):
        a = np.frombuffer(stripped, dtype=np.uint8, count=min(_CHUNK, len(stripped) - i), offset=i)
        steps = ((a == 0x5B) | (a == 0x7B)).view(np.int8) - ((a == 0x5D) | (a == 0x7D)).view(np.int8)
        levels = np.cumsum(steps, dtype=np.int32) + depth
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
    return deepest


def loads_json(raw: bytes | str, *, file: Optional[str | Path], what: str = "JSON",
               error: Callable[..., Exception] = CorruptFileError, max_depth: int = MAX_JSON_DEPTH,
               object_pairs_hook: Optional[Callable] = None) -> Any:
    """Parse `raw`; any failure is ``error(message, file=file)``."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", errors="surrogatepass")
    depth = json_depth(raw)
    if depth > max_depth:
        raise error(f"{what} nests {depth} levels deep (at most {max_depth} are read)", file=file)
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=object_pairs_hook)
    except UnicodeDecodeError as e:
        raise error(f"{what} is not UTF-8 text: {e}", file=file) from None
    except RecursionError:                  # unreachable after the depth check; kept as a net
        raise error(f"{what} nests too deeply", file=file) from None
    except (ValueError, TypeError) as e:    # JSONDecodeError, duplicate keys, >4300-digit ints
        raise error(f"{what} is not valid JSON: {e}", file=file) from None


def load_json_file(path: str | Path, *, what: str = "JSON file",
                   error: Callable[..., Exception] = CorruptFileError, max_bytes: Optional[int] = None) -> Any:
    """Read and parse one JSON file (read errors become `error` too)."""
    try:
        with open(path, "rb") as f:
            raw = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except FileNotFoundError:
        raise error("No such file or directory", file=path) from None
    except OSError as e:
        raise error(f"cannot read {what}: {e}", file=path) from None
    if max_bytes is not None and len(raw) > max_bytes:
        raise error(f"{what} is larger than {max_bytes} bytes", file=path)
    return loads_json(raw, file=path, what=what, error=error)


__all__ = ["loads_json", "load_json_file", "json_depth"]
