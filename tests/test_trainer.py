"""The training loop end to end on a tiny converted dataset, plus the step's precision/NaN paths.

Tiny on purpose: r18 at 1/8 width, 16-D embeddings, 8 identities x 8 images, 20 pairs per set.
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from face_recognition_tf.cli import main
from face_recognition_tf.config import load_config
from face_recognition_tf.errors import CheckpointError, ConfigError
from face_recognition_tf.training import checkpoints as ck
from face_recognition_tf.training.strategy import make_strategy
from face_recognition_tf.training.train_step import TrainStep
from face_recognition_tf.training.trainer import NonFiniteLossError, Trainer

SMALL = ["model.width_multiplier=0.125", "model.embedding_size=16", "train.batch_size=8",
         "head.s=16", "head.m=0.2", "log.every_steps=1", "validation.every_steps=6", "checkpoint.every_steps=4"]


@pytest.fixture(scope="module")
def trained_run(data, tmp_path_factory):
    """12 updates, SGD with a heavy L2 term so the reg coefficient has to decay."""
    run = tmp_path_factory.mktemp("runs") / "run"
    cfg = load_config("quickstart", SMALL + [
        "train.max_steps=12", "train.optimizer=sgd", "train.lr=0.05", "train.lr_reference_batch=null",
        "train.regularization=l2", "train.weight_decay=0.5", "train.schedule.name=constant",
        "train.schedule.warmup_steps=0",
    ])
    summary = Trainer(cfg, make_strategy("default"), data_dir=data, run_dir=run, progress=False).prepare().train()
    return run, summary


def _history(run):
    return [json.loads(line) for line in (run / ck.HISTORY).read_text().splitlines()]


def test_loss_falls_and_coefficient_decays(trained_run):
    run, summary = trained_run
    train = [r for r in _history(run) if r["event"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 13))
    inference = np.array([r["inference_loss"] for r in train])
    assert inference[-3:].mean() < inference[:3].mean()
    coefs = np.array([r["reg_coef"] for r in train])
    assert coefs[-1] < 1.0 and np.all(np.diff(coefs) <= 0)
    # every value is 0.8^k: the rule only ever multiplies by the decay
    k = np.log(coefs) / np.log(0.8)
    np.testing.assert_allclose(k, np.round(k), atol=1e-4)
    assert summary["step"] == 12 and summary["steps_this_run"] == 12


def test_run_folder_layout(trained_run, data):
    from face_recognition_tf.model_io import load_embedding_model
    from face_recognition_tf.run_folder import list_checkpoints

    run, summary = trained_run
    cfg = load_config(run / "config.yaml")
    assert cfg.data.num_classes == 8 and cfg.data.dir == str(data)
    spec = json.loads((run / "backbone.json").read_text())
    assert spec["name"] == "r18" and spec["embedding_size"] == 16
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-8", "ckpt-12"]
    reader = tf.train.load_checkpoint(str(run / "checkpoints" / "ckpt-12"))
    keys = reader.get_variable_to_shape_map()
    assert any(k.startswith("backbone/") for k in keys) and any(k.startswith("head/") for k in keys)
    assert int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == 12
    assert (run / "embedding.keras").is_file() and (run / "best" / "embedding.keras").is_file()
    best = json.loads((run / "best" / "best.json").read_text())
    assert set(best) >= {"lfw", "cfp_fp", "agedb_30", "mean", "step"}
    assert list((run / "logs").glob("events.out.tfevents.*"))
    model = load_embedding_model(run)
    assert model(np.zeros((2, 112, 112, 3), np.float32)).shape == (2, 16)
    assert summary["validation"]["step"] == 12


def test_cli_bad_inputs_fail_before_training(trained_run, data, tmp_path, capsys):
    run, _ = trained_run
    base = ["train", "--config", "quickstart", "--no-progress", *SMALL]

    def fails(args, message):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert err.count("\n") == 1  # one line

    fails(base + ["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r1")], "dataset folder not found")
    fails(base + ["--data", str(data), "--out", str(tmp_path / "r2"), "data.num_classes=5"], "manifest.json says 8")
    fails(base + ["--data", str(data), "--out", str(tmp_path / "r3"), "--resume"], "holds no checkpoint")
    fails(base + ["--data", str(data), "--out", str(tmp_path / "r4"), "train.optimiser=sgd"], "unknown key 'train.optimiser'")
    # resuming the trained run with another architecture
    fails(["train", "--config", str(run / "config.yaml"), "--data", str(data), "--out", str(run), "--no-progress",
           "model.width_multiplier=0.25"], "another architecture")
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3" / "checkpoints").exists()


def test_non_finite_update_stops_and_keeps_last_good_checkpoint(trained_run, data, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    cfg = load_config(run / "config.yaml", ["train.max_steps=30", "train.lr=1e30"])
    trainer = Trainer(cfg, make_strategy("default"), data_dir=data, run_dir=run, progress=False).prepare()
    assert trainer.resumed_from.name == "ckpt-12"
    with pytest.raises(NonFiniteLossError, match=r"step 1[3-9]"):
        trainer.train()
    latest = ck.checkpoint_paths(run)[0]
    assert latest.name == "ckpt-12"
    reader = tf.train.load_checkpoint(str(latest))
    for key in reader.get_variable_to_shape_map():
        value = reader.get_tensor(key)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), key


def _in_memory_step(overrides, poison_second_batch=False):
    cfg = load_config("quickstart", ["model.width_multiplier=0.125", "model.embedding_size=16",
                                     "model.input_size=32", "train.batch_size=4", *overrides])
    info = make_strategy("default")
    step = TrainStep(cfg, info, 5)
    step.finalize()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 32, 32, 3)).astype("float32")
    if poison_second_batch:
        x[5] = np.nan
    y = (np.arange(40) % 5).astype("int32")
    fn = lambda ctx: tf.data.Dataset.from_tensor_slices((x, y)).batch(4)  # noqa: E731
    return step, iter(info.strategy.distribute_datasets_from_function(fn))


def test_skip_nonfinite_leaves_weights_and_optimizer_untouched():
    step, iterator = _in_memory_step(["train.skip_nonfinite=true"], poison_second_batch=True)
    assert step(iterator).ok
    before = [v.numpy() for v in step.variables]
    iterations = int(step.optimizer.iterations.numpy())
    result = step(iterator)
    assert not result.ok
    for v, b in zip(step.variables, before):
        np.testing.assert_array_equal(v.numpy(), b)
    assert int(step.optimizer.iterations.numpy()) == iterations
    assert step(iterator).ok


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_steps(precision):
    step, iterator = _in_memory_step([f"train.precision={precision}", "train.clip_norm=5.0"])
    results = [step(iterator) for _ in range(6)]
    assert all(r.ok and np.isfinite(r.loss) for r in results)
    assert step.backbone.compute_dtype == precision.split("_")[1]
    assert all(v.dtype == tf.float32 for v in step.variables)  # master weights stay float32
    # float16: the loss-scale optimizer skips updates whose scaled gradients overflow (gradient norm
    # reported inf/nan for those) and lowers its scale from 2^15; the others are applied
    assert any(np.isfinite(r.grad_norm) and r.grad_norm > 0 for r in results)
    assert int(step.optimizer.iterations.numpy()) >= 1


def test_jit_compile_on_one_device():
    step, iterator = _in_memory_step(["train.jit_compile=true"])
    assert step(iterator).ok and step(iterator).ok
