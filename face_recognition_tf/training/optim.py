"""Optimizers, learning-rate scaling, weight decay, gradient clipping and the regularization-loss coefficient.

Three ways to regularize, chosen by `train.regularization`:
* `l2` (the original project's): the backbone and head carry L2 kernel regularizers, their sum is the
  regularization loss, multiplied by a coefficient that decays by `reg_coef_decay` (0.8) after any
  update in which the inference (classification) loss fell below coefficient x regularization loss,
  so late in training the L2 term cannot dominate the margin loss.
* `decoupled`: SGDW / AdamW style, the optimizer shrinks kernels by lr x weight_decay each update and
  the loss carries no L2 term.  Keras 3's optimizers implement exactly that (`variable -= variable *
  wd * lr`); normalization scales/offsets, biases and PReLU slopes are excluded, matching `l2` mode
  where only kernels carry regularizers.
* `coupled` (torch.optim.SGD's and MXNet's `weight_decay`, what arcface_torch and insightface's MXNet
  recipes ran): SGD adds wd x w to each gradient inside the update, so the decay goes through momentum
  and comes after gradient clipping and loss-scale unscaling, as it does in `opt.step()` after
  `clip_grad_norm_`.  No L2 term in the loss, hence no regularization-loss coefficient.
`train.weight_decay_scope: all` extends coupled / decoupled decay from kernels to every trainable variable
(BN gamma and beta, PReLU slopes, biases), as both reference trainers do; `decays` is the one rule.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from face_recognition_tf.errors import ConfigError

# substrings of variable names that optimizer-side weight decay skips with weight_decay_scope: kernels
NO_DECAY = ("gamma", "beta", "bias", "alpha", "moving_", "renorm")


def scaled_lr(lr: float, global_batch: int, reference_batch: int | None) -> float:
    """Linear scaling rule (Goyal et al.): lr grows with the global batch (per update)."""
    if not reference_batch:
        return float(lr)
    return float(lr) * float(global_batch) / float(reference_batch)


def decays(train_cfg, variable) -> bool:
    """Whether weight decay reaches `variable` (a trainable model or head variable).

    The rule the optimizers apply and RUN/effective.json reports.  `l2` mode: the variable carries a
    regularizer (the models put one on kernels).  Optimizer-side modes: any variable with
    `weight_decay_scope: all`, else those whose name is none of NO_DECAY (kernels).
    """
    if train_cfg.weight_decay <= 0:
        return False
    if train_cfg.regularization == "l2":
        return getattr(variable, "regularizer", None) is not None
    if getattr(train_cfg, "weight_decay_scope", "kernels") == "all":
        return True
    return not any(part in variable.name for part in NO_DECAY)


@keras.saving.register_keras_serializable(package="face_recognition_tf")
class CoupledDecaySGD(keras.optimizers.SGD):
    """SGD whose weight decay is added to the gradient (g + wd x w) before the momentum update.

    Keras' own `weight_decay` is decoupled (w -= lr x wd x w beside the momentum step), which with
    momentum 0.9 decays about ten times less than torch.optim.SGD / MXNet SGD at the same wd.  Applied in
    `update_step`, the decay comes after the trainer's clipping and the loss-scale optimizer's unscaling,
    as in arcface_torch.  `decay_all`: every variable, else kernels (names free of NO_DECAY).
    """

    def __init__(self, *args, coupled_weight_decay: float = 0.0, decay_all: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.coupled_weight_decay = float(coupled_weight_decay)
        self.decay_all = bool(decay_all)

    def _decays(self, variable) -> bool:
        return self.coupled_weight_decay > 0 and (
            self.decay_all or not any(part in variable.name for part in NO_DECAY))

    def update_step(self, gradient, variable, learning_rate):
        if self._decays(variable):
            wd = tf.cast(self.coupled_weight_decay, variable.dtype)
            gradient = tf.cast(gradient, variable.dtype) + wd * tf.convert_to_tensor(variable)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "coupled_weight_decay": self.coupled_weight_decay,
                "decay_all": self.decay_all}


def build_optimizer(train_cfg, learning_rate):
    """SGD+momentum or AdamW, wrapped in a loss-scale optimizer for `mixed_float16`.

    Gradient clipping is not delegated to Keras: under a multi-replica strategy Keras clips each
    replica's gradient before the cross-replica sum, so the trainer clips the summed gradient itself.
    """
    decoupled = train_cfg.regularization == "decoupled" and train_cfg.weight_decay > 0
    coupled = train_cfg.regularization == "coupled" and train_cfg.weight_decay > 0
    decay_all = getattr(train_cfg, "weight_decay_scope", "kernels") == "all"
    weight_decay = float(train_cfg.weight_decay) if decoupled else None
    if train_cfg.optimizer == "sgd" and coupled:
        optimizer = CoupledDecaySGD(
            learning_rate=learning_rate,
            momentum=float(train_cfg.momentum),
            nesterov=bool(train_cfg.nesterov),
            coupled_weight_decay=float(train_cfg.weight_decay),
            decay_all=decay_all,
        )
    elif train_cfg.optimizer == "sgd":
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
    if decoupled and not decay_all:
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


def clip_by_global_norm(grads, clip_norm, first: int | None = None):
    """Clip the (already summed) gradient by its global norm; returns (grads, norm before clipping).

    `first`: clip only `grads[:first]` (the backbone's, which come first) by their own global norm and
    leave the rest as is, like arcface_torch's `clip_grad_norm_(backbone.parameters(), 5)`.  The returned
    norm is always that of every gradient (what the log shows and the NaN/Inf check reads).
    """
    norm = tf.linalg.global_norm([g for g in grads if g is not None])
    if clip_norm is None:
        return grads, norm
    clip_norm = tf.cast(clip_norm, tf.float32)  # a number, or a tensor (times the loss scale)
    if first is None:
        clipped, _ = tf.clip_by_global_norm(grads, clip_norm, use_norm=norm)
        return clipped, norm
    head = list(grads[:first])
    part = tf.linalg.global_norm([g for g in head if g is not None])
    clipped, _ = tf.clip_by_global_norm(head, clip_norm, use_norm=part)
    return list(clipped) + list(grads[first:]), norm
