"""Partial FC (models/partial_fc.py): sharded centres with an exact cross-shard softmax, and sampling.

Two logical CPU devices (tests/conftest.py) stand in for two GPUs.  With sample_rate 1 the sharded head
must be the full head computed another way, so loss, the embeddings' gradient and the updated centres
are held to round-off against heads.py on one device.  With sampling, the loss must be the softmax
restricted to the sampled classes (checked against float64 numpy), every positive must be sampled, and
rows that were not sampled must not move, nor their optimizer slots.  Multi-worker runs, kills and
resumes are in test_partial_fc_multi_worker.py.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

import partial_fc_cases as cases
from face_recognition_tf.config import load_config
from face_recognition_tf.errors import ConfigError
from face_recognition_tf.models.partial_fc import initial_centres, num_sampled, shard_bounds
from face_recognition_tf.training.strategy import make_strategy
from face_recognition_tf.training.train_step import TrainStep



@pytest.fixture(scope="module", autouse=True)
def tiny_backbone():
    """A conv + dense backbone: the trainer's partial-FC path in seconds.  Registered for this module only,
    so that other test files in the same worker process see the package's registry as it ships."""
    from face_recognition_tf.models import factory

    saved = dict(factory._BACKBONES)
    cases.register_tiny()
    yield
    factory._BACKBONES.clear()
    factory._BACKBONES.update(saved)


@pytest.fixture(scope="module")
def mirrored():
    return make_strategy("mirrored", cpu_replicas=2).strategy


def test_shards_are_ceil_sized_with_a_ragged_last_one_and_init_ignores_the_layout():
    assert [shard_bounds(7, 2, r) for r in range(2)] == [(0, 4), (4, 7)]
    assert [shard_bounds(10, 4, r) for r in range(4)] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert num_sampled(20, 0.25) == 5 and num_sampled(20, 1.0) == 20 and num_sampled(3, 0.1) == 1
    whole = initial_centres(4, 0, 5000, seed=1).numpy()  # spans two seeded blocks
    parts = np.concatenate([initial_centres(4, *shard_bounds(5000, 3, r), seed=1).numpy() for r in range(3)])
    np.testing.assert_array_equal(whole, parts)
    assert abs(whole.std() - 0.01) < 1e-3


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_sharded_head_equals_full_head(mirrored, optimizer):
    x, y, w = cases.case(seed=1)
    names = list(cases.MARGINS) if optimizer == "sgd" else ["arcface"]
    for strategy, replicas in ((tf.distribute.get_strategy(), 1), (mirrored, 2)):
        results = cases.sharded_updates(names, optimizer, x, y, w, strategy, replicas)
        for name in names:
            reference, got = cases.full_head_update(name, optimizer, x, y, w), results[name]
            where = f"{name}, {replicas} replica(s)"
            np.testing.assert_allclose(got["loss"], reference["loss"], rtol=1e-5, atol=1e-5, err_msg=where)
            np.testing.assert_allclose(got["grad_x"], reference["grad_x"], rtol=1e-5, atol=1e-6, err_msg=where)
            # AdamW's first step is lr * g / (|g| + eps') per element: a gradient entry that is a near-cancelling
            # sum carries round-off of a sizeable share of itself, which the division turns into up to ~1e-3 of lr
            atol = 1e-7 if optimizer == "sgd" else 1e-3 * cases.LR
            np.testing.assert_allclose(got["centres"], reference["centres"], rtol=1e-5, atol=atol, err_msg=where)


def _arcface_loss64(x, y, w, classes, s=8.0, m=0.3):
    """float64 softmax cross-entropy of ArcFace logits over `classes` only."""
    x = x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True)
    c = w[classes].astype(np.float64)
    cos = np.clip(x @ (c / np.linalg.norm(c, axis=1, keepdims=True)).T, -1, 1)
    column = np.searchsorted(classes, y)
    t = cos[np.arange(len(y)), column]
    target = np.where(t > math.cos(math.pi - m), np.cos(np.arccos(t) + m), t - m * math.sin(m))
    logits = s * cos
    logits[np.arange(len(y)), column] = s * target
    top = logits.max(axis=1, keepdims=True)
    return np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0] - logits[np.arange(len(y)), column]


@pytest.mark.parametrize("replicas", [1, 2])
def test_sampling_keeps_positives_matches_float64_and_leaves_other_rows_alone(mirrored, replicas):
    classes, rate = 40, 0.25
    x, y, w = cases.case(seed=2, classes=classes)
    strategy = mirrored if replicas == 2 else tf.distribute.get_strategy()
    pfc, optimizer = cases.build_sharded("arcface", "sgd", w, strategy, replicas, sample_rate=rate, seed=3)
    with strategy.scope():
        iterations = tf.Variable(0, dtype=tf.int64)
    run = cases.sharded_step_fn(pfc, optimizer, strategy, len(y), iterations)
    centres = lambda: np.concatenate([pfc.shards[i].weight.numpy() for i in sorted(pfc.shards)])  # noqa: E731
    momentum = lambda: np.concatenate([pfc.shards[i].slots["momentum"].numpy() for i in sorted(pfc.shards)])  # noqa: E731
    before, slots_before, seen = centres(), momentum(), []
    for update in range(2):
        labels = y if update == 0 else (y + 11) % classes
        loss, _, _, index = run(cases.distribute(strategy, x, replicas), cases.distribute(strategy, labels, replicas))
        per_shard = cases.local(strategy, index) if replicas == 2 else [index.numpy()]
        sampled = np.concatenate(per_shard)
        for shard, rows in zip(sorted(pfc.shards), per_shard):
            start, end = shard_bounds(classes, replicas, shard)
            positives = {int(c) for c in labels if start <= c < end}
            assert positives <= set(rows.tolist())  # every positive kept...
            assert len(rows) == max(num_sampled(end - start, rate), len(positives))  # ...plus negatives up to r x rows
        assert len(set(sampled.tolist())) == len(sampled) < classes
        got = np.concatenate(cases.local(strategy, loss)) if replicas == 2 else loss.numpy()
        np.testing.assert_allclose(got, _arcface_loss64(x, labels, before, np.sort(sampled)), rtol=1e-5, atol=1e-5)
        after, slots_after = centres(), momentum()
        untouched = np.setdiff1d(np.arange(classes), sampled)
        np.testing.assert_array_equal(after[untouched], before[untouched])
        np.testing.assert_array_equal(slots_after[untouched], slots_before[untouched])
        assert np.all(np.abs(after[sampled] - before[sampled]).max(axis=1) > 0)
        before, slots_before = after, slots_after
        seen.append(sampled)
        iterations.assign_add(1)
    assert not np.array_equal(np.sort(seen[0]), np.sort(seen[1]))  # a new draw each update
    if replicas == 2:
        return
    # seeded: the same seed and update count draw the same rows
    pfc2, optimizer2 = cases.build_sharded("arcface", "sgd", w, strategy, replicas, sample_rate=rate, seed=3)
    with strategy.scope():
        iterations2 = tf.Variable(0, dtype=tf.int64)
    index = cases.sharded_step_fn(pfc2, optimizer2, strategy, len(y), iterations2)(
        cases.distribute(strategy, x, replicas), cases.distribute(strategy, y, replicas))[3]
    again = np.concatenate(cases.local(strategy, index)) if replicas == 2 else index.numpy()
    np.testing.assert_array_equal(again, seen[0])


# ---- the trainer's step: partial FC inside TrainStep against the full head on one device ---------------------

def _config(partial_fc, per_replica, accumulation, precision):
    cfg = load_config("quickstart", [
        "model.embedding_size=8", "model.input_size=16", f"train.batch_size={per_replica}",
        f"train.accumulation_steps={accumulation}", "head.s=8", "head.m=0.3", "train.schedule.name=constant",
        "train.regularization=l2", "train.weight_decay=1e-2", "train.optimizer=sgd", "train.lr_reference_batch=null",
        "train.lr=0.1", "train.clip_norm=2.0", f"train.precision={precision}", f"head.partial_fc.enabled={partial_fc}"])
    cfg.model.backbone = cases.TINY  # registered above, not one of the config's choices
    return cfg


def _trajectory(strategy_name, partial_fc, per_replica, accumulation=1, precision="float32", steps=2, kernel=None):
    info = make_strategy(strategy_name, cpu_replicas=None if strategy_name == "default" else 2)
    step = TrainStep(_config(partial_fc, per_replica, accumulation, precision), info, cases.CLASSES)
    step.finalize()
    if precision == "mixed_float16":
        # one device sums 8 examples' float16 conv gradients where a replica sums 4: at the default scale
        # (32768) the first overflows and skips the update while the second does not; start both lower
        step.optimizer.dynamic_scale.assign(256.0)
    if partial_fc:
        for shard in step.head.shards.values():  # start from the reference's centres
            shard.weight.assign(kernel.T[shard.start:shard.end])
    rng = np.random.default_rng(4)
    x = rng.normal(size=(8 * steps, 16, 16, 3)).astype("float32")
    y = (np.arange(8 * steps) % cases.CLASSES).astype("int32")
    dataset = lambda ctx: tf.data.Dataset.from_tensor_slices((x, y)).batch(per_replica).repeat()  # noqa: E731
    iterator = iter(info.strategy.distribute_datasets_from_function(dataset))
    kernel0 = None if partial_fc else step.head.kernel.numpy()
    results = [step(iterator) for _ in range(steps)]
    if partial_fc:
        centres = np.concatenate([step.head.shards[i].weight.numpy() for i in sorted(step.head.shards)])
    else:
        centres = step.head.kernel.numpy().T
    if partial_fc and precision == "mixed_float16":
        # an overflowing update: the loss-scale optimizer skips it and halves the scale, the centres stay
        step.optimizer.dynamic_scale.assign(3e38)
        step(iterator)
        assert step.optimizer.dynamic_scale.numpy() == np.float32(3e38) / 2
        np.testing.assert_array_equal(
            np.concatenate([step.head.shards[i].weight.numpy() for i in sorted(step.head.shards)]), centres)
    return results, centres, [v.numpy() for v in step.backbone.trainable_variables], kernel0


@pytest.mark.parametrize("precision,accumulation", [("float32", 2), ("mixed_float16", 1)])
def test_train_step_with_partial_fc_under_mirrored_equals_full_head_on_one_device(precision, accumulation):
    # global batch 8 both ways: 8 on one device; 2 replicas x (8 / 2 / accumulation) x accumulation
    ref, ref_centres, ref_backbone, kernel0 = _trajectory("default", False, 8, precision=precision)
    got, centres, backbone, _ = _trajectory("mirrored", True, 4 // accumulation, accumulation, precision,
                                            kernel=kernel0)
    tol = dict(rtol=1e-5, atol=1e-6) if precision == "float32" else dict(rtol=2e-3, atol=1e-4)
    assert ref[0].grad_norm > 2.0  # train.clip_norm=2 clips: the centres' share of the norm must be counted
    for a, b in zip(ref, got):
        assert b.ok
        np.testing.assert_allclose([b.loss, b.reg_loss, b.grad_norm, b.accuracy],
                                   [a.loss, a.reg_loss, a.grad_norm, a.accuracy], **tol)
    np.testing.assert_allclose(centres, ref_centres, **tol)
    for a, b in zip(ref_backbone, backbone):
        np.testing.assert_allclose(b, a, **tol)


def test_config_refuses_partial_fc_where_it_cannot_work():
    with pytest.raises(ConfigError, match="sample_rate"):
        load_config("quickstart", ["head.partial_fc.sample_rate=1.5"])
    with pytest.raises(ConfigError, match="normalised margin head"):
        load_config("quickstart", ["head.partial_fc.enabled=true", "head.name=softmax"])
    with pytest.raises(ConfigError, match="central_storage"):
        load_config("quickstart", ["head.partial_fc.enabled=true", "train.strategy=central_storage"])
    cfg = _config(True, 4, 1, "float32")
    with pytest.raises(ConfigError, match="strategy"):  # --strategy wins over the config, so checked again
        TrainStep(cfg, make_strategy("central_storage", cpu_replicas=2), cases.CLASSES)
