"""Use a trained model on photos: embed, verify (1:1) and identify (1:N) faces.

`FaceRecognizer` is the one object a user needs, in the spirit of insightface's `FaceAnalysis`: it
loads any model form `model_io` understands (run folder, checkpoint, `.keras`, SavedModel), finds the
face with MTCNN, aligns it to the 112x112 ArcFace crop the model was trained on, and compares faces by
the cosine similarity of L2-normalised embeddings (image + horizontal flip, insightface's protocol,
the same protocol `frtf evaluate` measures accuracy and thresholds with).

Images are RGB uint8 arrays (H, W, 3) or file paths.  OpenCV's `cv2.imread` gives BGR: convert with
`cv2.cvtColor(img, cv2.COLOR_BGR2RGB)` before passing arrays, or pass the path and let this module read it.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from face_recognition_tf.errors import FaceRecognitionError
from face_recognition_tf.faces.align import align_face
from face_recognition_tf.faces.detect import Face, FaceDetector, NoFaceError, load_rgb
from face_recognition_tf.faces.gallery import Gallery, Match, l2_normalize
from face_recognition_tf.model_io import model_image_size

# Cosine similarity above which two faces are called the same person.  0.3 (squared L2 distance 1.4
# between normalised embeddings) is near the LFW best threshold of ArcFace-trained IR-ResNets; your
# model's own value is the one `frtf evaluate` finds: read it with `threshold_from_results`
# (its results.json), or pass the squared-L2 best threshold as `distance_threshold`.
DEFAULT_THRESHOLD = 0.3


def similarity_from_distance(distance: float) -> float:
    """Cosine similarity equivalent to a squared L2 distance between unit vectors: cos = 1 - d/2."""
    return 1.0 - float(distance) / 2.0


def distance_from_similarity(similarity: float) -> float:
    return 2.0 - 2.0 * float(similarity)


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """Outcome of a 1:1 comparison; `same` is `similarity >= threshold`."""

    similarity: float  # cosine similarity of the normalised embeddings, in [-1, 1]
    distance: float  # squared L2 distance of the normalised embeddings (2 - 2 * similarity), as `frtf evaluate`
    threshold: float  # cosine threshold used
    same: bool


@dataclasses.dataclass(frozen=True)
class DetectedFace:
    """A face found by `FaceRecognizer.analyze`: where it is, its aligned crop and its embedding."""

    face: Face
    aligned: np.ndarray  # (S, S, 3) uint8
    embedding: np.ndarray  # (D,) float32, L2-normalised


def resolve_threshold(threshold: float | None = None, distance_threshold: float | None = None,
                      default: float = DEFAULT_THRESHOLD) -> float:
    """One cosine threshold from either form; both at once is ambiguous and refused."""
    if threshold is not None and distance_threshold is not None:
        raise FaceRecognitionError("give either a cosine threshold or a distance threshold, not both")
    if distance_threshold is not None:
        if not 0.0 <= float(distance_threshold) <= 4.0:
            raise FaceRecognitionError(
                f"distance threshold {distance_threshold} is outside [0, 4] (squared L2 between unit vectors)"
            )
        return similarity_from_distance(distance_threshold)
    if threshold is None:
        return float(default)
    if not -1.0 <= float(threshold) <= 1.0:
        raise FaceRecognitionError(f"cosine threshold {threshold} is outside [-1, 1]")
    return float(threshold)


def threshold_from_results(path, target: str | None = None, checkpoint: str | None = None) -> float:
    """The cosine threshold `frtf evaluate` found, read from its results.json (or `frtf calibrate`'s
    threshold.json: its FAR threshold).

    `target` defaults to "lfw" when present (the usual operating point) or to the only target;
    `checkpoint` may be omitted when the file holds one.  Uses the entry's `cosine_threshold`, else
    converts its mean best distance threshold (`threshold_mean`).
    """
    import json

    from face_recognition_tf.errors import DatasetError

    path = Path(path)
    try:
        document = json.loads(path.read_text())
        if isinstance(document, dict) and "cosine" in document and "results" not in document:
            from face_recognition_tf.evaluation.calibrate import load_calibration  # `frtf calibrate`'s file

            return float(load_calibration(path)["cosine"])
        results = document["results"]
    except FileNotFoundError:
        raise DatasetError(f"{path}: results file not found") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: not a results.json written by `frtf evaluate` ({type(exc).__name__}: {exc})") from None

    def choose(options, wanted, what, preferred=None):
        names = list(options)
        if wanted is not None:
            if wanted not in options:
                raise DatasetError(f"{path}: no {what} {wanted!r} (has {', '.join(names) or 'none'})")
            return options[wanted]
        if preferred in options:
            return options[preferred]
        if len(names) != 1:
            raise DatasetError(f"{path}: holds {len(names)} {what}s ({', '.join(names)}); name one")
        return options[names[0]]

    if not isinstance(results, dict):
        raise DatasetError(f"{path}: 'results' is not an object")
    entry = choose(choose(results, checkpoint, "checkpoint"), target, "target", preferred="lfw")
    if entry.get("cosine_threshold") is not None:
        return float(entry["cosine_threshold"])
    if entry.get("threshold_mean") is not None:
        return similarity_from_distance(entry["threshold_mean"])
    raise DatasetError(f"{path}: result entry has neither cosine_threshold nor threshold_mean")


class FaceRecognizer:
    """Embed, verify and identify faces with a trained embedding model.

    Args:
        model: a path `load_embedding_model` accepts, or an already loaded model (a callable taking
            normalised (B, S, S, 3) float32 images and returning (B, D) embeddings).
        detector: "mtcnn" (default), a `FaceDetector`, or None when every input is an aligned crop.
            With a detector, every input is detected (112x112 ones too) unless `aligned=True` is passed.
        flip: add the embedding of the horizontally flipped crop (insightface's protocol; default on,
            as in `frtf evaluate`, so thresholds from there apply).
        batch_size: crops per forward pass.
        threshold: default cosine threshold of `verify` and `identify`; or `distance_threshold`, the
            squared-L2 best threshold `frtf evaluate` reports.  Without either, the threshold `frtf
            calibrate` stored with the model (for these exact weights) is used, else 0.3;
            `threshold_source` says which (`use_calibration=False` skips the stored one).
        pick, min_face_size: passed to the MTCNN detector (which face to keep; smallest face searched).
    """

    def __init__(self, model, *, detector="mtcnn", flip: bool = True, batch_size: int = 32,
                 threshold: float | None = None, distance_threshold: float | None = None,
                 pick: str = "largest", min_face_size: int = 20, use_calibration: bool = True):
        from face_recognition_tf.evaluation.calibrate import choose_threshold

        self.threshold, self.threshold_source, self.calibration, self.threshold_note = choose_threshold(
            model, threshold, distance_threshold, use_calibration=use_calibration, flip=flip)
        if self.threshold_note:
            warnings.warn(self.threshold_note, stacklevel=2)
        if isinstance(model, (str, Path)):
            from face_recognition_tf.model_io import describe, load_embedding_model

            self.model_name = describe(model)
            model = load_embedding_model(model)
        else:
            self.model_name = getattr(model, "name", type(model).__name__)
        self.model = model
        if detector == "mtcnn":
            detector = FaceDetector(pick=pick, min_face_size=min_face_size)
        elif detector in (None, "none"):
            detector = None
        elif not isinstance(detector, FaceDetector):
            raise FaceRecognitionError(f"unknown detector {detector!r}; use 'mtcnn', None or a FaceDetector")
        if int(batch_size) < 1:
            raise FaceRecognitionError(f"batch_size must be at least 1, got {batch_size}")
        self.detector = detector
        self.flip = bool(flip)
        self.batch_size = int(batch_size)
        self.image_size = model_image_size(model)
        self._embedder = None

    # ----------------------------------------------------------------------------------- faces
    def detect(self, image) -> list[Face]:
        """Every face MTCNN finds in a photo, most confident first."""
        if self.detector is None:
            raise FaceRecognitionError("this FaceRecognizer has no detector (detector=None)")
        return self.detector.detect(image)

    def align(self, image, aligned: bool | None = None, source: str | None = None) -> np.ndarray:
        """The aligned (S, S, 3) uint8 crop of the photo's main face (see `FaceDetector.pick`).

        Only an explicit `aligned=True` (or a recognizer built with `detector=None`) takes the input as
        an aligned crop.  `aligned=None` (the default) and False run detection on every input, whatever
        its size: guessing "S x S means aligned" compared grey squares and noise as faces.  An S x S
        input without a detectable face is then an error that suggests `aligned=True` / `--aligned`;
        a real aligned crop is found by MTCNN and re-aligned to (nearly) itself.
        """
        image, name = load_rgb(image, source)
        size = self.image_size
        if aligned is None:
            aligned = self.detector is None
        if aligned:
            if image.shape[:2] != (size, size):
                raise FaceRecognitionError(
                    f"{name}: an aligned face must be {size}x{size} pixels, got {image.shape[1]}x{image.shape[0]}"
                    + ("" if self.detector else " (no detector configured to find and align the face)")
                )
            return image
        if self.detector is None:
            raise FaceRecognitionError(f"{name}: aligned=False needs a detector (detector=None was given)")
        try:
            face = self.detector.detect_one(image, name)
        except NoFaceError:
            if image.shape[:2] != (size, size):
                raise
            raise NoFaceError(f"{name}: no face found; if these are aligned {size}x{size} crops pass --aligned "
                              "(aligned=True in Python)") from None
        return align_face(image, face.landmarks, size)

    # ------------------------------------------------------------------------------ embeddings
    def _model_embedder(self):
        """The model's `Embedder` (evaluation/embed.py), built on first use: the one image + mirror
        forward pass, so these embeddings are the ones `frtf evaluate` measured thresholds on."""
        if self._embedder is None:
            from face_recognition_tf.evaluation.embed import Embedder

            self._embedder = Embedder(self.model)
        return self._embedder

    def embed_aligned(self, crops: np.ndarray, normalize: bool = True) -> np.ndarray:
        """Embeddings (N, D) float32 of aligned uint8 crops (N, S, S, 3), in batches."""
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:] != (self.image_size, self.image_size, 3):
            raise FaceRecognitionError(
                f"expected aligned crops of shape (N, {self.image_size}, {self.image_size}, 3), got {crops.shape}"
            )
        if crops.dtype != np.uint8:
            raise FaceRecognitionError(f"expected aligned crops of uint8 pixels 0-255, got {crops.dtype} "
                                       "(convert with np.clip(x, 0, 255).astype(np.uint8))")
        if not len(crops):
            return np.zeros((0, 0), np.float32)
        embeddings, flips = self._model_embedder()(crops, batch_size=self.batch_size, flip=self.flip)
        if flips is not None:  # image and mirror, summed (insightface)
            embeddings = embeddings + flips
        embeddings = embeddings.astype(np.float32)
        if not np.all(np.isfinite(embeddings)):
            raise FaceRecognitionError(f"model {self.model_name} produced NaN or infinite embeddings")
        return l2_normalize(embeddings) if normalize else embeddings

    def embed(self, images, aligned: bool | None = None, normalize: bool = True) -> np.ndarray:
        """Embeddings (N, D) of photos: a path, an RGB array, a list of them, or an (N, H, W, 3) array.

        Each photo is reduced to its main face (detected and aligned unless `aligned`, see `align`).
        Rows are L2-normalised, so a dot product is the cosine similarity.
        """
        items = _as_items(images)
        embeddings, _, _ = self.embed_many(items, aligned=aligned, normalize=normalize)
        return embeddings

    def embed_many(self, items, aligned: bool | None = None, normalize: bool = True, *,
                   skip_errors: bool = False, progress: bool = False, names=None):
        """Embed many photos, streaming in batches; returns (embeddings, kept indices, failures).

        With `skip_errors`, an unreadable image or one without a face is reported in `failures`
        (a list of (name, message)) instead of stopping the run.
        """
        from tqdm import tqdm

        items = list(items)
        names = list(names) if names is not None else [str(x) if isinstance(x, (str, Path)) else f"image #{i}"
                                                       for i, x in enumerate(items)]
        kept, failures, chunks, crops = [], [], [], []
        for index, item in enumerate(tqdm(items, desc="faces", unit="img", disable=not progress)):
            try:
                crops.append(self.align(item, aligned, source=names[index]))
                kept.append(index)
            except FaceRecognitionError as exc:
                if not skip_errors:
                    raise
                failures.append((names[index], str(exc)))
            if len(crops) == self.batch_size:
                chunks.append(self.embed_aligned(np.stack(crops), normalize))
                crops = []
        if crops:
            chunks.append(self.embed_aligned(np.stack(crops), normalize))
        embeddings = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
        return embeddings, kept, failures

    def analyze(self, image, max_faces: int | None = None) -> list[DetectedFace]:
        """Every face of a photo with its aligned crop and embedding (insightface's `FaceAnalysis.get`)."""
        image, name = load_rgb(image)
        faces = self.detect(image)[:max_faces] if max_faces else self.detect(image)
        if not faces:
            return []
        crops = np.stack([align_face(image, face.landmarks, self.image_size) for face in faces])
        embeddings = self.embed_aligned(crops)
        return [DetectedFace(face, crop, emb) for face, crop, emb in zip(faces, crops, embeddings)]

    # ------------------------------------------------------------------------------ comparison
    def verify(self, a, b, threshold: float | None = None, *, distance_threshold: float | None = None,
               aligned: bool | None = None) -> VerifyResult:
        """Are photos (or embeddings) `a` and `b` the same person?  1-D arrays are taken as embeddings."""
        cos_threshold = resolve_threshold(threshold, distance_threshold, self.threshold)
        emb_a, emb_b = (self._embedding_of(x, aligned) for x in (a, b))
        if emb_a.shape != emb_b.shape:
            raise FaceRecognitionError(f"embeddings differ in size: {emb_a.shape[0]} vs {emb_b.shape[0]}")
        similarity = float(np.clip(np.dot(emb_a, emb_b), -1.0, 1.0))
        return VerifyResult(similarity, distance_from_similarity(similarity), cos_threshold,
                            similarity >= cos_threshold)

    def identify(self, image, gallery, top_k: int = 1, threshold: float | None = None, *,
                 distance_threshold: float | None = None, aligned: bool | None = None) -> list[Match]:
        """The `top_k` gallery identities closest to the photo's face, best first.

        `gallery`: a `Gallery`, a .npz written by `Gallery.save`, a folder of identity sub-folders, or a
        dict name -> embedding(s).  `Match.accepted` says whether the similarity clears the threshold;
        when the best match is not accepted the face is unknown to the gallery.
        """
        cos_threshold = resolve_threshold(threshold, distance_threshold, self.threshold)
        gallery = self.load_gallery(gallery, aligned=aligned)
        return gallery.search(self._embedding_of(image, aligned), top_k=top_k, threshold=cos_threshold)

    def _embedding_of(self, x, aligned) -> np.ndarray:
        if isinstance(x, np.ndarray) and x.ndim == 1:
            return l2_normalize(x.astype(np.float32))
        return self.embed(x, aligned=aligned)[0]

    # -------------------------------------------------------------------------------- galleries
    def build_gallery(self, source, *, aligned: bool | None = None, skip_errors: bool = True,
                      progress: bool = False, warn: bool = True) -> Gallery:
        """A gallery from a folder of identity sub-folders (`people/alice/*.jpg`) or a dict name -> photos.

        Photos that cannot be read or show no face are skipped and listed in `gallery.skipped`, or
        stop the build with `skip_errors=False`; an identity left without any photo is an error.
        `warn` also reports each skipped photo as a UserWarning, for callers that never look at
        `gallery.skipped`; a caller that reports them itself (the `frtf identify` command) passes
        False, so each photo is reported once.
        A folder written by `frtf align` (or a part `frtf split` made of one) is taken as aligned crops
        unless `aligned` says otherwise.
        """
        from face_recognition_tf.faces.images import aligned_tree, identity_folders, list_images

        if isinstance(source, Mapping):
            people = {str(name): list(photos) if isinstance(photos, (list, tuple)) else [photos]
                      for name, photos in source.items()}
            label = "gallery"
        else:
            folder = Path(source)
            if not folder.is_dir():
                raise FaceRecognitionError(f"{folder}: gallery folder not found")
            people = {sub.name: list_images(sub) for sub in identity_folders(folder)}
            label = str(folder)
            if aligned is None and aligned_tree(folder):
                aligned = True
            if not people:
                raise FaceRecognitionError(f"{folder}: no identity sub-folders (expected {folder}/NAME/photo.jpg)")
        items, labels, sources = [], [], []
        for index, (name, photos) in enumerate(people.items()):
            if not photos:
                raise FaceRecognitionError(f"{label}: identity {name!r} has no image")
            for photo in photos:
                items.append(photo)
                labels.append(index)
                sources.append(str(photo) if isinstance(photo, (str, Path)) else f"{name} #{len(sources)}")
        embeddings, kept, failures = self.embed_many(items, aligned, skip_errors=skip_errors,
                                                     progress=progress, names=sources)
        if warn:
            for _, message in failures:
                warnings.warn(f"gallery: skipped {message}", stacklevel=2)
        kept_labels = np.asarray([labels[i] for i in kept], np.int64)
        present = set(kept_labels.tolist())
        empty = [name for i, name in enumerate(people) if i not in present]
        if empty:
            raise FaceRecognitionError(f"{label}: no usable face for identit{'y' if len(empty) == 1 else 'ies'} "
                                       f"{', '.join(map(repr, empty))} ({len(failures)} photo(s) skipped)")
        return Gallery(list(people), embeddings, kept_labels, [sources[i] for i in kept],
                       skipped=failures, model=self.model_name, flip=self.flip)

    def load_gallery(self, gallery, *, aligned: bool | None = None, warn: bool = True) -> Gallery:
        """A `Gallery` from any accepted form (see `identify`); photos are embedded as `build_gallery` does."""
        if isinstance(gallery, Gallery):
            return gallery
        if isinstance(gallery, Mapping):
            values = list(gallery.values())
            if values and all(isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.ndim in (1, 2) for v in values):
                return Gallery.from_embeddings(gallery)
            return self.build_gallery(gallery, aligned=aligned, warn=warn)
        path = Path(gallery)
        if path.is_dir():
            return self.build_gallery(path, aligned=aligned, warn=warn)
        loaded = Gallery.load(path)
        if loaded.flip != self.flip:
            warnings.warn(f"{path}: gallery was embedded with flip={loaded.flip}, this recognizer uses "
                          f"flip={self.flip}; similarities are slightly off", stacklevel=2)
        return loaded


def _as_items(images) -> list:
    if isinstance(images, (str, Path)):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if hasattr(images, "convert") and hasattr(images, "mode"):  # one PIL image
        return [images]
    return list(images)
