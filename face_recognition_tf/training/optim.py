"""Optimizers, learning-rate scaling and the regularization-loss coefficient.

Two ways to regularize, chosen by `train.regularization`:
* `l2` (the original project's): the backbone and head carry L2 kernel regularizers, their sum is the
  regularization loss, multiplied by a coefficient that decays by `reg_coef_decay` (0.8) after any
  update in which the inference (classification) loss fell below coefficient x regularization loss,
  so late in training the L2 term cannot dominate the margin loss.
* `decoupled`: SGDW / AdamW style, the optimizer shrinks kernels by lr x weight_decay each update and
  the loss carries no L2 term.  Keras 3's optimizers implement exactly that (`variable -= variable *
  wd * lr`); normalization scales/offsets, biases and PReLU slopes are excluded, matching `l2` mode
  where only kernels carry regularizers.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from face_recognition_tf.errors import ConfigError

# substrings of variable names that never get decoupled weight decay
NO_DECAY = ("gamma", "beta", "bias", "alpha", "moving_", "renorm")


def scaled_lr(lr: float, global_batch: int, reference_batch: int | None) -> float:
    """Linear scaling rule (Goyal et al.): lr grows with the global batch (per update)."""
    if not reference_batch:
        return float(lr)
    return float(lr) * float(global_batch) / float(reference_batch)


def build_optimizer(train_cfg, learning_rate):
    """SGD+momentum or AdamW, wrapped in a loss-scale optimizer for `mixed_float16`.

    Gradient clipping is not delegated to Keras: under a multi-replica strategy Keras clips each
    replica's gradient before the cross-replica sum, so the trainer clips the summed gradient itself.
    """
    decoupled = train_cfg.regularization == "decoupled" and train_cfg.weight_decay > 0
    weight_decay = float(train_cfg.weight_decay) if decoupled else None
    if train_cfg.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(
            learning_rate=learning_rate,
            momentum=float(train_cfg.momentum),
            nesterov=bool(train_cfg.nesterov),
            weight_decay=weight_decay,
        )
    elif train_cfg.optimizer == "adamw":
        # AdamW always decays; with l2 regularization the decay is off and the L2 loss does the job
        optimizer = keras.optimizers.AdamW(
            learning_rate=learning_rate,
            weight_decay=weight_decay if decoupled else 0.0,
            beta_1=float(train_cfg.adam_beta1),
            beta_2=float(train_cfg.adam_beta2),
            epsilon=float(train_cfg.adam_epsilon),
        )
    else:
        raise ConfigError(f"train.optimizer: unknown optimizer {train_cfg.optimizer!r} (sgd or adamw)")
    if decoupled:
        optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY))
    if train_cfg.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def inner_optimizer(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)


def decayed_coefficient(coef, inference_loss, reg_loss, decay):
    """The original project's rule: shrink the reg coefficient while the reg term outweighs the loss."""
    coef = tf.convert_to_tensor(coef, tf.float32)
    dominated = tf.cast(inference_loss, tf.float32) < coef * tf.cast(reg_loss, tf.float32)
    return tf.where(dominated, coef * tf.cast(decay, tf.float32), coef)


def clip_by_global_norm(grads, clip_norm):
    """Clip the (already summed) gradient by its global norm; returns (grads, norm before clipping)."""
    norm = tf.linalg.global_norm([g for g in grads if g is not None])
    if clip_norm is None:
        return grads, norm
    clipped, _ = tf.clip_by_global_norm(grads, float(clip_norm), use_norm=norm)
    return clipped, norm
