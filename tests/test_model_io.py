"""model_io: every form a user points at (run folder, checkpoint, .keras, SavedModel) loads the same model."""

import json

import numpy as np
import pytest
import tensorflow as tf

from face_recognition_tf import model_io
from face_recognition_tf.errors import CheckpointError
from face_recognition_tf.models import build_backbone

SPEC = {"name": "r18", "embedding_size": 16, "width_multiplier": 0.25}


def make_run(tmp_path, steps=(5, 10), spec=SPEC):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "backbone.json").write_text(json.dumps(spec))
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    model = build_backbone(spec["name"], **kwargs)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(backbone=model), run / "checkpoints", max_to_keep=5)
    for step in steps:
        manager.save(checkpoint_number=step)
    return run, model


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(-1, 1, (2, 112, 112, 3)).astype("float32")


def test_run_folder_expands_to_checkpoints_in_step_order(tmp_path):
    run, _ = make_run(tmp_path, steps=(10, 5, 100))
    paths = model_io.expand_model_paths([str(run)])
    assert [p.rsplit("-", 1)[1] for p in paths] == ["5", "10", "100"]
    assert model_io.describe(paths[-1]) == "run/ckpt-100"


def test_glob_of_checkpoint_files_gives_prefixes_once(tmp_path):
    run, _ = make_run(tmp_path)
    paths = model_io.expand_model_paths([str(run / "checkpoints" / "ckpt-*")])
    assert paths == [str(run / "checkpoints" / "ckpt-5"), str(run / "checkpoints" / "ckpt-10")]


def test_checkpoint_and_run_folder_load_the_trained_weights(tmp_path, images):
    run, model = make_run(tmp_path)
    expected = model(images, training=False).numpy()
    for path in (run, run / "checkpoints" / "ckpt-10"):
        loaded = model_io.load_embedding_model(path)
        np.testing.assert_allclose(loaded(images, training=False).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_keras_file_loads(tmp_path, images):
    model = build_backbone("r18", embedding_size=16, width_multiplier=0.25)
    model.save(tmp_path / "m.keras")
    loaded = model_io.load_embedding_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded(images).numpy(), model(images).numpy(), rtol=1e-5, atol=1e-5)


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    run, _ = make_run(tmp_path)
    (run / "backbone.json").write_text(json.dumps({**SPEC, "embedding_size": 32}))
    with pytest.raises(CheckpointError, match="ckpt-10"):
        model_io.load_embedding_model(run)


def test_missing_and_malformed_inputs(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        model_io.expand_model_paths([str(tmp_path / "nothing")])
    with pytest.raises(CheckpointError, match="no file or folder matches"):
        model_io.expand_model_paths([str(tmp_path / "*.keras")])
    run, _ = make_run(tmp_path)
    (run / "backbone.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="backbone.json"):
        model_io.load_embedding_model(run)
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="bad.keras"):
        model_io.load_embedding_model(tmp_path / "bad.keras")
