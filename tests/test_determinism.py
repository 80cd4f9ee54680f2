"""Two uninterrupted runs of one config give bit-identical weights, under the conditions
docs/design-notes.md ("Reproducibility") states: data.deterministic (the same batches, TensorFlow's op
determinism) and one CPU thread per op, since multi-threaded CPU kernels may sum in another order."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tiny import make_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ["model.width_multiplier=0.125", "model.embedding_size=16", "train.batch_size=16", "head.s=16",
             "head.m=0.2", "train.max_steps=4", "train.schedule.warmup_steps=0", "validation.every_steps=1000",
             "checkpoint.every_steps=1000", "data.deterministic=true"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("determinism"), num_shards=3, pair_sets=("lfw",))


def _train(data, run):
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
    command = [sys.executable, "-m", "face_recognition_tf", "train", "--config", "quickstart", "--data", str(data),
               "--out", str(run), "--no-progress", *OVERRIDES]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _variables(run):
    reader = tf.train.load_checkpoint(str(run / "checkpoints" / "ckpt-4"))
    names = sorted(reader.get_variable_to_shape_map())
    return {name: reader.get_tensor(name) for name in names if not name.startswith("_CHECKPOINTABLE")}


def test_two_runs_end_with_bit_identical_weights(data, tmp_path):
    out_a, out_b = _train(data, tmp_path / "a"), _train(data, tmp_path / "b")
    a, b = _variables(tmp_path / "a"), _variables(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) > 50
    different = [name for name in a if a[name].tobytes() != b[name].tobytes()]
    assert not different, different[:5]
    digest = [line.rsplit("weights sha256 ", 1)[-1] for line in (out_a, out_b)]
    assert digest[0] == digest[1]
    assert np.array_equal(a["step/.ATTRIBUTES/VARIABLE_VALUE"], np.int64(4))
