"""A bounded dry run of a pickle's opcodes, before the real (C) unpickler sees any of it.

CPython's unpickler trusts the numbers in the stream: a ``LONG_BINPUT 0xFFFFFFF0`` grows the memo
array to 2**33 entries, a ``BINBYTES8`` length allocates that many bytes before reading them,
and a dict key that is a tuple nested 10**5 deep crashes the interpreter in ``hash()`` (which
has no recursion guard). ``scan_pickle`` walks the opcodes once, in time linear in the stream,
simulating only the stack's *shape*, and refuses with ``CorruptFileError``:

* an unknown opcode, or an argument running past the end of the buffer;
* a length prefix (strings, bytes, bytearrays, LONG4, FRAME) larger than the bytes left;
* a memo index larger than the number of opcodes read so far (writers number memo entries
  0, 1, 2...; so the memo never outgrows the stream);
* stack underflow, a missing MARK, GET of an unset memo entry;
* containers nested deeper than ``MAX_PICKLE_DEPTH``.

Nesting is tracked per stack item as an upper bound of its depth at the time it was built;
a list mutated after being put inside another can still make a deeper structure (the
flattener guards that case with its own depth limit). Tuples and frozensets -- the only
containers ``hash()`` recurses into -- are immutable, so their depth is exact.

It returns the offset just past STOP, so back-to-back pickles (legacy torch files) can be cut
out of a memory map without the unpickler reading ahead.
"""
from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Optional

from ..errors import CorruptFileError
from .limits import MAX_PICKLE_DEPTH


class _Item:
    """One simulated stack value: its nesting depth (0 for scalars). Shared between the
    stack and the memo, like the real objects, so in-place mutation is seen through aliases."""
    __slots__ = ("depth",)

    def __init__(self, depth: int = 0):
        self.depth = depth


_ATOM = _Item(0)          # scalars never change: one shared instance

# --- argument layout per opcode: _FIXED[code] >= 0: that many bytes; or one of:
_PREFIXED, _LINE, _LINE2, _UNKNOWN = -2, -3, -4, -1
_FIXED = [_UNKNOWN] * 256
_PREFIX_FMT: dict[int, tuple[str, int]] = {}
for _c, _a in {
    "(": 0, ".": 0, "0": 0, "1": 0, "2": 0, "N": 0, "\x88": 0, "\x89": 0, "]": 0, "}": 0, ")": 0,
    "\x8f": 0, "a": 0, "e": 0, "l": 0, "t": 0, "d": 0, "\x91": 0, "s": 0, "u": 0, "\x90": 0,
    "\x85": 0, "\x86": 0, "\x87": 0, "R": 0, "b": 0, "\x81": 0, "\x92": 0, "o": 0, "\x93": 0,
    "\x94": 0, "Q": 0, "\x97": 0, "\x98": 0,
    "J": 4, "K": 1, "M": 2, "G": 8, "q": 1, "r": 4, "h": 1, "j": 4, "\x82": 1, "\x83": 2, "\x84": 4,
    "\x80": 1, "\x95": 8,
    "T": "<i", "U": "<B", "X": "<I", "\x8c": "<B", "\x8d": "<Q", "B": "<I", "C": "<B", "\x8e": "<Q",
    "\x96": "<Q", "\x8a": "<B", "\x8b": "<i",
    "I": _LINE, "L": _LINE, "F": _LINE, "S": _LINE, "V": _LINE, "P": _LINE, "p": _LINE, "g": _LINE,
    "c": _LINE2, "i": _LINE2,
}.items():
    if isinstance(_a, str):
        _FIXED[ord(_c)] = _PREFIXED
        _PREFIX_FMT[ord(_c)] = (_a, struct.calcsize(_a))
    else:
        _FIXED[ord(_c)] = _a

# --- stack effect per opcode
(A_ATOM, A_EMPTY, A_MARK, A_PUT, A_GET, A_TUPLE_N, A_FROM_MARK, A_REDUCE, A_GROW1, A_GROW2,
 A_GROW_MARK, A_BUILD, A_NEWOBJ_EX, A_OBJ, A_STACK_GLOBAL, A_BINPERSID, A_POP, A_POP_MARK, A_DUP,
 A_NOOP, A_FRAME, A_READONLY, A_STOP) = range(23)
_ACTION = [None] * 256
for _cs, _act in [
    ("N\x88\x89JKMGTUX\x8c\x8dBC\x8e\x96\x8a\x8bILFSV\x82\x83\x84c\x97P", A_ATOM),
    ("]})\x8f", A_EMPTY), ("(", A_MARK), ("qrp\x94", A_PUT), ("hjg", A_GET), ("\x85\x86\x87", A_TUPLE_N),
    ("ltd\x91i", A_FROM_MARK), ("R\x81", A_REDUCE), ("a", A_GROW1), ("s", A_GROW2), ("eu\x90", A_GROW_MARK),
    ("b", A_BUILD), ("\x92", A_NEWOBJ_EX), ("o", A_OBJ), ("\x93", A_STACK_GLOBAL), ("Q", A_BINPERSID),
    ("0", A_POP), ("1", A_POP_MARK), ("2", A_DUP), ("\x80", A_NOOP), ("\x95", A_FRAME),
    ("\x98", A_READONLY), (".", A_STOP),
]:
    for _c in _cs:
        _ACTION[ord(_c)] = _act

_MAX_LINE_INT = 20        # digits of a text-protocol memo index


def scan_pickle(buf: bytes | bytearray | mmap.mmap, start: int = 0, *, file: Optional[str | Path] = None,
                max_depth: int = MAX_PICKLE_DEPTH) -> int:
    """Check the pickle starting at `start` in `buf` (bytes or a file's mmap); return the offset
    just past its STOP opcode. Raises CorruptFileError naming `file`."""
    size = len(buf)
    pos = start
    stack: list[_Item] = []
    marks: list[int] = []               # stack lengths at each MARK
    memo: dict[int, _Item] = {}
    n_ops = 0
    fence = 0                           # marks[-1], or 0: values below it cannot be popped
    unpack_from = struct.unpack_from
    op_pos = pos

    def bad(msg: str) -> CorruptFileError:
        return CorruptFileError(f"pickle {msg} (at byte {op_pos}); corrupt or hostile file", file=file)

    def new(d: int) -> _Item:
        if d > max_depth:
            raise bad(f"nests containers {d} deep (at most {max_depth} are read)")
        return _Item(d)

    def deepest(items) -> int:
        d = 0
        for it in items:
            if it.depth > d:
                d = it.depth
        return d

    def grow(d: int) -> None:
        """An in-place update (APPEND, SETITEM, BUILD...) put depth-`d` values into stack[-1]."""
        if not stack:
            raise bad("adds items to an empty stack")
        target = stack[-1]
        if d + 1 > target.depth:
            if target is _ATOM:
                raise bad("adds items to a scalar")
            if d + 1 > max_depth:
                raise bad(f"nests containers {d + 1} deep (at most {max_depth} are read)")
            target.depth = d + 1

    def line(p: int) -> int:
        end = buf.find(b"\n", p, size)
        if end < 0:
            raise bad("has a text argument without its newline (truncated?)")
        return end

    while True:
        op_pos = pos
        if pos >= size:
            raise bad("ends without STOP (truncated?)")
        code = buf[pos]
        pos += 1
        n_ops += 1
        argpos = pos
        n = _FIXED[code]
        if n >= 0:
            pos += n
            if pos > size:
                raise bad("ends inside an opcode argument (truncated?)")
        elif n == _PREFIXED:
            fmt, width = _PREFIX_FMT[code]
            if pos + width > size:
                raise bad("ends inside a length prefix (truncated?)")
            length = unpack_from(fmt, buf, pos)[0]
            pos += width
            if length < 0 or length > size - pos:
                raise bad(f"declares a {length}-byte value but only {size - pos} bytes follow")
            pos += length
        elif n == _LINE:
            pos = line(pos) + 1
        elif n == _LINE2:
            pos = line(line(pos) + 1) + 1
        else:
            raise bad(f"has unknown opcode 0x{code:02x}")

        act = _ACTION[code]
        if act == A_ATOM:
            stack.append(_ATOM)
        elif act == A_PUT:
            if len(stack) <= fence:
                raise bad("memoizes an empty stack")
            if code == 0x71:                        # BINPUT
                idx = buf[argpos]
            elif code == 0x72:                      # LONG_BINPUT
                idx = unpack_from("<I", buf, argpos)[0]
            elif code == 0x94:                      # MEMOIZE
                idx = len(memo)
            else:                                   # PUT (text)
                idx = _line_int(buf[argpos:pos - 1], bad)
            if idx > n_ops:
                raise bad(f"uses memo index {idx}, beyond the {n_ops} opcodes read so far")
            memo[idx] = stack[-1]
        elif act == A_GET:
            if code == 0x68:                        # BINGET
                idx = buf[argpos]
            elif code == 0x6A:                      # LONG_BINGET
                idx = unpack_from("<I", buf, argpos)[0]
            else:                                   # GET (text)
                idx = _line_int(buf[argpos:pos - 1], bad)
            item = memo.get(idx)
            if item is None:
                raise bad(f"reads memo entry {idx}, which was never set")
            stack.append(item)
        elif act == A_MARK:
            marks.append(len(stack))
            fence = len(stack)
        elif act == A_FROM_MARK or act == A_GROW_MARK or act == A_OBJ or act == A_POP_MARK:
            if not marks:
                raise bad("has no MARK for a mark-delimited opcode")
            k = marks.pop()
            items = stack[k:]
            del stack[k:]
            fence = marks[-1] if marks else 0
            if act == A_FROM_MARK:
                stack.append(new(deepest(items) + 1))
            elif act == A_GROW_MARK:
                grow(deepest(items))
            elif act == A_OBJ:
                if not items:
                    raise bad("builds an object without a class")
                stack.append(new(deepest(items) + 1))
        elif act == A_TUPLE_N:
            k = code - 0x84
            if len(stack) - k < fence:
                raise bad("pops more values than it pushed")
            items = stack[-k:]
            del stack[-k:]
            stack.append(new(deepest(items) + 1))
        elif act == A_REDUCE or act == A_NEWOBJ_EX:
            k = 2 if act == A_REDUCE else 3
            if len(stack) - k < fence:
                raise bad("pops more values than it pushed")
            items = stack[-k:]
            del stack[-k:]
            stack.append(new(deepest(items) + 1))
        elif act == A_EMPTY:
            stack.append(_Item(1))
        elif act == A_GROW1 or act == A_BUILD:     # APPEND / BUILD: one value into stack[-2]
            if len(stack) - 1 < fence:
                raise bad("pops more values than it pushed")
            grow(stack.pop().depth)
        elif act == A_GROW2:                        # SETITEM
            if len(stack) - 2 < fence:
                raise bad("pops more values than it pushed")
            v, k2 = stack.pop(), stack.pop()
            grow(max(v.depth, k2.depth))
        elif act == A_STACK_GLOBAL:
            if len(stack) - 2 < fence:
                raise bad("pops more values than it pushed")
            del stack[-2:]
            stack.append(_ATOM)
        elif act == A_BINPERSID:
            if len(stack) - 1 < fence:
                raise bad("pops more values than it pushed")
            stack[-1] = _ATOM
        elif act == A_POP:
            if marks and fence == len(stack):       # POP of a MARK drops the mark
                marks.pop()
                fence = marks[-1] if marks else 0
            elif len(stack) <= fence:
                raise bad("pops more values than it pushed")
            else:
                stack.pop()
        elif act == A_DUP:
            if len(stack) <= fence:
                raise bad("duplicates an empty stack")
            stack.append(stack[-1])
        elif act == A_NOOP:
            pass
        elif act == A_FRAME:
            flen = unpack_from("<Q", buf, argpos)[0]
            if flen > size - pos:
                raise bad(f"declares a {flen}-byte frame but only {size - pos} bytes follow")
        elif act == A_READONLY:
            if len(stack) <= fence:
                raise bad("marks an empty stack read-only")
        elif act == A_STOP:
            if len(stack) <= fence:
                raise bad("stops with nothing on the stack")
            return pos
        else:                                       # pragma: no cover - the tables agree
            raise bad(f"has unhandled opcode 0x{code:02x}")


def _line_int(text: bytes, bad) -> int:
    text = text.strip()
    if not text.isdigit() or len(text) > _MAX_LINE_INT:
        raise bad(f"has a bad memo index {text[:24]!r}")
    return int(text)


__all__ = ["scan_pickle"]
