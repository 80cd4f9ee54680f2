"""The people the demo knows: one `Gallery` `.npz` file on disk that survives a restart.

Why a store around `faces.gallery.Gallery` rather than a new format: the file is exactly what
`frtf identify --gallery FILE` and `FaceRecognizer.load_gallery` read, so people enrolled in the page
can be used from the command line and from Python.  What this adds is the life of a gallery that
changes while a server runs:

* every change builds the complete new gallery first and writes it with `Gallery.save` (a temporary
  file renamed into place by `atomic.py`); only once that succeeded does the server use it.  A failed
  write (disk full, read-only folder) leaves the old file and the old people in use, never half of
  a gallery;
* removing the last person removes the file (a `Gallery` cannot be empty), which is atomic too;
* changes are serialised by a lock, because Gradio runs handlers in worker threads;
* embeddings only mean something to the weights that made them, so the file records the model (its
  display name and the sha256 of its weights file) and a file made by other weights, or of another
  embedding size, is refused at start-up instead of silently giving wrong names.

Only embeddings and a short note per photo ("upload 2 of 3, 2027-01-05T10:12:00Z" or the photo's path
when enrolled from a folder) are kept: never the photos.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from face_recognition_tf.errors import DatasetError, FaceRecognitionError
from face_recognition_tf.faces.gallery import Gallery

GALLERY_DIR = "demo"  # under the package's cache folder (~/.cache/face_recognition_tf, or $FRTF_CACHE_DIR)
_SHA_RE = re.compile(r"sha256:([0-9a-f]{12,64})")


def default_gallery_path(model) -> Path:
    """`<cache>/demo/<parent>_<model>-<hash of its absolute path>.npz` (`quickstart_run-0123456789.npz`):
    one gallery per model, since embeddings of one model are meaningless to another."""
    from face_recognition_tf.data.synthetic.sample import cache_root

    resolved = Path(model).resolve()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(resolved.parts[-2:])).strip("._") or "model"
    digest = hashlib.sha256(str(resolved).encode("utf-8")).hexdigest()[:10]
    return cache_root() / GALLERY_DIR / f"{stem}-{digest}.npz"


def model_identity(model, name: str) -> str:
    """'run/best sha256:0123456789abcdef': the model's display name and its weights' fingerprint,
    or the name alone for a model that is not one file (then nothing can be checked)."""
    from face_recognition_tf.evaluation.calibrate import model_fingerprint

    fingerprint = model_fingerprint(model) if isinstance(model, (str, Path)) else None
    return f"{name} sha256:{fingerprint[1][:16]}" if fingerprint else str(name)


class EnrolledPeople:
    """The demo's gallery file and the `Gallery` in use.

    Args:
        path: the `.npz` file (created on the first enrollment; its folder too).
        model_id: `model_identity(...)` of the model in use, stored in the file and checked on load.
        embedding_size: the model's embedding size, checked on load.
        flip: the embedding protocol, stored with the gallery.
    """

    def __init__(self, path, *, model_id: str, embedding_size: int, flip: bool = True):
        path = Path(path)
        self.path = path if path.suffix == ".npz" else path.with_name(path.name + ".npz")
        self.model_id = str(model_id)
        self.embedding_size = int(embedding_size)
        self.flip = bool(flip)
        self._lock = threading.Lock()
        self.gallery: Gallery | None = None
        if self.path.is_dir():
            raise DatasetError(f"{self.path}: is a folder; the gallery file must be a .npz file")
        if self.path.exists():
            self.gallery = self._checked(Gallery.load(self.path))

    def _checked(self, gallery: Gallery) -> Gallery:
        where = f"{self.path}: enrolled with {gallery.model or 'an unnamed model'}"
        if gallery.embedding_size != self.embedding_size:
            raise DatasetError(f"{where} ({gallery.embedding_size}-D embeddings); this model gives "
                               f"{self.embedding_size}-D: pass another --gallery-file (or delete this one)")
        ours, theirs = _SHA_RE.search(self.model_id), _SHA_RE.search(gallery.model)
        if ours and theirs and ours.group(1)[:12] != theirs.group(1)[:12]:
            raise DatasetError(f"{where}, not {self.model_id}: its embeddings do not fit these weights; pass "
                               "another --gallery-file, or delete this one and enroll the people again")
        return gallery

    # --------------------------------------------------------------------------------- reading
    def __len__(self) -> int:
        return 0 if self.gallery is None else len(self.gallery)

    def names(self) -> list[str]:
        return [] if self.gallery is None else list(self.gallery.names)

    def people(self) -> list[tuple[str, int]]:
        """(name, number of photos) of every enrolled person, by name."""
        if self.gallery is None:
            return []
        counts = np.bincount(self.gallery.labels, minlength=len(self.gallery.names))
        return sorted(zip(self.gallery.names, (int(c) for c in counts)), key=lambda item: item[0].casefold())

    def photos(self) -> int:
        return 0 if self.gallery is None else int(len(self.gallery.labels))

    def rows_of(self, name: str) -> tuple[np.ndarray, list[str]]:
        """A person's embeddings (n, D) and the note on each photo; none for someone not enrolled."""
        gallery = self.gallery
        if gallery is None or name not in gallery.names:
            return np.zeros((0, self.embedding_size), np.float32), []
        mine = gallery.labels == gallery.names.index(name)
        return gallery.embeddings[mine], [s for s, m in zip(gallery.sources, mine) if m]

    # -------------------------------------------------------------------------------- changing
    def add(self, name: str, embeddings, sources) -> int:
        """Add photos' embeddings (n, D) to a person (enrolled now if new); returns their photo count."""
        return self.put({name: (embeddings, sources)}, replace=False)[name]

    def put(self, people: Mapping[str, tuple], *, replace: bool) -> dict[str, int]:
        """Add (or with `replace`, set) the photos of several people in one write; their photo counts."""
        with self._lock:
            rows = self._rows()
            for name, (embeddings, sources) in people.items():
                embeddings = np.asarray(embeddings, np.float32).reshape(-1, self.embedding_size)
                sources = [str(s) for s in sources]
                if len(sources) != len(embeddings) or not len(embeddings):
                    raise FaceRecognitionError(f"{name!r}: {len(embeddings)} embeddings for {len(sources)} photos")
                old_e, old_s = rows.get(name, (np.zeros((0, self.embedding_size), np.float32), []))
                rows[name] = (embeddings, sources) if replace else (np.concatenate([old_e, embeddings]),
                                                                    old_s + sources)
            self._commit(rows)
            return {name: len(rows[name][1]) for name in people}

    def remove(self, name: str) -> int:
        """Forget a person; returns how many photos they had.  The last person takes the file along."""
        with self._lock:
            rows = self._rows()
            if name not in rows:
                raise FaceRecognitionError(f"{name!r} is not enrolled")
            removed = len(rows.pop(name)[1])
            self._commit(rows)
            return removed

    def _rows(self) -> dict[str, tuple[np.ndarray, list[str]]]:
        """Every person's (embeddings, sources), in one pass over the photos."""
        gallery = self.gallery
        if gallery is None:
            return {}
        by_person = [[] for _ in gallery.names]
        for index, label in enumerate(gallery.labels.tolist()):
            by_person[label].append(index)
        return {name: (gallery.embeddings[rows], [gallery.sources[i] for i in rows])
                for name, rows in zip(gallery.names, by_person)}

    def _commit(self, rows) -> None:
        """Write the new gallery, then use it; on any failure nothing changes, on disk or here."""
        from face_recognition_tf.atomic import describe_os_error
        from face_recognition_tf.errors import OutputError

        if not rows:
            try:
                self.path.unlink(missing_ok=True)
            except OSError as exc:
                raise OutputError(describe_os_error(self.path, exc, "cannot remove")) from None
            self.gallery = None
            return
        names = list(rows)
        gallery = Gallery(names, np.concatenate([rows[n][0] for n in names]),
                          np.concatenate([np.full(len(rows[n][1]), i, np.int64) for i, n in enumerate(names)]),
                          [s for n in names for s in rows[n][1]], model=self.model_id, flip=self.flip)
        gallery.save(self.path)
        self.gallery = gallery
