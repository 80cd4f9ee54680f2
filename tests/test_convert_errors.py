"""`frtf convert` failures: one line naming the file, before any work, and nothing left behind.

A failed run leaves OUT as it was: a folder the run created is removed, and in a folder that was
already there only what the run wrote is removed.  An *interrupted* run keeps its finished shards
and the state file so `--resume` can finish it.  Also: file modes follow the umask, and the
manifest carries the label range.
"""

import contextlib
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from face_recognition_tf.data import save_bin
from face_recognition_tf.data.conversion import convert, shard_writing
from face_recognition_tf.data.synthetic.rec_layout import write_rec_dataset
from face_recognition_tf.errors import ConfigError, DatasetError, OutputError

REPO = Path(__file__).resolve().parents[1]
STATE = shard_writing.STATE_NAME


def _jpeg(seed, size=112):
    img = np.full((size, size, 3), (37 * seed) % 256, np.uint8)
    cv2.circle(img, (size // 2, size // 2), 10 + seed % 40, (seed % 256, 80, 160), -1)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()


ITEMS = [(c, _jpeg(10 * c + j)) for c in range(4) for j in range(3)]  # 12 images, labels 0..3


@pytest.fixture
def rec_src(tmp_path):
    src = tmp_path / "src"
    write_rec_dataset(src, ITEMS)
    save_bin(src / "lfw.bin", [ITEMS[0][1], ITEMS[1][1]], [True])
    return src


@pytest.fixture
def folder_src(tmp_path):
    src = tmp_path / "people"
    for label, jpeg in ITEMS:
        person = src / f"person{label}"
        person.mkdir(parents=True, exist_ok=True)
        (person / f"{len(list(person.iterdir()))}.jpg").write_bytes(jpeg)
    return src


@pytest.fixture(params=["rec", "folder"])
def source(request, rec_src, folder_src):
    """(SRC, extra CLI arguments) for both kinds of conversion."""
    return (rec_src, []) if request.param == "rec" else (folder_src, ["--from-folder"])


def _cli(*args, umask=None):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "face_recognition_tf", "convert", *map(str, args), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300, umask=-1 if umask is None else umask)


def _assert_one_line_error(result, *names):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("frtf convert: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


# ---------------------------------------------------------------------------------------------
# 1. an output that cannot be written: one line naming it, before any work
def test_out_is_an_existing_file(tmp_path, source):
    src, extra = source
    out = tmp_path / "out.txt"
    out.write_text("my notes\n")
    line = _assert_one_line_error(_cli(src, out, *extra), out)
    assert "file" in line
    assert out.read_text() == "my notes\n"
    nested = _cli(src, out / "sub", *extra)  # a file in the way of a folder to create
    _assert_one_line_error(nested, out / "sub")
    assert out.read_text() == "my notes\n"


@pytest.mark.parametrize("where", ["inside", "itself"])
def test_out_on_a_read_only_file_system(tmp_path, source, readonly_dir, where):
    src, extra = source
    out = readonly_dir / "out" if where == "inside" else readonly_dir
    line = _assert_one_line_error(_cli(src, out, *extra), out)
    assert "Read-only file system" in line or "Permission denied" in line
    assert list(readonly_dir.iterdir()) == []


def test_out_check_comes_before_reading_the_source(tmp_path, monkeypatch, rec_src):
    out = tmp_path / "out.txt"
    out.write_text("x")
    monkeypatch.setattr(convert, "_plan_recordio", lambda *a: pytest.fail("planned before checking OUT"))
    with pytest.raises(OutputError, match="out.txt: is a file"):
        convert.convert_recordio(rec_src, out, progress=False)


# ---------------------------------------------------------------------------------------------
# 2. arguments checked up front; a folder the run created does not outlive a failure
@pytest.mark.parametrize("args, message", [
    (["--shards", "0"], "--shards 0"),
    (["--shards", "-2"], "--shards -2"),
    (["--workers", "-3"], "--workers -3"),
    (["--workers", "0"], "--workers 0"),
    (["--seed", "-1"], "--seed -1"),
])
def test_bad_numbers_are_refused_before_out_is_made(tmp_path, source, args, message):
    src, extra = source
    out = tmp_path / "new" / "out"
    _assert_one_line_error(_cli(src, out, *extra, *args), message)
    assert not (tmp_path / "new").exists()


def test_resize_without_from_folder_is_refused(tmp_path, rec_src):
    _assert_one_line_error(_cli(rec_src, tmp_path / "out", "--resize"), "--resize")
    assert not (tmp_path / "out").exists()


def test_more_shards_than_images_leaves_nothing(tmp_path, source):
    src, extra = source
    out = tmp_path / "new" / "out"
    _assert_one_line_error(_cli(src, out, *extra, "--shards", "100000"), "--shards 100000", "12")
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    _assert_one_line_error(_cli(src, kept, *extra, "--shards", "13"), "--shards 13")
    assert _tree(kept) == ["notes.txt"]


def test_api_checks_the_same_numbers(tmp_path, rec_src, folder_src):
    with pytest.raises(ConfigError, match=r"--shards 0: .*at least 1"):
        convert.convert_recordio(rec_src, tmp_path / "a", num_shards=0, progress=False)
    with pytest.raises(ConfigError, match=r"--workers -3: .*at least 1"):
        convert.convert_folder(folder_src, tmp_path / "b", workers=-3, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---------------------------------------------------------------------------------------------
# 3. a clean error (corrupt image under --verify) leaves nothing; an interruption keeps --resume working
def _corrupt_rec(tmp_path):
    src = tmp_path / "bad"
    items = list(ITEMS)
    items[7] = (items[7][0], items[7][1][: len(items[7][1]) // 2])  # truncated JPEG, key 7
    write_rec_dataset(src, items, header=False)
    save_bin(src / "lfw.bin", [ITEMS[0][1], ITEMS[1][1]], [True])
    return src


@pytest.mark.parametrize("workers", [1, 2])
def test_corrupt_image_under_verify_leaves_no_trace(tmp_path, workers):
    src = _corrupt_rec(tmp_path)
    out = tmp_path / "new" / "out"
    with pytest.raises(DatasetError, match=r"train\.rec: key 7: corrupt JPEG"):
        convert.convert_recordio(src, out, num_shards=3, workers=workers, verify=True, progress=False)
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="key 7: corrupt JPEG"):
        convert.convert_recordio(src, kept, num_shards=3, workers=workers, verify=True, progress=False)
    assert _tree(kept) == ["notes.txt"]
    # the user fixes the image and simply runs again
    write_rec_dataset(src, ITEMS, header=False)
    m = convert.convert_recordio(src, kept, num_shards=3, workers=workers, verify=True, progress=False)
    assert m["num_images"] == len(ITEMS) and m["verified"]
    assert STATE not in _tree(kept)


def test_corrupt_image_cli_one_line(tmp_path):
    src = _corrupt_rec(tmp_path)
    out = tmp_path / "out"
    _assert_one_line_error(_cli(src, out, "--verify", "--shards", "2"), src / "train.rec", "key 7")
    assert not out.exists()


def test_folder_with_unreadable_image_leaves_no_trace(tmp_path, folder_src):
    (folder_src / "person2" / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    _assert_one_line_error(_cli(folder_src, out, "--from-folder", "--shards", "2"), "broken.jpg")
    assert not out.exists()


def test_interrupted_run_keeps_its_state_for_resume(tmp_path, rec_src, monkeypatch):
    out = tmp_path / "out"
    real = shard_writing._write_shard
    calls = []

    def interrupted(task):
        if len(calls) == 1:
            raise KeyboardInterrupt
        calls.append(task)
        return real(task)

    monkeypatch.setattr(shard_writing, "_write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert.convert_recordio(rec_src, out, num_shards=3, workers=1, progress=False)
    assert (out / STATE).is_file() and len(list(out.glob("train-*.tfrecord"))) == 1
    monkeypatch.setattr(shard_writing, "_write_shard", real)
    m = convert.convert_recordio(rec_src, out, num_shards=3, workers=1, resume=True, progress=False)
    assert m["num_images"] == len(ITEMS) and not (out / STATE).exists()


def test_error_in_a_resumed_run_keeps_it_resumable(tmp_path, monkeypatch):
    """--resume asked for a resumable folder: an error there keeps the earlier progress and the state."""
    src = _corrupt_rec(tmp_path)
    out = tmp_path / "out"
    real = shard_writing._write_shard
    monkeypatch.setattr(shard_writing, "_write_shard",
                        lambda task: (_ for _ in ()).throw(KeyboardInterrupt) if "00002" in task[2] else real(task))
    with pytest.raises(KeyboardInterrupt):
        convert.convert_recordio(src, out, num_shards=3, workers=1, progress=False)
    before = _tree(out)
    monkeypatch.setattr(shard_writing, "_write_shard", real)
    with pytest.raises(DatasetError, match="key 7: corrupt JPEG"):
        convert.convert_recordio(src, out, num_shards=3, workers=1, resume=True, verify=True, progress=False)
    assert STATE in _tree(out) and set(before) <= set(_tree(out)) and not list(out.glob(".*.partial"))
    m = convert.convert_recordio(src, out, num_shards=3, workers=1, resume=True, skip_corrupt=True, progress=False)
    assert m["num_images"] == len(ITEMS) - 1


def test_interrupt_before_any_shard_removes_the_new_folder(tmp_path, rec_src, monkeypatch):
    monkeypatch.setattr(convert, "_plan_recordio", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        convert.convert_recordio(rec_src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # nothing to resume: nothing kept


@contextlib.contextmanager
def _tiny_fs(folder, size="24k"):
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_disk_full_is_one_line_and_leaves_nothing(tmp_path):
    src = tmp_path / "big"
    write_rec_dataset(src, [(i % 3, _jpeg(i, 112) + bytes(4000) + b"\xff\xd9") for i in range(30)])
    with _tiny_fs(tmp_path / "small") as small:
        line = _assert_one_line_error(_cli(src, small / "out", "--shards", "3"), small / "out")
        assert "No space left on device" in line
        assert list(small.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 4. the label range, for the trainer's check
def test_manifest_carries_the_label_range(tmp_path, rec_src, folder_src):
    m = convert.convert_recordio(rec_src, tmp_path / "a", num_shards=2, progress=False)
    assert m["label_range"] == [0, 3]
    src = tmp_path / "gap"
    write_rec_dataset(src, [(label, jpeg) for label, jpeg in ITEMS if label >= 1], num_classes=6)
    assert convert.convert_recordio(src, tmp_path / "b", num_shards=2, progress=False)["label_range"] == [1, 3]
    m = convert.convert_folder(folder_src, tmp_path / "c", num_shards=2, progress=False)
    assert m["label_range"] == [0, 3]
    import json

    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["label_range"] == [0, 3]


# ---------------------------------------------------------------------------------------------
# 5. files carry the modes the umask gives, not mkstemp's 0600 / mkdtemp's 0700
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_converted_dataset_follows_the_umask(tmp_path, source, umask):
    src, extra = source
    out = tmp_path / "out"
    result = _cli(src, out, *extra, "--shards", "2", umask=umask)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    files = [out / "manifest.json", *out.glob("train-*.tfrecord")]
    assert len(files) == 3
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_save_bin_follows_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        save_bin(tmp_path / "sub" / "x.bin", [ITEMS[0][1], ITEMS[1][1]], [False])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "sub" / "x.bin").stat().st_mode) == 0o666 & ~umask
    with open(tmp_path / "sub" / "x.bin", "rb") as f:
        assert pickle.load(f) == ([ITEMS[0][1], ITEMS[1][1]], [False])


def test_save_bin_on_a_read_only_file_system(readonly_dir):
    with pytest.raises(OutputError, match=r"x\.bin: cannot write \(Read-only file system\)"):
        save_bin(readonly_dir / "x.bin", [ITEMS[0][1], ITEMS[1][1]], [False])
