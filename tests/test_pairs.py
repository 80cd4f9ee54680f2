"""`frtf make-pairs`: pair sets from a folder of people's photos, read back with load_bin."""

import itertools
import pickle

import cv2
import numpy as np
import pytest

from face_recognition_tf.cli import main
from face_recognition_tf.data import load_bin
from face_recognition_tf.errors import ConfigError, DatasetError
from face_recognition_tf.evaluation import evaluate_embeddings
from face_recognition_tf.evaluation.pairs import make_pairs_from_folder


def _face(person, k, size=112):
    """A distinct deterministic image per (person, photo): a per-person colour plus a per-photo pattern."""
    rng = np.random.default_rng(1000 * person + k)
    pattern = cv2.resize(rng.integers(-30, 30, size=(8, 8, 3)).astype(np.float32), (size, size))  # smooth: JPEG-friendly
    return np.clip((40 * person + 20) % 256 + pattern, 0, 255).astype(np.uint8)


def _people(root, counts, png_for=(), size=112):
    root.mkdir()
    for person, count in enumerate(counts):
        folder = root / f"person_{person}"
        folder.mkdir()
        for k in range(count):
            ext = ".png" if (person, k) in png_for else ".jpg"
            cv2.imwrite(str(folder / f"{k:02d}{ext}"), _face(person, k, size))
    (root / "README.txt").write_text("not a person")
    return root


def _decoded(path):
    return cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


def test_all_same_pairs_and_as_many_different_pairs(tmp_path):
    root = _people(tmp_path / "faces", [3, 4, 2, 1], png_for={(1, 2)})
    info = make_pairs_from_folder(root, tmp_path / "own.bin", seed=3)
    assert info["identities"] == 4 and info["images"] == 10
    assert info["same_pairs"] == 3 + 6 + 1 and info["different_pairs"] == 10
    assert info["reencoded"] <= 1 and info["resized"] == 0
    assert info["ignored"] == [str(root / "README.txt")]

    images, issame = load_bin(tmp_path / "own.bin")
    assert images.shape == (40, 112, 112, 3) and images.dtype == np.uint8
    assert issame.tolist() == [True, False] * 10  # alternating: every fold holds both kinds

    # map every stored image back to its file (JPEGs are stored byte for byte, so decode identically)
    files = sorted(p for p in root.glob("*/*.jpg"))
    lookup = {_decoded(p).tobytes(): p.parent.name for p in files}
    owners = [lookup.get(img.tobytes()) for img in images]
    png = _decoded(root / "person_1" / "02.png")
    for i, owner in enumerate(owners):
        if owner is None:  # the PNG, re-encoded as JPEG: close, not identical
            assert np.abs(images[i].astype(int) - png.astype(int)).mean() < 3
            owners[i] = "person_1"
    for k, same in enumerate(issame):
        assert (owners[2 * k] == owners[2 * k + 1]) == same
    same_pairs = {tuple(sorted((images[2 * k].tobytes(), images[2 * k + 1].tobytes())))
                  for k in range(len(issame)) if issame[k]}
    assert len(same_pairs) == 10  # all distinct


def test_seed_makes_it_reproducible(tmp_path):
    root = _people(tmp_path / "faces", [4, 4, 4, 4])
    make_pairs_from_folder(root, tmp_path / "a.bin", seed=1)
    make_pairs_from_folder(root, tmp_path / "b.bin", seed=1)
    make_pairs_from_folder(root, tmp_path / "c.bin", seed=2)
    a, b, c = ((tmp_path / n).read_bytes() for n in ("a.bin", "b.bin", "c.bin"))
    assert a == b and a != c
    jpegs, issame = pickle.loads(a)  # insightface's layout: (list of JPEG bytes, list of bool)
    assert len(jpegs) == 2 * len(issame) == 2 * 48 and all(j[:2] == b"\xff\xd8" for j in jpegs)


def test_max_same_per_identity(tmp_path):
    root = _people(tmp_path / "faces", [6, 2, 2])
    info = make_pairs_from_folder(root, tmp_path / "p.bin", max_same_per_identity=4, folds=2)
    assert info["same_pairs"] == 4 + 1 + 1 and info["different_pairs"] == 6
    with pytest.raises(ConfigError):
        make_pairs_from_folder(root, tmp_path / "q.bin", max_same_per_identity=0)


def test_pairs_feed_the_metric(tmp_path):
    root = _people(tmp_path / "faces", [3, 3, 3, 3, 3])
    make_pairs_from_folder(root, tmp_path / "p.bin")
    images, issame = load_bin(tmp_path / "p.bin")
    # mean colour identifies the person: a perfect "model" scores 100%
    emb = images.reshape(len(images), -1, 3).mean(axis=1)
    emb = np.c_[np.cos(emb[:, 0] / 40), np.sin(emb[:, 0] / 40)]
    assert evaluate_embeddings(emb, issame).accuracy_mean == 1.0


def test_wrong_size_is_refused_naming_the_file_unless_resize(tmp_path):
    root = _people(tmp_path / "faces", [2, 2])
    cv2.imwrite(str(root / "person_1" / "big.jpg"), _face(1, 9, size=150))
    with pytest.raises(DatasetError, match=r"big\.jpg: image is 150x150; expected an aligned 112x112"):
        make_pairs_from_folder(root, tmp_path / "p.bin", folds=2)
    assert not (tmp_path / "p.bin").exists()
    info = make_pairs_from_folder(root, tmp_path / "p.bin", resize=True, folds=2)
    assert info["images"] == 5
    images, _ = load_bin(tmp_path / "p.bin")
    assert images.shape[1:] == (112, 112, 3)


def test_unusable_folders(tmp_path):
    with pytest.raises(DatasetError, match="not a folder"):
        make_pairs_from_folder(tmp_path / "missing", tmp_path / "p.bin")
    one = _people(tmp_path / "one", [3])
    with pytest.raises(DatasetError, match="at least 2"):
        make_pairs_from_folder(one, tmp_path / "p.bin")
    singles = _people(tmp_path / "singles", [1, 1, 1])
    with pytest.raises(DatasetError, match="no same-person pair"):
        make_pairs_from_folder(singles, tmp_path / "p.bin")
    broken = _people(tmp_path / "broken", [2, 2])
    (broken / "person_0" / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"bad\.jpg: not a readable image"):
        make_pairs_from_folder(broken, tmp_path / "p.bin", folds=2)


def test_different_pairs_when_few_exist(tmp_path):
    # 2 people x 2 photos: 2 same pairs; 4 possible different pairs, 2 drawn without repeats
    root = _people(tmp_path / "faces", [2, 2])
    info = make_pairs_from_folder(root, tmp_path / "p.bin", folds=2)
    assert info["same_pairs"] == 2 and info["different_pairs"] == 2
    jpegs, issame = pickle.loads((tmp_path / "p.bin").read_bytes())
    diff = [(jpegs[2 * k], jpegs[2 * k + 1]) for k in range(len(issame)) if not issame[k]]
    assert len(set(diff)) == 2


def test_make_pairs_command(tmp_path, capsys):
    root = _people(tmp_path / "faces", [3, 2])
    assert main(["make-pairs", str(root), str(tmp_path / "own.bin"), "--seed", "5", "--folds", "4"]) == 0
    out = capsys.readouterr()
    assert "wrote" in out.out and "8 pairs (4 same, 4 different)" in out.out
    assert main(["make-pairs", str(tmp_path / "nope"), str(tmp_path / "x.bin")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("frtf make-pairs: error:") and "nope" in err[0]


def test_pair_enumeration_covers_every_combination(tmp_path):
    root = _people(tmp_path / "faces", [4, 3])
    info = make_pairs_from_folder(root, tmp_path / "p.bin", folds=2)
    assert info["same_pairs"] == len(list(itertools.combinations(range(4), 2))) + 3


# ------------------------------------------------------------------ issue 10: counts, refusal, single photos
def test_too_small_for_ten_folds_is_refused_with_the_counts(tmp_path, capsys):
    root = _people(tmp_path / "faces", [3, 2])  # 4 same pairs: 10 folds cannot each hold a same pair
    with pytest.raises(DatasetError, match=r"faces: could make only 4 same-person and 4 different-person pairs; "
                                           r"10-fold evaluation needs at least 10 of each"):
        make_pairs_from_folder(root, tmp_path / "p.bin")
    assert not (tmp_path / "p.bin").exists()
    assert main(["make-pairs", str(root), str(tmp_path / "p.bin")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("frtf make-pairs: error:") and "4 same-person" in err[0]
    assert "--folds K" in err[0] and not (tmp_path / "p.bin").exists()
    with pytest.raises(ConfigError, match="--folds 0"):
        make_pairs_from_folder(root, tmp_path / "p.bin", folds=0)


def test_every_fold_holds_both_kinds_when_counts_differ(tmp_path):
    # 2 people, 7 and 2 photos: 21 + 1 same pairs but only 14 different pairs exist
    root = _people(tmp_path / "faces", [7, 2])
    info = make_pairs_from_folder(root, tmp_path / "p.bin")
    assert info["same_pairs"] == 22 and info["different_pairs"] == 14
    _, issame = load_bin(tmp_path / "p.bin")
    from face_recognition_tf.evaluation import fold_sizes

    bounds = np.cumsum([0, *fold_sizes(len(issame), 10)])
    for a, b in zip(bounds, bounds[1:]):
        assert issame[a:b].any() and not issame[a:b].all()


def test_single_photo_people_are_named_and_left_out_of_same_pairs(tmp_path, capsys):
    root = _people(tmp_path / "faces", [5, 4, 1, 1])  # 10 + 6 same pairs; person_2 and person_3 alone
    info = make_pairs_from_folder(root, tmp_path / "p.bin")
    assert info["single_photo_identities"] == ["person_2", "person_3"]
    assert info["same_pairs"] == 16 and info["different_pairs"] == 16
    assert main(["make-pairs", str(root), str(tmp_path / "q.bin")]) == 0
    out = capsys.readouterr()
    assert "32 pairs (16 same, 16 different)" in out.out
    assert "2 person(s) with one photo left out of same-person pairs" in out.err and "person_2, person_3" in out.err


def test_training_validation_takes_the_sets_folds_and_refuses_sets_that_cannot_fill_them(tmp_path):
    """A person's held-out pairs made with --folds 3 validate with validation.folds=3; with the default 10
    they are refused when training starts, naming the file and the setting, not at the first validation."""
    from face_recognition_tf.training.validation import Validator

    root = _people(tmp_path / "faces", [2, 2, 2])
    make_pairs_from_folder(root, tmp_path / "val.bin", folds=3)
    assert Validator({"val": tmp_path / "val.bin"}, folds=3).folds == 3
    with pytest.raises(ConfigError, match=r"val\.bin: 3 same and 3 different pairs cannot fill "
                                          r"validation\.folds=10 folds"):
        Validator({"val": tmp_path / "val.bin"})


@pytest.mark.parametrize("layout", ["alternating", "insightface"])
def test_validation_max_pairs_keeps_both_kinds_in_every_fold(layout):
    """validation.max_pairs picks a subset with same and different pairs in the file's proportion, spread
    over the file: a plain stride over alternating same/different pairs used to keep only same pairs, and
    training refused the set it had shrunk itself."""
    from face_recognition_tf.evaluation.verification import folds_hold_both_kinds
    from face_recognition_tf.training.validation import Validator

    if layout == "alternating":
        issame = np.arange(20) % 2 == 0
    else:  # 10 folds of 30 same then 30 different pairs, as LFW's .bin
        issame = np.tile(np.repeat([True, False], 30), 10)
    images = np.arange(2 * len(issame), dtype=np.int32).reshape(-1, 1, 1, 1)  # image i holds i
    for max_pairs, folds in [(10, 2), (20, 10), (40, 10)]:
        if max_pairs >= len(issame):
            continue
        validator = Validator({"val": (images, issame)}, max_pairs=max_pairs, folds=folds)
        kept_images, kept = validator.pair_sets["val"]
        assert len(kept) == max_pairs and kept.sum() == max_pairs // 2
        assert folds_hold_both_kinds(kept, folds)
        # whole pairs: the two images of a kept pair stay side by side, in file order
        first = kept_images[0::2, 0, 0, 0].astype(int)
        assert np.array_equal(kept_images[1::2, 0, 0, 0], first + 1) and np.all(np.diff(first) > 0)
