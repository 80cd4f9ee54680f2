"""A folder of identity sub-folders of aligned face photos -> the same TFRecords as a .rec.

This is how a user fine-tunes on their own people: `photos/alice/*.jpg`, `photos/bob/*.png`, ...
Classes are the sub-folder names in sorted order (listed in manifest["classes"]).  JPEG files that
are already at the dataset's image size are stored byte for byte; other formats are encoded to
JPEG (quality 95).  An image of another size is an error naming it, unless `resize=True`, because
silently resizing an unaligned photo would train on faces the model will never see aligned.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from face_recognition_tf.data.conversion.shard_writing import fingerprint_listing, run_conversion
from face_recognition_tf.errors import DatasetError
from face_recognition_tf.faces.images import (  # the package's one reader
    IMAGE_SUFFIXES,
    JPEG_QUALITY,
    decode_image,
    encode_jpeg,
    identity_folders,
    list_images,
    resize_image,
)


class FolderSource:
    """Image files, shard-writing side (pickled to the worker processes)."""

    kind = "folder"

    def __init__(self, root: Path, paths: list[str], image_size, resize: bool):
        self.root = Path(root)
        self.paths = paths  # relative paths, row i of `rows` refers to paths[rows["keys"][i]]
        self.image_size = tuple(image_size)
        self.resize = resize

    def encode(self, rel: str, verify: bool) -> tuple[bytes | None, str | None]:
        """(JPEG bytes to store, None) or (None, why the file cannot be used)."""
        data = (self.root / rel).read_bytes()
        is_jpeg = data[:2] == b"\xff\xd8"
        try:
            img = decode_image(data, rel).image
        except DatasetError as exc:
            return None, str(exc)[len(rel) + 2:]  # "not a readable image (...)", without the name
        h, w = self.image_size
        if img.shape[:2] != (h, w):
            if not self.resize:
                return None, f"image is {img.shape[1]}x{img.shape[0]}, expected aligned {w}x{h} faces " \
                             "(align them first, or pass --resize)"
            img = resize_image(img, (w, h))
            is_jpeg = False
        if is_jpeg and b"\xff\xd9" not in data[-64:]:
            return None, "corrupt JPEG (truncated: no end-of-image marker)"
        if is_jpeg:
            return data, None
        encoded = encode_jpeg(img, JPEG_QUALITY)
        if encoded is None:
            return None, "could not be encoded as JPEG"
        return encoded, None

    def write_rows(self, writer, rows: dict, verify: bool, skip_corrupt: bool, tick) -> list:
        skipped = []
        for i, (key, label) in enumerate(zip(rows["keys"].tolist(), rows["labels"].tolist())):
            rel = self.paths[key]
            jpeg, reason = self.encode(rel, verify)
            if reason is not None:
                if not (skip_corrupt and "expected aligned" not in reason):
                    raise DatasetError(f"{self.root / rel}: {reason}")
                skipped.append({"key": rel, "reason": reason})
            else:
                writer.add(label, jpeg)
            if (i + 1) % 256 == 0:
                tick(256)
        tick(len(rows["keys"]) % 256)
        return skipped


def _plan_folder(src_dir: Path, image_size, resize: bool):
    if not src_dir.is_dir():
        raise DatasetError(f"{src_dir}: no such folder of identity sub-folders")
    classes = [d.name for d in identity_folders(src_dir)]
    paths, labels, empty = [], [], []
    for label, name in enumerate(classes):
        files = sorted(os.path.join(name, f.name) for f in list_images(src_dir / name, recursive=False))
        if not files:
            empty.append(name)
        paths.extend(files)
        labels.extend([label] * len(files))
    if not paths:
        raise DatasetError(f"{src_dir}: holds no identity sub-folders with images "
                           f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    sizes = [(src_dir / p).stat().st_size for p in paths]
    rows = {"keys": np.arange(len(paths), dtype=np.int64), "labels": np.asarray(labels, dtype=np.int64)}
    info = {
        "num_classes": len(classes),
        "num_classes_source": "folders",
        "classes": classes,
        "image_size": list(image_size),
        "total_bytes": int(sum(sizes)),
        "fingerprint": fingerprint_listing(list(zip(paths, sizes)), f"folder:{resize}"),
        "sources": [{"file": f"{len(classes)} identity folders", "images": len(paths)}],
        "source_dir": str(src_dir.resolve()),
        "layout": {"empty_identity_folders": empty},
    }
    return FolderSource(src_dir, paths, image_size, resize), rows, info


def convert_folder(src_dir, out_dir, *, num_shards=None, workers=None, resume=False, verify=False,
                   skip_corrupt=False, seed=0, progress=True, resize=False, image_size=(112, 112)) -> dict:
    """Convert `src_dir/<identity>/<image>` to TFRecord shards + manifest.json in `out_dir`.

    Every image is decoded (to check its size), so `verify` is implied; `skip_corrupt` leaves
    unreadable files out and lists them in manifest["skipped"] (wrong sizes stay errors).
    The arguments and `out_dir` are checked before the images are listed; a failed run leaves
    `out_dir` as it was and an interrupted one can be finished with `resume=True` (see
    shard_writing.run_conversion).
    """
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise DatasetError(f"{src_dir}: no such folder of identity sub-folders")

    def plan():
        return (*_plan_folder(src_dir, image_size, resize), src_dir)

    return run_conversion(plan, out_dir, num_shards=num_shards, workers=workers, resume=resume, verify=True,
                          skip_corrupt=skip_corrupt, seed=seed, progress=progress)
