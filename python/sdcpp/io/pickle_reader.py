"""torch checkpoints (.ckpt/.pt/.pth/.bin) read without torch and without running pickle code.

Two container formats:

* zip (``torch.save`` default since 1.6): ``<prefix>/data.pkl`` holds the object pickle and
  ``<prefix>/data/<key>`` the raw bytes of each storage, stored uncompressed. A storage's
  byte offset in the file is taken from its member's *local* file header.
* legacy (``_use_new_zipfile_serialization=False``): five pickles back to back (magic number,
  protocol version 1001, sys info, the object, the sorted list of storage keys), then for each
  key an int64 element count and the storage's raw bytes.

The object pickle is loaded by ``SafeUnpickler``: ``find_class`` resolves only an allow-list,
and every allowed name maps to a local stand-in (tensor rebuild functions that build
descriptions, dtype/storage markers, inert placeholder classes) or to a harmless builtin
container constructor. No module is imported and nothing from the file runs. Any other global
raises ``UnsafePickleError`` before anything of it is called.

Tensors come out as TensorRecords over the file itself, with torch's own strides and storage
offsets, so non-contiguous views and tensors sharing a storage are described exactly.

Which tensors are returned (``flatten_checkpoint``):
  1. the top object is walked down through wrapper keys -- ``state_dict``,
     ``model_state_dict``, ``model``, ``module``, ``net`` (first present, whose value is a
     dict) -- as long as the current dict holds no tensor directly (so a Lightning/LDM
     ``.ckpt`` gives its ``state_dict``, never the optimizer state);
  2. everything under that dict is flattened: nested dicts and lists/tuples join their keys
     with ``.`` (``{"a": {"b": t}}`` -> ``"a.b"``, lists by index); a bare tensor at the top is
     returned under the name ``""``;
  3. non-tensor values (ints, strings, epoch numbers, placeholders) are skipped.

Hostile files (docs/formats.md, Hostile files): every pickle is first dry-run by
``pickle_scan.scan_pickle`` (sizes, memo indices, nesting bounded by the stream), the stand-ins
charge what they copy against a budget proportional to the pickle's size, and the flattening
walk is iterative, depth-limited and charged too -- so a file of N bytes costs O(N) time and
memory whatever it declares, and shared references cannot make the walk exponential.
"""
from __future__ import annotations

import contextvars
import io
import mmap
import os
import pickle
import reprlib
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import CheckpointError, CorruptFileError, UnsafePickleError, UnsupportedFormatError
from .limits import MAX_NAME_CHARS, MAX_NDIM, MAX_PICKLE_DEPTH, check_shape
from .pickle_scan import scan_pickle
from .records import DTYPE_ITEMSIZE, TensorRecord

Tensors = dict[str, TensorRecord]
Metadata = dict[str, str]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
LEGACY_MAGIC_BYTES = LEGACY_MAGIC.to_bytes(10, "little")

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")

# torch.<X>Storage (typed legacy storage classes) -> element dtype (None: exists, unsupported).
STORAGE_DTYPES: dict[str, Optional[str]] = {
    "FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16",
    "DoubleStorage": "F64", "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16",
    "CharStorage": "I8", "ByteStorage": "U8", "BoolStorage": "BOOL",
    "Float8_e4m3fnStorage": "F8_E4M3", "Float8_e5m2Storage": "F8_E5M2",
    "ComplexFloatStorage": None, "ComplexDoubleStorage": None, "QInt8Storage": None,
    "QUInt8Storage": None, "QInt32Storage": None, "QUInt4x2Storage": None, "QUInt2x4Storage": None,
}
# element sizes of the unsupported ones (needed to step over their bytes in legacy files)
_UNSUPPORTED_STORAGE_ITEMSIZE = {
    "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16, "QInt8Storage": 1, "QUInt8Storage": 1,
    "QInt32Storage": 4, "QUInt4x2Storage": 1, "QUInt2x4Storage": 1,
}

# torch.<dtype> globals (used by _rebuild_tensor_v3 with untyped storages).
TORCH_DTYPES: dict[str, Optional[str]] = {
    "float32": "F32", "float": "F32", "float16": "F16", "half": "F16", "bfloat16": "BF16",
    "float64": "F64", "double": "F64", "int64": "I64", "long": "I64", "int32": "I32",
    "int": "I32", "int16": "I16", "short": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "uint16": None, "uint32": None, "uint64": None, "complex32": None, "complex64": None,
    "complex128": None, "cfloat": None, "cdouble": None, "chalf": None,
    "float8_e4m3fnuz": None, "float8_e5m2fnuz": None, "float8_e8m0fnu": None,
    "float4_e2m1fn_x2": None, "qint8": None, "quint8": None, "qint32": None,
    "quint4x2": None, "quint2x4": None, "bits8": None, "bits16": None,
    "bits1x8": None, "bits2x4": None, "bits4x2": None,
}

# Real torch functions we know but do not read: named in an UnsupportedFormatError.
UNSUPPORTED_TORCH_GLOBALS = {
    "torch._utils._rebuild_qtensor": "quantized tensor",
    "torch._utils._rebuild_sparse_tensor": "sparse tensor",
    "torch._utils._rebuild_sparse_csr": "sparse tensor",
    "torch._utils._rebuild_nested_tensor": "nested tensor",
    "torch._utils._rebuild_wrapper_subclass": "tensor subclass",
    "torch._utils._rebuild_meta_tensor_no_storage": "meta tensor without storage",
    "torch._utils._rebuild_device_tensor_from_numpy": "device tensor from numpy",
    "torch._utils._rebuild_xla_tensor": "XLA tensor",
    "torch._utils._rebuild_mlc_tensor": "MLC tensor",
    "torch.storage._load_from_bytes": "storage pickled without torch.save",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor": "device tensor",
}

# Globals replaced by inert placeholders (they carry no tensor data; their state is dropped).
INERT_MODULE_PREFIXES = ("pytorch_lightning", "lightning", "lightning_fabric", "omegaconf")
INERT_GLOBALS = {
    "argparse.Namespace", "torch.device", "torch.nn.parameter.Parameter",
    "torch.nn.parameter.Buffer", "torch.Tensor", "torch._tensor.Tensor",
    "numpy.core.multiarray._reconstruct", "numpy.core.multiarray.scalar",
    "numpy._core.multiarray._reconstruct", "numpy._core.multiarray.scalar",
    "numpy.dtype", "numpy.ndarray", "numpy.core.numeric._frombuffer",
    "numpy._core.numeric._frombuffer",
}
INERT_MODULES = {"numpy.dtypes"}

# Work the stand-ins and the flattener may do per byte of pickle (elements copied, name
# characters built). Real checkpoints use well under 2; a quadratic or exponential structure
# of shared references needs far more.
PICKLE_COPY_BUDGET_PER_BYTE = 2
FLATTEN_BUDGET_PER_BYTE = 8
_BUDGET_SLACK = 1 << 16
_budget: "contextvars.ContextVar[Optional[list[int]]]" = contextvars.ContextVar("sdcpp_pickle_budget",
                                                                               default=None)


def _charge(n: int) -> None:
    """Count `n` elements copied by a stand-in against the running load's budget."""
    b = _budget.get()
    if b is not None:
        b[0] -= n
        if b[0] < 0:
            raise CorruptFileError("pickle makes more copies of its values than its size can justify "
                                   "(a quadratic structure of shared references?)")


def _sized(x) -> int:
    try:
        return len(x)
    except TypeError:
        return 1


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 40


def _short(x: Any) -> str:
    """repr for messages: bounded in length and depth, never failing (huge ints, deep lists)."""
    try:
        return _REPR.repr(x)
    except Exception:
        return f"<{type(x).__name__}>"


# --------------------------------------------------------------------------- stand-ins
class _Frozen:
    """Objects the pickle may reference: no instance dict, BUILD on them is refused."""
    __slots__ = ()

    def __setstate__(self, state):
        raise CorruptFileError("pickle tried to set the state of a built-in stand-in")


class StorageType(_Frozen):
    """Marker for torch.<X>Storage / torch.storage.UntypedStorage."""
    __slots__ = ("qualname", "dtype", "untyped", "itemsize")

    def __init__(self, qualname: str, dtype: Optional[str], untyped: bool = False,
                 itemsize: Optional[int] = None):
        if itemsize is None and dtype is not None:
            itemsize = 1 if untyped else DTYPE_ITEMSIZE[dtype]
        object.__setattr__(self, "qualname", qualname)
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "untyped", untyped)
        object.__setattr__(self, "itemsize", itemsize)   # None: unknown

    def __repr__(self):
        return f"<storage type {self.qualname}>"


class DType(_Frozen):
    """Marker for torch.<dtype>."""
    __slots__ = ("qualname", "dtype")

    def __init__(self, qualname: str, dtype: Optional[str]):
        object.__setattr__(self, "qualname", qualname)
        object.__setattr__(self, "dtype", dtype)

    def __repr__(self):
        return f"<dtype {self.qualname}>"


class Storage:
    """One serialized storage: where its bytes are (filled in by the container reader)."""
    __slots__ = ("key", "stype", "numel", "data_offset", "nbytes", "problem")

    def __init__(self, key: str, stype: StorageType, numel: int):
        self.key, self.stype, self.numel = key, stype, numel
        self.data_offset: Optional[int] = None   # absolute byte offset of element 0 in the file
        self.nbytes: Optional[int] = None        # bytes available for this storage
        self.problem: Optional[tuple[type, str]] = None   # (error class, message) if unusable

    @property
    def itemsize(self) -> int:
        return self.stype.itemsize or 1

    def __setstate__(self, state):
        raise CorruptFileError("pickle tried to set the state of a storage")


class StorageRef(_Frozen):
    """What persistent_load returns: a storage plus a byte offset (legacy storage views)."""
    __slots__ = ("storage", "byte_offset")

    def __init__(self, storage: Storage, byte_offset: int = 0):
        object.__setattr__(self, "storage", storage)
        object.__setattr__(self, "byte_offset", byte_offset)


class PickledTensor(_Frozen):
    """A tensor as the pickle describes it: storage, element offset, size, stride, dtype."""
    __slots__ = ("ref", "storage_offset", "size", "stride", "dtype", "dtype_name")

    def __init__(self, ref: StorageRef, storage_offset: int, size, stride, dtype, dtype_name):
        for k, v in (("ref", ref), ("storage_offset", storage_offset), ("size", size),
                     ("stride", stride), ("dtype", dtype), ("dtype_name", dtype_name)):
            object.__setattr__(self, k, v)


class SafeCallable(_Frozen):
    """An allowed global that the pickle may call (REDUCE): runs our code, not the file's."""
    __slots__ = ("qualname", "fn")

    def __init__(self, qualname: str, fn: Callable):
        object.__setattr__(self, "qualname", qualname)
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __repr__(self):
        return f"<safe stand-in for {self.qualname}>"


class _InertMeta(type):
    def __setattr__(cls, name, value):
        raise CorruptFileError(f"pickle tried to set attribute {name!r} on placeholder {cls.__qualname__}")

    def __repr__(cls):
        return f"<placeholder for {cls.__qualname__}>"


class Inert(metaclass=_InertMeta):
    """Placeholder for a harmless foreign class: accepts any construction/state and ignores it."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass

    def __repr__(self):
        return f"<inert {type(self).__qualname__}>"


_inert_classes: dict[str, type] = {}


def _inert_class(qualname: str) -> type:
    cls = _inert_classes.get(qualname)
    if cls is None:
        cls = _InertMeta(qualname.rsplit(".", 1)[-1], (Inert,), {"__qualname__": qualname})
        _inert_classes[qualname] = cls
    return cls


# ----------------------------------------------------------------- rebuild stand-ins
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_small_int(x) -> bool:
    """An int that prints in a name (str() of a 5000-digit int raises)."""
    return _is_int(x) and -(1 << 63) <= x < (1 << 63)


def _tensor(ref, storage_offset, size, stride, dtype_marker: Optional[DType]) -> PickledTensor:
    if not isinstance(ref, StorageRef):
        raise CorruptFileError(f"tensor rebuilt from {type(ref).__name__}, not from a storage")
    if not _is_int(storage_offset) or storage_offset < 0:
        raise CorruptFileError(f"bad tensor storage offset {_short(storage_offset)}")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
        raise CorruptFileError(f"bad tensor size {_short(size)} / stride {_short(stride)}")
    if len(size) > MAX_NDIM:
        raise CorruptFileError(f"tensor has {len(size)} dims (at most {MAX_NDIM} are read)")
    _charge(len(size) + len(stride))
    size, stride = tuple(size), tuple(stride)
    if (len(size) != len(stride) or not all(_is_int(d) and d >= 0 for d in size)
            or not all(_is_int(s) for s in stride)):
        raise CorruptFileError(f"bad tensor size {_short(size)} / stride {_short(stride)}")
    if dtype_marker is not None:
        if not isinstance(dtype_marker, DType):
            raise CorruptFileError(f"tensor dtype {_short(dtype_marker)} is not a torch dtype")
        dtype, name = dtype_marker.dtype, dtype_marker.qualname
    else:
        st = ref.storage.stype
        dtype = "U8" if st.untyped else st.dtype
        name = st.qualname
    return PickledTensor(ref, storage_offset, size, stride, dtype, name)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _tensor(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None, *_ignored):
    return _tensor(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None, *_ignored):
    return _tensor(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_ignored):
    return data


def _rebuild_from_type(func, new_type, args, state=None, *_ignored):
    if not isinstance(func, SafeCallable):
        raise UnsafePickleError(f"tensor subclass rebuilt with {func!r}, which is not an allowed rebuild function")
    if not isinstance(args, tuple):
        raise CorruptFileError("tensor subclass rebuilt with non-tuple arguments")
    _charge(len(args))
    return func(*args)


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    if (not isinstance(obj, str) or not isinstance(encoding, str)
            or encoding.lower().replace("_", "-") not in ("latin1", "latin-1")):
        raise UnsafePickleError(f"_codecs.encode only allowed for latin-1 strings, got {_short(encoding)}")
    _charge(len(obj))
    return obj.encode("latin-1")


def _bytes(*args):
    if args and not isinstance(args[0], (bytes, bytearray, str, list, tuple)):
        raise UnsafePickleError("builtins.bytes with a non-bytes argument")
    _charge(sum(_sized(a) for a in args))
    return bytes(*args)


def _bytearray(*args):
    if args and not isinstance(args[0], (bytes, bytearray, str, list, tuple)):
        raise UnsafePickleError("builtins.bytearray with a non-bytes argument")
    _charge(sum(_sized(a) for a in args))
    return bytearray(*args)


def _reconstructor(cls, base, state=None):
    if isinstance(cls, type) and issubclass(cls, Inert):
        return cls()
    raise UnsafePickleError(f"copyreg._reconstructor for {cls!r}")


def _defaultdict(*args, **kwargs):
    return {}


class _StateDict(OrderedDict):
    """collections.OrderedDict as the pickle builds it. Copies from a (shared) argument are
    charged; BUILD's state (torch's ``_metadata``) is charged and dropped."""

    def __init__(self, *args):
        if len(args) > 1 or (args and not isinstance(args[0], (list, tuple, dict))):
            raise UnsafePickleError("collections.OrderedDict called with unexpected arguments")
        _charge(sum(len(a) for a in args))
        super().__init__(*args)

    def __setstate__(self, state):
        _charge(_sized(state))


def _container(ctor):
    def build(*args):
        if len(args) > 1 or (args and not isinstance(args[0], (list, tuple, dict, set, frozenset, str, bytes))):
            raise UnsafePickleError(f"builtins.{ctor.__name__} called with unexpected arguments")
        _charge(sum(len(a) for a in args))
        return ctor(*args)
    return build


def _scalar(ctor):
    def build(*args):
        if not all(isinstance(a, (str, bytes, int, float, bool)) for a in args) or len(args) > 2:
            raise UnsafePickleError(f"builtins.{ctor.__name__} called with unexpected arguments")
        _charge(sum(len(a) for a in args if isinstance(a, (str, bytes))))
        return ctor(*args)
    return build


def _make_allowed() -> dict[str, Any]:
    allowed: dict[str, Any] = {}

    def fn(qualname: str, f: Callable) -> None:
        allowed[qualname] = SafeCallable(qualname, f)

    for mod in ("torch._utils",):
        fn(f"{mod}._rebuild_tensor", _rebuild_tensor)
        fn(f"{mod}._rebuild_tensor_v2", _rebuild_tensor_v2)
        fn(f"{mod}._rebuild_tensor_v3", _rebuild_tensor_v3)
        fn(f"{mod}._rebuild_parameter", _rebuild_parameter)
        fn(f"{mod}._rebuild_parameter_with_state", _rebuild_parameter)
    fn("torch._tensor._rebuild_from_type", _rebuild_from_type)
    fn("torch._tensor._rebuild_from_type_v2", _rebuild_from_type)
    fn("torch.Size", _container(tuple))
    fn("_codecs.encode", _codecs_encode)
    fn("copyreg._reconstructor", _reconstructor)
    fn("copy_reg._reconstructor", _reconstructor)
    allowed["collections.OrderedDict"] = _StateDict           # a dict; safe to construct/fill
    fn("collections.defaultdict", _defaultdict)
    for b in ("builtins", "__builtin__"):
        for ctor in (dict, list, tuple, set, frozenset):
            fn(f"{b}.{ctor.__name__}", _container(ctor))
        for ctor in (int, float, complex, str, bool):
            fn(f"{b}.{ctor.__name__}", _scalar(ctor))
        fn(f"{b}.bytes", _bytes)
        fn(f"{b}.bytearray", _bytearray)
    for st in ("UntypedStorage", "_UntypedStorage"):
        allowed[f"torch.storage.{st}"] = StorageType(f"torch.storage.{st}", "U8", untyped=True)
    for st in ("TypedStorage", "_TypedStorage"):          # element type unknown: not readable
        allowed[f"torch.storage.{st}"] = StorageType(f"torch.storage.{st}", None)
    allowed["torch.UntypedStorage"] = StorageType("torch.UntypedStorage", "U8", untyped=True)
    for mod in ("torch", "torch.cuda"):
        for name, dt in STORAGE_DTYPES.items():
            allowed[f"{mod}.{name}"] = StorageType(f"{mod}.{name}", dt,
                                                   itemsize=_UNSUPPORTED_STORAGE_ITEMSIZE.get(name))
    for name, dt in TORCH_DTYPES.items():
        allowed[f"torch.{name}"] = DType(f"torch.{name}", dt)
    return allowed


ALLOWED_GLOBALS = _make_allowed()


def _is_inert(module: str, name: str) -> bool:
    qual = f"{module}.{name}"
    if qual in INERT_GLOBALS or module in INERT_MODULES:
        return True
    return any(module == p or module.startswith(p + ".") for p in INERT_MODULE_PREFIXES)


class SafeUnpickler(pickle.Unpickler):
    """Unpickler resolving only allow-listed globals to local stand-ins.

    `persistent_load` is given by the container reader (zip or legacy).
    """

    def __init__(self, file, *, source: Path, persistent_load: Optional[Callable] = None):
        super().__init__(file, encoding="utf-8")
        self._source = source
        self._persistent = persistent_load

    def find_class(self, module: str, name: str):
        qual = f"{module}.{name}"
        if qual in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[qual]
        if qual in UNSUPPORTED_TORCH_GLOBALS:
            raise UnsupportedFormatError(
                f"checkpoint holds a {UNSUPPORTED_TORCH_GLOBALS[qual]} ({qual}), which sdcpp does not read",
                file=self._source)
        if _is_inert(module, name):
            return _inert_class(qual)
        raise UnsafePickleError(
            f"pickle references global {qual}, which is not on the allow-list of a torch "
            f"checkpoint; nothing was executed (a whole pickled model or a malicious file?)",
            file=self._source)

    def persistent_load(self, pid):
        if self._persistent is None:
            raise CorruptFileError(f"unexpected persistent id {pid!r}", file=self._source)
        return self._persistent(pid)


# -------------------------------------------------------------------- containers
class _StorageTable:
    """persistent_load for ('storage', type, key, location, numel[, view_metadata])."""

    def __init__(self, source: Path, locate: Optional[Callable[[Storage], None]] = None):
        self.source = source
        self.storages: dict[str, Storage] = {}
        self.locate = locate

    def __call__(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            kind = pid[0] if isinstance(pid, tuple) and pid else pid
            raise UnsupportedFormatError(f"unsupported persistent id kind {kind!r}", file=self.source)
        stype, key, numel = pid[1], pid[2], pid[4]          # pid[3]: device location, unused
        if not (isinstance(key, str) or _is_small_int(key)):
            raise CorruptFileError(f"storage key {_short(key)} is not a string", file=self.source)
        key = str(key)
        if not isinstance(stype, StorageType):
            raise CorruptFileError(f"persistent id names {_short(stype)}, not a storage type", file=self.source)
        if not _is_int(numel) or numel < 0:
            raise CorruptFileError(f"storage {key!r} has bad size {_short(numel)}", file=self.source)
        st = self.storages.get(key)
        if st is None:
            st = Storage(key, stype, numel)
            self.storages[key] = st
            if self.locate is not None:
                self.locate(st)
        view = pid[5] if len(pid) > 5 else None
        if view is None:
            return StorageRef(st)
        # legacy storage view: (view_key, offset_in_root_elements, view_size)
        if not (isinstance(view, tuple) and len(view) == 3 and _is_int(view[1]) and view[1] >= 0):
            raise CorruptFileError(f"bad storage view metadata {_short(view)}", file=self.source)
        return StorageRef(st, view[1] * st.itemsize)


def _local_data_offset(f, info: zipfile.ZipInfo, size: int, member: str) -> int:
    """Byte offset of a stored member's data: after its local header (whose extra field may
    differ in length from the central directory's). ValueError if it does not fit the file."""
    if info.header_offset < 0 or info.header_offset + 30 > size:
        raise ValueError(f"zip member {member!r} has its header outside the file; truncated?")
    f.seek(info.header_offset)
    hdr = f.read(30)
    if len(hdr) < 30 or hdr[:4] != b"PK\x03\x04":
        raise ValueError(f"bad local zip header for member {member!r}")
    name_len, extra_len = struct.unpack_from("<HH", hdr, 26)
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > size:
        raise ValueError(f"zip member {member!r} runs past the end of the file; truncated?")
    return start


def _read_small_member(zf: zipfile.ZipFile, name: str, size: int, path: Path) -> bytes:
    """A member's bytes, after checking its declared sizes fit the archive (a deflated member
    may claim to inflate to terabytes; zipfile stops at the declared size, so bounding that
    bounds the memory)."""
    info = zf.getinfo(name)
    if info.file_size > size or info.compress_size > size:
        raise CorruptFileError(
            f"zip member {name!r} declares {info.file_size} bytes ({info.compress_size} compressed), "
            f"more than the {size}-byte archive can hold", file=path)
    try:
        return zf.read(info)
    except Exception as e:   # BadZipFile (CRC), zlib.error, EOFError, OSError, NotImplementedError...
        raise CorruptFileError(f"cannot read {name!r} from the archive: {e}", file=path) from None


def _load_zip(path: Path) -> tuple[Any, int]:
    """The object pickle's value and its length in bytes."""
    size = path.stat().st_size
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, struct.error) as e:
        raise CorruptFileError(f"not a readable zip archive ({e}); truncated file?", file=path) from None
    with zf, open(path, "rb") as raw:
        names = zf.namelist()
        pkls = sorted((n for n in names if n == "data.pkl" or n.endswith("/data.pkl")), key=len)
        if not pkls:
            raise UnsupportedFormatError("zip archive without data.pkl: not a torch checkpoint", file=path)
        prefix = pkls[0][: -len("data.pkl")]
        if prefix + "byteorder" in names:
            order = _read_small_member(zf, prefix + "byteorder", min(size, 64), path).strip()
            if order != b"little":
                raise UnsupportedFormatError(f"torch checkpoint byte order {_short(order)} is not little-endian",
                                             file=path)

        def locate(st: Storage) -> None:
            member = f"{prefix}data/{st.key}"
            try:
                info = zf.getinfo(member)
            except KeyError:
                st.problem = (CorruptFileError, f"storage {member!r} is missing from the archive")
                return
            if info.compress_type != zipfile.ZIP_STORED:
                st.problem = (UnsupportedFormatError,
                              f"storage {member!r} is compressed (zip method {info.compress_type}); "
                              f"torch stores storages uncompressed -- re-save it with torch.save")
                return
            if info.flag_bits & 0x1:
                st.problem = (UnsupportedFormatError, f"storage {member!r} is encrypted")
                return
            try:
                st.data_offset = _local_data_offset(raw, info, size, member)
            except ValueError as e:
                st.problem = (CorruptFileError, str(e))
                return
            st.nbytes = info.file_size

        data = _read_small_member(zf, pkls[0], size, path)
        table = _StorageTable(path, locate)
        obj, _ = _unpickle(data, 0, path, table)
    return obj, len(data)


def _unpickle(buf, start: int, path: Path, persistent: Optional[Callable] = None) -> tuple[Any, int]:
    """Load the pickle at `buf[start:]` (bytes or a file's mmap): its value and end offset.

    The dry run (``scan_pickle``) checks it first; the real unpickler then only sees those
    bytes, with a copy budget proportional to their length."""
    end = scan_pickle(buf, start, file=path)
    token = _budget.set([PICKLE_COPY_BUDGET_PER_BYTE * (end - start) + _BUDGET_SLACK])
    try:
        return SafeUnpickler(io.BytesIO(buf[start:end]), source=path, persistent_load=persistent).load(), end
    except CheckpointError as e:
        if e.file is None:       # raised by a stand-in that does not know the file: add it
            raise type(e)(str(e), file=path, tensor=e.tensor) from None
        raise
    except RecursionError:
        raise CorruptFileError("pickle nests too deeply", file=path) from None
    except MemoryError:
        raise CorruptFileError("pickle needs too much memory", file=path) from None
    except Exception as e:  # pickle.UnpicklingError, EOFError, TypeError from malformed opcodes...
        raise CorruptFileError(f"cannot unpickle ({type(e).__name__}: {_short(str(e))}); truncated or corrupt?",
                               file=path) from None
    finally:
        _budget.reset(token)


def _load_legacy(path: Path) -> tuple[Any, int]:
    """The object pickle's value and its length in bytes (storages are located in place)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise CorruptFileError(f"cannot memory-map file: {e}", file=path) from None
    with mm:
        magic, pos = _unpickle(mm, 0, path)
        if magic != LEGACY_MAGIC:
            raise UnsupportedFormatError("a pickle, but not a torch checkpoint (no torch magic number)",
                                         file=path)
        proto, pos = _unpickle(mm, pos, path)
        if proto != LEGACY_PROTOCOL:
            raise UnsupportedFormatError(f"torch legacy protocol {_short(proto)} is not supported", file=path)
        sys_info, pos = _unpickle(mm, pos, path)
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise UnsupportedFormatError("big-endian torch checkpoint", file=path)
        table = _StorageTable(path)
        obj_start = pos
        obj, pos = _unpickle(mm, pos, path, table)
        obj_len = pos - obj_start
        keys, offset = _unpickle(mm, pos, path)
        if not isinstance(keys, list):
            raise CorruptFileError("legacy storage key list is missing", file=path)
        for key in keys:
            if not (isinstance(key, str) or _is_small_int(key)):
                raise CorruptFileError(f"legacy storage key {_short(key)} is not a string", file=path)
            key = str(key)
            st = table.storages.get(key)
            if st is None or st.stype.itemsize is None:
                raise CorruptFileError(f"storage {key!r} is listed but its element size is unknown; "
                                       f"cannot find the storages after it", file=path)
            if offset + 8 > size:
                raise CorruptFileError(f"storage {key!r} header runs past the end of the file; truncated?",
                                       file=path)
            count = int.from_bytes(mm[offset:offset + 8], "little", signed=True)
            nbytes = count * st.itemsize
            if count < 0 or offset + 8 + nbytes > size:
                raise CorruptFileError(f"storage {key!r} ({count} elements) runs past the end of the file; "
                                       f"truncated?", file=path)
            st.data_offset, st.nbytes = offset + 8, nbytes
            offset += 8 + nbytes
        for st in table.storages.values():
            if st.data_offset is None and st.problem is None:
                st.problem = (CorruptFileError, f"storage {st.key!r} is not in the file's storage list")
    return obj, obj_len


# -------------------------------------------------------------------- flattening
def _select_root(obj: Any) -> Any:
    seen = set()
    while isinstance(obj, dict) and id(obj) not in seen:
        seen.add(id(obj))
        if any(isinstance(v, PickledTensor) for v in obj.values()):
            return obj
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        else:
            return obj
    return obj


def _children(x: Any):
    """(key, value) pairs of a container, keys that cannot be part of a name left out."""
    if isinstance(x, dict):
        return ((k, v) for k, v in x.items() if isinstance(k, str) or _is_small_int(k))
    return enumerate(x)


def flatten_checkpoint(obj: Any, *, budget: Optional[int] = None,
                       file: Optional[Path] = None) -> list[tuple[str, PickledTensor]]:
    """(dotted name, tensor) pairs of a loaded checkpoint object; see the module docstring.

    Iterative (no recursion), at most MAX_PICKLE_DEPTH containers deep. `budget` bounds the
    work (one unit per value visited plus the characters of each name built): shared
    containers are walked once per path, so a DAG of them is refused rather than expanded
    exponentially."""
    root = _select_root(obj)
    if isinstance(root, PickledTensor):
        return [("", root)]
    if not isinstance(root, (dict, list, tuple)):
        return []
    out: list[tuple[str, PickledTensor]] = []
    left = budget
    frames = [(iter(_children(root)), "", id(root))]
    active = {id(root)}                          # containers on the current path (cycles)
    while frames:
        it, prefix, xid = frames[-1]
        nxt = next(it, None)
        if nxt is None:
            frames.pop()
            active.discard(xid)
            continue
        k, v = nxt
        name = f"{prefix}.{k}" if prefix else str(k)
        if left is not None:
            left -= 1 + len(name)
            if left < 0:
                raise CorruptFileError("checkpoint's shared references expand to far more names than its "
                                       "size can hold (an exponential structure?)", file=file)
        if len(name) > MAX_NAME_CHARS:
            raise CorruptFileError(f"flattened tensor name is longer than {MAX_NAME_CHARS} characters",
                                   file=file, tensor=name[:80] + "...")
        if isinstance(v, PickledTensor):
            out.append((name, v))
        elif isinstance(v, (dict, list, tuple)) and id(v) not in active:
            if len(frames) >= MAX_PICKLE_DEPTH:
                raise CorruptFileError(f"checkpoint nests containers more than {MAX_PICKLE_DEPTH} deep",
                                       file=file, tensor=name[:200])
            active.add(id(v))
            frames.append((iter(_children(v)), name, id(v)))
    return out


def _to_record(name: str, t: PickledTensor, path: Path, file_size: int) -> TensorRecord:
    st = t.ref.storage
    if t.dtype is None:
        raise UnsupportedFormatError(f"tensor dtype {t.dtype_name} is not supported", file=path, tensor=name)
    if st.problem is not None:
        cls, message = st.problem
        raise cls(message, file=path, tensor=name)
    if st.data_offset is None or st.nbytes is None:
        raise CorruptFileError(f"storage {st.key!r} has no data in the file", file=path, tensor=name)
    if any(s < 0 for s in t.stride):
        # torch never writes one; a view reading backwards from its offset is a lie
        raise CorruptFileError(f"negative stride in {t.stride}", file=path, tensor=name)
    item = DTYPE_ITEMSIZE[t.dtype]
    check_shape(t.size, file_size, file=path, tensor=name, itemsize=item)
    start = t.ref.byte_offset + t.storage_offset * item          # relative to the storage's bytes
    if all(d > 0 for d in t.size):
        hi = start + item
        for d, s in zip(t.size, t.stride):      # strides are >= 0 (checked above)
            hi += (d - 1) * s * item
        if hi > st.nbytes:
            raise CorruptFileError(
                f"tensor view (bytes {start}..{hi} of its storage) exceeds storage {st.key!r} "
                f"({st.nbytes} bytes)", file=path, tensor=name)
    return TensorRecord(name=name, dtype=t.dtype, shape=tuple(t.size), strides=tuple(t.stride),
                        file=path, offset=st.data_offset + start)


def _records(loaded: tuple[Any, int], path: Path) -> Tensors:
    obj, pickle_len = loaded
    file_size = path.stat().st_size
    records: Tensors = {}
    budget = FLATTEN_BUDGET_PER_BYTE * pickle_len + _BUDGET_SLACK
    for name, t in flatten_checkpoint(obj, budget=budget, file=path):
        if name in records:
            raise CorruptFileError("two tensors flatten to the same name", file=path, tensor=name)
        records[name] = _to_record(name, t, path, file_size)
    return records


def is_legacy_torch(head: bytes) -> bool:
    """True if `head` (the file's first 32+ bytes) starts a legacy torch.save pickle."""
    return head[:1] == b"\x80" and LEGACY_MAGIC_BYTES in head[:32]


def read_torch_zip(path: str | os.PathLike) -> tuple[Tensors, Metadata]:
    path = Path(os.path.abspath(path))
    return _records(_load_zip(path), path), {}


def read_torch_legacy(path: str | os.PathLike) -> tuple[Tensors, Metadata]:
    path = Path(os.path.abspath(path))
    return _records(_load_legacy(path), path), {}


def read_torch(path: str | os.PathLike) -> tuple[Tensors, Metadata]:
    """A torch checkpoint of either container format (chosen by its first bytes)."""
    path = Path(os.path.abspath(path))
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except FileNotFoundError:
        raise CheckpointError("No such file or directory", file=path) from None
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return read_torch_zip(path)
    if is_legacy_torch(head):
        return read_torch_legacy(path)
    with open(path, "rb") as f:
        f.seek(257)
        if f.read(5) == b"ustar":
            raise UnsupportedFormatError("tar-format torch checkpoint (torch < 0.4) is not supported",
                                         file=path)
    if head[:1] == b"\x80":
        raise UnsupportedFormatError("a pickle, but not a torch checkpoint (no torch magic number)", file=path)
    raise CorruptFileError("neither a torch zip checkpoint nor a legacy torch pickle (truncated or corrupt?)",
                           file=path)


__all__ = ["read_torch", "read_torch_zip", "read_torch_legacy", "SafeUnpickler", "flatten_checkpoint",
           "is_legacy_torch", "ALLOWED_GLOBALS", "WRAPPER_KEYS"]
