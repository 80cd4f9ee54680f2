"""`frtf align SRC OUT` on real photographs that packages ship (matplotlib's grace_hopper.jpg, and
scikit-image's astronaut() when it is installed) and on the oddities people's folders hold: an
EXIF-rotated phone photo, WebP bytes named .jpg, grey and RGBA PNGs, a 20000x20000 JPEG, a text file
named .jpg, a photo without a face, two faces, a thumbnail, an empty identity folder, a person with one
photo, OUT inside SRC, settings changed between runs, and a run killed half-way.

MTCNN costs about half a second per photo on this CPU and each worker process pays TensorFlow's start-up,
so one module-scoped run in this process is shared by most tests, the reruns only redo what they must,
and the parallel workers (spawned processes) are exercised once, by the test that kills them."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from face_recognition_tf.cli import main as frtf
from face_recognition_tf.errors import ConfigError
from face_recognition_tf.faces import ARCFACE_TEMPLATE, FaceDetector, read_image, transform_points
from face_recognition_tf.faces.align import warp_face
from face_recognition_tf.faces.align_folder import AlignSettings, align_folder, plan_folder
from face_recognition_tf.faces.detect import pyramid_scales

from test_images import exif_jpeg, huge_jpeg

ROOT = Path(__file__).resolve().parents[1]


def _grace() -> np.ndarray:
    from matplotlib import cbook

    try:
        return read_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    except Exception:
        pytest.skip("matplotlib's grace_hopper.jpg sample photo is not installed")


def _astronaut():
    try:
        from skimage import data
    except ImportError:
        return None
    return data.astronaut()


def _write(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def make_photos(root: Path) -> dict:
    """SRC with one oddity per photo; returns the expected status of each (identity, file)."""
    grace = _grace()
    expected = {}
    _write(root / "hopper" / "portrait.jpg", grace)
    expected["hopper", "portrait.jpg"] = "ok"
    # stored turned a quarter to the left, with the EXIF tag that tells a viewer to turn it back
    (root / "hopper" / "sideways.jpg").write_bytes(exif_jpeg(np.ascontiguousarray(np.rot90(grace, 1)), 6))
    expected["hopper", "sideways.jpg"] = "ok"
    buf = io.BytesIO()
    Image.fromarray(grace).save(buf, "WEBP", quality=90)
    (root / "hopper" / "phone.jpg").write_bytes(buf.getvalue())  # WebP bytes under a .jpg name
    expected["hopper", "phone.jpg"] = "ok"
    _write(root / "hopper" / "grey.png", np.repeat(cv2.cvtColor(grace, cv2.COLOR_RGB2GRAY)[:, :, None], 3, 2))
    expected["hopper", "grey.png"] = "ok"
    (root / "hopper" / "broken.jpg").write_text("not a photo, whatever the name says\n")
    expected["hopper", "broken.jpg"] = "unreadable"
    (root / "hopper" / "notes.txt").write_text("ignored: not an image name\n")
    (root / "hopper" / ".DS_Store").write_bytes(b"\0\0")

    rgba = np.dstack([grace, np.zeros(grace.shape[:2], np.uint8)])
    rgba[60:420, 120:420, 3] = 255  # the head opaque, the rest transparent: composited over white
    (root / "cutout").mkdir()
    Image.fromarray(rgba, "RGBA").save(root / "cutout" / "grace.png")
    expected["cutout", "grace.png"] = "ok"  # also the person with one photo

    (root / "empty").mkdir()
    rng = np.random.default_rng(0)
    _write(root / "nobody" / "wall.png", rng.integers(90, 110, (300, 400, 3), dtype=np.uint8))
    expected["nobody", "wall.png"] = "no_face"
    _write(root / "nobody" / "thumb.png", cv2.resize(grace, (30, 35)))
    expected["nobody", "thumb.png"] = "too_small"
    canvas = np.full((600, 1000, 3), 90, np.uint8)
    canvas[:, :512] = grace
    canvas[150:450, 650:906] = cv2.resize(grace, (256, 300), interpolation=cv2.INTER_AREA)
    _write(root / "pair" / "two.jpg", canvas)
    expected["pair", "two.jpg"] = "ok"
    (root / "huge").mkdir()
    (root / "huge" / "poster.jpg").write_bytes(huge_jpeg(20000, 20000))
    expected["huge", "poster.jpg"] = "no_face"
    astronaut = _astronaut()
    if astronaut is not None:
        _write(root / "collins" / "astronaut.png", astronaut)
        expected["collins", "astronaut.png"] = "ok"
    return expected


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    src, out = root / "src", root / "out"
    expected = make_photos(src)
    started = time.time()
    # detect_size 640: the 20000x20000 photo is searched on a 640 px copy (the 512x600 photos are not
    # shrunk), which keeps its full MTCNN pyramid to a second
    report = align_folder(src, out, AlignSettings(detect_size=640), workers=1, progress=False)
    return src, out, expected, report, time.time() - started


def _rows(report) -> dict:
    return {(row["identity"], row["file"]): row for row in report["photos"]}


def test_every_photo_is_recorded_with_its_status(aligned):
    src, out, expected, report, _ = aligned
    rows = _rows(report)
    assert {key: row["status"] for key, row in rows.items()} == expected
    assert report["workers"] == 1 and report["aligned_this_run"] == len(expected)
    for key, row in rows.items():
        crop = out / key[0] / Path(key[1]).with_suffix(".jpg")
        assert crop.is_file() == (row["status"] == "ok"), key
        if row["status"] == "ok":
            image = read_image(crop)
            assert image.shape == (112, 112, 3) and row["crop"] == f"{key[0]}/{Path(key[1]).stem}.jpg"
            assert row["score"] > 0.9 and len(row["box"]) == 4 and np.asarray(row["landmarks"]).shape == (5, 2)
    assert "not a readable image" in rows["hopper", "broken.jpg"]["note"]
    assert "smaller than --min-face-size 40" in rows["nobody", "thumb.png"]["note"]
    assert "2 faces found; kept the largest one" in rows["pair", "two.jpg"]["note"]
    assert rows["pair", "two.jpg"]["box"][2] <= 512  # the big face on the left
    huge = rows["huge", "poster.jpg"]
    assert "20000x20000 photo" in huge["note"] and "1/4 scale" in huge["note"]
    assert (huge["width"], huge["height"]) == (20000, 20000)
    # the sideways photo was turned upright: same face, same place, in the photo as displayed
    np.testing.assert_allclose(rows["hopper", "sideways.jpg"]["landmarks"], rows["hopper", "portrait.jpg"]["landmarks"],
                               atol=4.0)
    assert report["empty_identities"] == ["empty"]
    assert [item["path"] for item in report["ignored"]] == ["hopper/notes.txt"]
    notes = {s["identity"]: s["note"] for s in report["identities"]}
    assert notes["cutout"].startswith("one photo: kept") and notes["empty"].startswith("empty folder")
    assert notes["nobody"].startswith("no usable crop") and not (out / "nobody").exists()
    assert not (out / "empty").exists()


def test_report_files_and_contact_sheets(aligned):
    src, out, expected, report, _ = aligned
    on_disk = json.loads((out / "align_report.json").read_text())
    assert on_disk["counts"] == report["counts"] and len(on_disk["photos"]) == len(expected)
    lines = (out / "align_report.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header[:4] == ["identity", "file", "status", "crop"] and "left_eye_x" in header and header[-1] == "note"
    assert len(lines) == 1 + len(expected)
    sheets = sorted(p.name for p in (out / "contact_sheets").iterdir())
    people_with_crops = sorted({key[0] for key, status in expected.items() if status == "ok"})
    assert sheets == [f"{name}.png" for name in people_with_crops]
    sheet = read_image(out / "contact_sheets" / "hopper.png")
    assert sheet.shape == (112 + 16, 4 * 112, 3)  # four crops of Grace Hopper in a row, names below


def test_crops_put_the_eyes_where_the_template_does(aligned):
    """Detect again on the aligned crops (on a grey margin, so MTCNN sees a whole head): the landmarks
    land within a few pixels of insightface's template, for every way the photo was stored."""
    src, out, expected, report, _ = aligned
    detector = FaceDetector(min_face_size=40)
    names = ["hopper/portrait.jpg", "hopper/sideways.jpg", "hopper/phone.jpg", "cutout/grace.jpg"]
    names += ["collins/astronaut.jpg"] if ("collins", "astronaut.png") in expected else []
    for name in names:
        canvas = np.full((224, 224, 3), 128, np.uint8)
        canvas[56:168, 56:168] = read_image(out / name)
        error = np.abs(detector.detect_one(canvas).landmarks - 56 - ARCFACE_TEMPLATE)
        # eyes within 4 px; nose and mouth within 8 (a smile or a turned head moves them off the template)
        assert error[:2].max() < 4.0 and error.max() < 8.0, (name, error)


def test_rerun_skips_what_is_done_and_redoes_what_is_missing(aligned):
    src, out, expected, report, _ = aligned
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*.jpg")}
    (out / "hopper" / "grey.jpg").unlink()
    stale = out / "hopper" / ".portrait.jpg.abc123.tmp"  # what a kill during a write leaves
    stale.write_bytes(b"half a jpeg")
    again = align_folder(src, out, AlignSettings(detect_size=640), workers=1, progress=False)
    assert again["aligned_this_run"] == 1 and again["reused_from_earlier_runs"] == len(expected) - 1
    assert (out / "hopper" / "grey.jpg").is_file() and not stale.exists()
    assert {p: p.stat().st_mtime_ns for p in stamps if p.name != "grey.jpg"} == \
        {p: t for p, t in stamps.items() if p.name != "grey.jpg"}
    assert {k: r["status"] for k, r in _rows(again).items()} == expected

    with pytest.raises(ConfigError, match="other settings \\(min_face_size 40 -> 60\\)"):
        align_folder(src, out, AlignSettings(min_face_size=60, detect_size=640), workers=1, progress=False)


def test_a_killed_run_resumes_without_half_written_crops(tmp_path):
    """Two spawned worker processes align while the whole job is SIGKILLed; the rerun finishes it."""
    src, out = tmp_path / "src", tmp_path / "out"
    grace = _grace()
    for i in range(8):
        _write(src / f"p{i % 2}" / f"photo{i}.jpg", np.roll(grace, 7 * i, axis=1))
    code = ("import sys\nfrom face_recognition_tf.faces.align_folder import align_folder\n"
            "align_folder(sys.argv[1], sys.argv[2], workers=2, progress=False)\n")
    process = subprocess.Popen([sys.executable, "-c", code, str(src), str(out)], cwd=ROOT, start_new_session=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = out / ".align_journal.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        if journal.is_file() and len(journal.read_text().splitlines()) >= 3:  # settings + 2 photos done
            break
        time.sleep(0.02)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)  # the parent and its workers, like `kill -9` of the job
    process.wait()
    done_before = len(journal.read_text().splitlines()) - 1 if journal.is_file() else 0
    assert 2 <= done_before < 8, f"not killed half-way ({done_before} done): {process.stderr.read()[-2000:]}"
    for crop in out.rglob("*.jpg"):
        read_image(crop)  # every crop on disk is whole
    report = align_folder(src, out, workers=1, progress=False)
    assert report["counts"]["ok"] == 8 and report["aligned_this_run"] <= 8 - done_before
    assert not list(out.rglob("*.tmp"))


def test_command_line_policy_skip_and_refusals(tmp_path, capsys):
    src = tmp_path / "src"
    grace = _grace()
    canvas = np.full((600, 1000, 3), 90, np.uint8)
    canvas[:, :512] = grace
    canvas[150:450, 650:906] = cv2.resize(grace, (256, 300), interpolation=cv2.INTER_AREA)
    _write(src / "pair" / "two.jpg", canvas)
    out = tmp_path / "out"
    assert frtf(["align", str(src), str(out), "--policy", "skip", "--workers", "1", "--no-progress"]) == 0
    report = json.loads((out / "align_report.json").read_text())
    assert report["photos"][0]["status"] == "several_faces" and len(report["photos"][0]["all_faces"]) == 2
    assert report["settings"]["policy"] == "skip" and not (out / "pair" / "two.jpg").exists()
    captured = capsys.readouterr()
    assert "aligned 0 of 1 photos" in captured.out and "1 several faces" in captured.err

    for bad_out, message in [(src / "crops", "OUT is inside SRC"), (src, "OUT is inside SRC"),
                             (tmp_path, "OUT contains SRC")]:
        assert frtf(["align", str(src), str(bad_out)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert not (src / "crops").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("somebody's file")
    assert frtf(["align", str(src), str(other)]) == 2
    assert "is not the output of `frtf align`" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # argparse's usage error, before any work
        frtf(["align", str(src), str(tmp_path / "o2"), "--policy", "biggest"])
    assert usage.value.code == 2 and "invalid choice: 'biggest'" in capsys.readouterr().err
    assert frtf(["align", str(src), str(tmp_path / "o3"), "--image-size", "100"]) == 2
    assert "--image-size 100: alignment crop size 100 is not a multiple of 112 or 128" in capsys.readouterr().err


def test_plan_names_crops_without_collisions(tmp_path):
    src = tmp_path / "src"
    for name in ["a.jpg", "a.png", "a.JPEG", "sub/b.webp", ".hidden.jpg", "readme.md"]:
        path = src / "ann" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (src / "stray.jpg").write_bytes(b"x")
    plan = plan_folder(src)
    assert [(p.file, p.crop) for p in plan.photos] == [
        ("a.JPEG", "ann/a.jpg"), ("a.jpg", "ann/a_jpg.jpg"), ("a.png", "ann/a_png.jpg"), ("sub/b.webp", "ann/sub/b.jpg")]
    assert [item["path"] for item in plan.ignored] == ["ann/readme.md", "stray.jpg"]


def test_large_faces_are_shrunk_before_the_warp_and_land_on_the_template():
    face = np.zeros((112, 112, 3), np.uint8)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    for (x, y), colour in zip(ARCFACE_TEMPLATE, colours):
        cv2.circle(face, (int(round(x)), int(round(y))), 3, colour, -1)
    forward = np.array([[6.0 * np.cos(0.3), -6.0 * np.sin(0.3), 300.0], [6.0 * np.sin(0.3), 6.0 * np.cos(0.3), 100.0]])
    photo = cv2.warpAffine(face, forward, (1200, 1000), flags=cv2.INTER_LINEAR)  # a face six times the crop
    aligned = warp_face(photo, transform_points(ARCFACE_TEMPLATE, forward), 112)
    for (x, y), colour in zip(ARCFACE_TEMPLATE, colours):
        ys, xs = np.nonzero(np.all(np.abs(aligned.astype(int) - colour) < 90, axis=2))
        assert len(xs) > 5 and abs(xs.mean() - round(x)) < 1.0 and abs(ys.mean() - round(y)) < 1.0


def test_min_face_size_40_finds_a_portrait_face():
    """mtcnn 1.0.0's own pyramid finds nothing in this portrait from min_face_size ~28 on."""
    scales = pyramid_scales(512, 600, 40)
    assert scales[0] == pytest.approx(0.3) and 512 * scales[-1] >= 12 > 512 * scales[-1] * 0.709
    assert len(pyramid_scales(20, 20, 40)) == 0
    faces = FaceDetector(min_face_size=40).detect(_grace())
    assert len(faces) == 1 and faces[0].confidence > 0.9
