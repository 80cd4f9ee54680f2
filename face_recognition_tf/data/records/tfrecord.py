"""The converted dataset on disk: TFRecord shards of tf.train.Example, and manifest.json.

Schema: feature `image_raw` = the JPEG bytes exactly as stored in the source, `label` =
int64 class index from 0.  Shards are `train-00000-of-000NN.tfrecord`.

Why this module serialises Example protos and TFRecord framing itself: a Python loop building
`tf.train.Example` objects and calling `tf.io.TFRecordWriter.write` costs ~25x a plain `cp` of the
data, most of it per-record Python/protobuf/pybind overhead and one small write per record.  The
Example wire format for two features is a handful of varints, so a record here is a short prefix
followed by the JPEG, laid out directly in a large buffer (the JPEG is read from the .rec straight
into it) and written in multi-megabyte writes.  TFRecord framing needs CRC-32C: see crc32c.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

from face_recognition_tf.atomic import describe_os_error
from face_recognition_tf.data.records.crc32c import crc32c_python, find_crc32c, masked_crc  # noqa: F401 (re-exported)
from face_recognition_tf.errors import DatasetError, OutputError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
IMAGE_KEY = "image_raw"
LABEL_KEY = "label"
REQUIRED_MANIFEST_KEYS = ("format_version", "num_images", "num_classes", "image_size", "shards", "sources", "skipped")


def shard_name(index: int, count: int) -> str:
    return f"train-{index:05d}-of-{count:05d}.tfrecord"


# ---------------------------------------------------------------------------------------------
# tf.train.Example wire format
def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _vlen(n: int) -> int:
    """Bytes in the varint of n >= 0."""
    return (n.bit_length() + 6) // 7 or 1


_LABEL_ENTRY_HEAD = b"\x0a\x05label\x12"  # map entry: key (field 1) "label", value (field 2)
_IMAGE_ENTRY_HEAD = b"\x0a\x09image_raw\x12"
_IMAGE_HEAD_LEN = len(_IMAGE_ENTRY_HEAD)


def label_entry(label: int) -> bytes:
    """The Features map entry {"label": Feature.int64_list (3) with one packed value}, tagged."""
    if label < 0:
        raise ValueError(f"label {label} is negative")
    lv = _varint(label)
    int64_list = b"\x0a" + _varint(len(lv)) + lv
    feature = b"\x1a" + _varint(len(int64_list)) + int64_list
    entry = _LABEL_ENTRY_HEAD + _varint(len(feature)) + feature
    return b"\x0a" + _varint(len(entry)) + entry


def example_prefix(label: int, image_len: int, entry: bytes | None = None) -> bytes:
    """Serialized Example{label: int64, image_raw: bytes} up to (not including) the image bytes.

    Example.features (1) -> Features.feature map entries (1): {"label": ...}, then {"image_raw":
    Feature.bytes_list (1) -> BytesList.value (1)}.  The image entry comes last so the JPEG is the
    record's tail and never needs copying into a temporary.  `entry` = label_entry(label), cached.
    """
    if entry is None:
        entry = label_entry(label)
    if 128 <= image_len and len(entry) + image_len + 23 < 16384:  # the usual JPEG: every varint 2 bytes
        b, f, i, t = image_len + 3, image_len + 6, image_len + 20, len(entry) + image_len + 23
        return b"".join((bytes((10, t & 127 | 128, t >> 7)), entry, bytes((10, i & 127 | 128, i >> 7)),
                         _IMAGE_ENTRY_HEAD, bytes((f & 127 | 128, f >> 7, 10, b & 127 | 128, b >> 7, 10,
                                                   image_len & 127 | 128, image_len >> 7))))
    bytes_list_len = 1 + _vlen(image_len) + image_len
    feature_len = 1 + _vlen(bytes_list_len) + bytes_list_len
    image_entry_len = _IMAGE_HEAD_LEN + _vlen(feature_len) + feature_len
    features_len = len(entry) + 1 + _vlen(image_entry_len) + image_entry_len
    return b"".join((b"\x0a", _varint(features_len), entry, b"\x0a", _varint(image_entry_len), _IMAGE_ENTRY_HEAD,
                     _varint(feature_len), b"\x0a", _varint(bytes_list_len), b"\x0a", _varint(image_len)))


def serialize_example(image: bytes, label: int) -> bytes:
    """The same bytes as tf.train.Example(image_raw=image, label=label), without TensorFlow."""
    return example_prefix(int(label), len(image)) + bytes(image)


# ---------------------------------------------------------------------------------------------
class ShardWriter:
    """Appends Examples to one TFRecord file through a large buffer, hashing what it writes.

    `add(label, image)` takes the JPEG as bytes, or as a slice of a larger buffer (`image=mv,
    start=..., length=...`, e.g. a memoryview of the memory-mapped .rec) which is then copied once,
    straight into the output buffer.  Write to a temporary name and rename after `close()`: this
    class does not decide when a shard is finished.  No fsync per shard (the converter checks
    kept shards' sha256 when it resumes instead), so writing costs what the page cache costs.
    A failed write (disk full, read-only file system) raises OutputError naming `name` (the
    shard's final name; default `path`).
    """

    def __init__(self, path, buffer_size: int = 4 << 20, crc=None, fsync: bool = False, name=None):
        self.path = Path(path)
        self.name = Path(name) if name is not None else self.path
        self.records = 0
        self.bytes = 0
        self._fsync = fsync
        self._sha = hashlib.sha256()
        self._entries: dict[int, bytes] = {}  # label -> serialized label entry
        self._crc = crc if crc is not None else find_crc32c()
        self._tf = None
        self._f = None
        if self._crc is None:
            import tensorflow as tf

            self._tf = tf.io.TFRecordWriter(str(self.path))
            return
        try:
            self._f = open(self.path, "wb", buffering=0)
        except OSError as exc:
            raise OutputError(describe_os_error(self.name, exc)) from None
        self._buf = bytearray(buffer_size)
        self._size = buffer_size
        self._pos = 0
        self._crc_fn = self._crc.crc
        self._heads: dict[int, bytes] = {}

    def add(self, label: int, image, start: int = 0, length: int | None = None):
        """Append one Example; the hot loop of conversion, so written for few Python operations."""
        n = len(image) - start if length is None else length
        entry = self._entries.get(label)
        if entry is None:
            entry = self._entries[label] = label_entry(int(label))
        prefix = example_prefix(label, n, entry)
        data_len = len(prefix) + n
        if self._tf is not None:
            self._tf.write(prefix + bytes(image[start : start + n]))
            self.records += 1
            return
        total = 16 + data_len
        if self._pos + total > self._size:
            self._flush()
        buf, p = self._buf, self._pos
        if total > self._size:  # a record bigger than the buffer gets its own
            buf, p = bytearray(total), 0
        head = self._heads.get(data_len)  # length + its masked CRC: sizes repeat, so cache them
        if head is None:
            head = struct.pack("<Q", data_len)
            head += struct.pack("<I", masked_crc(self._crc_fn(bytearray(head), 0, 8)))
            self._heads[data_len] = head
        d = p + 12
        e = d + len(prefix)
        buf[p:d] = head
        buf[d:e] = prefix
        buf[e : e + n] = image[start : start + n]
        crc = self._crc_fn(buf, d, e + n)
        struct.pack_into("<I", buf, e + n, (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)
        self.records += 1
        if buf is self._buf:
            self._pos = p + total
        else:
            self._write(memoryview(buf))

    def _write(self, mv):
        self._sha.update(mv)
        self.bytes += len(mv)
        try:
            while mv:
                n = self._f.write(mv)
                mv = mv[n:]
        except OSError as exc:
            raise OutputError(describe_os_error(self.name, exc)) from None

    def _flush(self):
        if self._pos:
            self._write(memoryview(self._buf)[: self._pos])
            self._pos = 0

    def close(self) -> dict:
        """Flush and close; returns {records, bytes, sha256}."""
        if self._tf is not None:
            self._tf.close()
            self._tf = None
            self._sha = hashlib.sha256()
            self.bytes = 0
            with open(self.path, "rb") as f:
                for block in iter(lambda: f.read(4 << 20), b""):
                    self._sha.update(block)
                    self.bytes += len(block)
        elif self._f is not None:
            self._flush()
            try:
                if self._fsync:
                    os.fsync(self._f.fileno())
                self._f.close()
            except OSError as exc:
                raise OutputError(describe_os_error(self.name, exc)) from None
            self._f = None
        return {"records": self.records, "bytes": self.bytes, "sha256": self._sha.hexdigest()}

    def abort(self):
        if self._tf is not None:
            self._tf.close()
            self._tf = None
        if self._f is not None:
            self._f.close()
            self._f = None


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 << 20), b""):
            h.update(block)
    return h.hexdigest()


def iter_tfrecord(path, check_crc: bool = True):
    """Yield the raw records of a TFRecord file (for checks; training reads with tf.data)."""
    crc = find_crc32c() if check_crc else None
    path = Path(path)
    with open(path, "rb") as f:
        while True:
            head = f.read(12)
            if not head:
                return
            if len(head) < 12:
                raise DatasetError(f"{path}: truncated record header")
            (length,) = struct.unpack_from("<Q", head)
            data = f.read(length + 4)
            if len(data) < length + 4:
                raise DatasetError(f"{path}: truncated record")
            if check_crc:
                buf = bytearray(head) + bytearray(data)
                head_crc = crc.crc(buf, 0, 8) if crc else crc32c_python(head[:8])
                data_crc = crc.crc(buf, 12, 12 + length) if crc else crc32c_python(data[:length])
                if (masked_crc(head_crc) != struct.unpack_from("<I", head, 8)[0]
                        or masked_crc(data_crc) != struct.unpack_from("<I", data, length)[0]):
                    raise DatasetError(f"{path}: CRC mismatch")
            yield data[:length]


# ---------------------------------------------------------------------------------------------
def read_manifest(folder) -> dict:
    """The manifest of a converted dataset folder (or of the manifest file itself), validated."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME if folder.is_dir() or not folder.suffix else folder
    folder = path.parent
    if not path.is_file():
        raise DatasetError(f"{folder}: no {MANIFEST_NAME}: not a converted dataset (run `frtf convert SRC {folder}`)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    missing = [k for k in REQUIRED_MANIFEST_KEYS if k not in manifest]
    if missing:
        raise DatasetError(f"{path}: missing {', '.join(missing)}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise DatasetError(f"{path}: format_version {manifest['format_version']!r}; this version reads "
                           f"{FORMAT_VERSION} (convert the dataset again)")
    for key in ("num_images", "num_classes"):
        if not isinstance(manifest[key], int) or manifest[key] < 0:
            raise DatasetError(f"{path}: {key} must be a non-negative integer, got {manifest[key]!r}")
    size = manifest["image_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise DatasetError(f"{path}: image_size must be [height, width], got {size!r}")
    shards = manifest["shards"]
    if not isinstance(shards, list) or not shards:
        raise DatasetError(f"{path}: shards must be a non-empty list")
    total = 0
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict) or not {"file", "records", "sha256"} <= set(shard):
            raise DatasetError(f"{path}: shard {i} must have file, records and sha256")
        if not (folder / shard["file"]).is_file():
            raise DatasetError(f"{path}: shard file {shard['file']} is missing from {folder}")
        total += int(shard["records"])
    if total != manifest["num_images"]:
        raise DatasetError(f"{path}: shards hold {total} records but num_images is {manifest['num_images']}")
    return manifest
