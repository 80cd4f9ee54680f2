"""`frtf quickstart --max-steps N` runs the whole chain and writes quickstart.json (the fast path).

The full figure (accuracy after the configured training, wall time) is benchmarks/bench_quickstart.py.
"""

import json

from face_recognition_tf.cli import main


def test_quickstart_fast_path_writes_report(tmp_path, capsys):
    out = tmp_path / "qs"
    code = main(["quickstart", "--out", str(out), "--max-steps", "2", "--no-progress",
                 "validation.max_pairs=40", "model.width_multiplier=0.125", "model.embedding_size=16",
                 "train.batch_size=8"])
    assert code == 0
    report = json.loads((out / "quickstart.json").read_text())
    names = set(report["before"])
    assert names == {"lfw", "cfp_fp", "agedb_30"} and set(report["after"]) == names
    for value in [*report["before"].values(), *report["after"].values()]:
        assert 0.0 <= value <= 1.0
    assert report["steps"] == 2 and report["images_seen"] == 16
    assert report["wall_seconds"] >= report["train_seconds"] > 0
    assert (out / "run" / "embedding.keras").is_file() and (out / "data" / "manifest.json").is_file()
    printed = capsys.readouterr().out
    assert "untrained" in printed and "trained" in printed and "mean" in printed

    # run again into the same folder: quickstart replaces its own data and run
    assert main(["quickstart", "--out", str(out), "--max-steps", "1", "--no-progress", "validation.max_pairs=20",
                 "model.width_multiplier=0.125", "model.embedding_size=16", "train.batch_size=8"]) == 0
    assert json.loads((out / "quickstart.json").read_text())["steps"] == 1


def test_quickstart_refuses_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("precious")
    assert main(["quickstart", "--out", str(tmp_path), "--max-steps", "1"]) == 2
    assert "not made by frtf quickstart" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "precious"
