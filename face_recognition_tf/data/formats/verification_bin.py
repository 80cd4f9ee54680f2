"""Verification pair sets (`lfw.bin`, `cfp_fp.bin`, `agedb_30.bin`, ...), read and written.

insightface stores each set as a pickle of `(list of 2N JPEG byte strings, list of N issame
bools)`, pairs being consecutive images.  The files were written by Python 2 (str = bytes, so they
need `encoding="bytes"`) or Python 3, and some hold numpy arrays instead of bytes (pickled with
`_reconstruct` up to protocol 4, from raw bytes with `_frombuffer` at protocol 5).  A pickle can run
arbitrary code while loading, and these files come from the internet, so the unpickler here only
rebuilds plain containers and numeric arrays, with its own small functions standing in for numpy's
(`_GLOBALS`), and refuses every other global *before* calling it.
"""

from __future__ import annotations

import codecs
import copyreg
import io
import pickle
from pathlib import Path

import numpy as np

from face_recognition_tf.atomic import atomic_file
from face_recognition_tf.errors import DatasetError

# Numeric dtypes an image, a flag or a pixel array can have; an object dtype would read pointers from the file.
_NUMERIC_KINDS = "buif"


class _DtypeSpec:
    """Stands in for `numpy.dtype(...)` while unpickling: numpy's own `dtype.__setstate__` takes flag bits
    from the file (a pickle can clear an object dtype's has-object flag), so the dtype is built here from
    its type string and byte order only, and only for numbers."""

    def __init__(self, spec, align=False, copy=True):
        dtype = np.dtype(spec if isinstance(spec, str) else bytes(spec).decode("ascii"))
        if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise pickle.UnpicklingError(f"dtype {dtype!r} (only numbers are pixels or flags)")
        self.dtype = dtype

    def __setstate__(self, state):
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else "|"
        order = order.decode("ascii") if isinstance(order, bytes) else order
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)


class _NdarrayClass:
    """What `numpy.ndarray` names in a pickle: only an argument of `_reconstruct`, never called."""


def _raw_bytes(data) -> bytes:
    if isinstance(data, pickle.PickleBuffer):
        return bytes(data.raw())
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, str):  # a py2 str read as text
        return data.encode("latin1")
    raise pickle.UnpicklingError(f"array data of type {type(data).__name__} (an object array?)")


def _array(data, spec, shape, fortran: bool) -> np.ndarray:
    if not isinstance(spec, _DtypeSpec):
        raise pickle.UnpicklingError("an array without a numeric dtype")
    shape = tuple(int(n) for n in shape)
    return np.frombuffer(_raw_bytes(data), dtype=spec.dtype).reshape(shape, order="F" if fortran else "C")


class _ArrayState:
    """What `_reconstruct(ndarray, ...)` returns while unpickling (protocols 0-4): the array is made from
    the state `BUILD` hands over, by `_array`, never by numpy's `ndarray.__setstate__` on file data."""

    array = None

    def __setstate__(self, state):
        if len(state) == 5:  # (version, shape, dtype, is_fortran, data)
            state = state[1:]
        shape, spec, fortran, data = state
        self.array = _array(data, spec, shape, bool(fortran))


def _reconstruct(cls, shape, typecode):
    if cls is not _NdarrayClass:
        raise pickle.UnpicklingError("_reconstruct of something other than an ndarray")
    return _ArrayState()


def _array_from_buffer(buffer, spec, shape, order="C"):
    """Protocol 5 (numpy >= 1.16 under Python 3): an array pickled as its raw bytes."""
    return _array(buffer, spec, shape, order == "F")


def _scalar(spec, data=None):
    """numpy scalars (an `np.bool_` issame flag) are pickled as a dtype and their bytes."""
    if not isinstance(spec, _DtypeSpec) or data is None:
        raise pickle.UnpicklingError("a numpy scalar without a numeric dtype and its bytes")
    return np.frombuffer(_raw_bytes(data), dtype=spec.dtype)[0]


# Every global a pair-set pickle legitimately names, resolved to what is built here: numpy's names as
# numpy 1.x (`numpy.core`) and numpy 2 (`numpy._core`) write them, and the py2 spellings.  Nothing else
# loads, and no numpy function sees the file's data.
_GLOBALS = {
    ("numpy", "dtype"): _DtypeSpec,
    ("numpy", "ndarray"): _NdarrayClass,
    ("numpy", "bool_"): np.bool_,
    ("numpy", "uint8"): np.uint8,
    ("builtins", "bytearray"): bytearray,
    ("__builtin__", "bytearray"): bytearray,
    ("_codecs", "encode"): codecs.encode,  # py3 writes bytes for a py2 reader as _codecs.encode(str, 'latin1')
    ("copy_reg", "_reconstructor"): copyreg._reconstructor,
    ("copyreg", "_reconstructor"): copyreg._reconstructor,
    ("builtins", "object"): object,
    ("__builtin__", "object"): object,
}
for _core in ("numpy.core", "numpy._core"):
    _GLOBALS[f"{_core}.multiarray", "_reconstruct"] = _reconstruct
    _GLOBALS[f"{_core}.multiarray", "scalar"] = _scalar
    _GLOBALS[f"{_core}.numeric", "_frombuffer"] = _array_from_buffer


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path, **kwargs):
        super().__init__(file, **kwargs)
        self._path = path

    def find_class(self, module, name):
        if (module, name) in _GLOBALS:
            return _GLOBALS[module, name]
        raise DatasetError(f"{self._path}: refusing to load: the pickle asks for {module}.{name}, which a "
                           "verification pair set never needs (it could run code)")


def _arrays(obj, depth: int = 0):
    """The loaded structure with each `_ArrayState` replaced by its array (pair sets nest two levels)."""
    if isinstance(obj, _ArrayState):
        if obj.array is None:
            raise pickle.UnpicklingError("an array without its data")
        return obj.array
    if depth < 3 and isinstance(obj, (list, tuple)):
        return type(obj)(_arrays(item, depth + 1) for item in obj)
    return obj


def _unpickle(path: Path):
    data = path.read_bytes()
    errors = []
    for kwargs in ({}, {"encoding": "bytes"}):  # py3 pickle first, then py2 str-as-bytes
        try:
            return _arrays(_RestrictedUnpickler(io.BytesIO(data), path, **kwargs).load())
        except DatasetError:
            raise
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
            errors.append(exc)
    raise DatasetError(f"{path}: not a readable pair-set pickle ({errors[-1].__class__.__name__}: {errors[-1]})")


def _as_bytes(item, path: Path, i: int) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    if isinstance(item, str):  # py2 str read with latin1 by some writers
        return item.encode("latin1")
    raise DatasetError(f"{path}: item {i} is a {type(item).__name__}, expected JPEG bytes")


def _decode(jpeg: bytes, path: Path, i: int) -> np.ndarray:
    import cv2  # libjpeg-turbo ISLOW, bit-identical to tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE")

    if len(jpeg) < 4 or jpeg[:2] != b"\xff\xd8":
        raise DatasetError(f"{path}: item {i} is not a JPEG ({len(jpeg)} bytes)")
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.ndim != 3:
        raise DatasetError(f"{path}: item {i}: corrupt JPEG ({len(jpeg)} bytes)")
    return img[:, :, ::-1]


def load_bin(path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (2N, H, W, 3) RGB, issame bool (N,)) from an insightface pair-set file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such pair-set file")
    obj = _unpickle(path)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DatasetError(f"{path}: expected a pickled (images, issame) pair, got {type(obj).__name__}")
    bins, issame = obj
    if isinstance(issame, np.ndarray):
        issame = issame.tolist()
    if not isinstance(bins, (list, tuple, np.ndarray)) or not isinstance(issame, (list, tuple)):
        raise DatasetError(f"{path}: expected a list of images and a list of issame flags")
    issame_arr = np.zeros(len(issame), dtype=bool)
    for i, flag in enumerate(issame):
        if not isinstance(flag, (bool, np.bool_, int, np.integer)) or int(flag) not in (0, 1):
            raise DatasetError(f"{path}: issame item {i} is {flag!r}, expected a bool")
        issame_arr[i] = bool(flag)
    if len(bins) != 2 * len(issame):
        raise DatasetError(f"{path}: {len(bins)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    if len(bins) and isinstance(bins, np.ndarray) and bins.ndim == 4:  # already decoded pixels
        return np.ascontiguousarray(bins.astype(np.uint8)), issame_arr
    images = None
    for i, item in enumerate(bins):
        if isinstance(item, np.ndarray) and item.ndim == 3 and item.shape[-1] == 3:
            img = item.astype(np.uint8)  # an already decoded RGB image
        else:
            img = _decode(_as_bytes(item, path, i), path, i)
        if images is None:
            images = np.empty((len(bins),) + img.shape, dtype=np.uint8)
        elif img.shape != images.shape[1:]:
            raise DatasetError(f"{path}: item {i} is {img.shape[1]}x{img.shape[0]}, the first image is "
                               f"{images.shape[2]}x{images.shape[1]}")
        images[i] = img
    if images is None:
        raise DatasetError(f"{path}: holds no pairs")
    return images, issame_arr


def save_bin(path, jpegs: list[bytes], issame: list[bool]) -> None:
    """Write a pair set in insightface's layout (protocol 2 pickle, bytes items), atomically."""
    path = Path(path)
    jpegs = [bytes(j) for j in jpegs]
    issame = [bool(s) for s in issame]
    if len(jpegs) != 2 * len(issame):
        raise ValueError(f"{len(jpegs)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    with atomic_file(path, "wb") as f:  # the umask's mode; a one-line OutputError if it cannot be written
        pickle.dump((jpegs, issame), f, protocol=2)


# insightface's usual evaluation order; other names follow alphabetically
KNOWN_PAIR_SETS = ("lfw", "cfp_fp", "cfp_ff", "agedb_30", "calfw", "cplfw", "vgg2_fp")


def find_bins(folder, targets=None) -> dict[str, Path]:
    """The pair sets in `folder` keyed by stem, known sets first in insightface's order.

    `targets` restricts (and orders) the result; a requested set that is missing is an error
    naming the folder, so a typo in a config fails at start-up rather than after training.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder (looking for verification .bin pair sets)")
    found = {p.stem: p for p in folder.glob("*.bin") if p.is_file()}
    if targets is not None:
        if isinstance(targets, str):
            targets = [t for t in targets.replace(",", " ").split() if t]
        missing = [t for t in targets if t not in found]
        if missing:
            have = ", ".join(sorted(found)) or "none"
            raise DatasetError(f"{folder}: no pair set {', '.join(m + '.bin' for m in missing)} (found: {have})")
        return {t: found[t] for t in targets}
    rank = {name: i for i, name in enumerate(KNOWN_PAIR_SETS)}
    return {k: found[k] for k in sorted(found, key=lambda s: (rank.get(s, len(rank)), s))}
