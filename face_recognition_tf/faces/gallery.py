"""A gallery of known people for 1:N identification, and its `.npz` file.

Each identity may have several photos.  Searching compares the query with one template per identity,
the re-normalised mean of that identity's normalised embeddings (the usual template of IJB-style
evaluation): it is steadier than the best single photo and costs one dot product per person.  The file
keeps every photo's embedding, its source and label, so templates can be rebuilt and galleries merged.
It is a plain `.npz` (no pickles), written atomically.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from face_recognition_tf.atomic import atomic_file
from face_recognition_tf.errors import DatasetError, FaceRecognitionError

GALLERY_FORMAT = 1
_KEYS = ("format", "names", "embeddings", "labels", "sources", "model", "flip")


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


@dataclasses.dataclass(frozen=True)
class Match:
    """One gallery identity ranked against a query face."""

    name: str
    similarity: float  # cosine similarity to the identity's template
    accepted: bool  # similarity >= threshold: the face is this person as far as the threshold goes


class Gallery:
    """Known identities and their embeddings.

    Args:
        names: identity names, index = label.
        embeddings: (M, D) embeddings of M photos (normalised here).
        labels: (M,) identity index of each photo.
        sources: (M,) where each embedding came from (file names), for the record.
        skipped: (source, reason) of photos left out when the gallery was built.
        model, flip: the model and protocol the embeddings were made with (checked on use).
    """

    def __init__(self, names, embeddings, labels, sources=None, *, skipped=(), model: str = "", flip: bool = True):
        self.names = [str(n) for n in names]
        self.embeddings = l2_normalize(np.asarray(embeddings, np.float32))
        self.labels = np.asarray(labels, np.int64)
        if self.embeddings.ndim != 2 or len(self.embeddings) != len(self.labels):
            raise FaceRecognitionError(
                f"gallery needs (M, D) embeddings and M labels, got {self.embeddings.shape} and {self.labels.shape}"
            )
        if len(set(self.names)) != len(self.names):
            raise FaceRecognitionError("gallery identity names must be unique")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.names)):
            raise FaceRecognitionError(f"gallery labels must lie in [0, {len(self.names)})")
        counts = np.bincount(self.labels, minlength=len(self.names))
        if len(self.names) == 0 or np.any(counts == 0):
            empty = [self.names[i] for i in np.flatnonzero(counts == 0)]
            raise FaceRecognitionError(f"gallery identities without any embedding: {empty or 'none given'}")
        self.sources = [str(s) for s in sources] if sources is not None else [""] * len(self.labels)
        self.skipped = list(skipped)
        self.model = str(model)
        self.flip = bool(flip)
        sums = np.zeros((len(self.names), self.embeddings.shape[1]), np.float32)
        np.add.at(sums, self.labels, self.embeddings)
        self.templates = l2_normalize(sums)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"Gallery({len(self.names)} identities, {len(self.labels)} embeddings, D={self.embedding_size})"

    @property
    def embedding_size(self) -> int:
        return int(self.embeddings.shape[1])

    @classmethod
    def from_embeddings(cls, mapping: Mapping, **kwargs) -> Gallery:
        """From a dict name -> embedding (D,) or embeddings (n, D)."""
        names, rows, labels = [], [], []
        for index, (name, value) in enumerate(mapping.items()):
            value = np.asarray(value, np.float32)
            value = value[None] if value.ndim == 1 else value
            if value.ndim != 2:
                raise FaceRecognitionError(f"gallery entry {name!r}: expected (D,) or (n, D) embeddings, got {value.shape}")
            names.append(name)
            rows.append(value)
            labels.extend([index] * len(value))
        dims = {r.shape[1] for r in rows}
        if len(dims) > 1:
            raise FaceRecognitionError(f"gallery entries differ in embedding size: {sorted(dims)}")
        return cls(names, np.concatenate(rows) if rows else np.zeros((0, 0)), labels, **kwargs)

    def search(self, query: np.ndarray, top_k: int = 1, threshold: float = 0.3) -> list[Match]:
        """The `top_k` identities most similar to one query embedding, best first."""
        query = l2_normalize(np.asarray(query, np.float32).reshape(-1))
        if query.shape[0] != self.embedding_size:
            raise FaceRecognitionError(
                f"query embedding has {query.shape[0]} dimensions, the gallery {self.embedding_size} "
                f"(built with another model{': ' + self.model if self.model else ''})"
            )
        if int(top_k) < 1:
            raise FaceRecognitionError(f"top_k must be at least 1, got {top_k}")
        scores = np.clip(self.templates @ query, -1.0, 1.0)
        order = np.argsort(-scores, kind="stable")[: int(top_k)]
        return [Match(self.names[i], float(scores[i]), bool(scores[i] >= threshold)) for i in order]

    def save(self, path) -> Path:
        """Write the gallery as `.npz` through `atomic.atomic_file`: a temporary file renamed into place
        (never half-written), with the mode the user's umask gives; a place that cannot be written is an
        `OutputError` naming it."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        with atomic_file(path, "wb") as handle:
            np.savez(
                handle,
                format=np.int64(GALLERY_FORMAT),
                names=np.asarray(self.names, dtype=str),
                embeddings=self.embeddings,
                labels=self.labels,
                sources=np.asarray(self.sources, dtype=str),
                model=np.asarray(self.model, dtype=str),
                flip=np.bool_(self.flip),
            )
        return path

    @classmethod
    def load(cls, path) -> Gallery:
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"{path}: gallery not found (expected a .npz from `frtf identify --save-gallery` "
                               "or a folder of identity sub-folders)")
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in _KEYS if k not in data.files]
                if missing:
                    raise DatasetError(f"{path}: not a face gallery (missing {', '.join(missing)})")
                if int(data["format"]) > GALLERY_FORMAT:
                    raise DatasetError(f"{path}: gallery format {int(data['format'])} is newer than this version reads")
                fields = {k: data[k] for k in _KEYS}
        except (OSError, ValueError) as exc:  # not a zip, truncated, or holding pickled objects
            raise DatasetError(f"{path}: unreadable gallery file ({exc})") from None
        try:
            return cls(fields["names"].tolist(), fields["embeddings"], fields["labels"], fields["sources"].tolist(),
                       model=str(fields["model"]), flip=bool(fields["flip"]))
        except FaceRecognitionError as exc:
            raise DatasetError(f"{path}: {exc}") from None
