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
    from face_recognition_tf.data.conversion.convert import convert_recordio
    from face_recognition_tf.data.synthetic.sample import make_sample_dataset

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


# ---- freeze policies, gradual unfreezing, early stopping (issue 10) ------------------------------------
def _layer_names(layers):
    return [layer.name for layer in layers]


def test_embedding_layers_are_found_by_role_in_every_backbone():
    from face_recognition_tf.models import build_backbone
    from face_recognition_tf.training.finetune import embedding_layers

    for name in ("r18", "mobilefacenet"):
        backbone = build_backbone(name, embedding_size=16, width_multiplier=0.125)
        assert _layer_names(embedding_layers(backbone)) == ["fc", "features"]


def test_freeze_plan_states_by_step():
    from types import SimpleNamespace

    from face_recognition_tf.models import build_backbone
    from face_recognition_tf.training.finetune import FreezePlan, weighted_layers

    backbone = build_backbone("r18", embedding_size=16, width_multiplier=0.125)
    n = len(weighted_layers(backbone))
    stages = [{"step": 10, "layers": 30}, {"step": 20, "layers": "all"}]
    plan = FreezePlan(backbone, SimpleNamespace(freeze="first_layers", freeze_layers=40, unfreeze=stages))
    assert plan.trainable_at(0) == set(range(40, n)) and plan.frozen_count == 40
    assert plan.trainable_at(9) == set(range(40, n)) and plan.trainable_at(10) == set(range(n - 30, n))
    assert plan.trainable_at(20) == set(range(n))
    assert not plan.apply(5) and plan.apply(25) and plan.frozen_count == 0 and backbone.trainable_weights
    assert plan.apply(0) and len(backbone.trainable_weights) < len(plan.optimizer_variables(SimpleNamespace(
        trainable_variables=[])))
    head_only = FreezePlan(backbone, SimpleNamespace(freeze="all_but_head", freeze_layers=0, unfreeze=[]))
    assert head_only.frozen_count == n and backbone.trainable_weights == []


def test_all_but_embedding_trains_only_the_embedding_layers_and_head(source, tmp_path):
    from face_recognition_tf.training.finetune import weighted_layers

    trainer = _finetune(source, tmp_path, "finetune.freeze=all_but_embedding")
    backbone = trainer.step_fn.backbone
    trainable = [layer for layer in weighted_layers(backbone) if layer.trainable]
    assert _layer_names(trainable) == ["fc", "features"]
    assert {v.path for v in trainer.step_fn.variables} == {
        v.path for v in backbone.trainable_variables + trainer.step_fn.head.trainable_variables}
    before = {w.path: w.numpy().copy() for w in backbone.weights}
    head_before = trainer.step_fn.head.get_weights()[0].copy()
    trainer.train()
    changed = {w.path.split("/")[0] for w in backbone.weights if not np.array_equal(w.numpy(), before[w.path])}
    assert changed == {"fc", "features"}  # everything else bit-identical, BN statistics included
    assert not np.allclose(trainer.step_fn.head.get_weights()[0], head_before)


def _spy_updates(monkeypatch):
    """Record, before every update, which backbone layers train and every backbone weight."""
    from face_recognition_tf.training.finetune import weighted_layers
    from face_recognition_tf.training.train_step import TrainStep

    seen = []
    original = TrainStep.__call__

    def spy(self, iterator):
        layers = weighted_layers(self.backbone)
        expected = {v.path for layer in layers if layer.trainable for v in layer.trainable_weights}
        assert {v.path for v in self.variables} - {v.path for v in self.head.trainable_variables} == expected
        seen.append(({layer.name for layer in layers if layer.trainable},
                     {layer.name: [w.numpy().copy() for w in layer.weights] for layer in layers}))
        return original(self, iterator)

    monkeypatch.setattr(TrainStep, "__call__", spy)
    return seen


# the second stage opens 12 layers, not all: a trace through the whole backbone costs ~20 s on 2 cores
UNFREEZE = ["finetune.freeze=all_but_embedding", "finetune.unfreeze=[{step: 2, layers: 4}, {step: 4, layers: 12}]",
            "train.max_steps=5"]


def test_gradual_unfreezing_opens_layers_on_schedule_and_resumes_across_it(source, tmp_path, monkeypatch):
    """Frozen layers stay bit-identical until their step; a run stopped between the two stages and
    resumed trains what the uninterrupted run trained, step by step, and ends with the same weights."""
    import json

    from face_recognition_tf.training.finetune import weighted_layers

    import shutil

    seen = _spy_updates(monkeypatch)
    run, mine = source[0], tmp_path / "mine"
    shutil.copytree(source[1], mine, ignore=shutil.ignore_patterns("*.bin"))  # no validation: faster

    def trainer(folder, max_steps=None):
        cfg = load_config("quickstart", SMALL + [f"finetune.init={run}", *UNFREEZE])
        return Trainer(cfg, make_strategy("default"), data_dir=mine, run_dir=tmp_path / folder, progress=False,
                       max_steps=max_steps).prepare()

    whole = trainer("whole")
    names = _layer_names(weighted_layers(whole.step_fn.backbone))
    whole.train()
    final = {layer.name: [w.numpy() for w in layer.weights] for layer in weighted_layers(whole.step_fn.backbone)}
    opened = [state for state, _ in seen]
    assert opened == [{"fc", "features"}] * 2 + [set(names[-4:])] * 2 + [set(names[-12:])]
    snapshots = [weights for _, weights in seen] + [final]
    for update, state in enumerate(opened):
        before, after = snapshots[update], snapshots[update + 1]
        for name in names:
            same = all(np.array_equal(x, y) for x, y in zip(before[name], after[name]))
            assert same == (name not in state), (update, name)  # frozen: bit-identical; open: trained
    events = [json.loads(line) for line in (tmp_path / "whole" / "history.jsonl").read_text().splitlines()]
    assert [(e["step"], e["trainable_layers"]) for e in events if e["event"] == "unfreeze"] == [(2, 4), (4, 12)]

    del seen[:]
    trainer("split", max_steps=3).train()  # stops after the first stage, before the second
    second = trainer("split")
    assert second.start_step == 3
    summary = second.train()
    assert summary["step"] == 5 and summary["steps_this_run"] == 2
    assert [state for state, _ in seen] == opened
    a, b = whole.step_fn, second.step_fn
    assert int(a.optimizer.iterations.numpy()) == int(b.optimizer.iterations.numpy()) == 5
    backbone_paths = [[v.path for v in step.variables if not v.path.startswith(step.head.name)] for step in (a, b)]
    assert backbone_paths[0] == backbone_paths[1] and len(a.variables) == len(b.variables)
    assert len(a.optimizer.variables) == len(b.optimizer.variables)
    for x, y in zip(a.backbone.weights + a.head.weights + a.optimizer.variables,
                    b.backbone.weights + b.head.weights + b.optimizer.variables):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-4, atol=1e-6, err_msg=x.path)


def test_early_stopping_stops_keeps_the_best_model_and_stays_stopped(source, tmp_path, capsys):
    import json

    settings = ["finetune.freeze=all_but_head", "train.max_steps=20", "validation.every_steps=1",
                "validation.sets=[lfw]", "train.early_stopping.patience=2"]
    # a frozen backbone scores the same at every validation: the first is the best, two more end the run
    summary = _finetune(source, tmp_path, *settings).train()
    assert summary["step"] == 3
    assert "early stopping at step 3" in summary["stopped_early"] and "best" in summary["stopped_early"]
    assert "early stopping at step 3" in capsys.readouterr().out
    events = [json.loads(line) for line in (tmp_path / "ft" / "history.jsonl").read_text().splitlines()]
    stop = [e for e in events if e["event"] == "early_stop"]
    assert len(stop) == 1 and stop[0]["best_step"] == 1
    assert json.loads((tmp_path / "ft" / "best" / "best.json").read_text())["step"] == 1
    assert (tmp_path / "ft" / "best" / "embedding.keras").is_file()
    again = _finetune(source, tmp_path, *settings).train()  # a rerun resumes a stopped run: it stays stopped
    assert again["step"] == 3 and again["steps_this_run"] == 0 and again["stopped_early"]


def test_early_stopping_counts_validations_without_improvement():
    from face_recognition_tf.training.finetune import EarlyStopping

    stopper = EarlyStopping(patience=2, min_delta=0.01)
    results = [stopper.update(mean, step) for step, mean in enumerate([0.5, 0.6, 0.605, 0.62, 0.62, 0.625], 1)]
    assert results[:5] == [None] * 5 and results[5].startswith("early stopping at step 6")
    assert (stopper.best, stopper.best_step) == (0.62, 4)


@pytest.mark.parametrize("override, message", [
    ("finetune.unfreeze=[{step: 2, layers: 4}]", "needs a frozen start"),
    ("finetune.unfreeze=[{step: 2, layers: 0}]", "layers is 0"),
    ("finetune.unfreeze=[{step: 2, layers: most}]", "layers is 'most'"),
    ("finetune.unfreeze=[{step: 0, layers: 4}]", "step is 0"),
    ("finetune.unfreeze=[{step: 2, layer: 4}]", "must be a mapping"),
    ("finetune.unfreeze=[{step: 4, layers: 8}, {step: 2, layers: all}]", "increasing"),
    ("finetune.unfreeze={step: 2}", "wrong shape"),
    ("finetune.unfreeze=[{step: 2", "not valid YAML"),
    ("finetune.freeze=all_but_the_head", "choose one of none, first_layers, all_but_embedding, all_but_head"),
    ("train.early_stopping.patience=0", "positive number of validations"),
    ("train.early_stopping.min_delta=-0.1", "min_delta"),
    ("train.early_stopping.patiance=3", "unknown key 'train.early_stopping.patiance'"),
])
def test_bad_finetune_values_are_one_line_config_errors(override, message):
    freeze = ["finetune.freeze=none" if "frozen start" in message else "finetune.freeze=all_but_head"]
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("{", r"\{")) as info:
        load_config("finetune_small", [*freeze, override])
    assert "\n" not in str(info.value)


def test_early_stopping_needs_pair_sets_and_one_process(source, tmp_path):
    import shutil

    from face_recognition_tf.training.finetune import check_early_stopping

    bare = tmp_path / "bare"
    shutil.copytree(source[1], bare, ignore=shutil.ignore_patterns("*.bin"))
    cfg = load_config("quickstart", SMALL + ["train.early_stopping.patience=2", "validation.sets=[]"])
    with pytest.raises(ConfigError, match="needs verification pair sets"):
        check_early_stopping(cfg, bare, "default")
    with pytest.raises(ConfigError, match="one process"):
        check_early_stopping(cfg, source[1], "multi_worker")
