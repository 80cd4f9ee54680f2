"""A gallery of known people for 1:N identification, and its `.npz` file.

Each identity may have several photos.  Searching compares the query with one template per identity,
the re-normalised mean of that identity's normalised embeddings (the usual template of IJB-style
evaluation): it is steadier than the best single photo and costs one dot product per person, all of
them done as one float32 matrix product over the L2-normalised templates, in chunks so memory stays
bounded for any gallery size, keeping the top k with `np.argpartition` (linear, not a sort); a batch
of queries shares the product (`search_many`).  benchmarks/bench_identify.py measures it.  The file
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
# floats in one (queries x gallery-chunk) score block: 4M float32 = 16 MiB, whatever the gallery's size
SEARCH_CHUNK_ELEMENTS = 1 << 22
_KEYS = ("format", "names", "embeddings", "labels", "sources", "model", "flip")


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def top_k_cosine(templates: np.ndarray, queries: np.ndarray, k: int,
                 chunk_elements: int = SEARCH_CHUNK_ELEMENTS) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores (Q, min(k, N)) of the k rows of `templates` (N, D) with the largest dot
    product with each query (Q, D), best first; equal scores keep the lower index first (as a stable
    sort would).  Both inputs are expected L2-normalised float32; scores are clipped to [-1, 1].
    """
    n, q = len(templates), len(queries)
    k = min(int(k), n)
    best_i = np.zeros((q, 0), np.int64)
    best_s = np.zeros((q, 0), np.float32)
    rows = max(1, int(chunk_elements) // max(q, 1))
    for start in range(0, n, rows):
        chunk = templates[start:start + rows]
        # (Q, C) float32 in one BLAS call: a matrix-vector product for one query (numpy's (1, D) @ (D, C)
        # matrix path cost up to 100x more here), a matrix product for a batch
        block = (chunk @ queries[0])[None] if q == 1 else (chunk @ queries.T).T
        cand = _top_k_rows(block, k) if block.shape[1] > k else np.broadcast_to(np.arange(block.shape[1]), block.shape)
        cand_s = np.take_along_axis(block, cand, axis=1)
        all_i = np.concatenate([best_i, cand + start], axis=1)
        all_s = np.concatenate([best_s, cand_s], axis=1)
        order = np.lexsort((all_i, -all_s), axis=1)[:, :k]  # score descending, then index ascending
        best_i = np.take_along_axis(all_i, order, axis=1)
        best_s = np.take_along_axis(all_s, order, axis=1)
    return best_i, np.clip(best_s, -1.0, 1.0)


def _top_k_rows(block: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest entries of each row, exact under ties (lowest index wins).

    `argpartition` keeps an arbitrary subset of values tied at the k-th place; the rare rows where that
    happens are redone exactly, so results never depend on the chunking.
    """
    cand = np.argpartition(-block, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(block, cand, axis=1).min(axis=1)
    tied_total = np.count_nonzero(block == kth[:, None], axis=1)
    tied_kept = np.count_nonzero(np.take_along_axis(block, cand, axis=1) == kth[:, None], axis=1)
    for row in np.flatnonzero(tied_total != tied_kept):
        above = np.flatnonzero(block[row] > kth[row])
        ties = np.flatnonzero(block[row] == kth[row])[: k - len(above)]
        cand[row] = np.concatenate([above, ties])
    return cand


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
        """The `top_k` identities most similar to one query embedding, best first (ties: lower index first)."""
        query = np.asarray(query, np.float32).reshape(1, -1)
        return self.search_many(query, top_k=top_k, threshold=threshold)[0]

    def search_many(self, queries: np.ndarray, top_k: int = 1, threshold: float = 0.3,
                    *, chunk_elements: int = SEARCH_CHUNK_ELEMENTS) -> list[list[Match]]:
        """`search` for each row of `queries` (Q, D) at once: one float32 matrix product per gallery chunk.

        Why this shape: comparing a face with every identity is a dot product of unit vectors, so a batch
        of queries against a block of templates is one BLAS call instead of Q x N Python-level steps
        (benchmarks/bench_identify.py measures the difference).  The gallery is walked in chunks so the
        (Q, chunk) score block stays under `chunk_elements` floats whatever the gallery size, and each
        chunk keeps only its top k per query (`np.argpartition`, linear time, not a full sort).
        """
        queries = np.asarray(queries, np.float32)
        if queries.ndim == 1:
            queries = queries[None]
        if queries.ndim != 2 or queries.shape[1] != self.embedding_size:
            got = queries.shape[-1] if queries.ndim else 0
            raise FaceRecognitionError(
                f"query embedding has {got} dimensions, the gallery {self.embedding_size} "
                f"(built with another model{': ' + self.model if self.model else ''})"
            )
        if int(top_k) < 1:
            raise FaceRecognitionError(f"top_k must be at least 1, got {top_k}")
        indices, scores = top_k_cosine(self.templates, l2_normalize(queries), int(top_k), chunk_elements)
        return [[Match(self.names[i], float(s), bool(s >= threshold)) for i, s in zip(row_i, row_s)]
                for row_i, row_s in zip(indices.tolist(), scores.tolist())]

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
