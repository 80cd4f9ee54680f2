"""Reading photos and MTCNN detection.

The only real face photo available offline is matplotlib's `grace_hopper.jpg` sample (matplotlib is a
dependency); the detection tests use it and are skipped if a stripped matplotlib lacks it.
"""

from pathlib import Path

import cv2
import numpy as np
import pytest

from face_recognition_tf.errors import DatasetError, FaceRecognitionError
from face_recognition_tf.faces import ARCFACE_TEMPLATE, Face, FaceDetector, NoFaceError, align_face, read_image
from face_recognition_tf.faces import estimate_transform, list_images, transform_points
from face_recognition_tf.faces.detect import as_rgb_image, pick_face


def _sample_face_path() -> Path:
    from matplotlib import cbook

    try:
        path = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    except (OSError, ValueError):
        pytest.skip("matplotlib's grace_hopper.jpg sample photo is not installed")
    if not path.is_file():
        pytest.skip("matplotlib's grace_hopper.jpg sample photo is not installed")
    return path


@pytest.fixture(scope="module")
def detector():
    return FaceDetector()


@pytest.fixture(scope="module")
def face_photo():
    return read_image(_sample_face_path())


def test_read_image_returns_rgb_and_handles_grey_and_unicode_names(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB
    path = tmp_path / "visage_é.png"
    assert cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tofile(str(path)) is None
    loaded = read_image(path)
    assert loaded.shape == (20, 30, 3) and loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, rgb)

    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((8, 9), 77, np.uint8))
    assert read_image(grey).shape == (8, 9, 3)
    assert list_images(tmp_path) == sorted([grey, path])


def test_unreadable_images_are_named_in_the_error(tmp_path):
    with pytest.raises(DatasetError, match="missing.jpg: image file not found"):
        read_image(tmp_path / "missing.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg: not a readable image"):
        read_image(broken)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DatasetError, match="empty.png: not a readable image"):
        read_image(empty)
    with pytest.raises(DatasetError, match="not a file"):
        read_image(tmp_path)


def test_in_memory_images_are_checked():
    assert as_rgb_image(np.zeros((5, 6), np.uint8)).shape == (5, 6, 3)
    assert as_rgb_image(np.zeros((5, 6, 4), np.uint8)).shape == (5, 6, 3)
    with pytest.raises(FaceRecognitionError, match="photo.*uint8"):
        as_rgb_image(np.zeros((5, 6, 3), np.float32), "photo")
    with pytest.raises(FaceRecognitionError, match="RGB image"):
        as_rgb_image(np.zeros((5, 6, 2), np.uint8))


def test_pick_rules():
    small_sure = Face(np.array([0, 0, 10, 10], np.float32), 0.999, np.zeros((5, 2), np.float32))
    big_unsure = Face(np.array([50, 50, 90, 90], np.float32), 0.90, np.zeros((5, 2), np.float32))
    corner_big = Face(np.array([0, 0, 45, 45], np.float32), 0.95, np.zeros((5, 2), np.float32))
    faces = [small_sure, big_unsure, corner_big]
    assert pick_face(faces, "confident", (140, 140)) is small_sure
    assert pick_face(faces, "largest", (140, 140)) is corner_big
    assert pick_face(faces, "center", (140, 140)) is big_unsure
    with pytest.raises(FaceRecognitionError, match="pick rule"):
        FaceDetector(pick="biggest")
    with pytest.raises(FaceRecognitionError, match="thresholds"):
        FaceDetector(thresholds=(0.5, 0.5))


def test_real_face_is_found_with_plausible_landmarks(detector, face_photo):
    face = detector.detect_one(face_photo)
    x1, y1, x2, y2 = face.box
    assert face.confidence > 0.9
    left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
    for x, y in face.landmarks:
        assert x1 <= x <= x2 and y1 <= y <= y2
    assert left_eye[0] < nose[0] < right_eye[0]  # "left" is the image's left, as in the template
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])

    # The five points fit the template by a similarity with small residuals: a real face's geometry.
    matrix = estimate_transform(face.landmarks)
    residual = np.abs(transform_points(face.landmarks, matrix) - ARCFACE_TEMPLATE).max()
    assert residual < 6.0
    aligned = align_face(face_photo, face.landmarks)
    assert aligned.shape == (112, 112, 3)
    assert aligned.mean() > 40  # the crop is the face, not the black border


def test_large_photos_are_detected_downscaled_with_full_resolution_coordinates(face_photo):
    full = FaceDetector().detect_one(face_photo)
    reduced = FaceDetector(max_size=320).detect_one(face_photo)
    assert np.abs(reduced.landmarks - full.landmarks).max() < 6.0
    assert np.abs(reduced.box - full.box).max() < 10.0


def test_largest_face_is_picked_among_several(detector, face_photo):
    canvas = np.full((600, 1000, 3), 90, np.uint8)
    canvas[:, :512] = face_photo
    small = cv2.resize(face_photo, (256, 300), interpolation=cv2.INTER_AREA)
    canvas[150:450, 650:906] = small
    faces = detector.detect(canvas)
    assert len(faces) >= 2
    chosen = detector.detect_one(canvas)
    assert chosen.box[2] <= 512  # the full-size face on the left


def test_no_face_is_a_clear_error(detector, tmp_path):
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((160, 200, 3), 128, np.uint8))
    assert detector.detect(blank) == []
    with pytest.raises(NoFaceError, match="wall.png: no face found"):
        detector.detect_one(blank)
    with pytest.raises(NoFaceError, match="snapshot: no face found"):
        detector.detect_one(np.full((100, 100, 3), 30, np.uint8), source="snapshot")
