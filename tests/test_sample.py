"""The embedded sample: insightface layout, held-out pair sets, determinism, caching, difficulty."""

import argparse
import hashlib
import threading

import numpy as np
import pytest

from face_recognition_tf.data import find_bins, load_bin, read_manifest
from face_recognition_tf.data.formats.recordio import RecordIOReader, unpack
from face_recognition_tf.data.synthetic import sample
from face_recognition_tf.errors import DatasetError

SMALL = dict(num_identities=8, images_per_identity=4, pairs_per_set=40)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return sample.make_sample_dataset(tmp_path_factory.mktemp("s") / "sample", **SMALL)


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_insightface_layout(small):
    assert {p.name for p in small.iterdir()} == {"train.rec", "train.idx", "property", "lfw.bin", "cfp_fp.bin",
                                                 "agedb_30.bin", "sample.json"}
    assert (small / "property").read_text() == "8,112,112"
    with RecordIOReader(small / "train.rec", small / "train.idx") as r:
        header, body = unpack(r.read_idx(0))
        assert header.flag == 2 and body == b"" and r.offset(0) > 0  # face2rec: header record written last
        first_id, end = (int(v) for v in header.label)
        assert first_id == 1 + 8 * 4 and end == first_id + 8
        ident, _ = unpack(r.read_idx(first_id + 3))
        assert [int(v) for v in ident.label] == [1 + 3 * 4, 1 + 4 * 4]  # identity 3's image keys
        h, jpeg = unpack(r.read_idx(5))
        assert h.label == 1.0 and jpeg[:2] == b"\xff\xd8"


def test_pair_sets_fold_structure(small):
    assert list(find_bins(small)) == ["lfw", "cfp_fp", "agedb_30"]
    for path in find_bins(small).values():
        images, issame = load_bin(path)
        assert images.shape == (80, 112, 112, 3) and issame.shape == (40,)
        folds = issame.reshape(10, 4)  # 10 folds, each half same, same pairs first
        assert (folds == [True, True, False, False]).all()


def test_deterministic_per_seed(tmp_path, small):
    again = sample.make_sample_dataset(tmp_path / "again", **SMALL)
    other = sample.make_sample_dataset(tmp_path / "other", seed=1, **SMALL)
    assert _digests(again) == _digests(small)
    assert _digests(other)["train.rec"] != _digests(small)["train.rec"]
    with pytest.raises(DatasetError, match="already exists and is not an empty folder"):
        sample.make_sample_dataset(again, **SMALL)
    with pytest.raises(DatasetError, match="multiple of 20"):
        sample.make_sample_dataset(tmp_path / "bad", num_identities=4, images_per_identity=2, pairs_per_set=30)
    assert not (tmp_path / "bad").exists()


def _ten_fold(emb, issame):
    """Minimal 10-fold verification accuracy (threshold chosen on 9 folds) for the difficulty check."""
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = np.sum(emb[0::2] * emb[1::2], axis=1)
    fold = np.arange(len(issame)) * 10 // len(issame)
    accs = []
    for f in range(10):
        tr, te = fold != f, fold == f
        best = max(np.unique(sims[tr]), key=lambda t: np.mean((sims[tr] >= t) == issame[tr]))
        accs.append(np.mean((sims[te] >= best) == issame[te]))
    return float(np.mean(accs))


def test_raw_pixels_verify_poorly(tmp_path):
    """An untrained model should not verify the held-out people well: raw pixels stay near chance."""
    folder = sample.make_sample_dataset(tmp_path / "s", num_identities=2, images_per_identity=2, pairs_per_set=200,
                                        pair_sets=("lfw", "cfp_fp"))
    for name in ("lfw", "cfp_fp"):
        images, issame = load_bin(folder / f"{name}.bin")
        x = images.reshape(len(images), -1).astype(np.float32)
        assert _ten_fold(x - x.mean(0), issame) < 0.75


def test_ensure_sample_is_made_once_and_races_safely(tmp_path, monkeypatch):
    monkeypatch.setattr(sample, "DEFAULT_SPEC", sample.SampleSpec(**SMALL))
    results, errors = [], []

    def worker():
        try:
            results.append(sample.ensure_sample_dataset(tmp_path))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results[0] == results[1] == tmp_path / "sample-v1"
    stamp = (results[0] / "train.rec").stat().st_mtime_ns
    assert sample.ensure_sample_dataset(tmp_path) == results[0]
    assert (results[0] / "train.rec").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
    monkeypatch.setenv("FRTF_CACHE_DIR", str(tmp_path))
    converted = sample.ensure_converted_sample()
    manifest = read_manifest(converted)
    assert manifest["num_images"] == 32 and manifest["num_classes"] == 8
    assert list(find_bins(converted)) == ["lfw", "cfp_fp", "agedb_30"]
    stamp = (converted / "manifest.json").stat().st_mtime_ns
    assert sample.ensure_converted_sample() == converted
    assert (converted / "manifest.json").stat().st_mtime_ns == stamp


def test_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="frtf sample")
    sample.configure_parser(parser)
    args = parser.parse_args([str(tmp_path / "out"), "--identities", "3", "--images-per-identity", "2",
                              "--pairs", "20"])
    assert sample.run(args) == 0
    assert "3 identities x 2 images" in capsys.readouterr().out
    assert (tmp_path / "out" / "property").read_text() == "3,112,112"
