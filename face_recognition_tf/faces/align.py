"""Warp a face to the canonical 112x112 ArcFace crop from its five landmarks.

Recognition models are trained on crops made exactly this way (insightface's `face_align.norm_crop`):
the five MTCNN landmarks (eyes, nose tip, mouth corners) are mapped onto a fixed template by the
least-squares similarity transform (rotation, uniform scale, translation; no shear, no reflection), and
the image is warped with bilinear interpolation and black borders.  Any other cropping (a plain box
crop, a different template, an affine fit with shear) shifts the input distribution away from training
and costs accuracy, so this module reproduces insightface's procedure rather than inventing one.
"""

from __future__ import annotations

import numpy as np

from face_recognition_tf.errors import FaceRecognitionError

# insightface's `arcface_dst`: where the five landmarks sit in a 112x112 training crop, in the order
# left eye, right eye, nose, left mouth corner, right mouth corner ("left" = left side of the image).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def template_for_size(image_size: int = 112) -> np.ndarray:
    """The landmark template for a square crop of `image_size` pixels.

    Follows insightface: sizes that are multiples of 112 scale the template; multiples of 128 scale it
    and shift it 8/128 of the width to the right (the 128-pixel crops are the 112 crops with a margin).
    """
    if image_size % 112 == 0:
        ratio, shift = image_size / 112.0, 0.0
    elif image_size % 128 == 0:
        ratio = image_size / 128.0
        shift = 8.0 * ratio
    else:
        raise FaceRecognitionError(
            f"alignment crop size {image_size} is not a multiple of 112 or 128 (insightface's templates)"
        )
    template = ARCFACE_TEMPLATE * ratio
    template[:, 0] += shift
    return template


def _as_landmarks(landmarks) -> np.ndarray:
    if isinstance(landmarks, dict):  # mtcnn's keypoints dict
        try:
            landmarks = [landmarks[name] for name in LANDMARK_NAMES]
        except KeyError as exc:
            raise FaceRecognitionError(f"landmarks dict lacks {exc.args[0]!r}; expected keys {LANDMARK_NAMES}") from None
    points = np.asarray(landmarks, dtype=np.float32)
    if points.shape == (10,):
        points = points.reshape(5, 2)
    if points.shape != (5, 2):
        raise FaceRecognitionError(f"expected 5 (x, y) landmarks, got an array of shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise FaceRecognitionError("landmarks contain NaN or infinite values")
    return points


def estimate_transform(landmarks, image_size: int = 112) -> np.ndarray:
    """The 2x3 similarity matrix taking `landmarks` (image pixels) onto the ArcFace template.

    Least squares over all five points, as insightface's Umeyama estimate.  OpenCV's estimator is
    used with a reprojection threshold no landmark can exceed, so its RANSAC keeps every point as an
    inlier and its Levenberg-Marquardt refinement lands on the plain least-squares optimum (the default
    threshold would silently drop a landmark, which a robust fit does but insightface does not).
    """
    import cv2

    src = _as_landmarks(landmarks)
    dst = template_for_size(image_size)
    spread = float(np.ptp(src, axis=0).max())
    if spread < 1e-3:
        raise FaceRecognitionError("landmarks are degenerate (all five points coincide)")
    matrix, _ = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=1e9, maxIters=1, refineIters=50
    )
    if matrix is None:
        raise FaceRecognitionError("cannot fit a similarity transform to these landmarks")
    return matrix.astype(np.float32)


def align_face(image: np.ndarray, landmarks, image_size: int = 112) -> np.ndarray:
    """Crop and align one face: `image` (H, W, 3) uint8 plus its five landmarks -> (S, S, 3) uint8.

    Channel order is kept as given (the package works in RGB throughout).
    """
    import cv2

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise FaceRecognitionError(
            f"align_face expects an (H, W, 3) uint8 image, got shape {image.shape} dtype {image.dtype}"
        )
    matrix = estimate_transform(landmarks, image_size)
    return cv2.warpAffine(image, matrix, (image_size, image_size), flags=cv2.INTER_LINEAR, borderValue=0.0)


def transform_points(points, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (N, 2) points (used to check and to draw aligned landmarks)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return (points @ np.asarray(matrix, dtype=np.float64)[:, :2].T + np.asarray(matrix)[:, 2]).astype(np.float32)
