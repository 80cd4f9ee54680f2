"""Converter: every .rec layout to the TFRecord schema, seeded shuffling, resume, verify, bad input."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from face_recognition_tf.data import find_bins, read_manifest, save_bin
from face_recognition_tf.data.conversion import convert, shard_writing
from face_recognition_tf.data.formats.recordio import MAGIC, IRHeader, RecordIOWriter, pack
from face_recognition_tf.data.records import tfrecord
from face_recognition_tf.data.synthetic.rec_layout import write_rec_dataset
from face_recognition_tf.errors import DatasetError

REPO = Path(__file__).resolve().parents[1]


def _jpeg(seed, size=112):
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)
    cv2.circle(img, (size // 2, size // 2), int(rng.integers(5, size // 2)), tuple(map(int, rng.integers(0, 256, 3))), -1)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()


@pytest.fixture(scope="module")
def items():
    return [(c, _jpeg(100 * c + j)) for c in range(6) for j in range(5)]


def _read_back(out_dir):
    """[(label, jpeg bytes)] per shard, via protobuf parsing of the raw records (CRC checked)."""
    import tensorflow as tf

    manifest = read_manifest(out_dir)
    shards = []
    for shard in manifest["shards"]:
        rows = []
        for raw in tfrecord.iter_tfrecord(Path(out_dir) / shard["file"]):
            ex = tf.train.Example.FromString(raw).features.feature
            rows.append((ex["label"].int64_list.value[0], ex["image_raw"].bytes_list.value[0]))
        assert len(rows) == shard["records"]
        shards.append(rows)
    return manifest, shards


@pytest.mark.parametrize(
    "layout",
    [
        dict(header=True, array_labels=False, shuffle_idx_seed=1),
        dict(header=True, array_labels=True),
        dict(header=False, array_labels=False, write_property=False),
        dict(header=False, array_labels=True, write_idx=False),
        dict(header=True, write_idx=False, write_property=False),
    ],
)
def test_every_layout_converts_to_the_same_records(tmp_path, items, layout):
    src = tmp_path / "src"
    write_rec_dataset(src, items, **layout)
    manifest = convert.convert_recordio(src, tmp_path / "out", num_shards=3, progress=False)
    manifest, shards = _read_back(tmp_path / "out")
    assert sorted(r for s in shards for r in s) == sorted(items)  # JPEG bytes copied, never re-encoded
    assert manifest["num_images"] == len(items) and manifest["num_classes"] == 6
    assert manifest["num_classes_source"] == ("property" if layout.get("write_property", True) else "labels")
    assert manifest["image_size"] == [112, 112] and manifest["skipped"] == []
    assert manifest["layout"]["header_record"] == layout["header"]
    for shard in manifest["shards"]:
        assert shard["sha256"] == __import__("hashlib").sha256((tmp_path / "out" / shard["file"]).read_bytes()).hexdigest()
    assert [s["file"] for s in manifest["shards"]] == [f"train-0000{i}-of-00003.tfrecord" for i in range(3)]


def test_payload_containing_the_magic(tmp_path):
    payload = b"\xff\xd8" + b"ab" + struct.pack("<I", MAGIC) + b"rest of the jpeg\xff\xd9"
    rec = tmp_path / "src" / "train.rec"
    rec.parent.mkdir()
    with RecordIOWriter(rec, rec.with_suffix(".idx")) as w:
        w.write_idx(0, pack(IRHeader(0, 0.0, 0, 0), payload))
        w.write_idx(1, pack(IRHeader(0, 1.0, 1, 0), b"\xff\xd8plain\xff\xd9"))
    manifest = convert.convert_recordio(tmp_path / "src", tmp_path / "out", num_shards=1, progress=False)
    _, shards = _read_back(tmp_path / "out")
    assert sorted(shards[0]) == [(0, payload), (1, b"\xff\xd8plain\xff\xd9")]
    assert manifest["layout"]["multipart_records"] == 1


def test_shards_mix_identities_and_are_seeded(tmp_path, items):
    src = tmp_path / "src"
    write_rec_dataset(src, items)
    m1 = convert.convert_recordio(src, tmp_path / "a", num_shards=2, seed=5, progress=False)
    m2 = convert.convert_recordio(src, tmp_path / "b", num_shards=2, seed=5, progress=False)
    m3 = convert.convert_recordio(src, tmp_path / "c", num_shards=2, seed=6, progress=False)
    assert [s["sha256"] for s in m1["shards"]] == [s["sha256"] for s in m2["shards"]]
    assert [s["sha256"] for s in m1["shards"]] != [s["sha256"] for s in m3["shards"]]
    _, shards = _read_back(tmp_path / "a")
    for rows in shards:
        labels = [label for label, _ in rows]
        assert labels != sorted(labels)  # no shard holds one identity after another
        assert len(set(labels)) >= 4
    # the pair sets would be copied too: none here
    assert m1["pair_sets"] == []


def test_worker_processes_and_tf_fallback_write_identical_shards(tmp_path, items, monkeypatch):
    src = tmp_path / "src"
    write_rec_dataset(src, items)
    save_bin(src / "lfw.bin", [items[0][1], items[1][1]], [False])
    ref = convert.convert_recordio(src, tmp_path / "one", num_shards=3, workers=1, progress=False)
    par = convert.convert_recordio(src, tmp_path / "two", num_shards=3, workers=2, progress=False)
    monkeypatch.setenv("FRTF_CRC32C", "tf")  # no fast CRC: TensorFlow's own TFRecordWriter
    assert tfrecord.find_crc32c() is None
    slow = convert.convert_recordio(src, tmp_path / "tf", num_shards=3, workers=1, progress=False)
    digests = [[s["sha256"] for s in m["shards"]] for m in (ref, par, slow)]
    assert digests[0] == digests[1] == digests[2]
    assert list(find_bins(tmp_path / "two")) == ["lfw"]  # the output folder is self-contained
    assert (tmp_path / "two" / "lfw.bin").read_bytes() == (src / "lfw.bin").read_bytes()


def test_hand_serialised_example_parses_like_tf(items):
    import tensorflow as tf

    for label in (0, 1, 127, 128, 300_000, 2**31 - 1):
        for image in (b"", b"\xff\xd8x", items[0][1], bytes(200)):
            raw = tfrecord.serialize_example(image, label)
            parsed = tf.io.parse_single_example(raw, {
                "image_raw": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)})
            assert parsed["image_raw"].numpy() == image and int(parsed["label"]) == label
            ref = tf.train.Example(features=tf.train.Features(feature={
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                "image_raw": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}))
            assert tf.train.Example.FromString(raw) == ref


def test_crc_backend_matches_reference():
    backend = tfrecord.find_crc32c()
    assert backend is not None  # TensorFlow's abseil CRC (or a crc32c package) must be found here
    data = bytearray(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert backend.crc(data, 7, 4321) == tfrecord.crc32c_python(bytes(data[7:4321]))


# ---------------------------------------------------------------------------------------------
# bad input
def _write_labels(tmp_path, labels, **layout):
    src = tmp_path / "src"
    rec = src / "train.rec"
    src.mkdir()
    with RecordIOWriter(rec, rec.with_suffix(".idx")) as w:
        for key, label in enumerate(labels):
            w.write_idx(key, pack(IRHeader(0, label, key, 0), _jpeg(key)))
    return src


@pytest.mark.parametrize("label, message", [(2.5, "label 2.5 is not an integer"), (-1.0, "label -1.0"),
                                            (float("nan"), "label nan")])
def test_label_not_an_integer_class(tmp_path, label, message):
    src = _write_labels(tmp_path, [0.0, 1.0, label, 1.0])
    with pytest.raises(DatasetError, match=rf"train\.rec: key 2: {message}"):
        convert.convert_recordio(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # validated before anything is written


def test_label_outside_property_classes(tmp_path):
    src = _write_labels(tmp_path, [0.0, 1.0, 7.0])
    (src / "property").write_text("3,112,112")
    with pytest.raises(DatasetError, match=r"key 2: label 7 is outside the 3 classes declared in .*property"):
        convert.convert_recordio(src, tmp_path / "out", progress=False)
    (src / "property").write_text("three,112")
    with pytest.raises(DatasetError, match=r"property: expected 'num_classes,height,width'"):
        convert.convert_recordio(src, tmp_path / "out", progress=False)


def test_truncated_rec_fails_before_writing(tmp_path, items):
    src = tmp_path / "src"
    write_rec_dataset(src, items, header=False)
    rec = src / "train.rec"
    rec.write_bytes(rec.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"train\.rec.*truncated"):
        convert.convert_recordio(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def _with_corrupt(tmp_path, items, bad_keys=(7, 19)):
    src = tmp_path / "src"
    corrupt = list(items)
    for k in bad_keys:
        label, jpeg = corrupt[k]
        corrupt[k] = (label, jpeg[: len(jpeg) // 2])  # truncated JPEG
    write_rec_dataset(src, corrupt, header=False)  # keys 0..n-1
    return src


def test_corrupt_jpeg_verify_and_skip(tmp_path, items):
    src = _with_corrupt(tmp_path, items)
    m = convert.convert_recordio(src, tmp_path / "plain", num_shards=2, progress=False)
    assert m["num_images"] == len(items) and not m["verified"]  # not decoded: not noticed
    with pytest.raises(DatasetError, match=r"train\.rec: key (7|19): corrupt JPEG.*--skip-corrupt"):
        convert.convert_recordio(src, tmp_path / "verify", num_shards=2, verify=True, progress=False)
    assert not (tmp_path / "verify" / "manifest.json").exists()
    _assert_no_unfinished_shard(tmp_path / "verify")
    m = convert.convert_recordio(src, tmp_path / "skip", num_shards=2, skip_corrupt=True, progress=False)
    assert m["num_images"] == len(items) - 2 and m["verified"]
    assert [s["key"] for s in m["skipped"]] == [19, 7] or [s["key"] for s in m["skipped"]] == [7, 19]
    assert all("corrupt JPEG" in s["reason"] for s in m["skipped"])


def _assert_no_unfinished_shard(out_dir):
    """Anything named like a shard is complete: readable to the end with valid CRCs."""
    for shard in Path(out_dir).glob("train-*.tfrecord"):
        list(tfrecord.iter_tfrecord(shard))
    assert not list(Path(out_dir).glob("*.partial"))


def test_output_folder_holding_a_different_dataset(tmp_path, items):
    a, b = tmp_path / "a", tmp_path / "b"
    write_rec_dataset(a, items[:10])
    write_rec_dataset(b, items[10:])
    convert.convert_recordio(a, tmp_path / "out", num_shards=2, progress=False)
    with pytest.raises(DatasetError, match=r"out: holds a different dataset \(converted from .*a\)"):
        convert.convert_recordio(b, tmp_path / "out", num_shards=2, progress=False)
    with pytest.raises(DatasetError, match="holds a different dataset"):
        convert.convert_recordio(b, tmp_path / "out", num_shards=2, resume=True, progress=False)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "train-00000-of-00001.tfrecord").write_bytes(b"x")
    with pytest.raises(DatasetError, match="TFRecord shards of unknown origin"):
        convert.convert_recordio(a, stray, progress=False)


def test_resume_keeps_finished_shards(tmp_path, items, monkeypatch):
    src = tmp_path / "src"
    write_rec_dataset(src, items)
    ref = convert.convert_recordio(src, tmp_path / "ref", num_shards=4, progress=False)
    out = tmp_path / "out"
    real = shard_writing._write_shard
    calls = []

    def interrupted(task):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run dies while writing its third shard
        calls.append(task[2])
        return real(task)

    monkeypatch.setattr(shard_writing, "_write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert.convert_recordio(src, out, num_shards=4, workers=1, progress=False)
    monkeypatch.setattr(shard_writing, "_write_shard", real)
    finished = sorted(out.glob("train-*.tfrecord"))
    assert [p.name for p in finished] == [Path(c).name for c in calls] and not (out / "manifest.json").exists()
    (out / ".train-00002-of-00004.tfrecord.partial").write_bytes(b"half a shard")  # as a kill would leave
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished}
    with pytest.raises(DatasetError, match="interrupted conversion used .*num_shards=4"):
        convert.convert_recordio(src, out, num_shards=3, resume=True, progress=False)
    written = []
    monkeypatch.setattr(shard_writing, "_write_shard", lambda task: written.append(Path(task[2]).name) or real(task))
    m = convert.convert_recordio(src, out, num_shards=4, workers=1, resume=True, progress=False)
    assert written == ["train-00002-of-00004.tfrecord", "train-00003-of-00004.tfrecord"]
    assert {p: (out / p).stat().st_ino for p in stamps} == {p: s[0] for p, s in stamps.items()}
    assert {p: (out / p).stat().st_mtime_ns for p in stamps} == {p: s[1] for p, s in stamps.items()}
    assert [s["sha256"] for s in m["shards"]] == [s["sha256"] for s in ref["shards"]]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"] + [s["file"] for s in m["shards"]]
    written.clear()
    again = convert.convert_recordio(src, out, num_shards=4, resume=True, progress=False)
    assert written == [] and again["shards"] == m["shards"]  # a finished conversion is left as it is


def test_read_manifest_errors(tmp_path, items):
    with pytest.raises(DatasetError, match="no manifest.json: not a converted dataset"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_manifest(tmp_path)
    src = tmp_path / "src"
    write_rec_dataset(src, items)
    convert.convert_recordio(src, tmp_path / "out", num_shards=2, progress=False)
    (tmp_path / "out" / "train-00001-of-00002.tfrecord").unlink()
    with pytest.raises(DatasetError, match="shard file train-00001-of-00002.tfrecord is missing"):
        read_manifest(tmp_path / "out")


# ---------------------------------------------------------------------------------------------
def test_folder_conversion(tmp_path, items):
    src = tmp_path / "people"
    for name, (label, jpeg) in zip(["bob", "alice"] * 4, items[:8]):
        (src / name).mkdir(parents=True, exist_ok=True)
        (src / name / f"{len(list((src / name).iterdir()))}.jpg").write_bytes(jpeg)
    png = cv2.imdecode(np.frombuffer(items[9][1], np.uint8), cv2.IMREAD_COLOR)
    (src / "carol").mkdir()
    cv2.imwrite(str(src / "carol" / "x.png"), png)
    m = convert.convert_folder(src, tmp_path / "out", num_shards=2, progress=False)
    assert m["classes"] == ["alice", "bob", "carol"] and m["num_classes"] == 3 and m["num_images"] == 9
    _, shards = _read_back(tmp_path / "out")
    rows = [r for s in shards for r in s]
    kept = {jpeg for label, jpeg in rows if label in (0, 1)}
    assert kept == {jpeg for _, jpeg in items[:8]}  # JPEGs stored byte for byte
    carol = [jpeg for label, jpeg in rows if label == 2]
    assert len(carol) == 1 and carol[0][:2] == b"\xff\xd8"  # PNG encoded to JPEG
    big = cv2.resize(png, (150, 150))
    cv2.imwrite(str(src / "carol" / "big.jpg"), big)
    with pytest.raises(DatasetError, match=r"carol/big\.jpg: image is 150x150, expected aligned 112x112"):
        convert.convert_folder(src, tmp_path / "out2", progress=False)
    m = convert.convert_folder(src, tmp_path / "out3", resize=True, progress=False)
    assert m["num_images"] == 10


def test_cli_exit_codes(tmp_path, items):
    """`frtf convert` through the real entry point: 0 on success, 2 and one line on bad input."""
    src = tmp_path / "src"
    write_rec_dataset(src, items)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ok = subprocess.run([sys.executable, str(REPO / "dataset" / "convert_dataset.py"), str(src),
                         str(tmp_path / "out"), "--shards", "2", "--no-progress"],
                        capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.split(": ", 1)[1])["num_images"] == len(items)
    rec = src / "train.rec"
    rec.write_bytes(rec.read_bytes()[:-5])
    bad = subprocess.run([sys.executable, "-m", "face_recognition_tf", "convert", str(src), str(tmp_path / "o2")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.startswith("frtf convert: error: ") and "train.rec" in bad.stderr and "truncated" in bad.stderr
