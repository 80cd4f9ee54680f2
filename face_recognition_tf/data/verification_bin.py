"""Verification pair sets (`lfw.bin`, `cfp_fp.bin`, `agedb_30.bin`, ...), read and written.

insightface stores each set as a pickle of `(list of 2N JPEG byte strings, list of N issame
bools)`, pairs being consecutive images.  The files were written by Python 2 (str = bytes, so they
need `encoding="bytes"`) or Python 3, and some hold numpy arrays instead of bytes.  A pickle can run
arbitrary code while loading, and these files come from the internet, so the unpickler here only
rebuilds plain containers and numpy arrays and refuses every other global *before* calling it.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from face_recognition_tf.atomic import atomic_file
from face_recognition_tf.errors import DatasetError

# The only globals a pair-set pickle legitimately needs (numpy arrays and scalars, py2 / py3 names).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy", "bool_"),
    ("numpy", "uint8"),
    ("builtins", "bytearray"),
    ("__builtin__", "bytearray"),
    ("_codecs", "encode"),  # py3 writes bytes for a py2 reader as _codecs.encode(str, 'latin1')
    ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"),
    ("builtins", "object"),
    ("__builtin__", "object"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path, **kwargs):
        super().__init__(file, **kwargs)
        self._path = path

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise DatasetError(f"{self._path}: refusing to load: the pickle asks for {module}.{name}, which a "
                           "verification pair set never needs (it could run code)")


def _unpickle(path: Path):
    data = path.read_bytes()
    errors = []
    for kwargs in ({}, {"encoding": "bytes"}):  # py3 pickle first, then py2 str-as-bytes
        try:
            return _RestrictedUnpickler(io.BytesIO(data), path, **kwargs).load()
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
