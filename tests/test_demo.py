"""`frtf demo` without a browser: the handlers behind the page's buttons, the gallery file they keep,
and the command's start-up errors.

The model is the tiny untrained MobileFaceNet (seeded, so scores do not move between runs); photos are
matplotlib's grace_hopper.jpg (and its mirror image, "the same person") and scikit-image's astronaut
("another person"), passed as file bytes the way the page passes uploads.  At a threshold of 0.9 the
untrained model tells them apart (a face against itself ~0.97, the two people ~0.7): the tests check
the plumbing, not a model's quality.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from face_recognition_tf.cli import main as frtf
from face_recognition_tf.demo import drawing
from face_recognition_tf.demo.enrolled import EnrolledPeople, default_gallery_path
from face_recognition_tf.demo.handlers import DemoService
from face_recognition_tf.errors import DatasetError
from face_recognition_tf.faces.gallery import Gallery
from own_people import tiny_model_folder

THRESHOLD = 0.9


def _encode(image_rgb, suffix=".png") -> bytes:
    import cv2

    ok, data = cv2.imencode(suffix, np.ascontiguousarray(image_rgb[:, :, ::-1]))
    assert ok
    return data.tobytes()


@pytest.fixture(scope="module")
def photos():
    cv2 = pytest.importorskip("cv2")
    try:
        from matplotlib import cbook

        grace_bytes = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes()
    except (ImportError, OSError, ValueError):
        pytest.skip("matplotlib's grace_hopper.jpg sample photo is not installed")
    data = pytest.importorskip("skimage.data", reason="scikit-image (its astronaut photo) is not installed")
    grace = cv2.cvtColor(cv2.imdecode(np.frombuffer(grace_bytes, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    astronaut = data.astronaut()
    group = np.full((grace.shape[0], grace.shape[1] + astronaut.shape[1], 3), 255, np.uint8)
    group[:, :grace.shape[1]] = grace
    group[:astronaut.shape[0], grace.shape[1]:] = astronaut
    return {"grace": grace_bytes, "mirror": _encode(grace[:, ::-1]), "astronaut": _encode(astronaut),
            "group": _encode(group, ".jpg"), "grace_rgb": grace,
            "big": _encode(np.kron(grace, np.ones((3, 3, 1), np.uint8)), ".jpg"),  # 1536x1800
            "blank": _encode(np.full((300, 300, 3), 128, np.uint8))}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(1)
    return tiny_model_folder(tmp_path_factory.mktemp("demo") / "model")


@pytest.fixture(scope="module")
def base(model, tmp_path_factory):
    """One loaded model for the module, its threshold taken from an evaluation's results.json; each
    test gets its own gallery file through `service`."""
    folder = tmp_path_factory.mktemp("base")
    results = folder / "results.json"
    results.write_text(json.dumps({"results": {"model": {"lfw": {"cosine_threshold": THRESHOLD}}}}))
    return DemoService.for_model(model, gallery_file=folder / "unused.npz", threshold_from=results)


@pytest.fixture
def service(base, tmp_path):
    return _service(base, tmp_path / "people.npz")


def _service(base, path) -> DemoService:
    store = EnrolledPeople(path, model_id=base.store.model_id, embedding_size=base.embedding_size)
    return DemoService(base.recognizer, store, model_path=base.model_path, embedding_size=base.embedding_size)


# ----------------------------------------------------------------------------------------- verify
def test_verify_says_same_or_different_and_shows_what_it_compared(service, photos):
    same = service.verify(photos["grace"], photos["mirror"])
    assert same.ok and same.same and THRESHOLD <= same.similarity <= 1.0
    assert "Same person" in same.message and "threshold 0.900 (evaluated by `frtf evaluate`, " in same.message
    assert same.photos[0].shape == photos["grace_rgb"].shape
    assert not np.array_equal(same.photos[0], photos["grace_rgb"])  # boxes and landmarks drawn
    assert all(crop.shape == (112, 112, 3) for crop in same.crops)

    different = service.verify(photos["grace"], photos["astronaut"])
    assert different.ok and different.same is False and different.similarity < THRESHOLD
    assert "Different people" in different.message


def test_verify_in_a_group_photo_names_the_face_compared(service, photos):
    result = service.verify(photos["grace"], photos["group"])
    assert result.ok
    assert "Photo B: 2 faces found; the largest one (coloured box) was compared" in result.message


@pytest.mark.parametrize("photo_b, expected", [
    (None, "photo B: no photo (none uploaded"),
    (b"", "photo B: not a readable image (empty file)"),
    (b"%PDF-1.4 not a photo at all", "photo B: not a readable image"),
    ("blank", "photo B: no face found"),
    ("huge_png", "photo B: 20000x20000 PNG image is too large to decode"),
    ("path", "photo B: expected the photo's bytes, got str"),
])
def test_verify_bad_input_is_a_message_in_the_page(service, photos, photo_b, expected):
    if photo_b == "huge_png":  # a tiny file whose header claims 400 Mpx: refused before decoding
        photo_b = photos["blank"][:16] + (20000).to_bytes(4, "big") * 2 + photos["blank"][24:]
    elif photo_b == "path":
        photo_b = "/etc/passwd"
    elif photo_b == "blank":
        photo_b = photos["blank"]
    result = service.verify(photos["grace"], photo_b)
    assert not result.ok and result.same is None
    assert "Could not compare" in result.message and expected in result.message
    assert "\n" not in result.message


def test_large_photo_is_decoded_reduced_and_said_so(service, photos):
    result = service.verify(photos["big"], photos["grace"])
    assert result.ok and result.same
    assert "Photo A: 1536x1800 photo downscaled to 1365x1600" in result.message
    assert result.photos[0].shape == (1600, 1365, 3)


def test_an_unexpected_failure_is_reported_and_the_service_goes_on(service, photos, monkeypatch):
    def broken(image, max_faces=None):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(service.recognizer, "analyze", broken)
    result = service.identify(photos["grace"])
    assert not result.ok and "unexpected error on the server (RuntimeError: simulated crash)" in result.message
    monkeypatch.undo()
    assert service.verify(photos["grace"], photos["mirror"]).ok


# ------------------------------------------------------------------------------- enroll, identify
def test_identify_names_each_face_or_calls_it_unknown(service, photos):
    empty = service.identify(photos["group"])
    assert not empty.ok and "nobody is enrolled yet" in empty.message and empty.photo is not None
    assert empty.names == [None, None]

    enrolled = service.enroll("Grace Hopper", [photos["grace"]])
    assert enrolled.ok and "Enrolled **Grace Hopper** from 1 photo(s); 1 person enrolled." in enrolled.message
    assert enrolled.crops.shape[0] > 112

    result = service.identify(photos["group"])
    assert result.ok and result.names == ["Grace Hopper", None]  # faces left to right
    assert "2 face(s) found, 1 recognised" in result.message and "**#2: unknown**" in result.message
    assert [row[:3] + row[4:] for row in result.table] == [[1, 1, "Grace Hopper", "match"],
                                                           [2, 1, "Grace Hopper", "below threshold"]]

    assert service.enroll("Eileen Collins", [photos["astronaut"]]).ok
    result = service.identify(photos["group"])
    assert result.names == ["Grace Hopper", "Eileen Collins"]
    assert [(row[0], row[1]) for row in result.table] == [(1, 1), (1, 2), (2, 1), (2, 2)]  # top 2 of 2 people


def test_enroll_checks_its_input_and_changes_nothing_on_failure(service, photos):
    for name, given, expected in [("", [photos["grace"]], "type the person's name first"),
                                  ("x" * 65, [photos["grace"]], "at most 64"),
                                  ("Bad\x00Name", [photos["grace"]], "control characters"),
                                  ("Nobody", None, "no photo given"),
                                  ("Nobody", [b"junk", photos["blank"]], "Nobody was not enrolled: photo 1: not a "
                                                                        "readable image"),
                                  ("Nobody", [photos["grace"]] * 21, "at most 20 per click")]:
        result = service.enroll(name, given)
        assert not result.ok and "Nothing enrolled" in result.message and expected in result.message, result.message
    assert len(service.store) == 0 and not service.store.path.exists()

    result = service.enroll("  Grace   Hopper ", [photos["grace"], b"junk", photos["group"]])
    assert result.ok and "from 2 photo(s)" in result.message
    assert "Skipped photo 2: not a readable image" in result.message
    assert "Photo 3: 2 faces, the largest one was taken" in result.message
    again = service.enroll("Grace Hopper", photos["mirror"])  # one photo, not a list
    assert again.ok and "Added 1 photo(s) to **Grace Hopper** (now 3)" in again.message
    assert service.people_rows() == [["Grace Hopper", 3]]


def test_names_are_kept_as_typed_and_shown_escaped(service, photos):
    result = service.enroll("*José* <b>", [photos["grace"]])
    assert result.ok and "\\*José\\* \\<b\\>" in result.message
    assert service.store.names() == ["*José* <b>"]
    assert drawing.ascii_label("#1 José 0.91") == "#1 Jose 0.91" and drawing.ascii_label("李") == ""


def test_remove_forgets_a_person_and_the_last_one_takes_the_file(service, photos):
    assert service.enroll("Grace", [photos["grace"]]).ok and service.enroll("Eileen", [photos["astronaut"]]).ok
    assert "is not enrolled" in service.remove("Nobody").message
    assert "choose the person" in service.remove(None).message
    result = service.remove("Grace")
    assert result.ok and "Removed **Grace** (1 photo(s)); 1 person enrolled." in result.message
    assert Gallery.load(service.store.path).names == ["Eileen"]
    assert service.remove("Eileen").ok and not service.store.path.exists()
    assert "nobody is enrolled yet" in service.identify(photos["grace"]).message


# ------------------------------------------------------------------------------ the gallery file
def test_people_survive_a_restart_and_the_file_is_a_gallery(base, service, photos, tmp_path):
    assert service.enroll("Grace Hopper", [photos["grace"], photos["mirror"]]).ok
    assert service.enroll("Eileen Collins", [photos["astronaut"]]).ok
    before = service.identify(photos["group"])

    restarted = _service(base, service.store.path)
    assert restarted.people_rows() == [["Eileen Collins", 1], ["Grace Hopper", 2]]
    after = restarted.identify(photos["group"])
    assert after.names == before.names == ["Grace Hopper", "Eileen Collins"]
    assert after.table == before.table
    on_disk = base.recognizer.load_gallery(service.store.path)  # what `frtf identify --gallery FILE` reads
    assert on_disk.names == ["Grace Hopper", "Eileen Collins"] and on_disk.model == base.store.model_id
    assert [s.startswith("upload 1 of 2, ") for s in restarted.store.rows_of("Grace Hopper")[1]] == [True, False]


def test_a_failed_write_leaves_file_and_people_as_they_were(service, photos, monkeypatch):
    assert service.enroll("Grace", [photos["grace"]]).ok and service.enroll("Eileen", [photos["astronaut"]]).ok
    saved = service.store.path.read_bytes()

    def disk_full(handle, **arrays):
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    for attempt in (lambda: service.enroll("Ada", [photos["mirror"]]), lambda: service.remove("Grace")):
        result = attempt()
        assert not result.ok and "cannot write (No space left on device)" in result.message
        assert service.store.path.read_bytes() == saved and service.store.names() == ["Grace", "Eileen"]
    assert sorted(os.listdir(service.store.path.parent)) == ["people.npz"]  # no temporary file left


def test_an_unwritable_place_is_a_message_and_nothing_is_enrolled(base, photos, readonly_dir):
    service = _service(base, readonly_dir / "people.npz")
    result = service.enroll("Grace", [photos["grace"]])
    assert not result.ok and "people.npz: cannot write" in result.message
    assert len(service.store) == 0 and service.people_rows() == []


def test_a_gallery_of_other_weights_or_size_is_refused(base, service, photos, tmp_path):
    assert service.enroll("Grace", [photos["grace"]]).ok
    path = service.store.path
    with pytest.raises(DatasetError, match="do not fit these weights"):
        EnrolledPeople(path, model_id="other sha256:0123456789abcdef", embedding_size=base.embedding_size)
    with pytest.raises(DatasetError, match="32-D embeddings\\); this model gives 512-D"):
        EnrolledPeople(path, model_id=base.store.model_id, embedding_size=512)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="unreadable gallery file"):
        EnrolledPeople(tmp_path / "broken.npz", model_id="m", embedding_size=32)


def test_default_gallery_file_is_per_model_under_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FRTF_CACHE_DIR", str(tmp_path / "cache"))
    first, second = default_gallery_path(tmp_path / "a" / "run"), default_gallery_path(tmp_path / "b" / "run")
    assert first.parent == tmp_path / "cache" / "demo" and first.name.startswith("a_run-")
    assert first.suffix == ".npz" and first != second


def test_enroll_a_folder_once_and_keep_photos_added_in_the_page(service, photos, tmp_path, monkeypatch):
    people = tmp_path / "people"
    (people / "grace").mkdir(parents=True)
    (people / "eileen").mkdir()
    (people / "grace" / "1.jpg").write_bytes(photos["grace"])
    (people / "grace" / "broken.jpg").write_bytes(b"junk")
    (people / "eileen" / "1.png").write_bytes(photos["astronaut"])
    lines = service.enroll_folder(people)
    assert "2 people in" in lines[0] and "2 updated (2 photo(s) embedded), 0 unchanged; 2 people in" in lines[0]
    assert any("broken.jpg: not a readable image" in line for line in lines[1:])
    assert service.enroll("grace", [photos["mirror"]]).ok

    embedded = []
    original = service.recognizer.embed_many
    monkeypatch.setattr(service.recognizer, "embed_many",
                        lambda items, *a, **k: embedded.extend(items) or original(items, *a, **k))
    (people / "eileen" / "2.png").write_bytes(photos["astronaut"])
    (people / "grace" / "1.jpg").unlink()
    lines = service.enroll_folder(people)
    # only the new photo and the one that failed before are looked at again
    assert sorted(Path(p).name for p in embedded) == ["2.png", "broken.jpg"]
    assert "2 updated (1 photo(s) embedded), 0 unchanged" in lines[0]
    assert dict(service.store.people()) == {"eileen": 2, "grace": 1}  # grace keeps the page's photo only
    assert service.store.rows_of("grace")[1][0].startswith("upload 1 of 1, ")


# ----------------------------------------------------------------------------- model tab, command
def test_model_tab_says_what_answers(service):
    card = service.model_markdown()
    for expected in ("mobilefacenet (width_multiplier 0.25)", "32-D, L2-normalised", "(x - 127.5) / 128",
                     "0.9000 cosine similarity (evaluated by `frtf evaluate`", str(service.store.path), "MTCNN"):
        assert expected in card


def test_model_tab_tells_an_imported_model_by_its_record(tmp_path):
    from face_recognition_tf.demo import model_card

    (tmp_path / "model.json").write_text(json.dumps({
        "source": {"file": "w600k_r50.onnx", "format": "onnx", "opset": 11, "sha256": "ab" * 32},
        "parity": {"reference": "onnxruntime 1.20", "max_abs_diff": 3e-6}}))
    assert model_card.source(tmp_path, tmp_path) == (
        "imported with `frtf import` from w600k_r50.onnx (onnx, opset 11, sha256 abababababababab...); "
        "matches onnxruntime 1.20 to 3.0e-06")
    assert "(x - 127.5) / 127.5: what its weights were trained on" in model_card.normalisation(
        {"input_mean": 127.5, "input_std": 127.5})


def test_the_page_builds(service):
    pytest.importorskip("gradio", reason="gradio (the demo extra) is not installed")
    from face_recognition_tf.demo.app import build_app

    app = build_app(service)
    assert {"verify-button", "identify-button", "enroll-button", "remove-button"} <= {
        block.elem_id for block in app.blocks.values()}


def test_command_without_gradio_is_one_line_saying_what_to_install(model, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "gradio", None)
    assert frtf(["demo", str(model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["frtf demo: error: the web demo needs gradio, which is not installed: "
                   "pip install 'face_recognition_tf[demo]'"]


def test_command_checks_paths_before_loading_anything(tmp_path, capsys):
    pytest.importorskip("gradio", reason="gradio (the demo extra) is not installed")
    assert frtf(["demo", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == f"frtf demo: error: {tmp_path / 'nowhere'}: model not found"
    assert frtf(["demo", str(tmp_path), "--gallery", str(tmp_path / "none")]) == 2
    assert "gallery folder not found" in capsys.readouterr().err
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert frtf(["demo", str(tmp_path), "--port", str(port)]) == 2
    assert capsys.readouterr().err.strip() == (f"frtf demo: error: cannot listen on 127.0.0.1:{port} "
                                                 "(Address already in use); choose another --port")
