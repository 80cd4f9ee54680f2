"""insightface `train.rec` (or a photo folder) -> TFRecord shards + manifest.json, once.

How it stays fast, safe and resumable:

* Pass 1 reads every record header with large sequential reads (vectorised over the .idx) and
  validates the whole dataset (magic, truncation, index offsets, integer labels, class count)
  before any output is written.
* Images are spread over shards in a seeded random order (so no shard holds one identity after
  another); each shard is written by one worker process that reads its JPEGs straight from the
  .rec into a large output buffer (see tfrecord.ShardWriter).  JPEG bytes are never re-encoded.
* A shard is written under a temporary name, its record count and sha256 go to a small sidecar,
  and only then is it renamed: a file named like a shard is always complete.  `resume=True` keeps
  the finished shards of an interrupted run (same source, same settings) and writes the rest.
  A run that fails with an error instead leaves the output folder as it was before it.
* manifest.json is written last; the .bin pair sets are hard-linked (or copied) next to the
  shards so the output folder is self-contained.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

from face_recognition_tf.data.conversion.shard_writing import fingerprint_files, run_conversion
from face_recognition_tf.data.formats.recordio import RecordIOReader
from face_recognition_tf.errors import DatasetError

_PROGRESS_EVERY = 1024
_DROP_EVERY = 2 << 20  # bytes copied out of the mapped .rec between dropping its mapped pages (the
# kernel maps up to 64 KiB around each touched page, so a record costs far more than its size)


# ---------------------------------------------------------------------------------------------
# sources
def read_property(path: Path):
    """(num_classes, height, width) from insightface's `property` file, or None when absent."""
    if not path.is_file():
        return None
    text = path.read_text().strip()
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
        if len(values) != 3 or min(values) <= 0:
            raise ValueError
    except ValueError:
        raise DatasetError(f"{path}: expected 'num_classes,height,width', got {text[:60]!r}") from None
    return tuple(values)


class RecSource:
    """A .rec's image records, shard-writing side (pickled to the worker processes)."""

    kind = "recordio"

    def __init__(self, rec_path: Path, image_size):
        self.rec_path = Path(rec_path)
        self.image_size = tuple(image_size)

    def write_rows(self, writer, rows: dict, verify: bool, skip_corrupt: bool, tick) -> list:
        """Copy this shard's JPEGs from the memory-mapped .rec into the writer, in shard order.

        A slice copy out of the mapping costs ~1 us against ~4 us for a pread per record; the
        mapped pages are dropped every _DROP_EVERY bytes so resident memory stays flat however
        large the dataset is.
        """
        skipped = []
        reader = None  # opened only for the rare records split into parts
        keys = rows["keys"].tolist()
        labels = rows["labels"].tolist()
        starts = rows["payload_start"].tolist()
        lengths = rows["payload_len"].tolist()
        multipart = rows["multipart"].tolist()
        offsets = rows["offsets"].tolist()
        add = writer.add
        slow = verify or any(multipart)
        copied = 0
        with open(self.rec_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if hasattr(mm, "madvise"):  # no read-around: it would map 64 KiB per touched record
                mm.madvise(mmap.MADV_RANDOM)
            src = memoryview(mm)
            try:
                for lo in range(0, len(keys), _PROGRESS_EVERY):
                    hi = min(lo + _PROGRESS_EVERY, len(keys))
                    if not slow:  # the hot loop: one slice copy per record
                        for label, start, n in zip(labels[lo:hi], starts[lo:hi], lengths[lo:hi]):
                            add(label, src, start, n)
                    for i in range(lo, hi) if slow else ():
                        key = keys[i]
                        if multipart[i]:
                            reader = reader or RecordIOReader(self.rec_path)
                            record = reader.read_at(offsets[i], key=key)
                            image = record[len(record) - lengths[i]:]
                        else:
                            image = bytes(src[starts[i] : starts[i] + lengths[i]])
                        reason = check_jpeg(image, self.image_size) if verify else None
                        if reason is None:
                            add(labels[i], image)
                        elif skip_corrupt:
                            skipped.append({"key": int(key), "reason": reason})
                        else:
                            raise DatasetError(f"{self.rec_path}: key {key}: {reason} (pass --skip-corrupt "
                                               "to leave such images out)")
                    copied += sum(lengths[lo:hi])
                    if copied > _DROP_EVERY and hasattr(mm, "madvise"):
                        mm.madvise(mmap.MADV_DONTNEED)  # keep resident memory flat
                        copied = 0
                    tick(hi - lo)
            finally:
                src.release()
                if reader is not None:
                    reader.close()
        return skipped


def check_jpeg(data: bytes, image_size) -> str | None:
    """Why `data` would fail to decode as a (H, W, 3) image in training, or None if it is fine."""
    import cv2

    if len(data) < 4 or data[:2] != b"\xff\xd8":
        return "not a JPEG (no start-of-image marker)"
    if b"\xff\xd9" not in data[-64:]:  # libjpeg only warns on a truncated file; TF's decoder fails
        return "corrupt JPEG (truncated: no end-of-image marker)"
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        return "corrupt JPEG (does not decode)"
    if tuple(img.shape[:2]) != tuple(image_size):
        return f"image is {img.shape[1]}x{img.shape[0]}, expected {image_size[1]}x{image_size[0]}"
    return None


def _plan_recordio(src_dir: Path):
    """Validate a .rec dataset and return (source, rows, info) without writing anything."""
    rec = src_dir / "train.rec" if src_dir.is_dir() else src_dir
    if src_dir.is_dir() and not rec.is_file():
        recs = sorted(src_dir.glob("*.rec"))
        if len(recs) != 1:
            raise DatasetError(f"{src_dir}: no train.rec (found {len(recs)} .rec files); pass the .rec's folder")
        rec = recs[0]
    if not rec.is_file():
        raise DatasetError(f"{rec}: no such RecordIO file")
    idx = rec.with_suffix(".idx")
    prop_path = rec.parent / "property"
    prop = read_property(prop_path)
    reader = RecordIOReader(rec, idx if idx.is_file() else None)
    index = reader.index()
    reader.close()
    n_total = len(index)
    order = np.argsort(index.keys, kind="stable")
    first = int(order[0]) if n_total else -1
    header = None
    if n_total and index.keys[first] == 0 and index.flags[first] > 0 and index.payload_len[first] == 0:
        header = (float(index.label0[first]), float(index.label1[first]))
        if not (header[0] >= 1 and header[0] == int(header[0])):
            raise DatasetError(f"{rec}: key 0: header record label {header[0]!r} is not a record key")
        is_image = (index.keys >= 1) & (index.keys < int(header[0]))
    else:
        is_image = index.payload_len > 0
        last = n_total - 1  # without an .idx, face2rec's header is the last record in the file
        if reader.idx_path is None and index.flags[last] > 0 and index.payload_len[last] == 0:
            header = (float(index.label0[last]), float(index.label1[last]))
    empty = is_image & (index.payload_len <= 0)
    if empty.any():
        k = int(index.keys[np.argmax(empty)])
        raise DatasetError(f"{rec}: key {k}: image record holds no image data")
    labels = index.label0[is_image]
    keys = index.keys[is_image]
    bad = ~np.isfinite(labels) | (labels < 0) | (labels != np.floor(labels)) | (labels >= 2**31)
    if bad.any():
        i = int(np.argmax(bad))
        raise DatasetError(f"{rec}: key {keys[i]}: label {float(labels[i])!r} is not an integer class index")
    labels = labels.astype(np.int64)
    if not len(labels):
        raise DatasetError(f"{rec}: holds no image records")
    if prop is not None:
        num_classes, height, width = prop
        if labels.max() >= num_classes:
            i = int(np.argmax(labels >= num_classes))
            raise DatasetError(f"{rec}: key {keys[i]}: label {labels[i]} is outside the {num_classes} classes "
                               f"declared in {prop_path}")
        class_source = "property"
    else:
        num_classes, height, width = int(labels.max()) + 1, 112, 112
        class_source = "labels"
    sel = np.flatnonzero(is_image)
    rows = {
        "keys": keys,
        "labels": labels,
        "offsets": index.offsets[sel],
        "payload_start": index.payload_start[sel],
        "payload_len": index.payload_len[sel],
        "multipart": index.multipart[sel],
    }
    sources = [p for p in (rec, idx, prop_path) if p.is_file()]
    info = {
        "num_classes": num_classes,
        "num_classes_source": class_source,
        "image_size": [height, width],
        "total_bytes": int(rows["payload_len"].sum()),
        "fingerprint": fingerprint_files(sources, "recordio"),
        "sources": [{"file": p.name, "bytes": p.stat().st_size} for p in sources],
        "source_dir": str(rec.parent.resolve()),
        "layout": {
            "header_record": header is not None,
            "index": "idx" if idx.is_file() else "sequential scan (no .idx)",
            "labels": "array" if bool((index.flags[is_image] > 0).any()) else "scalar",
            "non_image_records": int(n_total - len(keys)),
            "multipart_records": int(rows["multipart"].sum()),
        },
    }
    return RecSource(rec, (height, width)), rows, info, rec.parent


def convert_recordio(src_dir, out_dir, *, num_shards=None, workers=None, resume=False, verify=False,
                     skip_corrupt=False, seed=0, progress=True) -> dict:
    """Convert insightface's train.rec/.idx/property in `src_dir` to TFRecords in `out_dir`.

    Returns the manifest.  `verify` decodes every image and fails on the first corrupt one;
    `skip_corrupt` (implies verify) leaves corrupt images out and lists them in manifest["skipped"].
    The arguments and `out_dir` are checked before the source is read; a failed run leaves
    `out_dir` as it was and an interrupted one can be finished with `resume=True` (see
    shard_writing.run_conversion).
    """
    src_dir = Path(src_dir)
    if not src_dir.exists():
        raise DatasetError(f"{src_dir}: no such dataset folder")
    return run_conversion(lambda: _plan_recordio(src_dir), out_dir, num_shards=num_shards, workers=workers,
                          resume=resume, verify=verify, skip_corrupt=skip_corrupt, seed=seed, progress=progress)


def convert_folder(src_dir, out_dir, **kwargs) -> dict:
    """Identity sub-folders of aligned face images -> the same TFRecord schema (see folder.py)."""
    from face_recognition_tf.data.conversion.folder import convert_folder as _convert_folder

    return _convert_folder(src_dir, out_dir, **kwargs)
