"""Partial FC's centre shards in checkpoints (training/centre_checkpoints.py): re-sharding and torn saves.

Shards of any layout can live in one process (models/partial_fc.py takes the list of shards it holds),
so 1, 2 and 3-shard stores are built here without a strategy; the CheckpointStore is the trainer's own.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from face_recognition_tf.errors import CheckpointError
from face_recognition_tf.models import build_head
from face_recognition_tf.models.partial_fc import PartialFC
from face_recognition_tf.training import checkpoints as ck
from face_recognition_tf.training.centre_checkpoints import CentreCheckpoint, centres_dir

CLASSES, DIM = 11, 3
ONE_PROCESS = SimpleNamespace(name="mirrored", num_workers=1)


def _store(shards, slots=("momentum",), seed=0):
    margin = build_head("arcface", 1, DIM)
    return PartialFC(margin, CLASSES, DIM, num_shards=shards, local_shards=[(i, None) for i in range(shards)],
                     slot_names=slots, seed=seed)


def _rows(pfc, name="weight"):
    return np.concatenate([pfc.shards[i].variables()[name].numpy() for i in sorted(pfc.shards)])


def _checkpoint_store(run, pfc, counter):
    return ck.CheckpointStore(run, tf.train.Checkpoint(counter=counter), keep=2,
                              companion=CentreCheckpoint(pfc, ONE_PROCESS))


def test_saved_on_two_shards_restores_on_one_and_three(tmp_path):
    saved = _store(2, seed=1)
    for shard in saved.shards.values():
        shard.slots["momentum"].assign(tf.fill([shard.rows, DIM], float(shard.index + 1)))
    counter = tf.Variable(7)
    _checkpoint_store(tmp_path, saved, counter).save(4)
    assert sorted(p.name for p in centres_dir(tmp_path / ck.CHECKPOINT_DIR, 4).iterdir()) == [
        "shard-00000-of-00002", "shard-00001-of-00002"]
    for shards in (1, 3):
        restored = _store(shards, seed=2)  # other initial values, so a restore that did nothing would show
        assert not np.array_equal(_rows(restored), _rows(saved))
        assert _checkpoint_store(tmp_path, restored, tf.Variable(0)).restore_latest().name == "ckpt-4"
        np.testing.assert_array_equal(_rows(restored), _rows(saved))
        np.testing.assert_array_equal(_rows(restored, "momentum"), _rows(saved, "momentum"))
        assert [(s.start, s.end) for s in restored.shards.values()][-1][1] == CLASSES


def test_a_torn_shard_set_falls_back_and_old_sets_are_removed(tmp_path):
    pfc = _store(2)
    store = _checkpoint_store(tmp_path, pfc, tf.Variable(0))
    for step in (2, 4, 6):
        pfc.shards[0].weight.assign_add(tf.ones_like(pfc.shards[0].weight))
        store.save(step)
        if step == 4:
            at_four = _rows(pfc)
    folders = sorted(p.name for p in (tmp_path / ck.CHECKPOINT_DIR).glob("centres-*"))
    assert folders == ["centres-4", "centres-6"]  # keep=2: the sets of dropped checkpoints go with them
    # a kill while a worker was still writing step 6: its set is incomplete, so ckpt-4 is the one to resume
    import shutil

    shutil.rmtree(centres_dir(tmp_path / ck.CHECKPOINT_DIR, 6) / "shard-00001-of-00002")
    fresh = _store(2, seed=5)
    assert _checkpoint_store(tmp_path, fresh, tf.Variable(0)).restore_latest().name == "ckpt-4"
    np.testing.assert_array_equal(_rows(fresh), at_four)


def test_restore_refuses_another_optimizer_or_class_count(tmp_path):
    _checkpoint_store(tmp_path, _store(2), tf.Variable(0)).save(2)
    with pytest.raises(CheckpointError, match="'m' centre slot"):
        _checkpoint_store(tmp_path, _store(2, slots=("m", "v")), tf.Variable(0)).restore_latest()
    other = PartialFC(build_head("arcface", 1, DIM), CLASSES + 1, DIM, num_shards=1, slot_names=("momentum",))
    with pytest.raises(CheckpointError, match="11 classes"):
        _checkpoint_store(tmp_path, other, tf.Variable(0)).restore_latest()
