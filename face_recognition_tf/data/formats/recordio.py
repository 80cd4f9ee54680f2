"""MXNet RecordIO, read and written without mxnet.

mxnet is retired and cannot coexist with numpy 2, yet insightface's dataset zoo ships as
`train.rec` + `train.idx` + `property`.  The format is small:

* every record (or record part) starts with the magic word 0xced7230a and a length word whose
  upper 3 bits are a continuation flag (0 whole, 1 first part, 2 middle part, 3 last part) and whose
  lower 29 bits are the part length; parts are padded with zeros to 4 bytes;
* a payload that contains the magic at a 4-aligned position is split there into parts (the magic
  itself is dropped) and the reader joins the parts, putting the magic back;
* an image record's payload is an `IRHeader` (struct `IfQQ`: flag, label, id, id2), then `flag`
  extra float32 labels when flag > 0 (the label is then that array), then the JPEG;
* the `.idx` lists `key<TAB>offset` lines in any order.

Real datasets differ: record 0 may be a header (flag > 0, label = [first
non-image key, end of identity records]) or an ordinary image (im2rec), labels may be scalar or
arrays, and record 0 need not be at offset 0.  `scan_index` reads the headers of every record with
large sequential reads (vectorised with numpy when the .idx gives the offsets) so a converter can
validate a whole dataset before it writes anything.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import struct
from collections import namedtuple
from pathlib import Path
from typing import Iterator

import numpy as np

from face_recognition_tf.errors import DatasetError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
_HEADER = struct.Struct("<IfQQ")
HEADER_SIZE = _HEADER.size  # 24
_CHUNK = 16 << 20  # sequential read size

IRHeader = namedtuple("IRHeader", ["flag", "label", "id", "id2"])
IRHeader.__doc__ = "Image record header: flag (number of extra labels), label (float or array), id, id2."


def pack(header: IRHeader, payload: bytes) -> bytes:
    """Header + payload as MXNet's `recordio.pack` lays them out (array labels set flag)."""
    label = header.label
    if isinstance(label, numbers.Number):
        return _HEADER.pack(0, float(label), int(header.id), int(header.id2)) + bytes(payload)
    arr = np.asarray(label, dtype="<f4").ravel()
    return _HEADER.pack(arr.size, 0.0, int(header.id), int(header.id2)) + arr.tobytes() + bytes(payload)


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """Split a record into (IRHeader, payload); array labels come back as float32 arrays."""
    if len(record) < HEADER_SIZE:
        raise ValueError(f"record of {len(record)} bytes is shorter than the {HEADER_SIZE}-byte header")
    flag, label, id1, id2 = _HEADER.unpack_from(record, 0)
    start = HEADER_SIZE
    if flag > 0:
        start += 4 * flag
        if len(record) < start:
            raise ValueError(f"record of {len(record)} bytes is too short for its {flag} labels")
        label = np.frombuffer(record, dtype="<f4", count=flag, offset=HEADER_SIZE).copy()
    return IRHeader(flag, label, id1, id2), bytes(record[start:])


def _frame(cflag: int, part: bytes) -> bytes:
    pad = (-len(part)) % 4
    return _MAGIC_BYTES + struct.pack("<I", (cflag << 29) | len(part)) + part + b"\0" * pad


def encode_record(record: bytes) -> bytes:
    """The bytes dmlc's `RecordIOWriter::WriteRecord` emits for one record (split on the magic)."""
    if len(record) >= 1 << 29:
        raise ValueError("a RecordIO record must be shorter than 512 MiB")
    out = []
    start = 0
    for i in range(0, len(record) - len(record) % 4, 4):
        if record[i : i + 4] == _MAGIC_BYTES:
            out.append(_frame(1 if start == 0 else 2, record[start:i]))
            start = i + 4
    out.append(_frame(3 if start else 0, record[start:]))
    return b"".join(out)


class RecordIOWriter:
    """Writes a .rec (and, when given, its .idx) exactly as MXIndexedRecordIO does.

    `write(record)` appends and returns the record's offset; `write_idx(key, record)` also adds
    `key<TAB>offset` to the .idx, in call order, so callers can produce every layout real datasets
    use (header record written last, unsorted index, ...).
    """

    def __init__(self, rec_path, idx_path=None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else None
        self._rec = open(self.rec_path, "wb")
        self._idx = open(self.idx_path, "w") if self.idx_path is not None else None

    def write(self, record: bytes) -> int:
        offset = self._rec.tell()
        self._rec.write(encode_record(record))
        return offset

    def write_idx(self, key: int, record: bytes) -> int:
        if self._idx is None:
            raise ValueError("this writer has no .idx file")
        offset = self.write(record)
        self._idx.write(f"{int(key)}\t{offset}\n")
        return offset

    def close(self) -> None:
        self._rec.close()
        if self._idx is not None:
            self._idx.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_idx(idx_path) -> tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) from a .idx, in file order; DatasetError naming the line when malformed."""
    idx_path = Path(idx_path)
    if not idx_path.read_bytes().strip() if idx_path.stat().st_size < 64 else False:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    try:  # numpy's C parser: fast and small for millions of lines
        table = np.loadtxt(idx_path, dtype=np.int64, ndmin=2, comments=None)
        if table.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        if table.shape[1] == 2:
            k, o = table[:, 0].copy(), table[:, 1].copy()
            if (o < 0).any():
                raise DatasetError(f"{idx_path}: key {int(k[np.argmax(o < 0)])} has a negative offset")
            return k, o
    except ValueError:
        pass
    keys, offsets = [], []  # slow path: find and name the bad line
    with open(idx_path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                if len(parts) != 2:
                    raise ValueError
                keys.append(int(parts[0]))
                offsets.append(int(parts[1]))
            except ValueError:
                raise DatasetError(f"{idx_path}: line {lineno} is not 'key<TAB>offset': {line[:60]!r}") from None
    k = np.asarray(keys, dtype=np.int64)
    o = np.asarray(offsets, dtype=np.int64)
    if (o < 0).any():
        bad = int(k[np.argmax(o < 0)])
        raise DatasetError(f"{idx_path}: key {bad} has a negative offset")
    return k, o


@dataclasses.dataclass
class RecordIndex:
    """What a converter needs to know about every record, one numpy row per record, file order.

    `payload_start`/`payload_len` locate the bytes after the IRHeader and its extra labels (the
    JPEG); they are only exact for records with `multipart` False (the rest must be read whole).
    """

    keys: np.ndarray  # int64
    offsets: np.ndarray  # int64, start of the record's first part
    flags: np.ndarray  # uint32, IRHeader.flag
    label0: np.ndarray  # float32, the class: scalar label, or the first extra label when flag > 0
    label1: np.ndarray  # float32, second label when flag > 1 (header/identity records), else nan
    payload_start: np.ndarray  # int64
    payload_len: np.ndarray  # int64
    multipart: np.ndarray  # bool

    def __len__(self):
        return len(self.keys)


class RecordIOReader:
    """Random access by key (with an .idx) and fast sequential scans of a .rec."""

    def __init__(self, rec_path, idx_path=None):
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise DatasetError(f"{self.rec_path}: no such RecordIO file")
        self.size = self.rec_path.stat().st_size
        self.idx_path = Path(idx_path) if idx_path is not None else None
        self._fd = os.open(self.rec_path, os.O_RDONLY)
        self._offset_map: dict[int, int] | None = None

    @property
    def _offsets(self) -> dict[int, int]:
        """key -> offset, from the .idx, or (without one) by numbering a sequential scan from 0."""
        if self._offset_map is None:
            if self.idx_path is not None:
                keys, offsets = load_idx(self.idx_path)
                self._offset_map = dict(zip(keys.tolist(), offsets.tolist()))
            else:
                self._offset_map = {pos: offset for pos, (offset, _, _) in enumerate(self._records())}
        return self._offset_map

    # -- random access -------------------------------------------------------------------
    def keys(self) -> list[int]:
        """Keys in .idx order (or file order, numbered from 0, without an .idx)."""
        return list(self._offsets)

    def offset(self, key: int) -> int:
        try:
            return self._offsets[key]
        except KeyError:
            raise DatasetError(f"{self.rec_path}: no record with key {key}") from None

    def read_idx(self, key: int) -> bytes:
        """The record stored under `key`, parts joined (mxnet's MXIndexedRecordIO.read_idx; the
        .idx file itself is read by `load_idx`)."""
        return self.read_at(self.offset(key), key=key)

    def read_at(self, offset: int, key=None) -> bytes:
        where = f"key {key} (offset {offset})" if key is not None else f"offset {offset}"
        parts = []
        pos = offset
        while True:
            head = os.pread(self._fd, 8, pos)
            if len(head) < 8:
                raise DatasetError(f"{self.rec_path}: {where}: offset past the end of the file ({self.size} bytes)"
                                   if pos == offset else f"{self.rec_path}: {where}: file truncated inside the record")
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise DatasetError(f"{self.rec_path}: {where}: no record there (bad magic 0x{magic:08x})")
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            if pos == offset and cflag not in (0, 1):
                raise DatasetError(f"{self.rec_path}: {where}: offset points into the middle of a record")
            if pos != offset and cflag not in (2, 3):
                raise DatasetError(f"{self.rec_path}: {where}: record part with continuation flag {cflag}")
            data = os.pread(self._fd, length, pos + 8)
            if len(data) < length:
                raise DatasetError(f"{self.rec_path}: {where}: file truncated inside the record "
                                   f"({len(data)} of {length} bytes)")
            parts.append(data)
            pos += 8 + length + (-length) % 4
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(parts)

    # -- sequential access ---------------------------------------------------------------
    def scan(self) -> Iterator[tuple[int, bytes]]:
        """(offset, record) for every record in file order, read with large sequential reads."""
        for offset, record, _ in self._records():
            yield offset, record

    def _records(self) -> Iterator[tuple[int, bytes, bool]]:
        pending = b""  # bytes carried over from the previous chunk
        base = 0  # file offset of pending[0]
        parts: list[bytes] = []
        first = 0
        with open(self.rec_path, "rb", buffering=0) as f:
            while True:
                chunk = f.read(_CHUNK)
                buf = pending + chunk if pending else chunk
                if not buf:
                    break
                pos, end = 0, len(buf)
                while pos + 8 <= end:
                    magic, lrec = struct.unpack_from("<II", buf, pos)
                    if magic != MAGIC:
                        raise DatasetError(f"{self.rec_path}: offset {base + pos}: no record there "
                                           f"(bad magic 0x{magic:08x})")
                    length = lrec & _LEN_MASK
                    stop = pos + 8 + length
                    if stop > end:
                        break
                    cflag = lrec >> 29
                    if cflag in (0, 1):
                        if parts:
                            raise DatasetError(f"{self.rec_path}: offset {base + pos}: a new record starts "
                                               f"before the record at offset {first} ended")
                        first = base + pos
                    elif not parts:
                        raise DatasetError(f"{self.rec_path}: offset {base + pos}: record part with "
                                           f"continuation flag {cflag} and no first part")
                    if cflag == 0:
                        yield first, buf[pos + 8 : stop], False
                    else:
                        parts.append(buf[pos + 8 : stop])
                        if cflag == 3:
                            yield first, _MAGIC_BYTES.join(parts), True
                            parts = []
                    pos = stop + (-length) % 4
                pending = buf[pos:] if pos < end else b""
                base += pos
                if not chunk:
                    break
        if pending or parts:
            where = first if parts else base
            raise DatasetError(f"{self.rec_path}: file truncated: the record at offset {where} is incomplete "
                               f"(the file has {self.size} bytes)")

    # -- header index --------------------------------------------------------------------
    def index(self) -> RecordIndex:
        """Headers of every record (every .idx entry, or every record in the file without one)."""
        if self.idx_path is None:
            rows = [_header_row(self.rec_path, pos, offset, record, multi)
                    for pos, (offset, record, multi) in enumerate(self._records())]
            return _rows_to_index(rows)
        keys, offsets = load_idx(self.idx_path)  # arrays, not the dict: millions of records stay small
        return self._index_by_offsets(keys, offsets)

    def _index_by_offsets(self, keys: np.ndarray, offsets: np.ndarray) -> RecordIndex:
        """Vectorised: gather each record's first 40 bytes out of large sequential reads."""
        order = np.argsort(offsets, kind="stable")
        keys, offsets = keys[order], offsets[order]
        n = len(keys)
        src = f"{self.rec_path} (index {self.idx_path})"
        past = offsets + 8 > self.size
        if past.any():
            i = int(np.argmax(past))
            raise DatasetError(f"{src}: key {keys[i]}: offset {offsets[i]} is past the end of the file "
                               f"({self.size} bytes)")
        misaligned = offsets % 4 != 0
        if misaligned.any():
            i = int(np.argmax(misaligned))
            raise DatasetError(f"{src}: key {keys[i]}: offset {offsets[i]} is not at a record")
        words = np.zeros((n, 10), dtype="<u4")  # magic, lrec, flag, label, id(2), id2(2), label1, label2
        buf = bytearray(_CHUNK + 40)  # chunks overlap by 40 bytes so no header straddles two reads
        lo, start = 0, 0
        while lo < n:
            start = int(offsets[lo]) if offsets[lo] >= start + _CHUNK else start
            nread = os.preadv(self._fd, [buf], start)
            hi = int(np.searchsorted(offsets, start + _CHUNK, side="left"))
            view = np.frombuffer(buf, dtype=np.uint8)
            pos = np.minimum((offsets[lo:hi] - start)[:, None] + np.arange(40), max(nread - 1, 0))
            words[lo:hi] = np.ascontiguousarray(view[pos]).view("<u4")
            del view
            lo, start = hi, start + _CHUNK
        magic, lrec = words[:, 0], words[:, 1]
        bad = magic != MAGIC
        if bad.any():
            i = int(np.argmax(bad))
            raise DatasetError(f"{src}: key {keys[i]}: offset {offsets[i]} is not at a record "
                               f"(bad magic 0x{int(magic[i]):08x})")
        cflag = lrec >> 29
        length = (lrec & _LEN_MASK).astype(np.int64)
        mid = (cflag == 2) | (cflag == 3)
        if mid.any():
            i = int(np.argmax(mid))
            raise DatasetError(f"{src}: key {keys[i]}: offset {offsets[i]} points into the middle of a record")
        multipart = cflag == 1
        trunc = offsets + 8 + length > self.size
        if trunc.any():
            i = int(np.argmax(trunc))
            raise DatasetError(f"{src}: key {keys[i]}: file truncated inside the record at offset {offsets[i]} "
                               f"({length[i]} bytes announced, {self.size - offsets[i] - 8} left)")
        flags = words[:, 2].copy()
        nflag = flags.astype(np.int64)
        short = ~multipart & (length < HEADER_SIZE + 4 * nflag)
        if short.any():
            i = int(np.argmax(short))
            raise DatasetError(f"{src}: key {keys[i]}: record of {length[i]} bytes is too short for its header")
        label0 = np.where(flags > 0, words[:, 8].view("<f4"), words[:, 3].view("<f4")).astype(np.float32)
        label1 = np.where(flags > 1, words[:, 9].view("<f4"), np.nan).astype(np.float32)
        index = RecordIndex(keys, offsets, flags, label0, label1, offsets + 8 + HEADER_SIZE + 4 * nflag,
                            length - HEADER_SIZE - 4 * nflag, multipart)
        for i in np.flatnonzero(multipart):  # rare: read those whole
            record = self.read_at(int(offsets[i]), key=int(keys[i]))
            row = _header_row(self.rec_path, int(keys[i]), int(offsets[i]), record, True)
            index.flags[i], index.label0[i], index.label1[i] = row[2], row[3], row[4]
            index.payload_start[i], index.payload_len[i] = row[5], row[6]
        return index

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _header_row(rec_path, key, offset, record, multipart=False):
    if len(record) < HEADER_SIZE:
        raise DatasetError(f"{rec_path}: key {key} (offset {offset}): record of {len(record)} bytes is too "
                           "short for its header")
    flag, label, _, _ = _HEADER.unpack_from(record, 0)
    if len(record) < HEADER_SIZE + 4 * flag:
        raise DatasetError(f"{rec_path}: key {key} (offset {offset}): record too short for its {flag} labels")
    extra = np.frombuffer(record, dtype="<f4", count=min(flag, 2), offset=HEADER_SIZE)
    label0 = float(extra[0]) if flag > 0 else label
    label1 = float(extra[1]) if flag > 1 else float("nan")
    start = HEADER_SIZE + 4 * flag
    # payload_start locates the payload in the file only for single-part records
    return (key, offset, flag, label0, label1, offset + 8 + start, len(record) - start, multipart)


def _rows_to_index(rows) -> RecordIndex:
    if not rows:
        z = np.zeros(0, np.int64)
        return RecordIndex(z, z, np.zeros(0, np.uint32), np.zeros(0, np.float32), np.zeros(0, np.float32),
                           z, z, np.zeros(0, bool))
    cols = list(zip(*rows))
    return RecordIndex(
        np.asarray(cols[0], np.int64), np.asarray(cols[1], np.int64), np.asarray(cols[2], np.uint32),
        np.asarray(cols[3], np.float32), np.asarray(cols[4], np.float32), np.asarray(cols[5], np.int64),
        np.asarray(cols[6], np.int64), np.asarray(cols[7], bool),
    )
