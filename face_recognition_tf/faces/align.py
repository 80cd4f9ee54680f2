"""Warp a face to the canonical 112x112 ArcFace crop from its five landmarks.

Recognition models are trained on crops made exactly this way (insightface's `face_align.norm_crop`):
the five MTCNN landmarks (eyes, nose tip, mouth corners) are mapped onto a fixed template by the
least-squares similarity transform (rotation, uniform scale, translation; no shear, no reflection), and
the image is warped with bilinear interpolation and black borders.  Any other cropping (a plain box
crop, a different template, an affine fit with shear) shifts the input distribution away from training
and costs accuracy, so this module reproduces insightface's procedure rather than inventing one.
"""

from __future__ import annotations

import math

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

    insightface estimates it with `skimage.transform.SimilarityTransform.estimate`, i.e. Umeyama's
    closed-form least-squares fit over all five points; `umeyama` below is that algorithm in numpy.
    A RANSAC fit (`cv2.estimateAffinePartial2D`) would drop a badly placed landmark, or give a slightly
    different optimum after its iterative refinement, and crops would no longer match the ones the
    models were trained on.
    """
    src = _as_landmarks(landmarks)
    dst = template_for_size(image_size)
    spread = float(np.ptp(src, axis=0).max())
    if spread < 1e-3:
        raise FaceRecognitionError("landmarks are degenerate (all five points coincide)")
    matrix = umeyama(src, dst)
    if not np.all(np.isfinite(matrix)):
        raise FaceRecognitionError("cannot fit a similarity transform to these landmarks")
    return matrix[:2].astype(np.float32)


def umeyama(src, dst, estimate_scale: bool = True) -> np.ndarray:
    """The (D+1)x(D+1) similarity (rotation, optional uniform scale, translation; never a reflection)
    minimising the squared distances from the mapped `src` points to `dst` (N, D) points.

    S. Umeyama, "Least-squares estimation of transformation parameters between two point patterns",
    IEEE PAMI 13(4), 1991, eq. (39)-(42); the same steps, rank cases included, as scikit-image's
    `skimage.transform._geometric._umeyama`, which insightface's `face_align` calls.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    num, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_demean, dst_demean = src - src_mean, dst - dst_mean
    cov = dst_demean.T @ src_demean / num  # eq. (38)
    d = np.ones(dim)
    if np.linalg.det(cov) < 0:  # eq. (39): choose a rotation, not a reflection
        d[dim - 1] = -1
    transform = np.eye(dim + 1)
    u, sigma, vt = np.linalg.svd(cov)
    rank = np.linalg.matrix_rank(cov)  # eq. (40) and (43)
    if rank == 0:
        return np.full_like(transform, np.nan)
    if rank == dim - 1:
        if np.linalg.det(u) * np.linalg.det(vt) > 0:
            transform[:dim, :dim] = u @ vt
        else:
            last = d[dim - 1]
            d[dim - 1] = -1
            transform[:dim, :dim] = u @ np.diag(d) @ vt
            d[dim - 1] = last
    else:
        transform[:dim, :dim] = u @ np.diag(d) @ vt
    scale = 1.0 / src_demean.var(axis=0).sum() * (sigma @ d) if estimate_scale else 1.0  # eq. (42)
    transform[:dim, dim] = dst_mean - scale * (transform[:dim, :dim] @ src_mean)  # eq. (41)
    transform[:dim, :dim] *= scale
    return transform


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


def warp_face(image: np.ndarray, landmarks: np.ndarray, image_size: int) -> np.ndarray:
    """`align_face`, except that a face more than twice the crop size is first shrunk (its region only)
    with area averaging, the landmarks following exactly.

    A bilinear warp straight from a 1000-pixel face to 112 pixels samples about one pixel in nine and
    aliases (jagged edges, moire on glasses and hair); insightface's training faces were mostly small,
    where both give the same crop, so faces up to twice the crop size take `align_face` unchanged.
    """
    import cv2

    matrix = estimate_transform(landmarks, image_size)
    zoom = math.sqrt(abs(float(np.linalg.det(matrix[:, :2].astype(np.float64)))))
    if zoom >= 0.5:
        return align_face(image, landmarks, image_size)
    corners = transform_points([[0, 0], [image_size, 0], [0, image_size], [image_size, image_size]],
                               cv2.invertAffineTransform(matrix))
    x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int) - 2, 0)
    x1, y1 = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 2, [image.shape[1], image.shape[0]])
    if x1 - x0 < 2 or y1 - y0 < 2:
        return align_face(image, landmarks, image_size)
    region = image[y0:y1, x0:x1]
    size = (max(1, round(region.shape[1] * zoom)), max(1, round(region.shape[0] * zoom)))
    small = cv2.resize(region, size, interpolation=cv2.INTER_AREA)
    factor = np.array([size[0] / region.shape[1], size[1] / region.shape[0]], np.float32)
    points = (np.asarray(landmarks, np.float32) - [x0, y0] + 0.5) * factor - 0.5  # pixel centres map to centres
    return align_face(small, points, image_size)
