"""What the demo's buttons do, as plain Python methods that take photo bytes and return what to show.

Why not inside the Gradio callbacks: the behaviour a person relies on (which face is compared, the
threshold, what happens to a bad upload, that a failed enrollment changes nothing) is tested here
without a browser, and the page only lays the results out.

Every handler answers; none raises.  A user's mistake (not an image, no face, no name, nobody
enrolled) comes back as `ok=False` with a one-line message for the page; anything unexpected too,
logged with its traceback, so the server keeps serving.  Photos arrive as bytes (Gradio's
`type="binary"`), are decoded in memory by `faces.images.decode_image` (content-sniffed, EXIF
orientation, huge JPEGs decoded reduced) and are never written anywhere: only embeddings are kept.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import unicodedata
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from face_recognition_tf.demo.drawing import BLUE, GREEN, GREY, RED, Mark, annotate, crop_strip
from face_recognition_tf.errors import FaceRecognitionError
from face_recognition_tf.faces.detect import NoFaceError, as_rgb_image, pick_face
from face_recognition_tf.faces.images import LoadedImage, decode_image

LOG = logging.getLogger(__name__)
MAX_SIDE = 1600  # photos are decoded at most this large: plenty for MTCNN and alignment, light to show
MAX_ENROLL_PHOTOS = 20  # per click: each photo costs a detection (about half a second on a CPU)
TOP_K = 5
MAX_NAME = 64


@dataclasses.dataclass
class VerifyOutcome:
    ok: bool
    message: str  # Markdown
    photos: tuple = (None, None)  # annotated RGB photos A and B
    crops: tuple = (None, None)  # the aligned crops compared
    similarity: float | None = None
    same: bool | None = None


@dataclasses.dataclass
class IdentifyOutcome:
    ok: bool
    message: str
    photo: np.ndarray | None = None
    table: list = dataclasses.field(default_factory=list)  # [face, rank, name, similarity, decision]
    names: list = dataclasses.field(default_factory=list)  # per face, left to right: the accepted name or None


@dataclasses.dataclass
class EnrollOutcome:
    ok: bool
    message: str
    crops: np.ndarray | None = None  # the aligned faces enrolled, side by side


def people_text(count: int) -> str:
    return f"{count} {'person' if count == 1 else 'people'}"


def md_escape(text) -> str:
    """User-given text (names) shown as written, not as Markdown or HTML."""
    return "".join("\\" + c if c in "\\`*_[]<>#|~" else c for c in str(text))


class DemoService:
    """The recognizer and the enrolled people behind the page.

    Args:
        recognizer: a `FaceRecognizer` with a detector.
        store: an `enrolled.EnrolledPeople`.
        model_path: shown in the Model tab.
        embedding_size: the model's; measured by `for_model`.
    """

    def __init__(self, recognizer, store, *, model_path, embedding_size: int, max_side: int = MAX_SIDE):
        if recognizer.detector is None:
            raise FaceRecognitionError("the demo needs a face detector (photos, not aligned crops)")
        self.recognizer = recognizer
        self.store = store
        self.model_path = Path(model_path)
        self.embedding_size = int(embedding_size)
        self.max_side = int(max_side)
        self._model_lock = threading.Lock()  # Gradio calls handlers from several threads

    @classmethod
    def for_model(cls, model, *, gallery_file=None, threshold=None, threshold_from=None,
                  min_face_size: int = 20) -> DemoService:
        """Load MODEL, settle its threshold, warm it up, and open its gallery file."""
        import warnings

        from face_recognition_tf.demo.enrolled import EnrolledPeople, default_gallery_path, model_identity
        from face_recognition_tf.inference import FaceRecognizer, threshold_from_results

        source = None
        if threshold_from is not None:
            threshold, source = threshold_from_results(threshold_from), _file_kind(threshold_from)
        with warnings.catch_warnings():  # a stale calibration: kept as threshold_note, shown in the page
            warnings.simplefilter("ignore")
            recognizer = FaceRecognizer(str(model), threshold=threshold, min_face_size=min_face_size)
        if source or threshold is not None:
            recognizer.threshold_source = source or "given with --threshold"
        size = recognizer.image_size
        embedding_size = recognizer.embed_aligned(np.zeros((1, size, size, 3), np.uint8)).shape[1]
        # loads MTCNN's weights now, not on the first click (a photo smaller than the smallest face is
        # answered without running it, so TensorFlow logs nothing about empty batches)
        recognizer.detect(np.zeros((12, 12, 3), np.uint8))
        store = EnrolledPeople(gallery_file or default_gallery_path(model), embedding_size=embedding_size,
                               model_id=model_identity(model, recognizer.model_name), flip=recognizer.flip)
        return cls(recognizer, store, model_path=model, embedding_size=embedding_size)

    # ------------------------------------------------------------------------------- handlers
    def verify(self, photo_a, photo_b) -> VerifyOutcome:
        return _answer(VerifyOutcome, "Could not compare", lambda: self._verify(photo_a, photo_b))

    def identify(self, photo) -> IdentifyOutcome:
        return _answer(IdentifyOutcome, "Could not identify", lambda: self._identify(photo))

    def enroll(self, name, photos) -> EnrollOutcome:
        return _answer(EnrollOutcome, "Nothing enrolled", lambda: self._enroll(name, photos))

    def remove(self, name) -> EnrollOutcome:
        return _answer(EnrollOutcome, "Nobody removed", lambda: self._remove(name))

    def people_rows(self) -> list[list]:
        return [[name, count] for name, count in self.store.people()]

    def threshold_text(self) -> str:
        return f"threshold {self.recognizer.threshold:.3f} ({self.recognizer.threshold_source})"

    def model_markdown(self) -> str:
        from face_recognition_tf.demo.model_card import facts_markdown, model_facts

        rows = model_facts(self.model_path, self.recognizer, embedding_size=self.embedding_size, gallery=self.store)
        if self.recognizer.threshold_note:
            rows.append(("threshold note", self.recognizer.threshold_note))
        return facts_markdown(rows)

    # ------------------------------------------------------------------------------- the work
    def _verify(self, photo_a, photo_b) -> VerifyOutcome:
        labels = ("photo A", "photo B")
        loaded = [self._photo(photo, label) for photo, label in zip((photo_a, photo_b), labels)]
        found = [self._faces(item.image, label) for item, label in zip(loaded, labels)]
        mains = [self._main(faces, item.image) for faces, item in zip(found, loaded)]
        result = self.recognizer.verify(mains[0].embedding, mains[1].embedding)
        colour = GREEN if result.same else RED
        photos = tuple(annotate(item.image, [Mark(d.face, label[-1] if d is main else "", colour if d is main else GREY)
                                             for d in faces])
                       for item, faces, main, label in zip(loaded, found, mains, labels))
        verdict = '<span class="frtf-yes">Same person</span>' if result.same else \
            '<span class="frtf-no">Different people</span>'
        relation = "≥" if result.same else "<"
        lines = [f"### {verdict}",
                 f"Cosine similarity **{result.similarity:.3f}** {relation} {self.threshold_text()}."]
        for label, faces, item in zip(labels, found, loaded):
            if len(faces) > 1:
                lines.append(f"Photo {label[-1]}: {len(faces)} faces found; the {self.recognizer.detector.pick} "
                             "one (coloured box) was compared, the grey ones were not.")
            if item.note:
                lines.append(f"Photo {label[-1]}: {item.note}.")
        return VerifyOutcome(True, "\n\n".join(lines), photos, tuple(m.aligned for m in mains),
                             result.similarity, result.same)

    def _identify(self, photo) -> IdentifyOutcome:
        loaded = self._photo(photo, "photo")
        found = sorted(self._faces(loaded.image, "photo"), key=lambda d: float(d.face.box[0]))  # left to right
        gallery = self.store.gallery
        if gallery is None:
            marks = [Mark(d.face, f"#{i}", BLUE) for i, d in enumerate(found, 1)]
            return IdentifyOutcome(False, f"Found {len(found)} face(s), but nobody is enrolled yet: add people in "
                                          "the **Enroll** tab (or start the demo with `--gallery DIR`).",
                                   annotate(loaded.image, marks), [], [None] * len(found))
        threshold = self.recognizer.threshold
        ranked = gallery.search_many(np.stack([d.embedding for d in found]), top_k=min(TOP_K, len(gallery)),
                                     threshold=threshold)
        marks, table, names, lines = [], [], [], []
        for i, (detected, matches) in enumerate(zip(found, ranked), 1):
            best = matches[0]
            names.append(best.name if best.accepted else None)
            if best.accepted:
                marks.append(Mark(detected.face, f"#{i} {best.name} {best.similarity:.2f}", GREEN))
                lines.append(f"- **#{i}: {md_escape(best.name)}** (similarity {best.similarity:.3f})")
            else:
                marks.append(Mark(detected.face, f"#{i} unknown {best.similarity:.2f}", RED))
                lines.append(f"- **#{i}: unknown** (closest: {md_escape(best.name)}, {best.similarity:.3f})")
            table += [[i, rank, m.name, round(m.similarity, 4), "match" if m.accepted else "below threshold"]
                      for rank, m in enumerate(matches, 1)]
        known = sum(n is not None for n in names)
        head = f"### {len(found)} face(s) found, {known} recognised"
        text = "\n\n".join([head, "\n".join(lines),
                            f"Compared with {people_text(len(gallery))} enrolled, at the {self.threshold_text()}."]
                           + ([f"Photo: {loaded.note}."] if loaded.note else []))
        return IdentifyOutcome(True, text, annotate(loaded.image, marks), table, names)

    def _enroll(self, name, photos) -> EnrollOutcome:
        name = valid_name(name)
        if photos is None or isinstance(photos, (bytes, bytearray, np.ndarray)):
            photos = [] if photos is None else [photos]
        photos = [p for p in photos if p is not None]
        if not photos:
            raise FaceRecognitionError(f"no photo given: upload one or more photos of {name}")
        if len(photos) > MAX_ENROLL_PHOTOS:
            raise FaceRecognitionError(f"{len(photos)} photos at once; enroll at most {MAX_ENROLL_PHOTOS} per click")
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        embeddings, crops, sources, skipped, notes = [], [], [], [], []
        for k, data in enumerate(photos, 1):
            label = f"photo {k}" if len(photos) > 1 else "the photo"
            try:
                loaded = self._photo(data, label)
                found = self._faces(loaded.image, label)
            except FaceRecognitionError as exc:
                skipped.append(str(exc))
                continue
            main = self._main(found, loaded.image)
            if len(found) > 1:
                notes.append(f"{label}: {len(found)} faces, the {self.recognizer.detector.pick} one was taken")
            embeddings.append(main.embedding)
            crops.append(main.aligned)
            sources.append(f"upload {k} of {len(photos)}, {stamp}")
        if not embeddings:
            raise FaceRecognitionError(f"{name} was not enrolled: " + "; ".join(skipped))
        known = name in self.store.names()
        total = self.store.add(name, np.stack(embeddings), sources)
        head = (f"Added {len(embeddings)} photo(s) to **{md_escape(name)}** (now {total})" if known
                else f"Enrolled **{md_escape(name)}** from {len(embeddings)} photo(s)")
        lines = [head + f"; {people_text(len(self.store))} enrolled."]
        lines += [f"Skipped {s}." for s in skipped] + [n[0].upper() + n[1:] + "." for n in notes]
        return EnrollOutcome(True, "\n\n".join(lines), crop_strip(crops, [f"{k}" for k in range(1, len(crops) + 1)]))

    def _remove(self, name) -> EnrollOutcome:
        if not name or not str(name).strip():
            raise FaceRecognitionError("choose the person to remove")
        count = self.store.remove(str(name))
        return EnrollOutcome(True, f"Removed **{md_escape(name)}** ({count} photo(s)); "
                                   f"{people_text(len(self.store))} enrolled.")

    def enroll_folder(self, folder) -> list[str]:
        """Enroll the identity sub-folders of FOLDER (start-up's `--gallery`); lines for the console.

        Incremental, so a restart costs nothing when the folder did not change: only photos not yet
        enrolled are embedded (a photo is known by its path), photos gone from the folder are dropped,
        and photos a person was given in the page are kept beside the folder's.  Photos that cannot be
        used are listed, and tried again on the next start.
        """
        from face_recognition_tf.faces.images import aligned_tree, identity_folders, list_images

        folder = Path(folder).resolve()
        if not folder.is_dir():
            raise FaceRecognitionError(f"{folder}: gallery folder not found")
        people = {sub.name: list_images(sub) for sub in identity_folders(folder)}
        if not people:
            raise FaceRecognitionError(f"{folder}: no identity sub-folders (expected {folder}/NAME/photo.jpg)")
        aligned = True if aligned_tree(folder) else None
        inside = str(folder) + os.sep
        changed, embedded, problems = {}, 0, []
        for name, photos in people.items():
            embeddings, sources = self.store.rows_of(name)
            present, enrolled = {str(p) for p in photos}, set(sources)
            keep = np.array([not s.startswith(inside) or s in present for s in sources], bool)
            new = [p for p in photos if str(p) not in enrolled]
            if not new and keep.all():
                continue
            with self._model_lock:
                fresh, kept, failures = self.recognizer.embed_many(new, aligned, skip_errors=True,
                                                                   names=[str(p) for p in new])
            problems += [message for _, message in failures]
            rows = (np.concatenate([embeddings[keep], fresh.reshape(-1, self.embedding_size)]),
                    [s for s, k in zip(sources, keep) if k] + [str(new[i]) for i in kept])
            if rows[1]:
                changed[name] = rows
                embedded += len(kept)
            else:
                problems.append(f"{folder / name}: no usable photo, not enrolled")
        if changed:
            self.store.put(changed, replace=True)
        lines = [f"gallery: {len(people)} people in {folder}: {len(changed)} updated ({embedded} photo(s) "
                 f"embedded), {len(people) - len(changed)} unchanged; {people_text(len(self.store))} in "
                 f"{self.store.path}"]
        lines += [f"  skipped {p}" for p in problems[:20]]
        if len(problems) > 20:
            lines.append(f"  ... and {len(problems) - 20} more")
        return lines

    # ------------------------------------------------------------------------------- helpers
    def _photo(self, data, label: str) -> LoadedImage:
        if data is None:
            raise FaceRecognitionError(f"{label}: no photo (none uploaded, or forgotten since): upload it")
        if isinstance(data, np.ndarray):
            image = as_rgb_image(data, label)
            return LoadedImage(image, image.shape[1], image.shape[0], 1.0, "array")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise FaceRecognitionError(f"{label}: expected the photo's bytes, got {type(data).__name__}")
        return decode_image(bytes(data), label, max_side=self.max_side)

    def _faces(self, image: np.ndarray, label: str):
        with self._model_lock:
            found = self.recognizer.analyze(image)
        if not found:
            detector = self.recognizer.detector
            raise NoFaceError(f"{label}: no face found (faces must be at least {detector.min_face_size} pixels "
                              "wide, not too turned, and not too dark)")
        return found

    def _main(self, found, image):
        """The face a one-face question is about, by the detector's pick rule (largest by default)."""
        face = pick_face([d.face for d in found], self.recognizer.detector.pick, image.shape[:2])
        return next(d for d in found if d.face is face)


def valid_name(name) -> str:
    """A person's name as typed, trimmed; refused when empty, too long, or holding control characters."""
    name = " ".join(str(name or "").split())
    if not name:
        raise FaceRecognitionError("type the person's name first")
    if len(name) > MAX_NAME:
        raise FaceRecognitionError(f"a name of {len(name)} characters; at most {MAX_NAME}")
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in name):
        raise FaceRecognitionError("the name holds control characters")
    return name


def _file_kind(path) -> str:
    """Where a --threshold-from value came from, in the page's words."""
    import json

    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        document = {}
    if isinstance(document, dict) and "results" in document:
        return f"evaluated by `frtf evaluate`, {path}"
    return f"calibrated, {path}"


def _failed(what: str) -> str:
    return f'<span class="frtf-no"><b>{what}:</b></span>'


def _answer(outcome, what: str, work):
    """Run a handler's work; any failure becomes `outcome(ok=False, message)` for the page."""
    try:
        return work()
    except FaceRecognitionError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        return outcome(False, f"{_failed(what)} {md_escape(lines[0] if lines else type(exc).__name__)}")
    except Exception as exc:  # a bug or the machine (memory): say so in the page and keep serving
        LOG.exception("demo handler failed")
        return outcome(False, f"{_failed(what)} unexpected error on the server ({type(exc).__name__}: "
                              f"{md_escape(exc)}); the demo keeps running and its console has the details.")
