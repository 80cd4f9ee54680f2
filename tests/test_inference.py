"""FaceRecognizer and `frtf embed|verify|identify` on a tiny saved model.

Synthetic "identities" are smooth random 112x112 images; a person's photos are that image plus a little
noise, so even an untrained network maps them close together and apart from other identities.
"""

import json
import warnings

import cv2
import numpy as np
import pytest

from face_recognition_tf.cli import main as frtf
from face_recognition_tf.errors import DatasetError, FaceRecognitionError
from face_recognition_tf.faces import Gallery, read_image
from face_recognition_tf.inference import FaceRecognizer, similarity_from_distance, threshold_from_results
from tiny import tiny_backbone


def _identity(seed, noise=0.0, photo=0):
    base_rng = np.random.default_rng(seed)
    small = base_rng.integers(0, 256, (7, 7, 3)).astype(np.float32)
    image = cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC)
    if noise:
        image = image + np.random.default_rng(1000 * seed + photo).normal(0, noise, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _save_rgb(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.keras"
    tiny_backbone().save(path)
    return path


@pytest.fixture(scope="module")
def recognizer(model_path):
    # the synthetic identities are aligned crops without a detectable face: no detector, since with
    # one every input, 112x112 ones too, goes through MTCNN
    return FaceRecognizer(model_path, batch_size=4, detector=None)


@pytest.fixture(scope="module")
def detecting_recognizer(model_path):
    return FaceRecognizer(model_path, batch_size=4)


@pytest.fixture(scope="module")
def gallery_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery")
    for seed, name in enumerate(["alice", "bob", "carol"], start=1):
        for photo in range(2):
            _save_rgb(root / name / f"{photo}.png", _identity(seed, noise=4.0, photo=photo))
    (root / "bob" / "corrupt.jpg").write_bytes(b"not an image")
    return root


def test_embed_rows_are_unit_vectors_and_inputs_are_interchangeable(recognizer, tmp_path):
    faces = np.stack([_identity(s) for s in range(5)])
    emb = recognizer.embed(faces)
    assert emb.shape == (5, 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # batches of 4: the fifth image lands in a second batch and must not change the first ones
    np.testing.assert_allclose(recognizer.embed(faces[:2]), emb[:2], atol=1e-5)
    path = _save_rgb(tmp_path / "face.png", faces[3])  # PNG: lossless, read back as RGB
    np.testing.assert_allclose(recognizer.embed(path), emb[3:4], atol=1e-5)
    np.testing.assert_allclose(recognizer.embed([str(path), faces[0]]), emb[[3, 0]], atol=1e-5)


def test_flip_protocol_is_insightfaces(recognizer):
    face = _identity(7)
    model = recognizer.model
    x = (face[None].astype(np.float32) - 127.5) / 128.0
    expected = np.asarray(model(x, training=False)) + np.asarray(model(x[:, :, ::-1].copy(), training=False))
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(recognizer.embed(face), expected, atol=1e-5)
    # image + mirror is symmetric: a mirrored photo gets the same embedding
    assert recognizer.verify(face, face[:, ::-1]).similarity > 0.9999
    no_flip = FaceRecognizer(model, flip=False, detector=None)
    single = np.asarray(model(x, training=False))
    np.testing.assert_allclose(no_flip.embed(face), single / np.linalg.norm(single), atol=1e-5)
    assert no_flip.verify(face, face[:, ::-1]).similarity < 0.9999


def test_verify_scores_and_thresholds(recognizer):
    a, a2, b = _identity(1, 4.0, 0), _identity(1, 4.0, 1), _identity(2, 4.0, 0)
    same = recognizer.verify(a, a)
    assert same.similarity == pytest.approx(1.0, abs=1e-5) and same.same and same.distance == pytest.approx(0, abs=1e-5)
    close, far = recognizer.verify(a, a2), recognizer.verify(a, b)
    assert close.similarity > far.similarity
    assert far.distance == pytest.approx(2 - 2 * far.similarity)
    assert recognizer.verify(a, b, threshold=far.similarity - 1e-3).same
    assert not recognizer.verify(a, b, threshold=far.similarity + 1e-3).same
    # `frtf evaluate` reports squared-L2 distance thresholds on normalised embeddings
    by_distance = recognizer.verify(a, b, distance_threshold=1.2)
    assert by_distance.threshold == pytest.approx(similarity_from_distance(1.2)) == pytest.approx(0.4)
    assert by_distance.same == (far.similarity >= 0.4)
    emb = recognizer.embed([a, b])
    assert recognizer.verify(emb[0], emb[1]).similarity == pytest.approx(far.similarity, abs=1e-5)
    with pytest.raises(FaceRecognitionError, match="not both"):
        recognizer.verify(a, b, threshold=0.3, distance_threshold=1.4)
    with pytest.raises(FaceRecognitionError, match="outside \\[0, 4\\]"):
        recognizer.verify(a, b, distance_threshold=5)


def _results_json(path, entries):
    path.write_text(json.dumps({"format_version": 1, "flip": True, "results": entries}))
    return path


def test_threshold_from_evaluate_results(tmp_path):
    one = _results_json(tmp_path / "one.json", {"run/ckpt-5": {
        "lfw": {"threshold_mean": 1.4, "cosine_threshold": 0.3}, "agedb_30": {"threshold_mean": 1.5}}})
    assert threshold_from_results(one) == pytest.approx(0.3)  # lfw preferred
    assert threshold_from_results(one, target="agedb_30") == pytest.approx(0.25)  # 1 - 1.5 / 2
    with pytest.raises(DatasetError, match="no target 'cfp_fp' \\(has lfw, agedb_30\\)"):
        threshold_from_results(one, target="cfp_fp")
    two = _results_json(tmp_path / "two.json", {"a": {"lfw": {"cosine_threshold": 0.2}},
                                               "b": {"lfw": {"cosine_threshold": 0.4}}})
    with pytest.raises(DatasetError, match="two.json: holds 2 checkpoints \\(a, b\\); name one"):
        threshold_from_results(two)
    assert threshold_from_results(two, checkpoint="b") == pytest.approx(0.4)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DatasetError, match="bad.json: not a results.json"):
        threshold_from_results(tmp_path / "bad.json")


def test_gallery_build_identify_and_npz_round_trip(recognizer, gallery_folder, tmp_path):
    with pytest.warns(UserWarning, match="corrupt.jpg"):
        gallery = recognizer.build_gallery(gallery_folder)
    assert gallery.names == ["alice", "bob", "carol"] and len(gallery.labels) == 6
    assert [s for s, _ in gallery.skipped] == [str(gallery_folder / "bob" / "corrupt.jpg")]
    query = _identity(2, noise=4.0, photo=9)  # a new photo of bob
    matches = recognizer.identify(query, gallery, top_k=3)
    assert [m.name for m in matches][0] == "bob" and matches[0].accepted
    assert len(matches) == 3 and matches[0].similarity >= matches[1].similarity >= matches[2].similarity

    saved = gallery.save(tmp_path / "people")
    assert saved.name == "people.npz" and not list(tmp_path.glob(".*tmp"))
    again = recognizer.identify(query, saved, top_k=3)
    assert [(m.name, round(m.similarity, 5)) for m in again] == [(m.name, round(m.similarity, 5)) for m in matches]
    loaded = Gallery.load(saved)
    assert loaded.sources == gallery.sources and loaded.flip and loaded.model == recognizer.model_name

    strict = recognizer.identify(query, gallery, threshold=0.99999)
    assert not strict[0].accepted  # below the threshold: unknown to the gallery
    as_dict = {name: gallery.embeddings[gallery.labels == i] for i, name in enumerate(gallery.names)}
    assert recognizer.identify(query, as_dict)[0].name == "bob"


def test_gallery_errors_are_clear(recognizer, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="bad.npz: unreadable gallery"):
        Gallery.load(bad)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(DatasetError, match="other.npz: not a face gallery"):
        Gallery.load(tmp_path / "other.npz")
    with pytest.raises(DatasetError, match="missing.npz: gallery not found"):
        recognizer.identify(_identity(1), tmp_path / "missing.npz")
    small = Gallery.from_embeddings({"x": np.ones(8, np.float32)})
    with pytest.raises(FaceRecognitionError, match="8 dimensions|32 dimensions"):
        recognizer.identify(_identity(1), small)
    (tmp_path / "people" / "nobody").mkdir(parents=True)
    with pytest.raises(FaceRecognitionError, match="'nobody' has no image"):
        recognizer.build_gallery(tmp_path / "people")


def test_unaligned_inputs_need_a_detector(model_path):
    plain = FaceRecognizer(model_path, detector=None)
    with pytest.raises(FaceRecognitionError, match="must be 112x112 pixels, got 200x150"):
        plain.embed(np.zeros((150, 200, 3), np.uint8))
    with pytest.raises(FaceRecognitionError, match="uint8"):
        plain.embed(np.zeros((112, 112, 3), np.float32))


def test_real_photo_end_to_end(detecting_recognizer):
    recognizer = detecting_recognizer
    from matplotlib import cbook

    try:
        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    except (OSError, ValueError):
        pytest.skip("matplotlib's grace_hopper.jpg sample photo is not installed")
    photo = read_image(path)
    crop = recognizer.align(photo)
    assert crop.shape == (112, 112, 3)
    # the mirrored photo is detected and aligned independently; with the flip protocol the two
    # embeddings agree closely (landmark jitter only)
    assert recognizer.verify(path, photo[:, ::-1].copy()).similarity > 0.8
    faces = recognizer.analyze(photo)
    assert len(faces) >= 1 and faces[0].embedding.shape == (32,) and faces[0].face.confidence > 0.9


# ------------------------------------------------------------------------------------------ CLI
def test_cli_embed_verify_identify(model_path, gallery_folder, tmp_path, capsys):
    faces = tmp_path / "faces"
    a = _save_rgb(faces / "a.png", _identity(1, 4.0, 5))
    b = _save_rgb(faces / "b.png", _identity(3, 4.0, 5))
    out = tmp_path / "emb.npz"
    assert frtf(["embed", str(model_path), str(faces), "--out", str(out), "--aligned"]) == 0
    with np.load(out) as data:
        assert data["embeddings"].shape == (2, 32) and [p.endswith(n) for p, n in zip(data["paths"], "ab")]

    capsys.readouterr()
    assert frtf(["verify", str(model_path), str(a), str(a), "--aligned"]) == 0
    assert capsys.readouterr().out.strip().endswith(": SAME")
    assert frtf(["verify", str(model_path), str(a), str(b), "--threshold", "0.9999", "--json", "--aligned"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["same"] is False and result["threshold"] == 0.9999
    results = _results_json(tmp_path / "results.json", {"m": {"lfw": {"cosine_threshold": 0.125}}})
    assert frtf(["verify", str(model_path), str(a), str(b), "--threshold-from", str(results), "--json", "--aligned"]) == 0
    assert json.loads(capsys.readouterr().out)["threshold"] == 0.125

    npz = tmp_path / "g.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert frtf(["identify", str(model_path), str(a), "--gallery", str(gallery_folder),
                     "--save-gallery", str(npz), "--top-k", "2", "--aligned"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("alice") and "corrupt.jpg" in captured.err and npz.is_file()
    assert frtf(["identify", str(model_path), str(b), "--gallery", str(npz), "--json", "--aligned"]) == 0
    assert json.loads(capsys.readouterr().out)["identity"] == "carol"


def test_cli_errors_name_the_file(model_path, tmp_path, capsys):
    wall = _save_rgb(tmp_path / "wall.png", np.full((160, 200, 3), 128, np.uint8))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 nope")
    face = _save_rgb(tmp_path / "face.png", _identity(1))
    cases = [
        (["verify", str(model_path), str(tmp_path / "nope.jpg"), str(face)], "nope.jpg: image file not found"),
        (["verify", str(model_path), str(wall), str(face)], "wall.png: no face found"),
        (["embed", str(model_path), str(broken), "--out", str(tmp_path / "e.npz")], "broken.jpg: not a readable image"),
        (["verify", str(tmp_path / "nomodel.keras"), str(face), str(face)], "nomodel.keras"),
        (["identify", str(model_path), str(face), "--gallery", str(tmp_path / "none.npz")], "none.npz: gallery not found"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert frtf(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "e.npz").exists()
    # --skip-errors embeds what it can and lists the rest
    assert frtf(["embed", str(model_path), str(broken), str(face), "--out", str(tmp_path / "e.npz"), "--skip-errors",
                 "--aligned"]) == 0
    assert "skipped" in capsys.readouterr().err
    with np.load(tmp_path / "e.npz") as data:
        assert data["embeddings"].shape == (1, 32)
