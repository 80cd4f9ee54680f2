"""Gradient accumulation: N micro-batches make one update whose gradient is the mean over them.

Compared with one big batch on a model without batch statistics (group norm), so the only thing
that could differ is the accumulation itself: the weights after two updates must agree to round-off.
Also under the mirrored strategy (2 logical CPUs x 2 micro-batches x 2 examples = the same 8).
"""

import numpy as np
import tensorflow as tf

from face_recognition_tf.config import load_config
from face_recognition_tf.training.strategy import make_strategy
from face_recognition_tf.training.train_step import TrainStep

CLASSES = 5


def _run(strategy_name, per_replica, accumulation, steps=2):
    cfg = load_config("quickstart", [
        "model.normalization=group", "model.groups=4", "model.embedding_size=16", "model.input_size=32",
        "model.width_multiplier=0.125", f"train.batch_size={per_replica}", f"train.accumulation_steps={accumulation}",
        "train.optimizer=sgd", "train.lr=0.1", "train.lr_reference_batch=null", "train.schedule.name=constant",
        "train.schedule.warmup_steps=0", "train.regularization=l2", "train.weight_decay=1e-2", "head.s=8",
    ])
    info = make_strategy(strategy_name, cpu_replicas=None if strategy_name == "default" else 2)
    step = TrainStep(cfg, info, CLASSES)
    step.finalize()
    variables = step.backbone.trainable_variables + step.head.trainable_variables
    initial = [v.numpy() for v in variables]
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8 * steps, 32, 32, 3)).astype("float32")
    y = (np.arange(8 * steps) % CLASSES).astype("int32")
    ds_fn = lambda ctx: tf.data.Dataset.from_tensor_slices((x, y)).batch(per_replica)  # noqa: E731
    iterator = iter(info.strategy.distribute_datasets_from_function(ds_fn))
    results = [step(iterator) for _ in range(steps)]
    updates = np.concatenate([(v.numpy() - w0).ravel() for v, w0 in zip(variables, initial)])
    return results, updates, step


def _relative_difference(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_accumulation_equals_one_big_batch():
    big, big_weights, big_step = _run("default", 8, 1)
    acc, acc_weights, acc_step = _run("default", 2, 4)
    assert big_step.global_batch == acc_step.global_batch == 8
    for a, b in zip(big, acc):
        np.testing.assert_allclose(a.inference_loss, b.inference_loss, rtol=1e-5)
        np.testing.assert_allclose(a.reg_loss, b.reg_loss, rtol=1e-5)
        np.testing.assert_allclose(a.grad_norm, b.grad_norm, rtol=1e-4)
    # the total weight change of two updates agrees to float32 summation-order noise
    assert np.linalg.norm(big_weights) > 0
    assert _relative_difference(acc_weights, big_weights) < 1e-4
    # one optimizer update per accumulated step: iterations count updates, not micro-batches
    assert int(acc_step.optimizer.iterations.numpy()) == 2

    # the same global batch under mirrored: 2 replicas x 2 micro-batches x 2 examples
    mir, mir_weights, mir_step = _run("mirrored", 2, 2)
    assert mir_step.global_batch == 8
    for a, b in zip(big, mir):
        np.testing.assert_allclose(a.loss, b.loss, rtol=1e-5)
    assert _relative_difference(mir_weights, big_weights) < 1e-4
