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

# opcode -> argument kind
#   int n: n fixed bytes; "L1"/"L4"/"L4s"/"L8": length-prefixed payload of that prefix size
#   (s: signed); "NL": one newline-terminated line; "NL2": two lines
_ARGS: dict[int, object] = {}
for _c, _a in {
    "(": 0, ".": 0, "0": 0, "1": 0, "2": 0, "N": 0, "\x88": 0, "\x89": 0, "]": 0, "}": 0, ")": 0,
    "\x8f": 0, "a": 0, "e": 0, "l": 0, "t": 0, "d": 0, "\x91": 0, "s": 0, "u": 0, "\x90": 0,
    "\x85": 0, "\x86": 0, "\x87": 0, "R": 0, "b": 0, "\x81": 0, "\x92": 0, "o": 0, "\x93": 0,
    "\x94": 0, "Q": 0, "\x97": 0, "\x98": 0,
    "J": 4, "K": 1, "M": 2, "G": 8, "q": 1, "r": 4, "h": 1, "j": 4, "\x82": 1, "\x83": 2, "\x84": 4,
    "\x80": 1, "\x95": 8,
    "T": "L4s", "U": "L1", "X": "L4", "\x8c": "L1", "\x8d": "L8", "B": "L4", "C": "L1", "\x8e": "L8",
    "\x96": "L8", "\x8a": "L1", "\x8b": "L4s",
    "I": "NL", "L": "NL", "F": "NL", "S": "NL", "V": "NL", "P": "NL", "p": "NL", "g": "NL",
    "c": "NL2", "i": "NL2",
}.items():
    _ARGS[ord(_c)] = _a

_PREFIX = {"L1": ("<B", 1), "L4": ("<I", 4), "L4s": ("<i", 4), "L8": ("<Q", 8)}
_PUSH_ATOM = {ord(c) for c in "N\x88\x89JKMGTUX\x8c\x8dBC\x8e\x96\x8a\x8bILFSV\x82\x83\x84c\x97"}
_PUSH_EMPTY = {ord(c) for c in "]})\x8f"}
_MAX_LINE_INT = 20        # digits of a text-protocol memo index


def scan_pickle(buf: bytes | bytearray | mmap.mmap, start: int = 0, *, file: Optional[str | Path] = None,
                max_depth: int = MAX_PICKLE_DEPTH) -> int:
    """Check the pickle starting at `start` in `buf` (bytes or a file's mmap); return the offset
    just past its STOP opcode. Raises CorruptFileError naming `file`."""
    size = len(buf)
    pos = start
    stack: list = []
    marks: list[int] = []               # stack lengths at each MARK
    memo: dict[int, _Item] = {}
    n_ops = 0

    def bad(msg: str) -> CorruptFileError:
        return CorruptFileError(f"pickle {msg} (at byte {op_pos}); corrupt or hostile file", file=file)

    def fence() -> int:
        return marks[-1] if marks else 0

    def pop() -> object:
        if len(stack) <= fence():
            raise bad("pops more values than it pushed")
        return stack.pop()

    def pop_mark() -> list:
        if not marks:
            raise bad("has no MARK for a mark-delimited opcode")
        k = marks.pop()
        items = stack[k:]
        del stack[k:]
        return items

    def depth_of(items) -> int:
        d = 0
        for it in items:
            if isinstance(it, _Item) and it.depth > d:
                d = it.depth
        return d

    def new(d: int) -> _Item:
        if d > max_depth:
            raise bad(f"nests containers {d} deep (at most {max_depth} are read)")
        return _Item(d)

    def grow(target, items) -> None:
        """In-place update (APPEND, SETITEM, BUILD...) of the container `target`."""
        if not isinstance(target, _Item):
            raise bad("adds items to a non-container")
        d = depth_of(items) + 1
        if d > target.depth:
            if d > max_depth:
                raise bad(f"nests containers {d} deep (at most {max_depth} are read)")
            if target is _ATOM:
                raise bad("adds items to a scalar")
            target.depth = d

    def line() -> bytes:
        nonlocal pos
        end = buf.find(b"\n", pos, size)
        if end < 0:
            raise bad("has a text argument without its newline (truncated?)")
        text = buf[pos:end]
        pos = end + 1
        return text

    def memo_index(idx: int) -> int:
        if idx < 0 or idx > n_ops:
            raise bad(f"uses memo index {idx}, beyond the {n_ops} opcodes read so far")
        return idx

    while True:
        op_pos = pos
        if pos >= size:
            raise bad("ends without STOP (truncated?)")
        code = buf[pos]
        pos += 1
        n_ops += 1
        kind = _ARGS.get(code)
        if kind is None:
            raise bad(f"has unknown opcode 0x{code:02x}")
        arg = None
        if isinstance(kind, int):
            if pos + kind > size:
                raise bad("ends inside an opcode argument (truncated?)")
            if kind:
                arg = buf[pos:pos + kind]
            pos += kind
        elif kind in _PREFIX:
            fmt, n = _PREFIX[kind]
            if pos + n > size:
                raise bad("ends inside a length prefix (truncated?)")
            length = struct.unpack_from(fmt, buf, pos)[0]
            pos += n
            if length < 0 or length > size - pos:
                raise bad(f"declares a {length}-byte value but only {size - pos} bytes follow")
            pos += length
        elif kind == "NL":
            arg = line()
        else:                                       # NL2: GLOBAL / INST
            line()
            line()

        c = chr(code)
        if c == ".":
            if len(stack) <= fence():
                raise bad("stops with nothing on the stack")
            return pos
        if code in _PUSH_ATOM:
            stack.append(_ATOM)
        elif code in _PUSH_EMPTY:
            stack.append(new(1))
        elif c == "(":
            marks.append(len(stack))
        elif c == "0":
            if marks and marks[-1] == len(stack):
                marks.pop()
            else:
                pop()
        elif c == "1":
            pop_mark()
        elif c == "2":
            if len(stack) <= fence():
                raise bad("duplicates an empty stack")
            stack.append(stack[-1])
        elif c in "ltd\x91":                        # LIST TUPLE DICT FROZENSET from mark
            items = pop_mark()
            stack.append(new(depth_of(items) + 1))
        elif c in "\x85\x86\x87":                   # TUPLE1..3
            items = [pop() for _ in range(code - 0x84)]
            stack.append(new(depth_of(items) + 1))
        elif c == "a":
            v = pop()
            grow(stack[-1] if stack else None, [v])
        elif c == "s":
            v, k = pop(), pop()
            grow(stack[-1] if stack else None, [k, v])
        elif c in "eu\x90":                         # APPENDS SETITEMS ADDITEMS
            items = pop_mark()
            grow(stack[-1] if stack else None, items)
        elif c == "b":                              # BUILD: state into the object below it
            state = pop()
            grow(stack[-1] if stack else None, [state])
        elif c in "R\x81":                          # REDUCE / NEWOBJ: callable(args)
            args, fn = pop(), pop()
            stack.append(new(depth_of([args, fn]) + 1))
        elif c == "\x92":                           # NEWOBJ_EX
            kwargs, args, fn = pop(), pop(), pop()
            stack.append(new(depth_of([kwargs, args, fn]) + 1))
        elif c == "o":                              # OBJ: mark, cls, args...
            items = pop_mark()
            if not items:
                raise bad("builds an object without a class")
            stack.append(new(depth_of(items) + 1))
        elif c == "i":                              # INST: mark, args...
            items = pop_mark()
            stack.append(new(depth_of(items) + 1))
        elif c == "\x93":                           # STACK_GLOBAL
            pop(), pop()
            stack.append(_ATOM)
        elif c in "PQ":                             # PERSID / BINPERSID
            if c == "Q":
                pop()
            stack.append(_ATOM)
        elif c in "qrp\x94":                        # BINPUT LONG_BINPUT PUT MEMOIZE
            if len(stack) <= fence():
                raise bad("memoizes an empty stack")
            if c == "\x94":
                idx = len(memo)
            elif c == "p":
                idx = _line_int(arg, bad)
            else:
                idx = int.from_bytes(arg, "little")
            memo[memo_index(idx)] = stack[-1]
        elif c in "hjg":                            # BINGET LONG_BINGET GET
            idx = _line_int(arg, bad) if c == "g" else int.from_bytes(arg, "little")
            item = memo.get(idx)
            if item is None:
                raise bad(f"reads memo entry {idx}, which was never set")
            stack.append(item)
        elif c == "\x98":                           # READONLY_BUFFER: no stack change
            if len(stack) <= fence():
                raise bad("marks an empty stack read-only")
        elif c in "\x80\x95":                       # PROTO / FRAME
            if c == "\x95":
                flen = int.from_bytes(arg, "little")
                if flen > size - pos:
                    raise bad(f"declares a {flen}-byte frame but only {size - pos} bytes follow")
        else:                                       # pragma: no cover - table and cases agree
            raise bad(f"has unhandled opcode 0x{code:02x}")


def _line_int(text: bytes, bad) -> int:
    text = text.strip()
    if not text.isdigit() or len(text) > _MAX_LINE_INT:
        raise bad(f"has a bad memo index {text[:24]!r}")
    return int(text)


__all__ = ["scan_pickle"]
