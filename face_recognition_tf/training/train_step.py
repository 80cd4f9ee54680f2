"""The distributed update: one optimizer step of backbone and head under any tf.distribute strategy.

Why a hand-written step: in Keras 3.15 on TF 2.21 `model.fit` fails under MultiWorkerMirrored, the
optimizer's own gradient accumulation fails under Mirrored, and XLA fails under Mirrored.  A
`strategy.run` + `apply_gradients` update works under all of them, so single-device, mirrored,
central-storage and multi-worker training run this same code (the loop around it is trainer.py).

Semantics that must not depend on the strategy:
* Global batch = per-replica batch x replicas x accumulation steps.  Each example's cross-entropy is
  divided by that global batch and the regularization loss by replicas x accumulation steps, so the
  summed gradient is the gradient of (mean loss + coef x reg loss) whatever the layout.
* One optimizer update consumes N micro-batches per replica; gradients are summed locally (sequenced
  by control dependencies so only one micro-batch's activations live at a time), summed once across
  replicas, clipped by global norm, checked for NaN/Inf and applied.  Steps count updates.
* The reg-loss coefficient lives in a variable and changes without retracing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import keras
import tensorflow as tf
from omegaconf import DictConfig

from face_recognition_tf.data.input.pipeline import normalize_images
from face_recognition_tf.errors import ConfigError
from face_recognition_tf.training.model_args import backbone_kwargs, head_kwargs
from face_recognition_tf.training.optim import (
    build_optimizer,
    clip_by_global_norm,
    decayed_coefficient,
    inner_optimizer,
    scaled_lr,
)
from face_recognition_tf.training.partial_fc_step import begin_centres, finish_centres
from face_recognition_tf.training.schedules import build_schedule
from face_recognition_tf.training.strategy import StrategyInfo


@dataclass
class StepResult:
    loss: float
    inference_loss: float
    reg_loss: float
    accuracy: float
    grad_norm: float
    ok: bool


@contextlib.contextmanager
def dtype_policy(name: str):
    """Build layers under a mixed-precision policy without leaving it set for the rest of the process."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _backbone_spec(cfg: DictConfig) -> dict:
    from face_recognition_tf.training.finetune import backbone_spec

    return backbone_spec(backbone_kwargs(cfg), cfg.finetune.init)


def _all_reduce_done_by_trainer(grads_and_vars):
    return list(grads_and_vars)


class TrainStep:
    """The model, head, optimizer and the compiled update, built inside the strategy's scope.

    `backbone_spec` / `head_spec` are what the Trainer checked and writes as backbone.json / head.json
    (computed from `cfg` when not given), so the model built is the one those files describe.
    """

    def __init__(self, cfg: DictConfig, info: StrategyInfo, num_classes: int, *,
                 backbone_spec: dict | None = None, head_spec: dict | None = None):
        self.cfg = cfg
        self.info = info
        t = cfg.train
        self.accum = int(t.accumulation_steps)
        self.replicas = info.num_replicas
        self.global_batch = int(t.batch_size) * self.replicas * self.accum
        self.loss_scaled = t.precision == "mixed_float16"
        self.l2 = t.regularization == "l2" and t.weight_decay > 0
        if t.jit_compile and info.name != "default":
            raise ConfigError(
                f"train.jit_compile=true works only with --strategy default (XLA fails under {info.name} here)"
            )
        strategy = info.strategy
        keras.utils.set_random_seed(int(t.seed))  # same initial weights for the same config
        with strategy.scope():
            with dtype_policy(t.precision):
                from face_recognition_tf.models import build_backbone, build_head

                spec = backbone_spec if backbone_spec is not None else _backbone_spec(cfg)
                kwargs = {k: v for k, v in spec.items() if k != "name"}
                if "input_shape" in kwargs:  # JSON gives a list; a hand-written backbone.json may leave it out
                    kwargs["input_shape"] = tuple(kwargs["input_shape"])
                self.backbone = build_backbone(spec["name"], **kwargs)
            hk = {k: v for k, v in (head_spec or head_kwargs(cfg, num_classes)).items() if k != "partial_fc"}
            if not cfg.head.partial_fc.enabled:  # partial FC's centres are built below, outside the scope
                self.head = build_head(hk.pop("name"), hk.pop("num_classes"), **hk)
                self.head(tf.zeros((1, int(cfg.model.embedding_size))), tf.zeros((1,), tf.int32))
            base_lr = scaled_lr(t.lr, self.global_batch, t.lr_reference_batch)
            self.schedule = build_schedule(t.schedule, base_lr, int(t.max_steps))
            self.optimizer = build_optimizer(t, self.schedule)
            self.reg_coef = tf.Variable(float(t.reg_coef), trainable=False, dtype=tf.float32, name="reg_coef")
            self.step = tf.Variable(0, trainable=False, dtype=tf.int64, name="step")
            self.epoch = tf.Variable(0, trainable=False, dtype=tf.int64, name="epoch")
            self.epoch_step = tf.Variable(0, trainable=False, dtype=tf.int64, name="epoch_step")
        self.partial_fc = bool(cfg.head.partial_fc.enabled)
        self.centre_checkpoint = None
        if self.partial_fc:  # sharded class centres, one plain variable per replica (training/partial_fc_step.py)
            from face_recognition_tf.training.centre_checkpoints import CentreCheckpoint
            from face_recognition_tf.training.partial_fc_step import build_partial_fc

            self.head, self.centre_optimizer = build_partial_fc(cfg, info, num_classes)
            self.centre_checkpoint = CentreCheckpoint(self.head, info)
        self.base_lr = base_lr
        self._jit = bool(t.jit_compile)
        self._fn = None

    def finalize(self, optimizer_variables=None):
        """Call after freezing: builds the optimizer's slots for `optimizer_variables` (default: what
        trains now; fine-tuning's unfreeze schedule passes every variable a later stage trains)."""
        self.optimizer_variables = list(optimizer_variables or self.backbone.trainable_variables
                                        + self.head.trainable_variables)
        if not self.optimizer_variables:
            raise ConfigError("nothing to train: every layer is frozen")
        with self.info.strategy.scope():
            self.optimizer.build(self.optimizer_variables)
        # the trainer sums gradients across replicas itself (to clip the true global norm), so the
        # optimizer must not sum them a second time
        inner_optimizer(self.optimizer)._all_reduce_sum_gradients = _all_reduce_done_by_trainer
        self.retrace()

    def retrace(self):
        """A new compiled update for the variables that train now (after `finalize` or an unfreeze)."""
        self.variables = self.backbone.trainable_variables + self.head.trainable_variables
        # train.clip_scope: backbone clips the backbone's gradients (they come first) and not the head's
        backbone_only = self.cfg.train.clip_scope == "backbone"
        self.clip_first = len(self.backbone.trainable_variables) if backbone_only else None
        self._compute = tf.function(self._gradients, jit_compile=True) if self._jit else self._gradients
        self._fn = tf.function(self._distributed_step)

    def checkpoint(self) -> tf.train.Checkpoint:
        # partial FC's centre shards are saved beside it, one file set per shard (centre_checkpoints.py)
        head = {} if self.partial_fc else {"head": self.head}
        return tf.train.Checkpoint(
            backbone=self.backbone, optimizer=self.optimizer, step=self.step,
            reg_coef=self.reg_coef, epoch=self.epoch, epoch_step=self.epoch_step, **head,
        )

    @tf.function
    def weights_finite(self):
        return tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in self.optimizer_variables])

    def learning_rate(self) -> float:
        return float(inner_optimizer(self.optimizer).learning_rate.numpy())

    # ---- replica side -------------------------------------------------------------------------
    def _gradients(self, batches, centres=None):
        """Summed gradients of `self.variables` (then, with partial FC, of this replica's centre rows)."""
        grads_sum, ce_sum, correct, reg_value = None, 0.0, 0.0, tf.constant(0.0)
        sources = self.variables + (centres.sources if centres is not None else [])
        for images, labels in batches:
            if grads_sum is not None:  # sequence micro-batches: one set of activations at a time
                with tf.control_dependencies([g for g in grads_sum if g is not None]):
                    images = tf.identity(images)
            labels = tf.cast(labels, tf.int32)
            if images.dtype == tf.uint8:  # the pipeline ships pixels; normalising here runs on the device
                images = normalize_images(images)
            with tf.GradientTape() as tape:
                hits = None
                if centres is not None:
                    tape.watch(centres.sources)
                embeddings = self.backbone(images, training=True)
                if centres is not None:  # partial FC: the exact softmax over every replica's centres
                    per_example, hits = centres.per_example_loss(embeddings, labels)
                else:  # softmax cross-entropy of the margin logits, or a loss on the embeddings (triplet)
                    per_example = self.head.per_example_loss(embeddings, labels, training=True)
                ce = tf.reduce_sum(per_example) / self.global_batch
                reg_losses = self.backbone.losses + self.head.losses
                if centres is not None and self.l2:
                    reg_losses = reg_losses + [centres.reg_loss()]
                reg_value = tf.add_n([tf.cast(r, tf.float32) for r in reg_losses]) if reg_losses else tf.constant(0.0)
                loss = ce + self.reg_coef * reg_value / (self.replicas * self.accum) if self.l2 else ce
                scaled = self.optimizer.scale_loss(loss) if self.loss_scaled else loss
            grads = tape.gradient(scaled, sources)
            grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
            grads_sum = grads if grads_sum is None else [
                a if b is None else (b if a is None else a + b) for a, b in zip(grads_sum, grads)
            ]
            ce_sum += ce
            if hits is None:  # nearest class centre, or nearest in-batch sample (triplet)
                hits = self.head.hits(embeddings, labels)
            correct += tf.reduce_sum(tf.cast(hits, tf.float32)) / self.global_batch
        return grads_sum, ce_sum, reg_value, correct

    def _replica_step(self, batches):
        ctx = tf.distribute.get_replica_context()
        centres = begin_centres(self, batches) if self.partial_fc else None
        grads, ce, reg, correct = self._compute(batches, centres)
        grads, centre_grads = grads[:len(self.variables)], grads[len(self.variables):]  # centres' stay local
        present = [i for i, g in enumerate(grads) if g is not None]
        reduced = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
        for i, g in zip(present, reduced):
            grads[i] = g
        scale = self.optimizer.dynamic_scale if self.loss_scaled else 1.0
        clip = None if self.cfg.train.clip_norm is None else self.cfg.train.clip_norm * scale
        total_ce = ctx.all_reduce(tf.distribute.ReduceOp.SUM, ce)
        ok = tf.math.is_finite(total_ce) & tf.math.is_finite(reg)
        if centres is not None:  # clip and update the centres first: it reads the lr that `apply` advances
            grads, norm, ok = finish_centres(self, centres, grads, centre_grads, clip, ok)
        else:
            grads, norm = clip_by_global_norm(grads, clip, first=self.clip_first)
        norm = norm / scale
        if self.loss_scaled:
            # the loss-scale optimizer itself skips updates with overflowing gradients
            self.optimizer.apply(grads, self.variables)
        else:
            ok = ok & tf.math.is_finite(norm)
            self._apply_if(ok, grads)
        return {"ce": ce, "reg": reg, "correct": correct, "norm": norm, "ok": tf.cast(ok, tf.float32)}

    def _apply_if(self, ok, grads):
        """Apply only finite updates; the cond must sit in cross-replica context when merge_call is used."""
        apply = lambda: self.optimizer.apply(grads, self.variables)  # noqa: E731
        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            tf.cond(ok, apply, lambda: None)
            return

        def cross_replica(distribution, ok_per_replica, grads_per_replica):
            first = distribution.experimental_local_results(ok_per_replica)[0]

            def apply_all():
                distribution.extended.call_for_each_replica(
                    lambda g: self.optimizer.apply(g, self.variables), args=(grads_per_replica,)
                )

            tf.cond(first, apply_all, lambda: None)

        tf.distribute.get_replica_context().merge_call(cross_replica, args=(ok, grads))

    # ---- cross-replica side -------------------------------------------------------------------
    def _distributed_step(self, iterator):
        strategy = self.info.strategy
        batches = [next(iterator) for _ in range(self.accum)]
        out = strategy.run(self._replica_step, args=(batches,))
        if hasattr(self.head, "advance"):
            self.head.advance()  # heads whose margin follows the update count (SphereFace's lambda)
        sum_ = tf.distribute.ReduceOp.SUM
        mean = tf.distribute.ReduceOp.MEAN
        ce = strategy.reduce(sum_, out["ce"], axis=None)
        reg = strategy.reduce(mean, out["reg"], axis=None)
        ok = strategy.reduce(mean, out["ok"], axis=None) > 0.999
        correct = strategy.reduce(sum_, out["correct"], axis=None)
        norm = strategy.reduce(mean, out["norm"], axis=None)
        coef = self.reg_coef
        total = ce + coef * reg if self.l2 else ce
        if self.l2 and self.cfg.train.reg_coef_decay < 1.0:
            coef.assign(tf.where(ok, decayed_coefficient(coef, ce, reg, self.cfg.train.reg_coef_decay), coef))
        return {"loss": total, "ce": ce, "reg": reg, "accuracy": correct, "norm": norm, "ok": ok}

    def __call__(self, iterator) -> StepResult:
        out = {k: v.numpy() for k, v in self._fn(iterator).items()}
        return StepResult(
            loss=float(out["loss"]), inference_loss=float(out["ce"]), reg_loss=float(out["reg"]),
            accuracy=float(out["accuracy"]), grad_norm=float(out["norm"]), ok=bool(out["ok"]),
        )

