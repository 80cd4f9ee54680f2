"""Checkpoints of a training run: saving, restoring, resuming; the run's history and spec files.

The run folder's layout (which file is where) belongs to `face_recognition_tf.run_folder.RunFolder`;
this module writes into it.  A checkpoint RUN/checkpoints/ckpt-N holds backbone, head, optimizer,
step, reg_coef, epoch, epoch_step (data position) and images_seen.

Checkpoints are written by TensorFlow under temporary names and only then listed in the manager's
state file, so a process killed mid-save leaves the previous checkpoint intact; restoring walks back
from the newest listed checkpoint to the newest readable one.  Under multi-worker training every
worker takes part in saving (the variables may need collectives to read), non-chief workers write to
a private temporary folder that is removed afterwards.

A `companion` saves state the TensorFlow checkpoint cannot hold (partial FC's per-replica class centres,
centre_checkpoints.py): every process writes its part into RUN/checkpoints before ckpt-N is listed, a
restore skips checkpoints whose companion part is incomplete, and parts of unlisted checkpoints go.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from face_recognition_tf import atomic
from face_recognition_tf.errors import CheckpointError, ConfigError
from face_recognition_tf.run_folder import CHECKPOINT_DIR, HISTORY, RunFolder, checkpoint_step

__all__ = ["CHECKPOINT_DIR", "HISTORY", "CheckpointStore", "append_history", "check_resume_compatible",
           "checkpoint_paths", "has_checkpoint", "rewind_history", "save_keras_atomic"]


def save_keras_atomic(model, path: Path) -> None:
    """Save a Keras model under a temporary `.keras` name, then rename (readers never see half a file)."""
    with atomic.atomic_path(path) as tmp:
        model.save(tmp)


def append_history(run_dir: Path, record: dict) -> None:
    with open(RunFolder(run_dir).history, "a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def rewind_history(run_dir: Path, step: int) -> int:
    """Keep the history of updates up to `step` (where a resumed run starts); returns lines dropped.

    A run killed after its last checkpoint logged steps it will redo when resumed, and a kill can
    cut the last line short: both go, so every step appears once and each line is whole JSON.
    """
    path = RunFolder(run_dir).history
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        atomic.write_text(path, "".join(line + "\n" for line in kept))
    return dropped


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """Listed checkpoint prefixes, newest first (the order a resume tries them)."""
    return RunFolder(run_dir).checkpoints(newest_first=True)


def has_checkpoint(run_dir: Path) -> bool:
    return RunFolder(run_dir).has_checkpoint()


def check_resume_compatible(run_dir: Path, backbone_spec: dict, head_spec: dict) -> None:
    """Refuse, before training, to resume a run with another architecture or class count."""
    run = RunFolder(run_dir)
    spec_path = run.backbone_spec
    if spec_path.is_file():
        try:
            saved = json.loads(spec_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{spec_path}: not valid JSON ({exc})") from None
        diffs = [k for k in sorted(set(saved) | set(backbone_spec)) if saved.get(k) != backbone_spec.get(k)]
        if diffs:
            detail = "; ".join(f"{k}: run has {saved.get(k)!r}, config asks {backbone_spec.get(k)!r}" for k in diffs)
            raise CheckpointError(f"{spec_path}: the checkpoints in this run belong to another architecture ({detail})")
    head_path = run.head_spec
    if head_path.is_file():
        saved = json.loads(head_path.read_text())
        if saved.get("num_classes") != head_spec.get("num_classes"):
            raise ConfigError(
                f"{head_path}: the run's head has {saved.get('num_classes')} classes but the dataset manifest "
                f"says {head_spec.get('num_classes')}; use another --out folder or the dataset this run was trained on"
            )
        diffs = [k for k in sorted(set(saved) | set(head_spec)) if k != "weight_decay" and saved.get(k) != head_spec.get(k)]
        if diffs:
            raise CheckpointError(
                f"{head_path}: the run's head differs from the config in {', '.join(diffs)}; use another --out folder"
            )


class CheckpointStore:
    """CheckpointManager of a run, with a private temporary folder for non-chief workers."""

    def __init__(self, run_dir: Path, checkpoint, *, keep: int, is_chief: bool = True, worker_index: int = 0,
                 companion=None):
        import tensorflow as tf

        self.companion = companion
        self.run_dir = Path(run_dir)
        self.checkpoint = checkpoint
        self.is_chief = is_chief
        self.directory = RunFolder(self.run_dir).checkpoint_dir
        if is_chief:
            save_dir = self.directory
        else:
            save_dir = Path(tempfile.mkdtemp(prefix=f"frtf-worker{worker_index}-ckpt-"))
        self._save_dir = save_dir
        self.manager = tf.train.CheckpointManager(
            checkpoint, str(save_dir), max_to_keep=int(keep) if is_chief else 1, checkpoint_name="ckpt"
        )

    def save(self, step: int) -> Path | None:
        if self.companion is not None:
            self.companion.save(self.directory, int(step))
        path = self.manager.save(checkpoint_number=int(step))
        if self.companion is not None and self.is_chief:
            self.companion.cleanup(self.directory, [checkpoint_step(p) for p in checkpoint_paths(self.run_dir)])
        if not self.is_chief:
            shutil.rmtree(self._save_dir, ignore_errors=True)
            self._save_dir.mkdir(parents=True, exist_ok=True)
            return None
        return Path(path)

    def restore_latest(self) -> Path | None:
        """Restore the newest readable checkpoint of the run (every worker reads the chief's)."""
        import tensorflow as tf

        candidates = checkpoint_paths(self.run_dir)
        errors = []
        for prefix in candidates:
            try:
                reader = tf.train.load_checkpoint(str(prefix))
                reader.get_variable_to_shape_map()
            except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as exc:
                errors.append(f"{prefix.name}: {str(exc).splitlines()[0]}")
                continue
            if self.companion is not None and not self.companion.complete(self.directory, checkpoint_step(prefix)):
                errors.append(f"{prefix.name}: its class-centre shards are incomplete")
                continue
            self._restore(prefix)
            if self.companion is not None:
                self.companion.restore(self.directory, checkpoint_step(prefix))
            return prefix
        if errors:
            raise CheckpointError(f"{self.directory}: no readable checkpoint ({'; '.join(errors)})")
        return None

    def _restore(self, prefix: Path) -> None:
        from face_recognition_tf.model_io import restore_checkpoint

        failure = restore_checkpoint(self.checkpoint, prefix,
                                     fits="the model built from the config (another architecture or class count?)")
        if failure is not None:
            raise failure

    def cleanup(self) -> None:
        if not self.is_chief:
            shutil.rmtree(self._save_dir, ignore_errors=True)
