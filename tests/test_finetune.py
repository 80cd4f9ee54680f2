"""Fine-tuning: start from a trained run with a new head for new classes, freezing what was asked."""

import numpy as np
import pytest

from face_recognition_tf.config import load_config
from face_recognition_tf.errors import CheckpointError, ConfigError
from face_recognition_tf.training.strategy import make_strategy
from face_recognition_tf.training.trainer import Trainer

SMALL = ["model.width_multiplier=0.125", "model.embedding_size=16", "train.batch_size=8", "head.s=16",
         "head.m=0.2", "validation.every_steps=1000", "checkpoint.every_steps=1000", "train.lr=1e-2",
         "train.schedule.warmup_steps=0"]


def _data(root, name, identities, seed):
    from face_recognition_tf.data.convert import convert_recordio
    from face_recognition_tf.data.sample import make_sample_dataset

    src = make_sample_dataset(root / f"{name}_src", num_identities=identities, images_per_identity=6,
                              pairs_per_set=20, seed=seed, pair_sets=("lfw",))
    convert_recordio(src, root / name, progress=False)
    return root / name


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 'pretrained' run on 8 people, and a dataset of 5 other people to fine-tune on."""
    root = tmp_path_factory.mktemp("ft")
    pre = _data(root, "pre", 8, seed=1)
    mine = _data(root, "mine", 5, seed=2)
    run = root / "pretrained"
    cfg = load_config("quickstart", SMALL + ["train.max_steps=3"])
    Trainer(cfg, make_strategy("default"), data_dir=pre, run_dir=run, progress=False).prepare().train()
    return run, mine


def _finetune(source, tmp_path, *overrides):
    run, mine = source
    cfg = load_config("quickstart", SMALL + ["train.max_steps=3", f"finetune.init={run}", *overrides])
    trainer = Trainer(cfg, make_strategy("default"), data_dir=mine, run_dir=tmp_path / "ft", progress=False)
    return trainer.prepare()


def _pretrained_weights(run):
    from face_recognition_tf.model_io import load_embedding_model

    return [w.copy() for w in load_embedding_model(run).get_weights()]


def test_all_but_head_trains_only_the_new_head(source, tmp_path):
    trainer = _finetune(source, tmp_path, "finetune.freeze=all_but_head")
    start = _pretrained_weights(source[0])
    for got, want in zip(trainer.step_fn.backbone.get_weights(), start):
        np.testing.assert_array_equal(got, want)  # initialised from the run
    head_before = trainer.step_fn.head.get_weights()[0].copy()
    assert head_before.shape == (16, 5)  # a new head for the 5 new people
    trainer.train()
    for got, want in zip(trainer.step_fn.backbone.get_weights(), start):
        np.testing.assert_array_equal(got, want)  # frozen, BN statistics included
    assert not np.allclose(trainer.step_fn.head.get_weights()[0], head_before)


def test_first_layers_frozen_rest_trained(source, tmp_path):
    trainer = _finetune(source, tmp_path, "finetune.freeze=first_layers", "finetune.freeze_layers=4")
    backbone = trainer.step_fn.backbone
    layers = [layer for layer in backbone.layers if layer.weights]
    frozen = {id(w) for layer in layers[:4] for w in layer.weights}
    before = {id(w): w.numpy().copy() for w in backbone.weights}
    trainer.train()
    changed_frozen = [w.path for w in backbone.weights if id(w) in frozen and not np.array_equal(w.numpy(), before[id(w)])]
    assert changed_frozen == []
    assert any(not np.array_equal(w.numpy(), before[id(w)]) for w in backbone.trainable_weights)


def test_the_starting_models_architecture_wins_over_the_config(source, tmp_path, capsys):
    """A run (or an imported model folder) carries its architecture: fine-tuning rebuilds that one,
    says what it changed, and saves it as the new run's architecture."""
    import json

    trainer = _finetune(source, tmp_path, "model.width_multiplier=0.25", "model.embedding_size=32")
    assert "model.width_multiplier 0.25 -> 0.125" in capsys.readouterr().out
    saved = json.loads((source[0] / "backbone.json").read_text())
    written = json.loads((tmp_path / "ft" / "backbone.json").read_text())
    assert written == saved
    assert trainer.step_fn.head.get_weights()[0].shape == (16, 5)


def test_wrong_architecture_and_missing_init_are_clear_errors(source, tmp_path):
    # a bare .keras file carries no backbone.json: the config must describe it
    keras_file = tmp_path / "pretrained.keras"
    from face_recognition_tf.model_io import load_embedding_model

    load_embedding_model(source[0]).save(keras_file)
    with pytest.raises(CheckpointError, match="another architecture"):
        _finetune((keras_file, source[1]), tmp_path, "model.width_multiplier=0.25")
    with pytest.raises(CheckpointError, match="another architecture"):
        _finetune((keras_file, source[1]), tmp_path, "model.embedding_size=32")
    cfg = load_config("quickstart", SMALL + ["finetune.freeze=all_but_head"])
    with pytest.raises(ConfigError, match="finetune.init"):
        Trainer(cfg, make_strategy("default"), data_dir=source[1], run_dir=tmp_path / "x").prepare()
    assert not (tmp_path / "ft" / "checkpoints").exists()
