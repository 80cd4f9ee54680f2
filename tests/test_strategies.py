"""Mirrored and central-storage training mean the same thing as one device with the same global batch.

Two logical CPU devices (tests/conftest.py) stand in for two GPUs.  Each replica normalises over its
own part of the batch (no sync BN, as in insightface), so on arbitrary data batch-norm trajectories
differ by that alone.  To test everything else exactly (loss averaged over the global batch, gradient
summed across replicas, mean-aggregated moving statistics), every global batch here is one group of
examples repeated once per replica: each replica's batch statistics then equal the whole batch's, and
the trajectories must agree to round-off (rtol 1e-4).  Accumulation with batch renorm splits batches
differently from the reference, so that case is held to a stated 25% on the first loss and 50% after.
"""

import numpy as np
import pytest
import tensorflow as tf

from face_recognition_tf.config import load_config
from face_recognition_tf.training.strategy import build_tf_config, make_strategy
from face_recognition_tf.errors import ConfigError
from face_recognition_tf.training.train_step import TrainStep

GLOBAL_BATCH = 8
STEPS = 3
CLASSES = 6


def _config(normalization, per_replica, accumulation=1):
    return load_config("quickstart", [
        f"model.normalization={normalization}", "model.embedding_size=16", "model.input_size=32",
        "model.width_multiplier=0.125", "model.groups=4", f"train.batch_size={per_replica}",
        f"train.accumulation_steps={accumulation}", "train.max_steps=100", "head.s=8", "train.lr=1e-3",
        "train.schedule.name=constant", "train.schedule.warmup_steps=0", "train.regularization=l2",
        "train.weight_decay=1e-3", "train.optimizer=sgd", "train.lr_reference_batch=null", "train.lr=0.05",
    ])


def _data():
    """Global batches of 8 = 4 examples, twice (see module docstring)."""
    rng = np.random.default_rng(1)
    y = np.arange(4 * STEPS * 2) % CLASSES
    centres = rng.normal(size=(CLASSES, 32, 32, 3))
    x = (centres[y] + 0.5 * rng.normal(size=(len(y), 32, 32, 3))).astype("float32")
    halves_x = x.reshape(-1, 4, 32, 32, 3)
    halves_y = y.reshape(-1, 4)
    x = np.concatenate([halves_x, halves_x], axis=1).reshape(-1, 32, 32, 3)
    y = np.concatenate([halves_y, halves_y], axis=1).reshape(-1)
    return x, y.astype("int32")


def _trajectory(strategy_name, normalization, per_replica, accumulation=1):
    cfg = _config(normalization, per_replica, accumulation)
    info = make_strategy(strategy_name, cpu_replicas=None if strategy_name == "default" else 2)
    step = TrainStep(cfg, info, CLASSES)
    step.finalize()
    x, y = _data()

    def dataset_fn(ctx):
        return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(per_replica)

    iterator = iter(info.strategy.distribute_datasets_from_function(dataset_fn))
    losses = [step(iterator).loss for _ in range(STEPS)]
    return np.array(losses), step


@pytest.fixture(scope="module")
def reference():
    return {norm: _trajectory("default", norm, GLOBAL_BATCH)[0] for norm in ("batch", "batch_renorm")}


@pytest.mark.parametrize("strategy_name", ["mirrored", "central_storage"])
def test_batch_norm_trajectory_matches_one_device(reference, strategy_name):
    losses, step = _trajectory(strategy_name, "batch", GLOBAL_BATCH // 2)
    assert step.info.num_replicas == 2 and step.global_batch == GLOBAL_BATCH
    np.testing.assert_allclose(losses, reference["batch"], rtol=1e-4)
    moving = [v for v in step.backbone.non_trainable_variables if "moving_mean" in v.path]
    assert moving, "backbone has no BN moving means"
    assert any(np.abs(v.numpy()).max() > 0 for v in moving), "moving means never updated"
    for v in moving[:3]:  # every replica holds the same (mean-aggregated) statistics
        copies = step.info.strategy.experimental_local_results(v.value)
        for copy in copies[1:]:
            np.testing.assert_allclose(copy.numpy(), copies[0].numpy(), rtol=1e-6)


def test_batch_renorm_under_mirrored_with_accumulation(reference):
    # 2 replicas x 2 per replica x 2 micro-batches = the same global batch of 8
    losses, step = _trajectory("mirrored", "batch_renorm", 2, accumulation=2)
    assert step.global_batch == GLOBAL_BATCH
    assert np.all(np.isfinite(losses))
    np.testing.assert_allclose(losses[0], reference["batch_renorm"][0], rtol=0.25)
    np.testing.assert_allclose(losses, reference["batch_renorm"], rtol=0.5)


def test_tf_config_from_flags():
    spec = build_tf_config(["127.0.0.1:2222", "127.0.0.1:2223"], 1)
    assert spec == {"cluster": {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}, "task": {"type": "worker", "index": 1}}
    with pytest.raises(ConfigError, match="task-index"):
        build_tf_config(["a:1"], 3)
    with pytest.raises(ConfigError, match="host:port"):
        build_tf_config(["nohost"], 0)


def test_bad_strategy_requests_are_config_errors(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        make_strategy("multi_worker")
    with pytest.raises(ConfigError, match="cpu-replicas"):
        make_strategy("mirrored", cpu_replicas=8)
    with pytest.raises(ConfigError, match="no GPU"):
        make_strategy("mirrored", devices=[0])
    cfg = _config("group", 4)
    cfg.train.jit_compile = True
    with pytest.raises(ConfigError, match="jit_compile"):
        TrainStep(cfg, make_strategy("mirrored", cpu_replicas=2), CLASSES)
