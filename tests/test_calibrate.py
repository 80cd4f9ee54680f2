"""`frtf calibrate`: the threshold at a target FAR, stored with the model and used by verify / identify."""

import json
import warnings

import numpy as np
import pytest

from face_recognition_tf.cli import main as frtf
from face_recognition_tf.data import load_bin, save_bin
from face_recognition_tf.errors import ConfigError, DatasetError
from face_recognition_tf.evaluation.calibrate import (
    best_accuracy_threshold,
    calibrate,
    calibration_for_model,
    choose_threshold,
    pair_cosines,
    threshold_at_far,
)
from face_recognition_tf.evaluation.pairs import make_pairs_from_folder
from face_recognition_tf.inference import DEFAULT_THRESHOLD, FaceRecognizer, threshold_from_results
from own_people import synthetic_people, tiny_model_folder


# ------------------------------------------------------------------------------------ the arithmetic
def test_threshold_at_far_is_the_lowest_that_keeps_the_rate():
    diff = np.linspace(-0.5, 0.5, 1000)  # 1000 different pairs
    same = np.linspace(0.3, 0.9, 200)
    scores = np.concatenate([same, diff])
    issame = np.r_[np.ones(200, bool), np.zeros(1000, bool)]
    for far in (1e-3, 1e-2, 0.1):
        found = threshold_at_far(scores, issame, far)
        accepted = np.sum(diff >= found["cosine"])
        assert accepted == found["false_accepts"] == int(far * 1000 + 1e-9)
        assert found["far"] == accepted / 1000 <= far
        # one step lower would let one more stranger in
        assert np.sum(diff >= np.sort(diff)[::-1][accepted]) / 1000 > far
        assert found["tar"] == pytest.approx(np.mean(same >= found["cosine"]))
        assert found["resolvable"]
    small = threshold_at_far(scores[:300], issame[:300], 1e-3)  # 100 different pairs cannot show 1e-3
    assert not small["resolvable"] and small["false_accepts"] == 0 and small["cosine"] > scores[200:300].max()
    with pytest.raises(ConfigError, match="--far 0"):
        threshold_at_far(scores, issame, 0.0)


def test_best_accuracy_threshold_and_pair_cosines():
    scores = np.array([0.9, 0.8, 0.7, 0.4, 0.2, 0.1])
    issame = np.array([True, True, False, True, False, False])
    threshold, accuracy = best_accuracy_threshold(scores, issame)
    assert accuracy == pytest.approx(5 / 6) and threshold == pytest.approx(0.3)  # first of two equal bests
    separable, acc = best_accuracy_threshold(np.array([0.9, 0.1]), np.array([True, False]))
    assert acc == 1.0 and separable == pytest.approx(0.5)
    with pytest.raises(DatasetError, match="pairs: no different-person pair"):
        best_accuracy_threshold(scores[:2], issame[:2])
    e = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(pair_cosines(e), [0.0, 1.0])
    np.testing.assert_allclose(pair_cosines(e, flip_embeddings=e), [0.0, 1.0])


# ------------------------------------------------------------------------------- with a model folder
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    model = tiny_model_folder(root / "model")
    people = synthetic_people(root / "people", [4] * 6)  # 36 same pairs, 36 different
    make_pairs_from_folder(people, root / "own.bin")
    return root, model, people


def test_calibrate_stores_the_threshold_with_the_model_and_it_is_used(setup, tmp_path, capsys):
    root, model, people = setup
    assert frtf(["calibrate", str(model), str(root / "own.bin"), "--far", "0.1"]) == 0
    out = capsys.readouterr()
    assert "at FAR 0.1: measured FAR" in out.out and "best-accuracy threshold" in out.out
    assert "cannot measure a FAR of 0.1" not in out.err  # 36 different pairs resolve 0.1
    document = json.loads((model / "threshold.json").read_text())
    for key in ("cosine", "far", "tar", "best_accuracy_cosine", "pairs", "sha256", "model", "model_sha256"):
        assert key in document, key
    assert document["far_target"] == 0.1 and document["far"] <= 0.1 and document["different_pairs"] == 36

    # the stored FAR holds when the pairs are scored again through FaceRecognizer (the inference path)
    recognizer = FaceRecognizer(str(model), detector=None)
    assert recognizer.threshold == document["cosine"]
    assert recognizer.threshold_source.startswith("calibrated at FAR 0.1")
    images, issame = load_bin(root / "own.bin")
    embeddings = recognizer.embed(images, aligned=True)
    cosines = np.sum(embeddings[0::2] * embeddings[1::2], axis=1)
    assert np.mean(cosines[~issame] >= recognizer.threshold) <= 0.1
    assert np.mean(cosines[issame] >= recognizer.threshold) == pytest.approx(document["tar"], abs=1e-6)

    a, b = sorted((people / "person_00").glob("*.jpg"))[:2]
    assert frtf(["verify", str(model), str(a), str(b), "--aligned"]) == 0
    line = capsys.readouterr().out
    assert f"threshold {document['cosine']:.4f} (calibrated at FAR 0.1" in line
    assert frtf(["identify", str(model), str(a), "--gallery", str(people), "--aligned",
                 "--top-k", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["threshold"] == document["cosine"] and result["threshold_source"].startswith("calibrated")
    # an explicit threshold wins; the stored one can be switched off (no model load needed to check)
    assert choose_threshold(model, 0.5)[:2] == (0.5, "given")
    assert choose_threshold(model, distance_threshold=1.0)[0] == pytest.approx(0.5)
    assert choose_threshold(model, use_calibration=False)[0] == DEFAULT_THRESHOLD
    cosine, _, _, note = choose_threshold(model, flip=False)  # still used, with a note
    assert cosine == document["cosine"] and "measured with flip=True, this uses flip=False" in note


def test_a_keras_file_needs_out_and_threshold_from_reads_it(setup, tmp_path, capsys):
    root, model, people = setup
    keras_file = model / "embedding.keras"
    assert frtf(["calibrate", str(keras_file), str(root / "own.bin")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "embedding.keras: not a model folder" in err[0] and "--out" in err[0]
    out_file = tmp_path / "thr.json"
    document = calibrate(keras_file, root / "own.bin", far=0.01, out=out_file)
    assert document["path"] == str(out_file) and not document["far_resolvable"]  # 36 different pairs < 1 / 0.01
    assert document["false_accepts"] == 0
    assert threshold_from_results(out_file) == document["cosine"]
    a, b = sorted((people / "person_01").glob("*.jpg"))[:2]
    assert frtf(["verify", str(keras_file), str(a), str(b), "--aligned", "--threshold-from", str(out_file)]) == 0
    assert f"threshold {document['cosine']:.4f} (from {out_file})" in capsys.readouterr().out


def test_a_calibration_for_other_weights_is_ignored_with_a_note(setup, tmp_path, capsys):
    root, model, people = setup
    other = tiny_model_folder(tmp_path / "other")  # fresh random weights
    (other / "threshold.json").write_text(json.dumps({"cosine": 0.5, "far_target": 0.1, "model_sha256": "0" * 64,
                                                      "model_file": str(model / "embedding.keras")}))
    document, note = calibration_for_model(other)
    assert document is None and "threshold.json was calibrated for" in note and "ignored" in note
    with pytest.warns(UserWarning, match="calibrated for"):
        recognizer = FaceRecognizer(str(other), detector=None)
    assert recognizer.threshold == DEFAULT_THRESHOLD and recognizer.threshold_source.startswith("default")
    a, b = sorted((people / "person_02").glob("*.jpg"))[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the CLI says it once, as a note line, not as a Python warning
        assert frtf(["verify", str(other), str(a), str(b), "--aligned"]) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if "calibrated for" in line]
    assert len(notes) == 1 and notes[0].startswith("frtf verify: note:")
    assert f"threshold {DEFAULT_THRESHOLD:.4f} (default, not calibrated" in captured.out


def test_bad_inputs_are_one_line_errors_naming_the_file(setup, tmp_path, capsys):
    root, model, _ = setup
    one_kind = tmp_path / "same_only.bin"
    images, _ = load_bin(root / "own.bin")
    import cv2

    jpegs = [cv2.imencode(".jpg", img[:, :, ::-1])[1].tobytes() for img in images[:8]]
    save_bin(one_kind, jpegs, [True] * 4)
    bad_json = tmp_path / "threshold.json"
    bad_json.write_text(json.dumps({"cosine": 5}))
    cases = [
        (["calibrate", str(model), str(root / "own.bin"), "--far", "0"], "--far 0.0: must be a rate in (0, 1)"),
        (["calibrate", str(model), str(root / "own.bin"), "--far", "2"], "--far 2.0: must be a rate in (0, 1)"),
        (["calibrate", str(model), str(tmp_path / "missing.bin")], "missing.bin: no such pair-set file"),
        (["calibrate", str(model), str(one_kind), "--out", str(tmp_path / "t.json")],
         "same_only.bin: no different-person pair among 4"),
        (["calibrate", str(tmp_path / "nomodel"), str(root / "own.bin"), "--out", str(tmp_path / "t.json")],
         "nomodel: model not found"),
        (["calibrate", str(model), str(root / "own.bin"), "--out", str(tmp_path)], "is a folder; --out names"),
        (["verify", str(model), str(root / "own.bin"), str(root / "own.bin"), "--threshold-from", str(bad_json)],
         "threshold.json: 'cosine' must be a threshold in [-1, 1], got 5"),
    ]
    for argv, message in cases:
        assert frtf(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"frtf {argv[0]}: error:") and message in err[0], (argv, err)
    assert not (tmp_path / "t.json").exists()
