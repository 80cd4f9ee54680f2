"""The training loop around the distributed update: run folder, resume, data epochs, validation, checkpoints.

Training is one custom loop for every tf.distribute strategy: in Keras 3.15 on TF 2.21 `model.fit`
fails under MultiWorkerMirrored, so single-device, mirrored, central-storage and multi-worker runs all
go through `Trainer`, which calls the same `TrainStep` (train_step.py, where the update's
strategy-independent semantics are) once per optimizer update.  Steps count updates.

All checks that can fail on user input (manifest vs config, architecture of an existing run, resume
mode, workers' view of the checkpoints, fine-tuning source) run in `Trainer.prepare()`, before the
first update, so a run that cannot finish fails in seconds.  What a run logs is run_log.py's; what
it reads, train_data.py's.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from face_recognition_tf import atomic
from face_recognition_tf.config import save_config
from face_recognition_tf.errors import CheckpointError, ConfigError, DatasetError, FaceRecognitionError
from face_recognition_tf.run_folder import RunFolder, checkpoint_step
from face_recognition_tf.training import checkpoints as ck
from face_recognition_tf.training.finetune import unfreeze_if_due
from face_recognition_tf.training.model_args import backbone_kwargs, head_kwargs
from face_recognition_tf.training.run_log import RunLog, tqdm_write
from face_recognition_tf.training.strategy import StrategyInfo, gather_from_workers, make_strategy
from face_recognition_tf.training.train_data import (
    check_data,
    data_error,
    make_dataset_fn,
    scan_corrupt,
    steps_per_epoch,
)
from face_recognition_tf.training.train_step import StepResult, TrainStep

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


class Trainer:
    """Everything around the step: run folder, resume, data epochs, logs, validation, checkpoints.

    All checks that can fail on user input (manifest, class count, architecture of an existing run,
    fine-tuning source) run in `prepare()`, before the first update.  The config passed in is not
    changed: after `prepare()`, `self.cfg` is the run's own copy with what it took from the starting
    model (finetune.init) and the manifest (data.num_classes, data.dir) filled in; that copy is the
    run's config.yaml.
    """

    def __init__(self, cfg: DictConfig, info: StrategyInfo, *, data_dir, run_dir, max_steps: int | None = None,
                 resume: str = "auto", progress: bool | None = None):
        if resume not in ("auto", "require", "never"):
            raise ValueError(f"resume must be auto, require or never, not {resume!r}")
        self.cfg = cfg
        self.info = info
        self.data_dir = Path(data_dir)
        self.run_dir = Path(run_dir)
        self.folder = RunFolder(self.run_dir)  # what the run folder holds, and where
        self.stop_step = min(int(max_steps), int(cfg.train.max_steps)) if max_steps else int(cfg.train.max_steps)
        self.resume = resume
        self.progress = cfg.log.progress if progress is None else progress
        self.step_fn: TrainStep | None = None
        self.resumed_from: Path | None = None

    # ---- set-up ---------------------------------------------------------------------------------
    def prepare(self) -> "Trainer":
        from face_recognition_tf.data import read_manifest
        from face_recognition_tf.training.finetune import check_early_stopping

        cfg = self._run_config()
        manifest = read_manifest(self.data_dir)
        num_classes = check_data(cfg, self.data_dir, manifest)
        cfg.data.num_classes = num_classes  # the run's own copy (see the class docstring)
        cfg.data.dir = str(self.data_dir)
        self.cfg = cfg
        self.num_images = int(manifest["num_images"])
        check_early_stopping(cfg, self.data_dir, self.info.name)
        self.backbone_spec, self.head_spec = run_specs(cfg, num_classes)
        self.exclude = self._scan_corrupt() if cfg.data.skip_corrupt else []
        existing = self._check_run_folder()
        self._build_step(num_classes, existing)
        self._set_up_validation()
        if self.info.is_chief:
            self._write_run_files()
        return self

    def _run_config(self) -> DictConfig:
        """A copy of the config with the starting model's architecture adopted (finetune.init)."""
        from face_recognition_tf.training.finetune import adopt_init_architecture

        if self.cfg.finetune.freeze != "none" and not self.cfg.finetune.init:
            raise ConfigError("finetune.freeze needs finetune.init=RUN_OR_MODEL (the trained model to start from)")
        cfg = copy.deepcopy(self.cfg)
        for change in adopt_init_architecture(cfg):
            tqdm_write(f"finetune.init: keeping the starting model's architecture: {change}")
        return cfg

    def _scan_corrupt(self) -> list[tuple[int, int]]:
        """data.skip_corrupt: the records to leave out; they no longer count as images of an epoch."""
        exclude = scan_corrupt(self.data_dir, self.num_images, progress=bool(self.progress), is_chief=self.info.is_chief)
        self.num_images -= len(exclude)
        return exclude

    def _check_run_folder(self) -> bool:
        """Whether the run folder holds a checkpoint to resume, once the resume mode allows what is
        there, every worker sees the same checkpoint and its backbone.json / head.json match this run."""
        existing = self.folder.has_checkpoint()
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
        return existing

    def _build_step(self, num_classes: int, existing: bool) -> None:
        """The step (model, head, optimizer), its starting weights, freezing and the checkpoint store."""
        from face_recognition_tf.training.finetune import FreezePlan, load_initial_weights

        cfg = self.cfg
        self.step_fn = step = TrainStep(cfg, self.info, num_classes, backbone_spec=self.backbone_spec,
                                        head_spec=self.head_spec)
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

    def _set_up_validation(self) -> None:
        """The validator, the best score so far (RUN/best/best.json) and early stopping."""
        from face_recognition_tf.training.finetune import EarlyStopping
        from face_recognition_tf.training.validation import Validator

        cfg = self.cfg
        # only the chief validates: evaluation runs no collective op, and the other workers' copies are
        # identical, so they go straight on to the next step (which waits for the chief)
        self.validator = Validator.from_data_dir(
            self.data_dir, cfg.validation.sets, batch_size=cfg.validation.batch_size, max_pairs=cfg.validation.max_pairs,
            folds=cfg.validation.folds) if self.info.is_chief else None
        self.best = -1.0
        best_json = self.folder.best.best_scores
        if best_json.is_file():
            import json

            self.best = float(json.loads(best_json.read_text()).get("mean", -1.0))
        self.stopper = EarlyStopping.for_run(cfg, self.run_dir, self.start_step) if self.info.is_chief else None
        self.stop_reason = self.stopper.reason if self.stopper else None

    def _write_run_files(self) -> None:
        """Chief only: config.yaml, effective.json, backbone.json, head.json; history cut back to the
        step this run starts from (the steps a resumed run redoes must not be logged twice)."""
        ck.rewind_history(self.run_dir, self.start_step)
        save_config(self.cfg, self.folder.config)
        self._report_effective_settings()
        atomic.write_json(self.folder.backbone_spec, self.backbone_spec)
        atomic.write_json(self.folder.head_spec, self.head_spec)

    def _report_effective_settings(self) -> None:
        """Print the per-update values (global batch, lr after linear scaling...) and keep them in
        RUN/effective.json, so a recipe run on another number of GPUs cannot change them unnoticed."""
        from face_recognition_tf.training.effective import describe_settings, effective_settings

        settings = effective_settings(self.step_fn)
        atomic.write_json(self.folder.effective, settings)
        for line in describe_settings(settings):
            tqdm_write(line)

    def _forget_failed_new_run(self) -> None:
        """A run that failed on its data before any checkpoint leaves no half run folder behind."""
        if self._new_folder and self.info.is_chief and not self.folder.has_checkpoint():
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _check_workers_agree(self) -> None:
        """Every worker must resume from the same checkpoint (the chief's).

        Workers that start from different steps run different numbers of updates, and the first to
        finish leaves the others waiting in an all-reduce; so refuse, on every worker alike, now.
        """
        listed = self.folder.checkpoints(newest_first=True)
        local = checkpoint_step(listed[0]) if listed else -1
        try:
            seen = gather_from_workers(self.info, local)
        except WORKER_LOST_ERRORS as exc:
            raise WorkerLostError(f"another worker stopped before training began ({_first_meaningful_line(exc)})") from None
        if len(set(seen)) > 1:
            views = ", ".join(f"worker {i}: {'ckpt-%d' % s if s >= 0 else 'no checkpoint'}" for i, s in enumerate(seen))
            raise CheckpointError(
                f"{self.folder.checkpoint_dir}: the workers see different checkpoints ({views}); the run "
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
        log = RunLog(self.run_dir, is_chief=info.is_chief, progress=bool(self.progress),
                     every_steps=cfg.log.every_steps, global_batch=step_fn.global_batch, first_step=step,
                     stop_step=self.stop_step)
        started, last_saved, scores = time.perf_counter(), step, {}
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
                        error = data_error(exc, self.data_dir, cfg.data.num_classes)
                        if error is None:
                            raise
                        raise error from None
                    step, position = step + 1, position + 1
                    if not result.ok:
                        self._non_finite(step, result, last_saved, log)
                    log.update(step, epoch, result, step_fn)
                    if self.validator is not None and step % cfg.validation.every_steps == 0:
                        scores = self._validate(log, step)
                    if step % cfg.checkpoint.every_steps == 0:
                        self._save(step, epoch, position)
                        last_saved, saved_any = step, True
            if step != last_saved or not (self.resumed_from or saved_any):
                epoch, position = divmod(step, per_epoch)
                self._save(step, epoch, position)
            if self.validator is not None and (not scores or scores.get("step") != step):
                scores = self._validate(log, step)
        except WORKER_LOST_ERRORS as exc:
            if info.name != "multi_worker":
                raise
            raise WorkerLostError(
                f"step {step}: another worker stopped or became unreachable ({_first_meaningful_line(exc)}); restart "
                f"every worker with the same command: they resume from the newest checkpoint in "
                f"{self.folder.checkpoint_dir}"
            ) from None
        finally:
            log.close()
            self.store.cleanup()
        if info.is_chief:
            ck.save_keras_atomic(step_fn.backbone, self.folder.final_model)
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
                f"checkpoint in {self.folder.checkpoint_dir} is untouched. Lower train.lr or set train.clip_norm"
            )
        s.step.assign(step)
        s.epoch.assign(epoch)
        s.epoch_step.assign(position)
        self.store.save(step)

    def _non_finite(self, step: int, result: StepResult, last_saved: int, log: RunLog) -> None:
        what = f"loss {result.loss} (inference {result.inference_loss}, reg {result.reg_loss}, grad norm {result.grad_norm})"
        if self.cfg.train.skip_nonfinite:
            tqdm_write(f"step {step}: non-finite {what}; update skipped (train.skip_nonfinite=true)")
            log.event({"event": "skipped_nonfinite", "step": step})
            return
        raise NonFiniteLossError(
            f"step {step}: non-finite {what}; training stopped without applying it. The last good checkpoint "
            f"(step {last_saved}) in {self.folder.checkpoint_dir} is untouched. Lower train.lr, set "
            "train.clip_norm, or set train.skip_nonfinite=true to skip such updates"
        )

    def _validate(self, log: RunLog, step: int) -> dict:
        scores = log.validation(step, self.validator(self.step_fn.backbone, progress=bool(self.progress)))
        if self.info.is_chief and scores["mean"] > self.best:
            self.best = scores["mean"]
            ck.save_keras_atomic(self.step_fn.backbone, self.folder.best.final_model)
            atomic.write_json(self.folder.best.best_scores, scores)
            # with its architecture beside it, RUN/best is a model folder every command takes (calibrate
            # stores the threshold there; report, identify and the demo load it)
            atomic.write_json(self.folder.best.backbone_spec, self.backbone_spec)
        if self.stopper is not None:
            self.stop_reason = self.stopper.update(scores["mean"], step)
        return scores


def run_specs(cfg: DictConfig, num_classes: int) -> tuple[dict, dict]:
    """backbone.json and head.json of a run: what resume compares, what TrainStep builds and what the
    run folder keeps.  Partial FC is part of the head spec: a run cannot switch between the full head's
    centres and the sharded ones."""
    from face_recognition_tf.training.finetune import backbone_spec

    head = head_kwargs(cfg, num_classes)
    if cfg.head.partial_fc.enabled:
        head["partial_fc"] = True
    return backbone_spec(backbone_kwargs(cfg), cfg.finetune.init), head


def train(cfg: DictConfig, *, data_dir, run_dir, strategy: StrategyInfo | None = None, **kwargs) -> dict:
    """Train `cfg` on the converted dataset `data_dir` into `run_dir`; returns a summary."""
    info = strategy or make_strategy("default")
    return Trainer(cfg, info, data_dir=data_dir, run_dir=run_dir, **kwargs).prepare().train()
