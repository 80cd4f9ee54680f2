"""5-point alignment: the similarity fit lands landmarks on insightface's template, the warp moves pixels
with them, and bad landmarks are refused with a clear message."""

import cv2
import numpy as np
import pytest

from face_recognition_tf.errors import FaceRecognitionError
from face_recognition_tf.faces import ARCFACE_TEMPLATE, align_face, estimate_transform, template_for_size, transform_points


def _similarity(scale, angle_deg, tx, ty):
    a = np.deg2rad(angle_deg)
    return np.array(
        [[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]], dtype=np.float64
    )


def _umeyama(src, dst):
    """Reference least-squares similarity (skimage's SimilarityTransform.estimate, as insightface uses)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / s0.var(0).sum()
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def test_template_is_insightface_arcface_dst():
    np.testing.assert_allclose(template_for_size(112), ARCFACE_TEMPLATE)
    np.testing.assert_allclose(template_for_size(224), ARCFACE_TEMPLATE * 2)
    t128 = template_for_size(128)
    np.testing.assert_allclose(t128[:, 0], ARCFACE_TEMPLATE[:, 0] + 8.0)
    np.testing.assert_allclose(t128[:, 1], ARCFACE_TEMPLATE[:, 1])
    with pytest.raises(FaceRecognitionError, match="multiple of 112 or 128"):
        template_for_size(100)


@pytest.mark.parametrize("scale,angle,tx,ty", [(2.5, 0.0, 100.0, 40.0), (0.7, 25.0, -5.0, 12.0), (4.0, -160.0, 600.0, 500.0)])
def test_known_similarity_is_recovered(scale, angle, tx, ty):
    forward = _similarity(scale, angle, tx, ty)  # template -> photo
    landmarks = transform_points(ARCFACE_TEMPLATE, forward)
    matrix = estimate_transform(landmarks)
    np.testing.assert_allclose(transform_points(landmarks, matrix), ARCFACE_TEMPLATE, atol=1e-3)
    inverse = cv2.invertAffineTransform(forward)
    np.testing.assert_allclose(matrix, inverse, rtol=1e-4, atol=1e-3)


def test_noisy_landmarks_give_the_least_squares_fit_over_all_five_points():
    rng = np.random.default_rng(3)
    for _ in range(5):
        landmarks = transform_points(ARCFACE_TEMPLATE, _similarity(3.0, rng.uniform(-30, 30), 200, 150))
        landmarks = landmarks + rng.normal(0, 6.0, landmarks.shape).astype(np.float32)
        landmarks[rng.integers(5)] += 25.0  # one badly placed point: a robust fit would drop it, insightface does not
        np.testing.assert_allclose(estimate_transform(landmarks), _umeyama(landmarks, ARCFACE_TEMPLATE), atol=2e-4)


def test_warp_moves_the_pixels_onto_the_template():
    # A 112x112 "face" with a distinct blob at each template landmark, placed in a larger photo by a
    # known similarity; aligning the photo must bring each blob back to its template position.
    face = np.zeros((112, 112, 3), np.uint8)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    for (x, y), colour in zip(ARCFACE_TEMPLATE, colours):
        cv2.circle(face, (int(round(x)), int(round(y))), 3, colour, -1)
    forward = _similarity(2.2, 17.0, 150.0, 60.0)
    photo = cv2.warpAffine(face, forward, (480, 400), flags=cv2.INTER_LINEAR)
    landmarks = transform_points(ARCFACE_TEMPLATE, forward)

    aligned = align_face(photo, landmarks)
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
    for (x, y), colour in zip(ARCFACE_TEMPLATE, colours):
        mask = np.all(np.abs(aligned.astype(int) - colour) < 90, axis=2)
        ys, xs = np.nonzero(mask)
        assert len(xs) > 5
        assert abs(xs.mean() - round(x)) < 1.0 and abs(ys.mean() - round(y)) < 1.0

    big = align_face(photo, landmarks, image_size=224)
    assert big.shape == (224, 224, 3)


def test_mtcnn_keypoint_dict_and_flat_arrays_are_accepted():
    landmarks = transform_points(ARCFACE_TEMPLATE, _similarity(1.5, 5.0, 30, 20))
    names = ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"]
    as_dict = {name: list(point) for name, point in zip(names, landmarks)}
    np.testing.assert_allclose(estimate_transform(as_dict), estimate_transform(landmarks), atol=1e-5)
    np.testing.assert_allclose(estimate_transform(landmarks.reshape(-1)), estimate_transform(landmarks), atol=1e-5)


def test_bad_landmarks_and_images_are_refused():
    with pytest.raises(FaceRecognitionError, match="5 \\(x, y\\) landmarks"):
        estimate_transform(np.zeros((4, 2)))
    with pytest.raises(FaceRecognitionError, match="degenerate"):
        estimate_transform(np.full((5, 2), 7.0))
    with pytest.raises(FaceRecognitionError, match="NaN"):
        estimate_transform(np.full((5, 2), np.nan))
    with pytest.raises(FaceRecognitionError, match="lacks 'right_eye'"):
        estimate_transform({"left_eye": (1, 2)})
    with pytest.raises(FaceRecognitionError, match="uint8"):
        align_face(np.zeros((50, 50, 3), np.float32), ARCFACE_TEMPLATE)
