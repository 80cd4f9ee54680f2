"""5-point alignment: the similarity fit lands landmarks on insightface's template, the warp moves pixels
with them, and bad landmarks are refused with a clear message."""

import cv2
import numpy as np
import pytest

from face_recognition_tf.errors import FaceRecognitionError
from face_recognition_tf.faces import ARCFACE_TEMPLATE, align_face, estimate_transform, template_for_size, transform_points
from face_recognition_tf.faces.align import umeyama


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


def test_hand_checked_least_squares_fit():
    # The template drawn at twice the size and moved by (10, 20): the answer is halve, then shift back.
    landmarks = ARCFACE_TEMPLATE * 2.0 + np.array([10.0, 20.0], np.float32)
    np.testing.assert_allclose(estimate_transform(landmarks), [[0.5, 0.0, -5.0], [0.0, 0.5, -10.0]], atol=1e-4)
    # Worked by hand: the square (0,0) (2,0) (2,2) (0,2) with its (2,2) corner pulled out to (3,3), onto
    # the unit square.  Centred src: (-1.25,-1.25) (0.75,-1.25) (1.75,1.75) (-1.25,0.75), variance
    # 1.6875 per axis; centred dst: (+-0.5, +-0.5).  Covariance dst'src/4 = [[0.625, 0.125], [0.125,
    # 0.625]]: symmetric positive definite, so no rotation; singular values 0.75 and 0.5, so scale =
    # (0.75 + 0.5) / 3.375 = 10/27, and t = 0.5 - 10/27 * 1.25 = 1/27 on both axes.
    src = [(0, 0), (2, 0), (3, 3), (0, 2)]
    dst = [(0, 0), (1, 0), (1, 1), (0, 1)]
    s, t = 10.0 / 27.0, 1.0 / 27.0
    np.testing.assert_allclose(umeyama(src, dst), [[s, 0, t], [0, s, t], [0, 0, 1]], atol=1e-12)


def test_mirrored_landmarks_get_a_rotation_never_a_reflection():
    landmarks = transform_points(ARCFACE_TEMPLATE, _similarity(2.0, 10.0, 50, 40))
    landmarks[:, 0] = 400 - landmarks[:, 0]  # a mirror image: the best reflection would fit exactly
    matrix = estimate_transform(landmarks)
    assert np.linalg.det(matrix[:, :2].astype(np.float64)) > 0
    np.testing.assert_allclose(matrix, _umeyama(landmarks, ARCFACE_TEMPLATE), atol=2e-4)


def test_matches_scikit_image_similarity_transform():
    """insightface's own call: SimilarityTransform().estimate(landmarks, template); tform.params[0:2]."""
    transform = pytest.importorskip("skimage.transform")
    rng = np.random.default_rng(7)
    for _ in range(5):
        landmarks = transform_points(ARCFACE_TEMPLATE, _similarity(rng.uniform(0.5, 5), rng.uniform(-90, 90), 300, 200))
        landmarks = landmarks + rng.normal(0, 4.0, landmarks.shape).astype(np.float32)
        src, dst = landmarks.astype(np.float64), ARCFACE_TEMPLATE.astype(np.float64)
        if hasattr(transform.SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
            tform = transform.SimilarityTransform.from_estimate(src, dst)
        else:
            tform = transform.SimilarityTransform()
            tform.estimate(src, dst)
        np.testing.assert_allclose(estimate_transform(landmarks), tform.params[0:2, :], atol=2e-4)


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
