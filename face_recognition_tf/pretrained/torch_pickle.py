"""Read PyTorch `.pth` / `.pt` files (insightface / arcface_torch `backbone.pth`) as numpy arrays.

`torch.load` unpickles, and a pickle can run any code while loading; these files come from the
internet.  Importing torch just to read weights would also make it a dependency of the package.  So,
as for the pair-set `.bin` loader (`data/formats/verification_bin.py`), the unpickler here refuses every global
outside a short allow-list *before* calling it, and maps the few it allows (tensor rebuilds, storage
types, `torch.Size`, ...) to functions of ours that only build markers; the storage bytes are then read
with numpy.  Three layouts exist: the zip archive (torch >= 1.6), the legacy stream of consecutive
pickles (older torch, or `_use_new_zipfile_serialization=False`) and a pre-2018 tar (refused).
"""

from __future__ import annotations

import collections
import io
import pickle
import re
import struct
import zipfile
from pathlib import Path

import numpy as np

from face_recognition_tf.errors import PretrainedModelError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
# storage class -> numpy dtype of its bytes ("bf16" is read as uint16 and widened to float32)
_STORAGES = {"FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "bf16",
             "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
             "ByteStorage": "u1", "BoolStorage": "?", "ComplexFloatStorage": "c8",
             "ComplexDoubleStorage": "c16", "UntypedStorage": "u1"}
# torch.<dtype> globals (a pickle may name one, e.g. _rebuild_tensor_v3) -> the same codes
_DTYPES = {"float32": "f4", "float": "f4", "float64": "f8", "double": "f8", "float16": "f2", "half": "f2",
           "bfloat16": "bf16", "int64": "i8", "long": "i8", "int32": "i4", "int": "i4", "int16": "i2",
           "short": "i2", "int8": "i1", "uint8": "u1", "uint16": "u2", "uint32": "u4", "uint64": "u8",
           "bool": "?", "complex64": "c8", "cfloat": "c8", "complex128": "c16", "cdouble": "c16"}
# modules whose globals are refused as plain code execution, not as "a pickled model"
_CODE_MODULES = {"os", "posix", "nt", "subprocess", "builtins", "__builtin__", "sys", "shutil", "socket",
                 "importlib", "runpy", "pty", "code", "types", "operator", "functools", "pickle", "io",
                 "ctypes", "webbrowser", "codecs", "_codecs", "marshal", "platform", "pydoc", "timeit"}
_MODEL_HINT = "this file holds a pickled model object, not a state dict; save model.state_dict() instead"


class _Bad(Exception):
    """A problem found inside the file; the caller prefixes the path."""


class _Marker:
    def __setstate__(self, state):  # a pickle's BUILD must not rewrite offsets or dtypes checked later
        raise _Bad("corrupt: the pickle sets state on a tensor or storage")


class _Storage(_Marker):
    """One storage (or, in the legacy format, a view of one): its bytes arrive later."""

    def __init__(self, key, code, numel, root=None, offset=0):
        self.key, self.code, self.numel, self.root, self.offset = key, code, numel, root, offset
        self.data = None  # numpy 1-d array of the root storage, filled when the bytes are read
        self.big_endian = False


class _Tensor(_Marker):
    """A tensor still to be cut out of its storage once every storage has been read."""

    def __init__(self, storage, offset, size, stride, code=None):
        if not isinstance(storage, _Storage):
            raise _Bad(f"corrupt: a tensor is rebuilt from a {type(storage).__name__}, not a storage")
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)
        self.code = code or storage.code


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, hooks, dtype, *_ignored):
    code = _DTYPES.get(str(dtype).replace("torch.", "", 1))
    if code is None:
        raise _Bad(f"unsupported dtype {dtype}")
    return _Tensor(storage, storage_offset, size, stride, code)


def _rebuild_parameter(data, *_ignored):
    return data


def _rebuild_from_type(func, new_type, args, state):
    return func(*args)  # func came through find_class, so it is one of ours


def _latin1(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Bad("corrupt: unexpected _codecs.encode call")
    return text.encode("latin1")


_SAFE = {("collections", "OrderedDict"): collections.OrderedDict,
         ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
         ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
         ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
         ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
         ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
         ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
         ("torch", "Tensor"): "torch.Tensor",
         ("torch", "Size"): tuple,
         ("torch", "device"): lambda kind, index=None: kind if index is None else f"{kind}:{index}",
         ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "complex"): complex,
         ("_codecs", "encode"): _latin1}
try:  # numpy scalars and arrays (e.g. a best accuracy) in training checkpoints
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _SAFE[(_mod, "_reconstruct")], _SAFE[(_mod, "scalar")] = _multiarray._reconstruct, _multiarray.scalar
_SAFE.update({("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype})


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, storages: dict, load_bytes=None):
        super().__init__(io.BytesIO(data) if isinstance(data, bytes) else data, encoding="latin1")
        self._storages, self._load_bytes = storages, load_bytes

    def find_class(self, module, name):
        if (module, name) in _SAFE:
            return _SAFE[(module, name)]
        if module in ("torch", "torch.cuda", "torch.storage") and name.endswith("Storage"):
            if name not in _STORAGES:
                raise _Bad(f"unsupported dtype {module}.{name}")
            return ("storage-type", _STORAGES[name])
        if module == "torch" and re.fullmatch(r"(b?float|complex|c?half|q?u?int|bits|bool)\w*", name):
            return f"torch.{name}"  # a dtype; _rebuild_tensor_v3 says if it is one numpy lacks
        if module == "torch._utils" and name.startswith("_rebuild_"):
            raise _Bad(f"unsupported tensor kind {module}.{name}: only dense tensors are read")
        what = f"{module}.{name}"
        if module.split(".")[0] not in _CODE_MODULES and (
                module.startswith(("torch.nn", "torch.jit", "__main__", "__torch__"))
                or name.lstrip("_")[:1].isupper()):
            raise _Bad(f"refused: the pickle asks for {what}: {_MODEL_HINT}")
        raise _Bad(f"refused: the pickle asks for {what}, which could run code; "
                   "only tensors and plain containers are read")

    def persistent_load(self, pid):
        kind = pid[0].decode("ascii") if isinstance(pid, tuple) and isinstance(pid[0], bytes) else \
            (pid[0] if isinstance(pid, tuple) and pid else None)
        if kind == "module":  # the legacy format's record of a pickled nn.Module's class source
            raise _Bad(f"refused: {_MODEL_HINT}")
        if kind != "storage" or len(pid) not in (5, 6):
            raise _Bad(f"refused: unknown persistent id {str(pid)[:60]!r}")
        stype, key = pid[1], str(pid[2])
        numel = pid[4]
        if not (isinstance(stype, tuple) and stype[0] == "storage-type") or not isinstance(numel, int):
            raise _Bad(f"corrupt: bad storage reference {str(pid)[:60]!r}")
        root = self._storages.get(key)
        if root is None:
            root = self._storages[key] = _Storage(key, stype[1], numel)
            if self._load_bytes is not None:
                root.data = self._load_bytes(root)
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return root
        view_key, offset, view_numel = view  # legacy: a slice of the root storage, in elements
        return _Storage(str(view_key), root.code, view_numel, root, offset)


def _np_dtype(code, big_endian=False):
    dtype = np.dtype("u2" if code == "bf16" else code)
    return dtype.newbyteorder(">") if big_endian and dtype.itemsize > 1 else dtype


def _decode(raw, root: _Storage, big_endian: bool):
    dtype = _np_dtype(root.code, big_endian)
    root.big_endian = big_endian
    if len(raw) < root.numel * dtype.itemsize:
        raise _Bad(f"truncated or corrupt: storage {root.key} has {len(raw)} bytes, "
                   f"{root.numel * dtype.itemsize} expected")
    return np.frombuffer(raw, dtype, count=root.numel)


def _tensor_array(t: _Tensor) -> np.ndarray:
    storage, offset = t.storage, t.offset
    if storage.root is not None:
        offset += storage.offset
        storage = storage.root
    if not isinstance(storage.data, np.ndarray):
        raise _Bad(f"truncated or corrupt: no bytes for storage {storage.key}")
    data = storage.data
    if t.code != storage.code:  # an untyped (byte) storage, typed by the rebuild call
        data = data.view(_np_dtype(t.code, storage.big_endian))
    if len(t.size) != len(t.stride) or any(not isinstance(v, int) or v < 0 for v in t.size + t.stride):
        raise _Bad(f"corrupt: tensor size {t.size} / stride {t.stride}")
    if not isinstance(offset, int) or offset < 0:
        raise _Bad(f"corrupt: tensor storage offset {offset!r}")
    if int(np.prod(t.size, dtype=object)) > 1024 * max(len(data), 1):  # stride-0 views may repeat, not balloon
        raise _Bad(f"corrupt: a {t.size} tensor from a storage of {len(data)} elements")
    if 0 not in t.size:
        last = offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
        if last >= len(data) or (t.storage.root is not None and last >= t.storage.offset + t.storage.numel):
            raise _Bad(f"corrupt: a {t.size} tensor reaches past the end of storage {storage.key}")
        view = np.lib.stride_tricks.as_strided(data[offset:], t.size, [s * data.itemsize for s in t.stride],
                                               writeable=False)
    else:
        view = np.zeros(t.size, data.dtype)
    arr = np.array(view, dtype=view.dtype.newbyteorder("="), order="C")
    if t.code == "bf16":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr


def _materialise(obj, memo):
    """Turn every _Tensor into an array, in place for mutable containers (keeps OrderedDict order
    and attributes such as a state dict's `_metadata`)."""
    if id(obj) in memo:  # shared objects stay shared; memo keeps the originals alive, so ids stay unique
        return memo[id(obj)][1]
    out = obj
    if isinstance(obj, _Tensor):
        out = _tensor_array(obj)
    elif isinstance(obj, _Storage):  # a storage saved on its own: its elements
        out = _tensor_array(_Tensor(obj, 0, (obj.numel,), (1,)))
    elif isinstance(obj, dict):
        memo[id(obj)] = (obj, obj)
        for k, v in obj.items():
            obj[k] = _materialise(v, memo)
    elif isinstance(obj, list):
        memo[id(obj)] = (obj, obj)
        obj[:] = [_materialise(v, memo) for v in obj]
    elif type(obj) is tuple:
        out = tuple(_materialise(v, memo) for v in obj)
    memo[id(obj)] = (obj, out)
    return out


def _read_zip(path, raw: bytes):
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        names = archive.namelist()
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
        raise _Bad(f"truncated or corrupt zip archive ({exc})") from None
    pkls = [n for n in names if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
    if any(n.endswith("constants.pkl") for n in names) and any("code/" in n for n in names):
        raise _Bad("a TorchScript archive (torch.jit.save), not a state dict; save model.state_dict() instead")
    if not pkls:
        raise _Bad("a zip archive without data.pkl, not a PyTorch file")
    prefix = pkls[0][: -len("data.pkl")]
    try:
        big = archive.read(prefix + "byteorder").strip() == b"big" if prefix + "byteorder" in names else False

        def load_bytes(storage):
            name = f"{prefix}data/{storage.key}"
            if name not in names:
                raise _Bad(f"truncated or corrupt: storage record {name} is missing from the archive")
            return _decode(archive.read(name), storage, big)

        return _Unpickler(archive.read(pkls[0]), {}, load_bytes).load()
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise _Bad(f"truncated or corrupt zip archive ({exc})") from None


def _read_legacy(raw: bytes):
    stream = io.BytesIO(raw)
    magic = _Unpickler(stream, {}).load()
    if magic != _LEGACY_MAGIC:
        raise _Bad("a pickle, but not a PyTorch file (no torch magic number)")
    protocol = _Unpickler(stream, {}).load()
    if protocol != _LEGACY_PROTOCOL:
        raise _Bad(f"unsupported legacy torch protocol {protocol!r}")
    sys_info = _Unpickler(stream, {}).load()
    big = isinstance(sys_info, dict) and sys_info.get("little_endian") is False
    storages: dict = {}
    result = _Unpickler(stream, storages).load()
    keys = _Unpickler(stream, {}).load()
    for key in keys:
        root = storages.get(str(key))
        if root is None:
            raise _Bad(f"corrupt: storage {key} is listed but never used")
        header = stream.read(8)
        if len(header) < 8:
            raise _Bad(f"truncated or corrupt: storage {key} is missing")
        (count,) = struct.unpack("<q", header)
        size = count * _np_dtype(root.code).itemsize
        if count != root.numel:
            raise _Bad(f"corrupt: storage {key} holds {count} elements, {root.numel} expected")
        root.data = _decode(stream.read(size), root, big)
    return result


def read_torch_file(path):
    """The unpickled object with every tensor as a C-contiguous numpy array (bfloat16 -> float32)."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedModelError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    raw = path.read_bytes()
    try:
        if not raw:
            raise _Bad("empty file (0 bytes), not a PyTorch file")
        if raw[:2] == b"PK":
            result = _read_zip(path, raw)
        elif raw[257:262] == b"ustar":
            raise _Bad("unsupported (tar-format torch file from before 2018); re-save it with a current torch")
        elif raw[:1] == b"\x80":
            result = _read_legacy(raw)
        else:
            raise _Bad("not a PyTorch file (neither a zip archive nor a torch pickle)")
        return _materialise(result, {})
    except _Bad as exc:
        raise PretrainedModelError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            struct.error, UnicodeDecodeError, OverflowError, MemoryError, RecursionError,
            NotImplementedError) as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise PretrainedModelError(f"{path}: truncated or corrupt, not a readable PyTorch file ({detail})") \
            from None


_CHECKPOINT_KEYS = ("state_dict_backbone", "state_dict", "model", "backbone", "net", "module")


def _is_state_dict(obj) -> bool:
    return (isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj)
            and any(isinstance(v, np.ndarray) for v in obj.values())
            and not any(isinstance(v, (dict, list)) for v in obj.values()))


def read_state_dict(path) -> "collections.OrderedDict[str, np.ndarray]":
    """The parameter arrays, in the file's order, from a bare state dict or a training checkpoint."""
    obj = read_torch_file(path)
    found = obj if _is_state_dict(obj) else None
    if found is None and isinstance(obj, dict):
        found = next((obj[k] for k in _CHECKPOINT_KEYS if k in obj and _is_state_dict(obj[k])), None)
    if found is None:
        if isinstance(obj, dict) and obj:
            keys = [str(k) for k in obj]
            shown = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
            raise PretrainedModelError(f"{path}: holds a dict with keys {shown} but no state dict")
        raise PretrainedModelError(f"{path}: holds {'an empty ' if isinstance(obj, dict) else 'a '}"
                                   f"{type(obj).__name__}, not a state dict")
    items = [(k, v) for k, v in found.items() if isinstance(v, np.ndarray)]
    if items and all(k.startswith("module.") for k, _ in items):
        items = [(k[len("module."):], v) for k, v in items]
    return collections.OrderedDict(items)
