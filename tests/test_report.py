"""Reports: the console table, results.json / .csv / .md contents and the ROC PNGs."""

import csv
import json

import numpy as np
import pytest

from face_recognition_tf.evaluation import evaluate_embeddings
from face_recognition_tf.evaluation.report import (
    checkpoint_names,
    format_table,
    percent,
    to_markdown,
    write_reports,
)


def _result(seed, num_pairs=400, noise=1.0, flip=True):
    rng = np.random.default_rng(seed)
    issame = np.arange(num_pairs) % 2 == 0
    a = rng.normal(size=(num_pairs, 8))
    b = np.where(issame[:, None], a + noise * rng.normal(size=a.shape), rng.normal(size=a.shape))
    emb = np.empty((2 * num_pairs, 8))
    emb[0::2], emb[1::2] = a, b
    flips = emb + 0.1 * rng.normal(size=emb.shape) if flip else None
    return evaluate_embeddings(emb, issame, flip_embeddings=flips)


@pytest.fixture(scope="module")
def results():
    return {
        "run/ckpt-1": {"lfw": _result(0, noise=2.0), "cfp_fp": _result(1, noise=2.0)},
        "run/ckpt-2": {"lfw": _result(2, noise=0.5), "cfp_fp": _result(3, noise=0.5)},
    }


def test_percent_formatting():
    assert percent(0.99833333, 0.0023) == "99.83 +- 0.23"
    assert percent(0.5) == "50.00"
    assert percent(None) == "-"


def test_console_table_is_target_by_checkpoint(results):
    table = format_table(results).splitlines()
    assert table[0].split() == ["target", "run/ckpt-1", "run/ckpt-2"]
    assert set(table[1]) <= {"-", " "}
    lfw = results["run/ckpt-2"]["lfw"]
    assert table[2].startswith("lfw") and percent(lfw.accuracy_mean, lfw.accuracy_std) in table[2]
    assert table[3].startswith("cfp_fp")


def test_write_reports_files_and_contents(tmp_path, results):
    paths = {"run/ckpt-1": "/x/run/checkpoints/ckpt-1", "run/ckpt-2": "/x/run/checkpoints/ckpt-2"}
    written = write_reports(tmp_path / "out", results, paths=paths, data="/data", flip=True, folds=10)
    names = sorted(p.name for p in written)
    assert names == ["results.csv", "results.json", "results.md", "roc_cfp_fp.png", "roc_lfw.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names  # no temporary files left

    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["format_version"] == 1 and doc["folds"] == 10 and doc["flip"] is True
    assert doc["targets"] == ["lfw", "cfp_fp"]
    assert doc["checkpoints"] == [{"name": n, "path": p} for n, p in paths.items()]
    entry = doc["results"]["run/ckpt-2"]["lfw"]
    assert entry["accuracy_mean"] == results["run/ckpt-2"]["lfw"].accuracy_mean
    assert entry["tar_at_far"].keys() == {"0.1", "0.01"}  # 200 different pairs: 1e-3 not measurable

    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert [(r["checkpoint"], r["target"]) for r in rows] == [
        ("run/ckpt-1", "lfw"), ("run/ckpt-1", "cfp_fp"), ("run/ckpt-2", "lfw"), ("run/ckpt-2", "cfp_fp")
    ]
    assert float(rows[0]["accuracy_mean"]) == results["run/ckpt-1"]["lfw"].accuracy_mean
    assert rows[0]["tar_at_far_0.001"] == "" and rows[0]["path"] == paths["run/ckpt-1"]

    md = (tmp_path / "out" / "results.md").read_text()
    assert "| target | run/ckpt-1 | run/ckpt-2 |" in md
    assert "## lfw" in md and "## cfp_fp" in md

    from matplotlib.image import imread

    png = tmp_path / "out" / "roc_lfw.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert imread(png).shape[:2] == (450, 600)


def test_markdown_tables_have_consistent_columns(results):
    for line_block in to_markdown(results, flip=False, folds=10).split("\n\n"):
        rows = [r for r in line_block.splitlines() if r.startswith("|")]
        if rows:
            assert len({r.count("|") for r in rows}) == 1, line_block
    assert "no flip" in to_markdown(results, flip=False, folds=10)


def test_noflip_results_show_dashes(tmp_path):
    results = {"m.keras": {"own": _result(4, num_pairs=40, flip=False)}}
    write_reports(tmp_path, results, flip=False, folds=10)
    row = next(csv.DictReader((tmp_path / "results.csv").open()))
    assert row["accuracy_noflip_mean"] == ""
    assert row["tar_at_far_0.1"] != "" and row["tar_at_far_0.01"] == ""  # 20 different pairs resolve FAR 0.1 only
    assert json.loads((tmp_path / "results.json").read_text())["results"]["m.keras"]["own"]["accuracy_noflip_mean"] is None


def test_checkpoint_names_are_unique():
    names = checkpoint_names(["a/ckpt-1", "b/ckpt-1", "c/ckpt-2"], lambda p: p.split("/")[-1])
    assert names == {"ckpt-1": "a/ckpt-1", "ckpt-1#2": "b/ckpt-1", "ckpt-2": "c/ckpt-2"}


def test_write_reports_replaces_and_cleans_up(tmp_path):
    # report.write_atomic is gone: reports are written through face_recognition_tf.atomic
    results = {"m.keras": {"own": _result(4, num_pairs=40, flip=False)}}
    write_reports(tmp_path, results, flip=False, folds=10)
    write_reports(tmp_path, results, flip=False, folds=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.json", "results.md", "roc_own.png"]
