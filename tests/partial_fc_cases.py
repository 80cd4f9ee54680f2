"""Shared by tests/test_partial_fc.py and the multi-worker processes of tests/test_partial_fc_multi_worker.py.

One optimizer update on fixed embeddings, labels and centres, done two ways:
* `full_head_update`: heads.py's head on one device, the Keras optimizer applied to its kernel;
* `sharded_update`: models/partial_fc.py under a strategy (one device, mirrored, multi-worker), the
  centre update of training/partial_fc_step.py applied to each replica's shard.
Both return the per-example losses, the gradient of the mean loss with respect to the embeddings, and the
centres after the update (as (classes, D) rows), so a test can hold them equal to round-off.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from omegaconf import OmegaConf

CLASSES, DIM, BATCH, LR = 7, 6, 8, 0.1
TINY = "pfc_test_tiny"
MARGINS = {
    "arcface": dict(s=8.0, m=0.3),
    "cosface": dict(s=8.0, m=0.35),
    "combined": dict(s=8.0, m1=1.0, m2=0.3, m3=0.1),
}


def case(seed=0, classes=CLASSES, batch=BATCH, dim=DIM):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, dim)).astype("float32")
    y = rng.integers(0, classes, size=batch).astype("int32")
    w = (0.3 * rng.normal(size=(classes, dim))).astype("float32")
    return x, y, w


def train_config(optimizer):
    """What CentreOptimizer reads: SGD momentum or AdamW, decoupled weight decay (as Keras applies it)."""
    return OmegaConf.create(dict(optimizer=optimizer, weight_decay=1e-2, regularization="decoupled", momentum=0.9,
                                 nesterov=False, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8))


def _keras_optimizer(optimizer):
    if optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=LR, momentum=0.9, weight_decay=1e-2)
    return keras.optimizers.AdamW(learning_rate=LR, weight_decay=1e-2)


def full_head_update(name, optimizer, x, y, w):
    from face_recognition_tf.models import build_head

    head = build_head(name, w.shape[0], w.shape[1], **MARGINS[name])
    head.kernel.assign(w.T)
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        per_example = head.per_example_loss(x, tf.constant(y))
        loss = tf.reduce_sum(per_example) / len(y)
    grad_x, grad_kernel = tape.gradient(loss, [x, head.kernel])
    _keras_optimizer(optimizer).apply([grad_kernel], [head.kernel])
    return {"loss": per_example.numpy(), "grad_x": grad_x.numpy(), "centres": head.kernel.numpy().T}


def build_sharded(name, optimizer, w, strategy, replicas, first_shard=0, sample_rate=1.0, seed=0):
    from face_recognition_tf.models import build_head
    from face_recognition_tf.models.partial_fc import PartialFC
    from face_recognition_tf.training.partial_fc_step import CentreOptimizer

    margin = build_head(name, 1, w.shape[1], **MARGINS[name])
    devices = list(strategy.extended.worker_devices) if replicas > 1 else [None]
    centre_optimizer = CentreOptimizer(train_config(optimizer))
    pfc = PartialFC(margin, w.shape[0], w.shape[1], num_shards=replicas, sample_rate=sample_rate, seed=seed,
                    local_shards=[(first_shard + i, d) for i, d in enumerate(devices)],
                    slot_names=centre_optimizer.slot_names)
    for shard in pfc.shards.values():
        shard.weight.assign(w[shard.start:shard.end])
    return pfc, centre_optimizer


def replica_update(pfc, centre_optimizer, x, y, iterations, global_batch):
    """In replica context: one update of this replica's centre rows from embeddings `x` and labels `y`.
    Returns (the CentreStep, per-example losses, gradient wrt `x`, hits)."""
    from face_recognition_tf.training.partial_fc_step import apply_centre_update

    step = pfc.begin_step([y], iterations)
    with tf.GradientTape() as tape:
        tape.watch(x)
        tape.watch(step.sources)
        per_example, hits = step.per_example_loss(x, y)
        loss = tf.reduce_sum(per_example) / global_batch
    grads = tape.gradient(loss, [x] + step.sources)
    apply_centre_update(step, centre_optimizer, grads[1:], ok=tf.constant(True), lr=LR,
                        iteration=tf.convert_to_tensor(iterations))
    return step, per_example, grads[0], hits


def sharded_step_fn(pfc, centre_optimizer, strategy, global_batch, iterations):
    """A compiled update: per replica (embeddings, labels) -> (losses, grad wrt embeddings, hits, sampled rows)."""

    def replica_fn(x, y):
        step, per_example, grad_x, hits = replica_update(pfc, centre_optimizer, x, y, iterations, global_batch)
        index = step.index if step.index is not None else tf.range(step.shard.rows)
        return per_example, grad_x, hits, index + step.shard.start

    @tf.function
    def run(x, y):
        return strategy.run(replica_fn, args=(x, y))

    return run


def distribute(strategy, array, replicas):
    """Each replica's consecutive slice of `array`, by global replica id (so multi-worker too)."""
    per = len(array) // (replicas if replicas > 1 else 1)

    def value(ctx):
        i = ctx.replica_id_in_sync_group
        return tf.constant(array[i * per:(i + 1) * per])

    if replicas == 1:
        return tf.constant(array)
    return strategy.experimental_distribute_values_from_function(value)


def local(strategy, value):
    return [t.numpy() for t in strategy.experimental_local_results(value)]


def sharded_updates(names, optimizer, x, y, w, strategy, replicas, first_shard=0):
    """{margin: this process's part}: losses and embedding gradients of its replicas' rows, its shards'
    centres after the update.  All margins in one compiled function (one trace, which is what costs)."""
    heads = {name: build_sharded(name, optimizer, w, strategy, replicas, first_shard) for name in names}
    global_batch = len(y)
    with strategy.scope():
        iterations = tf.Variable(0, dtype=tf.int64)

    def replica_fn(xs, ys):
        out = {}
        for name, (pfc, centre_optimizer) in heads.items():
            _, per_example, grad_x, _ = replica_update(pfc, centre_optimizer, xs, ys, iterations, global_batch)
            out[name] = (per_example, grad_x)
        return out

    run = tf.function(lambda xs, ys: strategy.run(replica_fn, args=(xs, ys)))
    out = run(distribute(strategy, x, replicas), distribute(strategy, y, replicas))
    results = {}
    for name, (pfc, _) in heads.items():
        loss, grad_x = out[name]
        results[name] = {"loss": np.concatenate(local(strategy, loss)), "grad_x": np.concatenate(local(strategy, grad_x)),
                         "centres": np.concatenate([pfc.shards[i].weight.numpy() for i in sorted(pfc.shards)])}
    return results


def tiny_backbone(embedding_size, *, norm, input_shape, dropout, width_multiplier, weight_decay, name=None, **_):
    """A conv and a dense layer: the trainer's partial-FC path in seconds rather than a ResNet's minutes."""
    reg = keras.regularizers.L2(weight_decay) if weight_decay > 0 else None
    inputs = keras.Input(input_shape)
    h = keras.layers.Conv2D(4, 3, strides=4, kernel_regularizer=reg)(inputs)
    h = keras.layers.Dense(embedding_size, kernel_regularizer=reg)(keras.layers.Flatten()(h))
    return keras.Model(inputs, keras.layers.Activation("linear", dtype="float32")(h), name=name or "tiny")


def register_tiny():
    """Register the tiny backbone (not a config choice: set cfg.model.backbone = TINY after loading)."""
    from face_recognition_tf.models import backbone_names, register_backbone

    if TINY not in backbone_names():
        register_backbone(TINY)(tiny_backbone)
