"""Training on bad data stops before the first update with one line naming what is wrong, and a new
run folder is not left behind: labels beyond the class count, an image that does not decode."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from face_recognition_tf.config import load_config
from face_recognition_tf.data.records import tfrecord
from face_recognition_tf.errors import DatasetError
from face_recognition_tf.training.strategy import make_strategy
from face_recognition_tf.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
SMALL = ["model.width_multiplier=0.125", "model.embedding_size=16", "train.batch_size=8", "head.s=16",
         "head.m=0.2", "validation.every_steps=1000", "checkpoint.every_steps=1000", "train.max_steps=2",
         "train.schedule.warmup_steps=0"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from face_recognition_tf.data.conversion.convert import convert_recordio
    from face_recognition_tf.data.synthetic.sample import make_sample_dataset

    root = tmp_path_factory.mktemp("bad_data")
    src = make_sample_dataset(root / "src", num_identities=6, images_per_identity=6, pairs_per_set=20,
                              pair_sets=("lfw",))
    convert_recordio(src, root / "good", num_shards=2, progress=False)
    return root / "good"


def _copy(dataset, dst: Path) -> Path:
    import shutil

    shutil.copytree(dataset, dst)
    return dst


def _edit_manifest(folder: Path, **changes) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    path.write_text(json.dumps(manifest))


def _corrupt_record(folder: Path, shard_index: int, position: int) -> str:
    """Rewrite one shard with record `position`'s JPEG cut in half (as a copy error would)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    shard = folder / manifest["shards"][shard_index]["file"]
    records = list(tfrecord.iter_tfrecord(shard))
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example.FromString(records[position])
    image = example.features.feature["image_raw"].bytes_list.value[0]
    label = example.features.feature["label"].int64_list.value[0]
    records[position] = tfrecord.serialize_example(image[: len(image) // 2], label)
    writer = tfrecord.ShardWriter(shard)
    for record in records:
        parsed = example_pb2.Example.FromString(record)
        writer.add(parsed.features.feature["label"].int64_list.value[0],
                   parsed.features.feature["image_raw"].bytes_list.value[0])
    writer.close()
    return shard.name


def _trainer(data, run, *overrides):
    cfg = load_config("quickstart", SMALL + list(overrides))
    return Trainer(cfg, make_strategy("default"), data_dir=data, run_dir=run, progress=False)


def test_labels_beyond_the_class_count_are_refused_before_anything_is_written(dataset, tmp_path):
    data = _copy(dataset, tmp_path / "data")
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["label_range"] == [0, manifest["num_classes"] - 1]
    _edit_manifest(data, num_classes=4)
    run = tmp_path / "run"
    with pytest.raises(DatasetError, match=r"manifest.json: labels run from 0 to 5 but num_classes is 4"):
        _trainer(data, run).prepare()
    assert not run.exists()


def test_labels_beyond_the_class_count_in_an_old_manifest_stop_the_first_step(dataset, tmp_path):
    """A manifest without label_range: the head's check stops the first step; one line, no run folder."""
    data = _copy(dataset, tmp_path / "data")
    _edit_manifest(data, num_classes=4, label_range=None)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "face_recognition_tf", "train", "--config", "quickstart", "--data", str(data),
               "--out", str(run), "--no-progress", *SMALL]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("frtf train: error: ") and "label" in lines[0] and "outside" in lines[0]
    assert "Traceback" not in result.stderr
    assert not run.exists()


def test_an_undecodable_jpeg_is_named_by_shard_and_record(dataset, tmp_path):
    data = _copy(dataset, tmp_path / "data")
    shard = _corrupt_record(data, 1, 3)
    run = tmp_path / "run"
    with pytest.raises(DatasetError) as caught:
        _trainer(data, run, "train.max_steps=20").prepare().train()
    message = str(caught.value)
    assert "\n" not in message
    assert f"{shard} record 3" in message and "frtf convert --verify" in message and "data.skip_corrupt" in message
    assert not run.exists()


def test_skip_corrupt_leaves_the_record_out_and_says_so(dataset, tmp_path, capsys):
    data = _copy(dataset, tmp_path / "data")
    shard = _corrupt_record(data, 0, 5)
    trainer = _trainer(data, tmp_path / "run", "train.max_steps=20", "data.skip_corrupt=true").prepare()
    assert trainer.exclude == [(0, 5)]
    summary = trainer.train()  # 20 steps of 8 over 35 good images: every record is read several times
    assert summary["step"] == 20
    out = capsys.readouterr()
    assert f"leaving out 1 record(s) of 36 whose image does not decode: {shard} record 5" in out.out + out.err


def test_run_folder_files_follow_the_umask(dataset, tmp_path):
    """Results and configs were written 0600 (mkstemp): a colleague could not read a shared run."""
    old = os.umask(0o027)
    try:
        run = tmp_path / "run"
        _trainer(dataset, run, "train.max_steps=1", "validation.every_steps=1").prepare().train()
    finally:
        os.umask(old)
    for name in ("config.yaml", "backbone.json", "head.json", "embedding.keras", "best/best.json",
                 "best/embedding.keras"):
        assert (run / name).stat().st_mode & 0o777 == 0o640, name
