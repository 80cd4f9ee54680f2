"""`frtf split`: seeded train/val/test parts of a folder of identity sub-folders (no TensorFlow needed).

The split never decodes images, so the photos here are a few bytes each.
"""

import json
import os

import pytest

from face_recognition_tf.cli import main
from face_recognition_tf.data import split as split_module
from face_recognition_tf.data.split import image_counts, plan_split, scan_identities, split_folder
from face_recognition_tf.errors import ConfigError, DatasetError, OutputError


def _aligned(root, counts, suffix=".jpg"):
    root.mkdir(parents=True, exist_ok=True)
    for name, count in counts.items():
        folder = root / name
        folder.mkdir()
        for k in range(count):
            (folder / f"{k:02d}{suffix}").write_bytes(f"{name}-{k}".encode())
    return root


def _tree(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_image_counts_keep_train_and_fill_held_out_parts():
    assert image_counts(10, 0.1, 0.1) == (8, 1, 1)
    assert image_counts(20, 0.1, 0.2) == (14, 2, 4)
    assert image_counts(3, 0.1, 0.1) == (1, 1, 1)  # at least one in each part while train keeps one
    assert image_counts(2, 0.1, 0.1) == (1, 0, 1)  # val gives way first
    assert image_counts(1, 0.1, 0.1) == (1, 0, 0)
    assert image_counts(10, 0.0, 0.25) == (7, 0, 3)  # 2.5 rounds half up


def test_by_images_puts_every_person_in_every_part(tmp_path, capsys):
    src = _aligned(tmp_path / "aligned", {"alice": 10, "bob": 5, "carol": 3, "dave": 2, "erin": 1})
    (src / "align_report.json").write_text("{}")  # files beside the identity folders are not people,
    (src / "contact_sheets").mkdir()  # nor frtf align's contact sheets
    (src / "contact_sheets" / "alice.png").write_bytes(b"png")
    (src / "bob" / "notes.txt").write_text("x")
    (src / "empty").mkdir()
    out = tmp_path / "parts"
    assert main(["split", str(src), str(out), "--seed", "3"]) == 0
    captured = capsys.readouterr()
    assert "train" in captured.out and "wrote" in captured.out
    assert "go to train only: erin" in captured.err and "empty identity folder(s) left out: empty" in captured.err
    assert "too few photos for every part (val is left out first): dave (2)" in captured.err

    doc = json.loads((out / "split.json").read_text())
    assert doc["identities"]["alice"] == {"train": 8, "val": 1, "test": 1}
    assert doc["identities"]["carol"] == {"train": 1, "val": 1, "test": 1}
    assert doc["identities"]["dave"] == {"train": 1, "val": 0, "test": 1}
    assert doc["identities"]["erin"] == {"train": 1, "val": 0, "test": 0}
    assert doc["parts"]["test"] == {"identities": 4, "images": 1 + 1 + 1 + 1}
    assert doc["options"] == {"val": 0.1, "test": 0.1, "by": "images", "seed": 3, "min_images": 2, "link": True}
    assert doc["empty_identities"] == ["empty"] and "contact_sheets" not in doc["identities"]
    # every photo is in exactly one part, under its person's name
    placed = [p.split("/", 1)[1] for p in _tree(out) if p != "split.json"]
    assert sorted(placed) == sorted(p for p in _tree(src) if p.endswith(".jpg"))
    for part in ("train", "val", "test"):
        for photo in (out / part).rglob("*.jpg"):
            assert photo.read_bytes().decode().startswith(photo.parent.name)


def test_same_seed_same_split_and_other_people_do_not_reshuffle(tmp_path):
    src = _aligned(tmp_path / "a", {f"p{i}": 9 for i in range(6)})
    split_folder(src, tmp_path / "one", seed=1)
    split_folder(src, tmp_path / "two", seed=1)
    split_folder(src, tmp_path / "three", seed=2)
    assert _tree(tmp_path / "one") == _tree(tmp_path / "two") != _tree(tmp_path / "three")
    _aligned(src, {"newcomer": 9})
    split_folder(src, tmp_path / "four", seed=1)
    before = {p for p in _tree(tmp_path / "one") if p.endswith(".jpg")}
    after = {p for p in _tree(tmp_path / "four") if p.endswith(".jpg") and "/newcomer/" not in p}
    assert before == after


def test_by_identity_keeps_people_whole(tmp_path):
    src = _aligned(tmp_path / "a", {**{f"p{i:02d}": 4 for i in range(20)}, "solo": 1})
    doc = split_folder(src, tmp_path / "out", val=0.1, test=0.2, by="identity", seed=0)
    people = {part: {p.name for p in (tmp_path / "out" / part).iterdir()} for part in ("train", "val", "test")}
    assert len(people["val"]) == 2 and len(people["test"]) == 4 and len(people["train"]) == 14 + 1
    assert not (people["val"] & people["test"]) and not (people["train"] & (people["val"] | people["test"]))
    assert "solo" in people["train"]  # too few photos to be held out
    assert all(sum(counts.values()) == counts["train"] or counts["train"] == 0
               for counts in doc["identities"].values())


def test_hard_links_unless_copy(tmp_path):
    src = _aligned(tmp_path / "a", {"alice": 3, "bob": 3})
    split_folder(src, tmp_path / "linked")
    split_folder(src, tmp_path / "copied", link=False)
    photo = next((tmp_path / "linked" / "train").rglob("*.jpg"))
    original = src / photo.parent.name / photo.name
    assert os.stat(photo).st_ino == os.stat(original).st_ino
    copy = tmp_path / "copied" / photo.relative_to(tmp_path / "linked")
    assert copy.read_bytes() == original.read_bytes() and os.stat(copy).st_ino != os.stat(original).st_ino
    assert json.loads((tmp_path / "copied" / "split.json").read_text())["copied"] == 6


def test_overwrite_replaces_and_a_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    src = _aligned(tmp_path / "a", {"alice": 5, "bob": 5})
    out = tmp_path / "out"
    split_folder(src, out)
    with pytest.raises(OutputError, match="already exists"):
        split_folder(src, out)
    split_folder(src, out, overwrite=True, seed=9)
    assert json.loads((out / "split.json").read_text())["options"]["seed"] == 9

    calls = []

    def failing_place(src_path, dst, link):
        calls.append(dst)
        if len(calls) == 4:
            raise OSError(28, "No space left on device", str(dst))
        return True

    monkeypatch.setattr(split_module, "_place", failing_place)
    with pytest.raises(OutputError, match=r"new: cannot write \(No space left on device\)"):
        split_folder(src, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # temporary folder removed
    calls.clear()
    with pytest.raises(OutputError):
        split_folder(src, out, overwrite=True)
    assert json.loads((out / "split.json").read_text())["options"]["seed"] == 9  # the old OUT is intact


@pytest.mark.parametrize("argv, message", [
    (["--val", "1.5"], "--val 1.5: must be a fraction in [0, 1)"),
    (["--test", "-0.1"], "--test -0.1: must be a fraction in [0, 1)"),
    (["--val", "0.5", "--test", "0.5"], "leaves nothing to train on"),
    (["--val", "nan"], "--val nan: must be a fraction"),
    (["--min-images", "0"], "--min-images 0: must be at least 1"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, argv, message):
    src = _aligned(tmp_path / "a", {"alice": 3, "bob": 3})
    assert main(["split", str(src), str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("frtf split: error:") and message in err[0]
    assert not (tmp_path / "out").exists()


def test_bad_inputs_and_outputs_are_one_line_errors_naming_the_path(tmp_path, capsys):
    src = _aligned(tmp_path / "a", {"alice": 3, "bob": 3})
    empty = tmp_path / "empty"
    (empty / "nobody").mkdir(parents=True)
    (empty / "nobody" / "readme.txt").write_text("no photos")
    existing = tmp_path / "existing"
    existing.mkdir()
    (tmp_path / "file").write_text("x")
    cases = [
        ([str(tmp_path / "missing"), str(tmp_path / "o1")], "missing: not a folder"),
        ([str(empty), str(tmp_path / "o2")], "empty: no identity sub-folder holds an image"),
        ([str(src), str(existing)], "existing: already exists (pass --overwrite"),
        ([str(src), str(src / "parts")], "parts: OUT is inside ALIGNED"),
        ([str(src), str(src)], "OUT is inside ALIGNED"),
        ([str(src), str(tmp_path), "--overwrite"], "is inside OUT; writing OUT would destroy the input"),
        ([str(src), str(tmp_path / "file"), "--overwrite"], "file: is a file"),
    ]
    for argv, message in cases:
        assert main(["split", *argv]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("frtf split: error:") and message in err[0], (argv, err)
    assert _tree(src) == sorted(f"{n}/{k:02d}.jpg" for n in ("alice", "bob") for k in range(3))


def test_plan_is_pure_and_rejects_an_unknown_mode(tmp_path):
    src = _aligned(tmp_path / "a", {"alice": 4, "bob": 4})
    people, empty, ignored = scan_identities(src)
    assert sorted(people) == ["alice", "bob"] and empty == [] and ignored == 0
    plan, notes = plan_split(people, val=0.25, test=0.25, seed=0)
    assert {part: sum(map(len, names.values())) for part, names in plan.items()} == {"train": 4, "val": 2, "test": 2}
    assert notes == []
    with pytest.raises(ConfigError, match="--by 'faces'"):
        plan_split(people, val=0.1, test=0.1, by="faces")
    with pytest.raises(DatasetError, match="not a folder"):
        scan_identities(tmp_path / "nope")


def test_parts_of_an_align_output_are_known_as_aligned_crops(tmp_path):
    """split.json records that ALIGNED came from `frtf align`, so report/identify skip detection on its parts;
    the align report beside the people is neither a person nor a stray file."""
    from face_recognition_tf.faces.images import aligned_tree

    aligned = _aligned(tmp_path / "aligned", {"ann": 3, "bob": 3})
    plain = _aligned(tmp_path / "plain", {"ann": 3, "bob": 3})
    (aligned / "align_report.json").write_text("{}")
    (aligned / "align_report.csv").write_text("path,status\n")
    (aligned / "contact_sheets").mkdir()
    (aligned / "contact_sheets" / "ann.png").write_bytes(b"png")
    doc = split_folder(aligned, tmp_path / "parts", val=0.34, test=0.34)
    assert doc["aligned"] is True and doc["notes"] == [] and "contact_sheets" not in doc["identities"]
    assert aligned_tree(aligned) and aligned_tree(tmp_path / "parts" / "test")
    assert not aligned_tree(tmp_path / "parts") and not aligned_tree(plain)
    assert split_folder(plain, tmp_path / "plain_parts", val=0.34, test=0.34)["aligned"] is False
    assert not aligned_tree(tmp_path / "plain_parts" / "train")
