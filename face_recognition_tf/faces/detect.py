"""Find faces in photos with MTCNN.

MTCNN (the `mtcnn` package, weights shipped inside it, so nothing is downloaded) is the detector
insightface's training sets were aligned with, so its five landmarks feed `align.align_face` directly.
Images are RGB uint8 everywhere in this package; files are read by `faces.images` (the package's one
image reader), and `read_image` / `list_images` / `IMAGE_SUFFIXES` here are its names kept for the
code that imports them from this module.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from face_recognition_tf.errors import FaceRecognitionError
from face_recognition_tf.faces.images import IMAGE_SUFFIXES, downscale, list_images, read_rgb  # noqa: F401 (re-exported)

PICK_RULES = ("largest", "confident", "center")


class NoFaceError(FaceRecognitionError):
    """The detector found no face (above its confidence thresholds) in an image."""


@dataclasses.dataclass(frozen=True)
class Face:
    """One detected face, in the pixel coordinates of the image it was found in."""

    box: np.ndarray  # (4,) float32: x1, y1, x2, y2
    confidence: float
    landmarks: np.ndarray  # (5, 2) float32: left eye, right eye, nose, mouth left, mouth right

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


def read_image(path) -> np.ndarray:
    """Load a photo as RGB uint8 (H, W, 3): `faces.images.read_rgb` (content-sniffed, EXIF-oriented,
    huge photos decoded reduced); a `DatasetError` naming the file if it cannot be used."""
    return read_rgb(path)


def as_rgb_image(image, source: str = "image") -> np.ndarray:
    """Check and normalise an in-memory image to RGB uint8 (H, W, 3); `source` names it in errors."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim != 3 or image.shape[2] != 3:
        raise FaceRecognitionError(f"{source}: expected an (H, W, 3) RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise FaceRecognitionError(
            f"{source}: expected uint8 pixels 0-255, got {image.dtype} (convert with np.clip(x, 0, 255).astype(np.uint8))"
        )
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise FaceRecognitionError(f"{source}: image is too small ({image.shape[1]}x{image.shape[0]} pixels)")
    return np.ascontiguousarray(image)


def load_rgb(image_or_path, source: str | None = None) -> tuple[np.ndarray, str]:
    """An RGB uint8 image and the name to use for it in messages, from a path or an array."""
    if isinstance(image_or_path, (str, Path)):
        return read_image(image_or_path), str(image_or_path)
    name = source or "image"
    if hasattr(image_or_path, "convert") and hasattr(image_or_path, "mode"):  # a PIL image
        image_or_path = image_or_path.convert("RGB")
    return as_rgb_image(image_or_path, name), name


def _default_device() -> str:
    import tensorflow as tf

    return "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"


class FaceDetector:
    """MTCNN with the choices a face-recognition user needs made explicit.

    - `min_face_size`: smallest face (pixels) searched for; larger values are faster.
    - `thresholds`: P-Net, R-Net, O-Net confidence thresholds (MTCNN's defaults).
    - `max_size`: photos whose longer side exceeds this are detected on a downscaled copy (MTCNN's
      image pyramid grows with the image); boxes and landmarks are mapped back to full resolution, so
      alignment still uses every original pixel.
    - `pick`: which face `detect_one` returns when several are found: "largest" box (the subject of a
      portrait), most "confident", or insightface's "center" rule (area minus twice the squared
      distance from the image centre).
    """

    def __init__(
        self,
        *,
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.8),
        max_size: int | None = 1280,
        pick: str = "largest",
        device: str | None = None,
    ):
        if pick not in PICK_RULES:
            raise FaceRecognitionError(f"unknown face pick rule {pick!r}; choose from {', '.join(PICK_RULES)}")
        if len(thresholds) != 3 or not all(0.0 <= float(t) <= 1.0 for t in thresholds):
            raise FaceRecognitionError(f"detector thresholds must be three numbers in [0, 1], got {thresholds}")
        self.min_face_size = int(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.max_size = max_size
        self.pick = pick
        self._device = device
        self._mtcnn = None  # built on first use: importing it loads TensorFlow and the weights

    def _detector(self):
        if self._mtcnn is None:
            from mtcnn import MTCNN
            from mtcnn.stages import StageONet, StageRNet

            stages = [_full_pyramid_pnet_stage(), StageRNet, StageONet]
            self._mtcnn = MTCNN(stages=stages, device=self._device or _default_device())
        return self._mtcnn

    def detect(self, image, source: str | None = None, *, min_face_size: int | None = None) -> list[Face]:
        """Every face found, most confident first.

        `min_face_size` overrides the detector's for this call (same units: pixels of the copy MTCNN
        runs on), for callers that state the minimum in the photo's own pixels and convert it per photo.
        """

        image, name = load_rgb(image, source)
        image, scale = downscale(image, self.max_size)
        p_thr, r_thr, o_thr = self.thresholds
        try:
            rows = self._detector().detect_faces(
                image,
                box_format="xyxy",
                output_type="numpy",
                min_face_size=int(min_face_size or self.min_face_size),
                threshold_pnet=p_thr,
                threshold_rnet=r_thr,
                threshold_onet=o_thr,
            )
        except (ValueError, IndexError) as exc:  # mtcnn's own failure modes on odd inputs
            raise FaceRecognitionError(f"{name}: face detection failed ({type(exc).__name__}: {exc})") from None
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, 16)
        faces = [
            Face(
                box=(row[1:5] / scale).astype(np.float32),
                confidence=float(row[5]),
                # mtcnn stores the five x coordinates, then the five y coordinates
                landmarks=(np.stack([row[6:11], row[11:16]], axis=1) / scale).astype(np.float32),
            )
            for row in rows
        ]
        return sorted(faces, key=lambda face: -face.confidence)

    def detect_one(self, image, source: str | None = None) -> Face:
        """The one face a photo is about (see `pick`); NoFaceError naming the image if there is none."""
        image, name = load_rgb(image, source)
        faces = self.detect(image, name)
        if not faces:
            raise NoFaceError(
                f"{name}: no face found (MTCNN, min_face_size={self.min_face_size}, thresholds={self.thresholds})"
            )
        return pick_face(faces, self.pick, image.shape[:2])


def pyramid_scales(width: int, height: int, min_face_size: float, scale_factor: float = 0.709,
                   min_size: int = 12) -> np.ndarray:
    """MTCNN's image pyramid: scales 12/min_face_size * 0.709^k while the shorter side stays >= 12 px.

    mtcnn 1.0.0 counts the levels as if min_face_size were 12, so from min_face_size ~25 on its last
    levels fall under P-Net's 12x12 window; TensorFlow then raises InvalidArgumentError, which mtcnn
    takes for "no faces found" for the whole photo (a 173 px face in a 512x600 portrait is not found
    with min_face_size=40).  This is the original MTCNN's rule (`while minl >= 12`).
    """
    first = min_size / float(min_face_size)
    shorter = min(width, height) * first
    if shorter < min_size:
        return np.empty(0)
    count = int(np.floor(np.log(min_size / shorter) / np.log(scale_factor) + 1e-9)) + 1
    return first * scale_factor ** np.arange(count)


def _full_pyramid_pnet_stage():
    """mtcnn's P-Net stage with `pyramid_scales` as its pyramid (passed to `MTCNN(stages=...)`, which
    takes stage instances; mtcnn itself is left untouched).  The body is mtcnn 1.0.0's own."""
    from mtcnn.stages import StagePNet
    from mtcnn.utils.bboxes import generate_bounding_box, resize_to_square, smart_nms_from_bboxes, upscale_bboxes
    from mtcnn.utils.images import apply_scales

    class StagePNetFullPyramid(StagePNet):
        def __call__(self, images_normalized, images_oshapes, min_face_size=20, min_size=12, scale_factor=0.709,
                     threshold_pnet=0.6, nms_pnet1=0.5, nms_pnet2=0.7, **kwargs):
            groups = [pyramid_scales(int(shape[1]), int(shape[0]), min_face_size, scale_factor, min_size)
                      for shape in images_oshapes]
            if max(len(group) for group in groups) == 0:
                return np.empty((0, 6))  # photo smaller than the smallest face searched for
            scaled, scales = apply_scales(images_normalized, groups)
            batch_size = images_normalized.shape[0]
            results = [self._model(image) for image in scaled]
            proposals = [generate_bounding_box(result[0], result[1], threshold_pnet) for result in results]
            upscaled = [upscale_bboxes(b, np.asarray([scale] * batch_size)) for b, scale in zip(proposals, scales)]
            per_scale = [smart_nms_from_bboxes(b, threshold=nms_pnet1, method="union", initial_sort=False)
                         for b in upscaled]
            boxes = np.concatenate(per_scale, axis=0) if per_scale else np.empty((0, 6))
            boxes = smart_nms_from_bboxes(boxes, threshold=nms_pnet2, method="union", initial_sort=True)
            return resize_to_square(boxes)

    return StagePNetFullPyramid()


def pick_face(faces: list[Face], rule: str, image_shape: tuple[int, int]) -> Face:
    if rule == "confident":
        return max(faces, key=lambda f: (f.confidence, f.area))
    if rule == "largest":
        return max(faces, key=lambda f: (f.area, f.confidence))
    height, width = image_shape
    centre = np.array([width / 2.0, height / 2.0])

    def centre_score(face: Face) -> float:
        box_centre = np.array([(face.box[0] + face.box[2]) / 2.0, (face.box[1] + face.box[3]) / 2.0])
        return face.area - 2.0 * float(np.sum((box_centre - centre) ** 2))

    return max(faces, key=centre_score)
