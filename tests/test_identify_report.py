"""`frtf report`: identification and thresholded verification figures, files and errors."""

import json

import numpy as np
import pytest

from face_recognition_tf.cli import main as frtf
from face_recognition_tf.data.split import split_folder
from face_recognition_tf.errors import DatasetError
from face_recognition_tf.evaluation import identification as ident
from face_recognition_tf.evaluation.pairs import make_pairs_from_folder
from own_people import synthetic_people, tiny_model_folder


# ------------------------------------------------------------------------------------ the arithmetic
def test_identify_ranks_people_and_counts_confusions():
    gallery = ["ann", "bob", "cid"]
    probes = ["ann", "ann", "bob", "cid", "cid", "zed"]
    scores = np.array([
        [0.9, 0.1, 0.2],  # ann right
        [0.3, 0.5, 0.4],  # ann taken for bob, true at rank 3
        [0.2, 0.6, 0.1],  # bob right
        [0.1, 0.7, 0.6],  # cid taken for bob, rank 2
        [0.0, 0.1, 0.35],  # cid right but below the threshold 0.4
        [0.3, 0.2, 0.1],  # zed is not in the gallery: rejected at 0.4
    ])
    result = ident.identify(scores, probes, gallery, score_thr=0.4)
    assert result.probes == 6 and result.known == 5
    assert result.rank_accuracy[1] == pytest.approx(3 / 5) and result.rank_accuracy[5] == 1.0
    assert result.identified == pytest.approx(2 / 5) and result.unknown_rejected == 1.0
    assert result.per_person["ann"] == {"probes": 2, "in_gallery": True, "rank1": 1, "accuracy": 0.5, "identified": 0.5}
    assert result.per_person["zed"] == {"probes": 1, "in_gallery": False, "rejected": 1.0}
    assert result.confusions == [{"true": "ann", "predicted": "bob", "count": 1},
                                 {"true": "cid", "predicted": "bob", "count": 1}]
    assert (result.people_recognised, result.people) == (1, 3)  # only bob has most probes right


def test_verify_counts_at_the_threshold():
    scores = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.0])
    genuine = np.array([True, True, True, True, False, False, False, False])
    v = ident.verify(scores, genuine, 0.5)
    # TP 3, FN 1, FP 1, TN 3
    assert (v.genuine, v.impostor, v.comparisons) == (4, 4, 8)
    assert v.accuracy == 0.75 and v.precision == 0.75 and v.recall == 0.75 and v.specificity == 0.75
    assert v.f1 == pytest.approx(0.75) and v.far == 0.25 and 0 < v.auc <= 1
    assert v.tar_at_far == {}  # 4 impostor comparisons cannot resolve FAR 1e-3
    assert v.to_dict()["tar_at_far"] == {"0.001": None, "0.0001": None}
    nothing = ident.verify(scores, genuine, 2.0)
    assert nothing.precision is None and nothing.f1 is None and nothing.recall == 0.0
    with pytest.raises(DatasetError, match="pairs: no impostor"):
        ident.verify(scores[:3], genuine[:3], 0.5, where="pairs")


def test_scores_templates_and_threshold_units():
    a = np.array([[3.0, 4.0], [1.0, 0.0]])
    b = np.array([[0.0, 2.0], [6.0, 8.0]])
    np.testing.assert_allclose(ident.score_matrix(a, b, "cosine"), [[0.8, 1.0], [0.0, 0.6]])
    np.testing.assert_allclose(ident.score_matrix(a, b, "l2"),
                               -np.linalg.norm(a[:, None] - b[None], axis=2), atol=1e-12)
    np.testing.assert_allclose(ident.pair_scores(np.r_[a, b], "l2"), [-np.sqrt(20), -np.sqrt(72)])
    t = ident.templates(np.array([[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]]), [0, 0, 1], 2, normalize=True)
    np.testing.assert_allclose(t, [[np.sqrt(0.5), np.sqrt(0.5)], [np.sqrt(0.5), np.sqrt(0.5)]])
    raw = ident.templates(np.array([[2.0, 0.0], [0.0, 1.0]]), [0, 0], 1, normalize=False)
    np.testing.assert_allclose(raw, [[1.0, 0.5]])
    assert ident.score_threshold(0.8, "l2") == -0.8 and ident.user_threshold(-0.8, "l2") == 0.8
    assert ident.score_threshold(0.3, "cosine") == 0.3


# ------------------------------------------------------------------------- the command on a model
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    model = tiny_model_folder(root / "model")
    people = synthetic_people(root / "people", [5] * 6)
    synthetic_people(root / "strangers", [2], seed=99, prefix="stranger")
    split_folder(people, root / "parts", val=0.2, test=0.2)  # each person: 3 train, 1 val, 1 test
    probes = root / "parts" / "test"
    (probes / "stranger_00").mkdir()
    for photo in (root / "strangers" / "stranger_00").iterdir():
        (probes / "stranger_00" / photo.name).write_bytes(photo.read_bytes())
    make_pairs_from_folder(people, root / "own.bin")
    return root, model


def test_report_writes_json_markdown_and_roc(setup, tmp_path, capsys):
    root, model = setup
    out = tmp_path / "report"
    argv = ["report", str(model), "--gallery", str(root / "parts" / "train"), "--probe", str(root / "parts" / "test"),
            "--pairs", str(root / "own.bin"), "--aligned", "--out", str(out)]
    assert frtf(argv) == 0
    printed = capsys.readouterr().out
    assert "rank-1" in printed and "rank-5" in printed and "probe vs gallery" in printed and "own.bin" in printed
    assert "accept when cosine similarity >= 0.3000 (default, not calibrated" in printed
    report = json.loads((out / "report.json").read_text())
    i = report["identification"]
    assert i["probes"] == 6 + 2 and i["probes_known"] == 6 and i["skipped"] == []
    assert 0.0 <= i["rank1"] <= i["rank5"] <= 1.0 and i["unknown_rejected"] is not None
    assert i["seconds_per_probe"] > 0 and report["gallery_summary"] == {
        **report["gallery_summary"], "identities": 6, "photos": 18}
    assert set(report["per_person"]) == {f"person_{k:02d}" for k in range(6)} | {"stranger_00"}
    v = report["verification"]["probe vs gallery"]
    assert v["comparisons"] == 8 * 6 and v["genuine"] == 6
    for key in ("accuracy", "precision", "recall", "specificity", "f1", "tar_at_far", "auc"):
        assert key in v
    assert report["verification"]["own.bin"]["comparisons"] == 60 + 60
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "report.md").read_text()
    assert "## Per person" in markdown and "## Confusions" in markdown and "stranger_00" in markdown


def test_l2_without_normalisation_picks_its_threshold_on_the_pairs(setup, tmp_path, capsys):
    root, model = setup
    out = tmp_path / "l2"
    assert frtf(["report", str(model), "--gallery", str(root / "parts" / "train"), "--probe",
                 str(root / "parts" / "test"), "--pairs", str(root / "own.bin"), "--aligned", "--distance", "l2",
                 "--no-normalize", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "threshold best accuracy on --pairs" in captured.err and "accept when L2 distance <=" in captured.out
    report = json.loads((out / "report.json").read_text())
    assert report["distance"] == "l2" and report["normalize"] is False and report["threshold"]["value"] > 0
    assert report["verification"]["own.bin"]["accuracy"] >= 0.5


def test_bad_inputs_are_one_line_errors_naming_the_path(setup, tmp_path, capsys):
    root, model = setup
    gallery, probe = str(root / "parts" / "train"), str(root / "parts" / "test")
    lonely = tmp_path / "lonely"
    synthetic_people(lonely, [2])
    no_images = tmp_path / "no_images"
    (no_images / "someone").mkdir(parents=True)
    (tmp_path / "a_file").write_text("x")
    base = ["report", str(model), "--aligned"]
    cases = [
        (["--gallery", str(tmp_path / "nope"), "--probe", probe], "nope: gallery folder not found"),
        (["--gallery", gallery, "--probe", str(no_images)], "no_images: no identity sub-folder with images"),
        (["--gallery", str(lonely), "--probe", probe], "lonely: 1 gallery identity with a usable face"),
        (["--gallery", gallery, "--probe", probe, "--threshold", "2"], "--threshold 2.0: a cosine threshold"),
        (["--gallery", gallery, "--probe", probe, "--distance", "l2", "--threshold", "-1"],
         "--threshold -1.0: an L2 distance threshold is >= 0"),
        (["--gallery", gallery, "--probe", probe, "--pairs", str(tmp_path / "x.bin")], "x.bin: pair-set file not found"),
        (["--gallery", gallery, "--probe", probe, "--out", str(tmp_path / "a_file")], "a_file: is a file"),
    ]
    for argv, message in cases:
        assert frtf([*base, *argv]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("frtf report: error:") and message in err[0], (argv, err)


def test_report_on_real_photos_with_detection(setup, tmp_path, capsys):
    """MTCNN + alignment on matplotlib's grace_hopper.jpg: the photo and its mirror image stand in for two
    people (the point is the detection path and its timing, not the untrained model's answers)."""
    import cv2

    from test_detect import _sample_face_path

    root, model = setup
    photo = cv2.imread(str(_sample_face_path()))
    for part, transform in (("gallery", lambda im: im), ("probe", lambda im: cv2.resize(im, None, fx=0.8, fy=0.8))):
        for name, image in (("grace", photo), ("mirror", photo[:, ::-1])):
            (tmp_path / part / name).mkdir(parents=True)
            cv2.imwrite(str(tmp_path / part / name / "0.jpg"), transform(image))
    (tmp_path / "probe" / "grace" / "broken.jpg").write_bytes(b"not a photo")
    out = tmp_path / "out"
    assert frtf(["report", str(model), "--gallery", str(tmp_path / "gallery"), "--probe", str(tmp_path / "probe"),
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "detection, alignment, embedding and search" in captured.out
    assert "skipped" in captured.err and "broken.jpg" in captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["identification"]["probes"] == 3 and report["identification"]["probes_scored"] == 2
    assert report["identification"]["seconds_per_probe"] > 0.01 and report["aligned"] is False
