"""One custom training loop for every tf.distribute strategy.

Why custom: in Keras 3.15 on TF 2.21 `model.fit` fails under MultiWorkerMirrored, the optimizer's own
gradient accumulation fails under Mirrored and XLA fails under Mirrored (see DESIGN.md).  A loop of
`strategy.run` + `apply_gradients` works under all of them, so single-device, mirrored,
central-storage and multi-worker training are this same code.

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
import hashlib
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from face_recognition_tf.config import save_config
from face_recognition_tf.data.pipeline import normalize_images
from face_recognition_tf.errors import CheckpointError, ConfigError, DatasetError, FaceRecognitionError
from face_recognition_tf.training import checkpoints as ck
from face_recognition_tf.training.optim import (
    build_optimizer,
    clip_by_global_norm,
    decayed_coefficient,
    inner_optimizer,
    scaled_lr,
)
from face_recognition_tf.training.finetune import unfreeze_if_due
from face_recognition_tf.training.model_args import backbone_kwargs, head_kwargs
from face_recognition_tf.training.partial_fc_step import begin_centres, finish_centres
from face_recognition_tf.training.schedules import build_schedule
from face_recognition_tf.training.strategy import StrategyInfo, gather_from_workers, make_strategy

# what a collective op raises when another worker died or became unreachable (TF's health check)
WORKER_LOST_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError)


class NonFiniteLossError(FaceRecognitionError):
    """The loss or gradient became NaN/Inf; the update was not applied and nothing was saved."""


class WorkerLostError(FaceRecognitionError):
    """Multi-worker training: another worker stopped, so this one cannot continue; restart them all."""


def weights_digest(*models) -> str:
    """sha256 of every weight (trainable and statistics) in order: equal digests = identical models.

    Multi-worker runs print it on each worker, so a user (and the tests) can see the copies agree.
    """
    digest = hashlib.sha256()
    for model in models:
        for weight in model.weights:
            value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
            digest.update(f"{weight.path}:{value.dtype}:{value.shape};".encode())
            digest.update(value.tobytes())
    return digest.hexdigest()


def _first_meaningful_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if any(word in line.lower() for word in ("unhealthy", "aborted", "unavailable", "failed to connect")):
            return line
    return lines[0] if lines else type(exc).__name__


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


@contextlib.contextmanager
def op_determinism(enabled: bool):
    """TensorFlow's op determinism for the duration of a run, then back to what it was.

    `data.deterministic: true` asks for a run that repeats: the same batches (tf.data) and, with this,
    deterministic kernels where TensorFlow has them (cuDNN's deterministic algorithms on a GPU, no
    atomics in segment sums).  The switch is process-wide, so it is restored afterwards: a later
    non-deterministic run in the same process keeps its faster kernels.  What this does not make
    bit-exact on a CPU is described in docs/design-notes.md ("Reproducibility").
    """
    from tensorflow.python.framework import config as tf_config

    before = tf_config.is_op_determinism_enabled()
    if enabled and not before:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if enabled and not before:
            tf_config.disable_op_determinism()


def _all_reduce_done_by_trainer(grads_and_vars):
    return list(grads_and_vars)


class TrainStep:
    """The model, head, optimizer and the compiled update, built inside the strategy's scope."""

    def __init__(self, cfg: DictConfig, info: StrategyInfo, num_classes: int):
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
                from face_recognition_tf.training.finetune import backbone_spec

                spec = backbone_spec(backbone_kwargs(cfg), cfg.finetune.init)
                kwargs = {k: v for k, v in spec.items() if k != "name"}
                if "input_shape" in kwargs:  # JSON gives a list; a hand-written backbone.json may leave it out
                    kwargs["input_shape"] = tuple(kwargs["input_shape"])
                self.backbone = build_backbone(spec["name"], **kwargs)
            hk = head_kwargs(cfg, num_classes)
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


def _check_label_range(manifest: dict, data_dir: Path, num_classes: int) -> None:
    """Labels must lie in [0, num_classes): refuse before training, from the manifest's label range."""
    label_range = manifest.get("label_range")
    if not label_range:
        return  # older manifests: the head's label check still stops the first step, with the labels
    low, high = int(label_range[0]), int(label_range[1])
    if low < 0 or high >= num_classes:
        raise DatasetError(f"{Path(data_dir) / 'manifest.json'}: labels run from {low} to {high} but num_classes is "
                           f"{num_classes}; labels must lie in [0, {num_classes}): convert the dataset again")


def steps_per_epoch(num_images: int, global_batch: int) -> int:
    return max(1, num_images // global_batch)


def augment_options(cfg: DictConfig) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.data.augment, resolve=True) or {}


def make_dataset_fn(cfg: DictConfig, data_dir: Path, epoch: int, skip_micro_batches: int, exclude=()):
    """Per-replica input for one epoch: a fresh shuffle seeded by the epoch, skipping what was consumed.

    Each epoch's dataset repeats, so a replica whose shard is shorter than the epoch never runs dry.
    """
    from face_recognition_tf.data.pipeline import build_train_dataset

    def dataset_fn(input_context):
        ds = build_train_dataset(
            str(data_dir),
            int(cfg.train.batch_size),
            augment=augment_options(cfg),
            shuffle_buffer=cfg.data.shuffle_buffer,
            seed=int(cfg.data.seed) * 1_000_003 + int(epoch),
            deterministic=bool(cfg.data.deterministic),
            repeat=True,
            drop_remainder=True,
            input_context=input_context,
            exclude=exclude,
            # pk: every element is whole identity groups, whichever replica or micro-batch it goes to
            images_per_identity=int(cfg.data.images_per_identity) if cfg.data.sampler == "pk" else None,
        )
        return ds.skip(skip_micro_batches) if skip_micro_batches else ds

    return dataset_fn


class Trainer:
    """Everything around the step: run folder, resume, data epochs, logs, validation, checkpoints.

    All checks that can fail on user input (manifest, class count, architecture of an existing run,
    fine-tuning source) run in `prepare()`, before the first update.
    """

    def __init__(self, cfg: DictConfig, info: StrategyInfo, *, data_dir, run_dir, max_steps: int | None = None,
                 resume: str = "auto", progress: bool | None = None):
        if resume not in ("auto", "require", "never"):
            raise ValueError(f"resume must be auto, require or never, not {resume!r}")
        self.cfg = cfg
        self.info = info
        self.data_dir = Path(data_dir)
        self.run_dir = Path(run_dir)
        self.stop_step = min(int(max_steps), int(cfg.train.max_steps)) if max_steps else int(cfg.train.max_steps)
        self.resume = resume
        self.progress = cfg.log.progress if progress is None else progress
        self.step_fn: TrainStep | None = None
        self.resumed_from: Path | None = None

    # ---- set-up ---------------------------------------------------------------------------------
    def prepare(self) -> "Trainer":
        from face_recognition_tf.data import read_manifest
        from face_recognition_tf.training.finetune import (EarlyStopping, FreezePlan, check_early_stopping,
                                                            load_initial_weights)
        from face_recognition_tf.training.validation import Validator

        cfg = self.cfg
        if cfg.finetune.freeze != "none" and not cfg.finetune.init:
            raise ConfigError("finetune.freeze needs finetune.init=RUN_OR_MODEL (the trained model to start from)")
        from face_recognition_tf.training.finetune import adopt_init_architecture

        for change in adopt_init_architecture(cfg):
            tqdm_write(f"finetune.init: keeping the starting model's architecture: {change}")
        manifest = read_manifest(self.data_dir)
        num_classes = int(manifest["num_classes"])
        if cfg.data.num_classes is not None and int(cfg.data.num_classes) != num_classes:
            raise ConfigError(
                f"data.num_classes is {cfg.data.num_classes} but {self.data_dir}/manifest.json says {num_classes}; "
                "remove data.num_classes (it is read from the manifest)"
            )
        size = manifest.get("image_size")
        side = size[0] if isinstance(size, (list, tuple)) else size
        if side is not None and int(side) != int(cfg.model.input_size):
            raise ConfigError(
                f"{self.data_dir}/manifest.json: images are {side}px but model.input_size is {cfg.model.input_size}"
            )
        from face_recognition_tf.data.augment import resolve

        resolve(augment_options(cfg))  # unknown augmentation keys fail now, not at the first batch
        _check_label_range(manifest, self.data_dir, num_classes)
        cfg.data.num_classes = num_classes
        cfg.data.dir = str(self.data_dir)
        self.num_images = int(manifest["num_images"])
        check_early_stopping(cfg, self.data_dir, self.info.name)
        from face_recognition_tf.training.finetune import backbone_spec

        self.backbone_spec = backbone_spec(backbone_kwargs(cfg), cfg.finetune.init)
        self.head_spec = head_kwargs(cfg, num_classes)
        if cfg.head.partial_fc.enabled:  # sharded centres: a run cannot switch between the two stores
            self.head_spec["partial_fc"] = True
        self.exclude = self._scan_corrupt() if cfg.data.skip_corrupt else []
        existing = ck.has_checkpoint(self.run_dir)
        # a run folder this run creates is removed again if the data fails before the first checkpoint
        self._new_folder = not self.run_dir.exists()
        if self.info.name == "multi_worker":
            self._check_workers_agree()
        if self.resume == "require" and not existing:
            raise FaceRecognitionError(f"{self.run_dir}: --resume given but the run folder holds no checkpoint")
        if self.resume == "never" and existing:
            raise FaceRecognitionError(f"{self.run_dir}: already holds checkpoints; resume it or choose another --out")
        if existing:
            ck.check_resume_compatible(self.run_dir, self.backbone_spec, self.head_spec)

        self.step_fn = step = TrainStep(cfg, self.info, num_classes)
        if cfg.finetune.init and not existing:
            load_initial_weights(step.backbone, cfg.finetune.init)
        self.freeze_plan = FreezePlan(step.backbone, cfg.finetune)
        step.finalize(self.freeze_plan.optimizer_variables(step.head))
        self.store = ck.CheckpointStore(self.run_dir, step.checkpoint(), keep=cfg.checkpoint.keep,
                                        is_chief=self.info.is_chief, worker_index=self.info.worker_index,
                                        companion=step.centre_checkpoint)
        if existing:
            self.resumed_from = self.store.restore_latest()
        self.start_step = int(step.step.numpy())
        if self.freeze_plan.apply(self.start_step):  # resumed after an unfreeze step
            step.retrace()
        # only the chief validates: evaluation runs no collective op, and the other workers' copies are
        # identical, so they go straight on to the next step (which waits for the chief)
        self.validator = Validator.from_data_dir(
            self.data_dir, cfg.validation.sets, batch_size=cfg.validation.batch_size, max_pairs=cfg.validation.max_pairs,
            folds=cfg.validation.folds) if self.info.is_chief else None
        self.best = -1.0
        best_json = self.run_dir / ck.BEST_DIR / "best.json"
        if best_json.is_file():
            import json

            self.best = float(json.loads(best_json.read_text()).get("mean", -1.0))
        self.stopper = EarlyStopping.for_run(cfg, self.run_dir, self.start_step) if self.info.is_chief else None
        self.stop_reason = self.stopper.reason if self.stopper else None
        if self.info.is_chief:
            # the steps a resumed run redoes must not be logged twice
            ck.rewind_history(self.run_dir, self.start_step)
            save_config(cfg, self.run_dir / ck.CONFIG_FILE)
            self._report_effective_settings()
            ck.write_json_atomic(self.run_dir / ck.BACKBONE_SPEC, self.backbone_spec)
            ck.write_json_atomic(self.run_dir / "head.json", self.head_spec)
        return self

    def _report_effective_settings(self) -> None:
        """Print the per-update values (global batch, lr after linear scaling...) and keep them in
        RUN/effective.json, so a recipe run on another number of GPUs cannot change them unnoticed."""
        from face_recognition_tf.training.effective import EFFECTIVE_FILE, describe_settings, effective_settings

        settings = effective_settings(self.step_fn)
        ck.write_json_atomic(self.run_dir / EFFECTIVE_FILE, settings)
        for line in describe_settings(settings):
            tqdm_write(line)

    def _scan_corrupt(self) -> list[tuple[int, int]]:
        """data.skip_corrupt: find the records whose JPEG does not decode, say how many, leave them out."""
        from face_recognition_tf.data.record_check import describe_records, find_corrupt_records

        found = find_corrupt_records(self.data_dir, progress=bool(self.progress) and self.info.is_chief)
        if found and self.info.is_chief:
            tqdm_write(f"data.skip_corrupt: leaving out {len(found)} record(s) of {self.num_images} whose image "
                       f"does not decode: {describe_records(found)}")
        self.num_images -= len(found)
        return [(r["shard_index"], r["record"]) for r in found]

    def _data_error(self, exc: tf.errors.InvalidArgumentError) -> FaceRecognitionError | None:
        """Turn TensorFlow's error about a bad record into a one-line error that names it."""
        message = str(exc.message if hasattr(exc, "message") else exc)
        if "label out of range" in message:
            detail = next((line.strip() for line in message.splitlines() if "label out of range" in line), message)
            detail = detail[detail.index("label out of range"):]
            return DatasetError(f"{self.data_dir}: a training record's label is outside the dataset's "
                                f"{self.cfg.data.num_classes} classes ({detail.rstrip('.]')}); the manifest's "
                                "num_classes does not match the records: convert the dataset again")
        if any(word in message for word in ("JPEG", "jpeg", "DecodeJpeg", "EnsureShape")):
            from face_recognition_tf.data.record_check import describe_records, find_corrupt_records

            tqdm_write(f"an image failed to decode; scanning {self.data_dir} for the record...")
            found = find_corrupt_records(self.data_dir, limit=3)
            where = describe_records(found) if found else "the scan found no bad image; " + message.splitlines()[0]
            return DatasetError(f"{self.data_dir}: training data holds an image that does not decode: {where}. "
                                "Convert again with `frtf convert --verify` (or --skip-corrupt), or set "
                                "data.skip_corrupt=true to leave such records out")
        return None  # not the data's fault: keep TensorFlow's error and its traceback

    def _forget_failed_new_run(self) -> None:
        """A run that failed on its data before any checkpoint leaves no half run folder behind."""
        if self._new_folder and self.info.is_chief and not ck.has_checkpoint(self.run_dir):
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _check_workers_agree(self) -> None:
        """Every worker must resume from the same checkpoint (the chief's).

        Workers that start from different steps run different numbers of updates, and the first to
        finish leaves the others waiting in an all-reduce; so refuse, on every worker alike, now.
        """
        listed = ck.checkpoint_paths(self.run_dir)
        local = int(listed[0].name.rsplit("-", 1)[-1]) if listed else -1
        try:
            seen = gather_from_workers(self.info, local)
        except WORKER_LOST_ERRORS as exc:
            raise WorkerLostError(f"another worker stopped before training began ({_first_meaningful_line(exc)})") from None
        if len(set(seen)) > 1:
            views = ", ".join(f"worker {i}: {'ckpt-%d' % s if s >= 0 else 'no checkpoint'}" for i, s in enumerate(seen))
            raise CheckpointError(
                f"{self.run_dir / ck.CHECKPOINT_DIR}: the workers see different checkpoints ({views}); the run "
                "folder (--out) must be storage every worker shares (NFS, GCS, ...) or hold the chief's checkpoints on "
                "every machine"
            )

    # ---- the loop -------------------------------------------------------------------------------
    def train(self) -> dict:
        if self.step_fn is None:
            self.prepare()
        try:
            with op_determinism(bool(self.cfg.data.deterministic)):
                return self._train()
        except DatasetError:
            self._forget_failed_new_run()
            raise

    def _train(self) -> dict:
        step_fn, cfg, info = self.step_fn, self.cfg, self.info
        per_epoch = steps_per_epoch(self.num_images, step_fn.global_batch)
        step = int(step_fn.step.numpy())
        writer = tf.summary.create_file_writer(str(self.run_dir / "logs")) if info.is_chief else tf.summary.create_noop_writer()
        bar = None
        if self.progress and info.is_chief:
            from tqdm import tqdm

            bar = tqdm(total=self.stop_step, initial=step, unit="step", dynamic_ncols=True, desc=self.run_dir.name)
        started, last_saved, scores = time.perf_counter(), step, {}
        window_start, window_steps = time.perf_counter(), 0
        first_step, saved_any = step, False
        try:
            while step < self.stop_step and not self.stop_reason:
                epoch, position = divmod(step, per_epoch)
                dataset = info.strategy.distribute_datasets_from_function(
                    make_dataset_fn(cfg, self.data_dir, epoch, position * step_fn.accum, self.exclude))
                iterator = iter(dataset)
                while position < per_epoch and step < self.stop_step and not self.stop_reason:
                    unfreeze_if_due(self.freeze_plan, step_fn, step, self.run_dir, info.is_chief)
                    try:
                        result = step_fn(iterator)
                    except tf.errors.InvalidArgumentError as exc:
                        data_error = self._data_error(exc)
                        if data_error is None:
                            raise
                        raise data_error from None
                    step, position = step + 1, position + 1
                    window_steps += 1
                    if not result.ok:
                        self._non_finite(step, result, last_saved)
                    if bar is not None:
                        bar.update(1)
                    if step % cfg.log.every_steps == 0 or step == self.stop_step or step == first_step + 1:
                        elapsed = max(time.perf_counter() - window_start, 1e-9)
                        rate = window_steps * step_fn.global_batch / elapsed
                        self._log(writer, step, epoch, result, rate, bar)
                        window_start, window_steps = time.perf_counter(), 0
                    if self.validator is not None and step % cfg.validation.every_steps == 0:
                        scores = self._validate(writer, step)
                    if step % cfg.checkpoint.every_steps == 0:
                        self._save(step, epoch, position)
                        last_saved, saved_any = step, True
            if step != last_saved or not (self.resumed_from or saved_any):
                epoch, position = divmod(step, per_epoch)
                self._save(step, epoch, position)
            if self.validator is not None and (not scores or scores.get("step") != step):
                scores = self._validate(writer, step)
        except WORKER_LOST_ERRORS as exc:
            if info.name != "multi_worker":
                raise
            raise WorkerLostError(
                f"step {step}: another worker stopped or became unreachable ({_first_meaningful_line(exc)}); restart "
                f"every worker with the same command: they resume from the newest checkpoint in "
                f"{self.run_dir / ck.CHECKPOINT_DIR}"
            ) from None
        finally:
            if bar is not None:
                bar.close()
            writer.flush()
            self.store.cleanup()
        if info.is_chief:
            ck.save_keras_atomic(step_fn.backbone, self.run_dir / ck.FINAL_MODEL)
        return {
            "run_dir": str(self.run_dir), "step": step, "steps_this_run": step - first_step,
            "seconds": time.perf_counter() - started, "global_batch": step_fn.global_batch,
            "validation": scores, "best_mean": self.best, "resumed_from": str(self.resumed_from or ""),
            "stopped_early": self.stop_reason,
            "weights_sha256": weights_digest(step_fn.backbone, step_fn.head),
        }

    def _save(self, step: int, epoch: int, position: int) -> None:
        s = self.step_fn
        if not bool(s.weights_finite()):
            # a finite loss can still be followed by an update that overflows the weights
            raise NonFiniteLossError(
                f"step {step}: the weights are no longer finite after this update; not saved, the last good "
                f"checkpoint in {self.run_dir / ck.CHECKPOINT_DIR} is untouched. Lower train.lr or set train.clip_norm"
            )
        s.step.assign(step)
        s.epoch.assign(epoch)
        s.epoch_step.assign(position)
        self.store.save(step)

    def _non_finite(self, step: int, result: StepResult, last_saved: int) -> None:
        what = f"loss {result.loss} (inference {result.inference_loss}, reg {result.reg_loss}, grad norm {result.grad_norm})"
        if self.cfg.train.skip_nonfinite:
            tqdm_write(f"step {step}: non-finite {what}; update skipped (train.skip_nonfinite=true)")
            if self.info.is_chief:
                ck.append_history(self.run_dir, {"event": "skipped_nonfinite", "step": step})
            return
        raise NonFiniteLossError(
            f"step {step}: non-finite {what}; training stopped without applying it. The last good checkpoint "
            f"(step {last_saved}) in {self.run_dir / ck.CHECKPOINT_DIR} is untouched. Lower train.lr, set "
            "train.clip_norm, or set train.skip_nonfinite=true to skip such updates"
        )

    def _log(self, writer, step: int, epoch: int, result: StepResult, rate: float, bar) -> None:
        lr = self.step_fn.learning_rate()
        coef = float(self.step_fn.reg_coef.numpy())
        record = {"event": "train", "step": step, "epoch": epoch, "loss": result.loss,
                  "inference_loss": result.inference_loss, "reg_loss": result.reg_loss, "reg_coef": coef,
                  "lr": lr, "accuracy": result.accuracy, "grad_norm": result.grad_norm, "images_per_sec": rate}
        with writer.as_default(step=step):
            _scalar("loss/total", result.loss)
            _scalar("loss/inference", result.inference_loss)
            _scalar("loss/regularization", result.reg_loss)
            _scalar("train/reg_coef", coef)
            _scalar("train/accuracy", result.accuracy)
            _scalar("train/learning_rate", lr)
            _scalar("train/grad_norm", result.grad_norm)
            _scalar("train/images_per_sec", rate)
        if self.info.is_chief:
            ck.append_history(self.run_dir, record)
        if bar is not None:
            bar.set_postfix(loss=f"{result.loss:.3f}", acc=f"{result.accuracy:.3f}", lr=f"{lr:.2e}",
                            img_s=f"{rate:.0f}", refresh=False)

    def _validate(self, writer, step: int) -> dict:
        scores = self.validator(self.step_fn.backbone, progress=bool(self.progress))
        with writer.as_default(step=step):
            for name, value in scores.items():
                _scalar(f"val/{name}", value)
        scores = dict(scores, step=step)
        if self.info.is_chief:
            ck.append_history(self.run_dir, {"event": "validation", **scores})
            if scores["mean"] > self.best:
                self.best = scores["mean"]
                ck.save_keras_atomic(self.step_fn.backbone, self.run_dir / ck.BEST_DIR / ck.FINAL_MODEL)
                ck.write_json_atomic(self.run_dir / ck.BEST_DIR / "best.json", scores)
                # with its architecture beside it, RUN/best is a model folder every command takes (calibrate
                # stores the threshold there; report, identify and the demo load it)
                ck.write_json_atomic(self.run_dir / ck.BEST_DIR / ck.BACKBONE_SPEC, self.backbone_spec)
        tqdm_write("step {}: validation {}".format(
            step, ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if k != "step")))
        if self.stopper is not None:
            self.stop_reason = self.stopper.update(scores["mean"], step)
        return scores


def _scalar(tag: str, value: float) -> None:
    """A TensorBoard scalar written with TensorFlow core only.

    `tf.summary.scalar` lives in the `tensorboard` package, which is only needed to *view* logs; the
    event written here (float tensor + "scalars" plugin metadata) is what it would write.
    """
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    tf.summary.write(tag, tf.constant(float(value), tf.float32), metadata=metadata.SerializeToString())


def tqdm_write(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message)


def train(cfg: DictConfig, *, data_dir, run_dir, strategy: StrategyInfo | None = None, **kwargs) -> dict:
    """Train `cfg` on the converted dataset `data_dir` into `run_dir`; returns a summary."""
    info = strategy or make_strategy("default")
    return Trainer(cfg, info, data_dir=data_dir, run_dir=run_dir, **kwargs).prepare().train()
