"""What `FaceRecognizer` and `frtf embed|verify|identify` refuse, and how they say it.

- A 112x112 picture is not taken as an aligned face unless the user says so (`--aligned` /
  `aligned=True`): a grey square or noise used to be compared as a face ("similarity 0.67, SAME").
- Outputs (`embed --out`, `identify --save-gallery`) that cannot be written fail in one line naming
  the place, before the model is loaded, and written ones carry the user's umask.
- Gallery photos that cannot be used are reported once, not as a Python warning and a CLI line.
"""

import os
import re
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from face_recognition_tf.cli import main as frtf
from face_recognition_tf.faces import Gallery, NoFaceError, read_image
from face_recognition_tf.inference import FaceRecognizer

REPO = Path(__file__).resolve().parents[1]
# TensorFlow's C++ start-up lines (cuInit, oneDNN, absl) are not ours to judge here
_TF_LOG_LINE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl)")


def _frtf_subprocess(*argv, timeout=180):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "face_recognition_tf", *map(str, argv)],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


def _stderr_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.strip() and not _TF_LOG_LINE.match(line)]


def _assert_one_line_error(proc, command, *needles):
    lines = _stderr_lines(proc)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"frtf {command}: error:"), lines
    for needle in needles:
        assert str(needle) in lines[0], lines


def _save_rgb(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def _synthetic_crop(seed, noise=4.0, photo=0):
    small = np.random.default_rng(seed).integers(0, 256, (7, 7, 3)).astype(np.float32)
    image = cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC)
    image = image + np.random.default_rng(1000 * seed + photo).normal(0, noise, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _grace_hopper():
    from matplotlib import cbook

    try:
        path = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    except (OSError, ValueError):
        pytest.skip("matplotlib's grace_hopper.jpg sample photo is not installed")
    if not path.is_file():
        pytest.skip("matplotlib's grace_hopper.jpg sample photo is not installed")
    return read_image(path)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from face_recognition_tf.models import build_backbone

    path = tmp_path_factory.mktemp("model") / "m.keras"
    build_backbone("r18", embedding_size=32, width_multiplier=0.25).save(path)
    return path


@pytest.fixture(scope="module")
def not_faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("not_faces")
    grey = _save_rgb(root / "grey_112.png", np.full((112, 112, 3), 128, np.uint8))
    noise = _save_rgb(root / "noise_112.png", np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8))
    return grey, noise


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path):
    return stat.S_IMODE(Path(path).stat().st_mode)


# ----------------------------------------------------------------------- aligned only when asked
def test_a_112x112_picture_without_a_face_is_not_embedded_as_one(model_path, not_faces):
    grey, noise = not_faces
    recognizer = FaceRecognizer(model_path, batch_size=4)
    hint = "no face found; if these are aligned 112x112 crops pass --aligned"
    with pytest.raises(NoFaceError, match=re.escape(f"grey_112.png: {hint}")):
        recognizer.embed(grey)
    with pytest.raises(NoFaceError, match=re.escape(hint)):
        recognizer.verify(np.full((112, 112, 3), 128, np.uint8), read_image(noise))
    with pytest.raises(NoFaceError, match="noise_112.png"):
        recognizer.embed([noise], aligned=False)
    # saying so is the way to embed aligned crops, with a detector or without one
    assert recognizer.embed([grey, noise], aligned=True).shape == (2, 32)
    assert FaceRecognizer(model_path, detector=None).embed([grey, noise]).shape == (2, 32)


def test_a_real_aligned_face_is_still_found_without_aligned(model_path):
    photo = _grace_hopper()
    recognizer = FaceRecognizer(model_path, batch_size=4)
    crop = recognizer.align(photo)  # the 112x112 ArcFace crop of the face
    assert crop.shape == (112, 112, 3)
    realigned = recognizer.align(crop)  # detected again, not assumed
    assert realigned.shape == (112, 112, 3) and not np.array_equal(realigned, crop)
    assert np.array_equal(recognizer.align(crop, aligned=True), crop)
    assert recognizer.verify(crop, crop, aligned=None).similarity > 0.999
    assert float(recognizer.embed(crop)[0] @ recognizer.embed(crop, aligned=True)[0]) > 0.8


def test_cli_verify_of_non_faces_is_a_one_line_error(model_path, not_faces):
    grey, noise = not_faces
    proc = _frtf_subprocess("verify", model_path, grey, noise)
    assert "SAME" not in proc.stdout and "DIFFERENT" not in proc.stdout
    _assert_one_line_error(proc, "verify", grey, "no face found; if these are aligned 112x112 crops pass --aligned")


def test_cli_embed_of_non_faces_fails_or_skips_them(model_path, not_faces, tmp_path, capsys):
    grey, noise = not_faces
    out = tmp_path / "e.npz"
    assert frtf(["embed", str(model_path), str(grey), str(noise), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "grey_112.png: no face found" in err[0] and "--aligned" in err[0], err
    assert frtf(["embed", str(model_path), str(grey), str(noise), "--out", str(out), "--skip-errors"]) == 2
    assert not out.exists()
    assert frtf(["embed", str(model_path), str(grey), str(noise), "--out", str(out), "--aligned"]) == 0
    with np.load(out) as data:
        assert data["embeddings"].shape == (2, 32)


def test_aligned_help_says_detection_runs_otherwise(capsys):
    with pytest.raises(SystemExit):
        frtf(["verify", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "auto-detected" not in help_text
    assert "--aligned" in help_text and "skip face detection" in help_text


# -------------------------------------------------------------------------------- outputs
def test_embed_to_a_read_only_place_fails_first_in_one_line(model_path, tmp_path, readonly_dir, capsys):
    face = _save_rgb(tmp_path / "face.png", _synthetic_crop(1))
    proc = _frtf_subprocess("embed", model_path, face, "--out", readonly_dir / "e.npz", "--aligned")
    _assert_one_line_error(proc, "embed", readonly_dir)
    assert frtf(["embed", str(model_path), str(face), "--out", str(readonly_dir / "sub" / "e.npz"), "--aligned"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(readonly_dir / "sub") in err[0], err
    assert list(readonly_dir.iterdir()) == []


def test_embed_output_is_checked_before_the_model_is_loaded(tmp_path, capsys):
    face = _save_rgb(tmp_path / "face.png", _synthetic_crop(1))
    (tmp_path / "taken.npz").mkdir()
    # the model does not exist either: the output is what is reported, so no model was loaded
    assert frtf(["embed", str(tmp_path / "none.keras"), str(face), "--out", str(tmp_path / "taken.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "taken.npz: is a folder" in err[0], err


def test_identify_save_gallery_to_a_read_only_place_fails_first(model_path, tmp_path, readonly_dir, capsys):
    face = _save_rgb(tmp_path / "face.png", _synthetic_crop(1))
    _save_rgb(tmp_path / "people" / "alice" / "a.png", _synthetic_crop(1, photo=1))
    argv = ["identify", str(tmp_path / "none.keras"), str(face), "--gallery", str(tmp_path / "people"),
            "--save-gallery", str(readonly_dir / "g.npz"), "--aligned"]
    assert frtf(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(readonly_dir) in err[0] and "none.keras" not in err[0], err


def test_embed_and_gallery_files_get_the_umask_mode(model_path, tmp_path, umask_022):
    face = _save_rgb(tmp_path / "face.png", _synthetic_crop(1))
    out = tmp_path / "out" / "e.npz"
    assert frtf(["embed", str(model_path), str(face), "--out", str(out), "--aligned"]) == 0
    assert _mode(out) == 0o644
    saved = Gallery.from_embeddings({"a": np.ones(4, np.float32)}).save(tmp_path / "g")
    assert saved.name == "g.npz" and _mode(saved) == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_gallery_save_to_a_read_only_place_is_an_output_error(readonly_dir):
    from face_recognition_tf.errors import OutputError

    with pytest.raises(OutputError, match=re.escape(str(readonly_dir))):
        Gallery.from_embeddings({"a": np.ones(4, np.float32)}).save(readonly_dir / "g.npz")


# ------------------------------------------------------------------------ skipped gallery photos
@pytest.fixture(scope="module")
def gallery_with_bad_photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("people")
    for seed, name in enumerate(["alice", "bob"], start=1):
        for photo in range(2):
            _save_rgb(root / name / f"{photo}.png", _synthetic_crop(seed, photo=photo))
    (root / "alice" / "broken_one.jpg").write_bytes(b"not an image")
    (root / "bob" / "broken_two.png").write_bytes(b"")
    return root


def test_library_warns_about_skipped_photos_only_when_nobody_asked(model_path, gallery_with_bad_photos):
    recognizer = FaceRecognizer(model_path, detector=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet = recognizer.build_gallery(gallery_with_bad_photos, warn=False)
    assert [str(w.message) for w in caught if "skipped" in str(w.message)] == []
    assert sorted(Path(s).name for s, _ in quiet.skipped) == ["broken_one.jpg", "broken_two.png"]
    with pytest.warns(UserWarning) as record:  # a library caller who never reads gallery.skipped
        recognizer.build_gallery(gallery_with_bad_photos)
    messages = " ".join(str(w.message) for w in record)
    assert "broken_one.jpg" in messages and "broken_two.png" in messages


def test_cli_identify_reports_each_skipped_photo_once(model_path, gallery_with_bad_photos, tmp_path):
    query = _save_rgb(tmp_path / "query.png", _synthetic_crop(2, photo=7))
    proc = _frtf_subprocess("identify", model_path, query, "--gallery", gallery_with_bad_photos, "--aligned")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("bob")
    assert "UserWarning" not in proc.stderr and "warnings.warn" not in proc.stderr
    for name in ("broken_one.jpg", "broken_two.png"):
        assert proc.stderr.count(name) == 1, proc.stderr
    skipped = [line for line in _stderr_lines(proc) if "skipped" in line]
    assert len(skipped) == 2 and all(line.startswith("frtf identify: gallery: skipped") for line in skipped)
