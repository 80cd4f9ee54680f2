"""The trainer's side of Partial FC (models/partial_fc.py): build the sharded centres, update them.

The trainer calls three things: `build_partial_fc` (instead of building a head), `begin_centres` at the
start of each replica step, and `finish_centres` once the backbone's gradients are summed.

Updates of the centre shards are made in replica context, as the trainer's Keras optimizer would make
them.  Why not the Keras optimizer itself: its slots for a variable are created in the strategy's scope
(mirrored: a full-size copy on every replica) and its apply all-reduces.  The centres are per-replica
variables (models/partial_fc.py) whose gradient must stay local, and with sampling only the sampled rows
and *their* slots may change (arcface_torch's Partial FC gives its optimizer just the sampled
sub-matrix and its momentum).  So the same formulas are applied here to the rows of one update:

* SGD (``train.optimizer: sgd``): Keras' m = momentum * m - lr * g; w += m (Nesterov: w += momentum * m
  - lr * g); no slot when momentum is 0.
* AdamW: Keras' bias-corrected Adam with t = updates so far + 1.
* Weight decay as the trainer's mode says: ``decoupled`` w -= lr * wd * w before the step (Keras);
  ``coupled`` g += wd * w (optim.CoupledDecaySGD); ``l2`` through the loss (CentreStep.reg_loss).
  Centres are kernels, so they decay under either ``weight_decay_scope``.

Also here: the global gradient norm with the centres' share (an all-reduced scalar, never the matrix),
clipping that includes them, and the finiteness check every replica agrees on.
"""

from __future__ import annotations

import tensorflow as tf

from face_recognition_tf.errors import ConfigError
from face_recognition_tf.training.optim import clip_by_global_norm, inner_optimizer

SUPPORTED_STRATEGIES = ("default", "mirrored", "multi_worker")


def build_partial_fc(cfg, info, num_classes: int):
    """(PartialFC, CentreOptimizer) for the config, with this process's shards on its replicas' devices.

    Call outside the strategy's scope: a variable created inside it would be mirrored.
    """
    from face_recognition_tf.models import build_head
    from face_recognition_tf.models.partial_fc import MARGIN_HEADS, PartialFC
    from face_recognition_tf.training.model_args import head_kwargs

    h, t = cfg.head, cfg.train
    if h.name not in MARGIN_HEADS or getattr(h, "sphereface_form", "normalized") != "normalized":
        raise ConfigError(f"head.partial_fc works with the normalised margin heads ({', '.join(MARGIN_HEADS)}; "
                          f"sphereface in its normalized form), not head.name={h.name}")
    if info.name not in SUPPORTED_STRATEGIES:
        raise ConfigError(f"head.partial_fc needs --strategy {', '.join(SUPPORTED_STRATEGIES)} (its centres live on "
                          f"each replica's device; {info.name} keeps variables in one place)")
    if t.jit_compile:
        raise ConfigError("head.partial_fc samples a different number of centres each update; "
                          "turn train.jit_compile off")
    if tf.distribute.has_strategy():
        raise RuntimeError("build_partial_fc must run outside strategy.scope() (its variables must not be mirrored)")
    hk = head_kwargs(cfg, num_classes)
    l2_factor = float(hk.pop("weight_decay"))
    name = hk.pop("name")
    hk.pop("num_classes")
    # the margin's parameters and target_logit only; its one-class kernel is never used nor saved
    margin = build_head(name, 1, **hk)
    optimizer = CentreOptimizer(t)
    replicas = int(info.num_replicas)
    if replicas == 1:
        local = [(0, None)]
    else:
        devices = list(info.strategy.extended.worker_devices)
        first = int(info.worker_index) * len(devices)
        local = [(first + i, device) for i, device in enumerate(devices)]
    try:
        pfc = PartialFC(margin, num_classes, int(cfg.model.embedding_size), num_shards=replicas, local_shards=local,
                        sample_rate=float(h.partial_fc.sample_rate), seed=int(t.seed), slot_names=optimizer.slot_names,
                        l2_factor=l2_factor if t.regularization == "l2" else 0.0)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return pfc, optimizer


def begin_centres(step, batches):
    """Replica context, before the micro-batches: this replica's rows for the update (sampled or all)."""
    return step.head.begin_step([labels for _, labels in batches], inner_optimizer(step.optimizer).iterations)


def finish_centres(step, centres, grads, centre_grads, clip, ok):
    """After the backbone's gradients are summed: clip with the centres counted, update the centres with
    the decision the trainer's optimizer makes.  Returns (grads, norm before clipping (loss-scaled), ok).

    Must run before the trainer's optimizer applies: it reads the learning rate and the update count
    that `apply` advances.
    """
    grads, centre_grads, norm = clip_with_centres(centres, grads, centre_grads, clip, step.clip_first)
    optimizer = inner_optimizer(step.optimizer)
    lr, iteration = optimizer.learning_rate, tf.convert_to_tensor(optimizer.iterations)
    if step.loss_scaled:
        # the loss-scale optimizer decides from the backbone's gradients alone; an overflow in a centre
        # gradient is made visible to it so that it skips the update (and lowers the scale) too
        centre_ok = centres_finite(centres, centre_grads)
        grads = list(grads)
        first = next(i for i, g in enumerate(grads) if g is not None)
        grads[first] = grads[first] + tf.where(centre_ok, 0.0, float("nan"))
        apply = centre_ok & step.optimizer.check_finite(grads)
        scale = tf.identity(step.optimizer.dynamic_scale)
        apply_centre_update(centres, step.centre_optimizer, centre_grads, ok=apply, lr=lr, iteration=iteration,
                            scale=scale)
        return grads, norm, ok
    ok = ok & tf.math.is_finite(norm)
    apply_centre_update(centres, step.centre_optimizer, centre_grads, ok=ok, lr=lr, iteration=iteration)
    return grads, norm, ok


class CentreOptimizer:
    """Row-wise SGD (momentum, Nesterov) / AdamW with the trainer's weight-decay mode."""

    def __init__(self, train_cfg):
        self.kind = str(train_cfg.optimizer)
        wd = float(train_cfg.weight_decay)
        self.decoupled = wd if train_cfg.regularization == "decoupled" else 0.0
        self.coupled = wd if train_cfg.regularization == "coupled" else 0.0
        self.momentum = float(train_cfg.momentum)
        self.nesterov = bool(train_cfg.nesterov)
        self.beta_1, self.beta_2 = float(train_cfg.adam_beta1), float(train_cfg.adam_beta2)
        self.epsilon = float(train_cfg.adam_epsilon)
        if self.kind not in ("sgd", "adamw"):
            raise ValueError(f"partial FC: no centre update for optimizer {self.kind!r}")

    @property
    def slot_names(self) -> tuple:
        if self.kind == "adamw":
            return ("m", "v")
        return ("momentum",) if self.momentum != 0 else ()

    def update(self, weight, slots: dict, grad, lr, iteration):
        """New (weight, slots) of the rows `weight` with gradient `grad` at learning rate `lr`."""
        lr = tf.cast(lr, tf.float32)
        if self.decoupled:
            weight = weight - weight * self.decoupled * lr
        if self.coupled:
            grad = grad + self.coupled * weight
        if self.kind == "adamw":
            t = tf.cast(iteration + 1, tf.float32)
            alpha = lr * tf.sqrt(1 - tf.pow(self.beta_2, t)) / (1 - tf.pow(self.beta_1, t))
            m = slots["m"] + (grad - slots["m"]) * (1 - self.beta_1)
            v = slots["v"] + (tf.square(grad) - slots["v"]) * (1 - self.beta_2)
            return weight - m * alpha / (tf.sqrt(v) + self.epsilon), {"m": m, "v": v}
        if not self.momentum:
            return weight - grad * lr, {}
        m = slots["momentum"] * self.momentum - grad * lr
        step = m * self.momentum - grad * lr if self.nesterov else m
        return weight + step, {"momentum": m}


def _squared_norm(grads):
    return tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads]) if grads else tf.constant(0.0)


def clip_with_centres(step, grads, centre_grads, clip_norm, first=None):
    """`optim.clip_by_global_norm` with the centres' gradients counted in the norm (and clipped with the
    rest unless only the backbone is clipped).  Returns (grads, centre_grads, norm before clipping)."""
    centre_sq = step.replicas.sum(_squared_norm(centre_grads))
    if clip_norm is None or first is not None:
        grads, norm = clip_by_global_norm(grads, clip_norm, first)
        return grads, centre_grads, tf.sqrt(tf.square(norm) + centre_sq)
    norm = tf.sqrt(tf.square(tf.linalg.global_norm([g for g in grads if g is not None])) + centre_sq)
    factor = clip_norm * tf.minimum(1.0 / norm, 1.0 / clip_norm)  # tf.clip_by_global_norm's scale
    return ([None if g is None else g * factor for g in grads], [g * factor for g in centre_grads], norm)


def centres_finite(step, centre_grads):
    """True on every replica iff every shard's gradient is finite."""
    bad = tf.add_n([tf.reduce_sum(tf.cast(~tf.math.is_finite(g), tf.float32)) for g in centre_grads])
    return tf.equal(step.replicas.sum(bad), 0.0)


def apply_centre_update(step, optimizer: CentreOptimizer, centre_grads, *, ok, lr, iteration, scale=None):
    """Update this replica's sampled rows and their slots when `ok` (the same decision on every replica)."""
    shard, index = step.shard, step.index
    (grad,) = centre_grads

    def update():
        g = grad if scale is None else grad / tf.cast(scale, tf.float32)
        if index is None:
            slots = {name: tf.convert_to_tensor(var) for name, var in shard.slots.items()}
        else:
            slots = {name: tf.gather(var, index) for name, var in shard.slots.items()}
        weight, slots = optimizer.update(step.weight, slots, g, lr, iteration)
        ops = []
        for var, value in [(shard.weight, weight)] + [(shard.slots[n], v) for n, v in slots.items()]:
            if index is None:
                ops.append(var.assign(value, read_value=False))
            else:
                ops.append(var.scatter_update(tf.IndexedSlices(value, index)))
        with tf.control_dependencies(ops):
            return tf.constant(True)

    return tf.cond(ok, update, lambda: tf.constant(False))
