"""The run folder: resolved config, architecture, checkpoints, best and final embedding models.

Layout (read by `face_recognition_tf.model_io` and `frtf evaluate`):

    RUN/config.yaml          resolved config (num_classes filled from the manifest)
    RUN/backbone.json        exact build_backbone kwargs: rebuild the embedding model without configs
    RUN/checkpoints/ckpt-N   tf.train.CheckpointManager; objects: backbone, head, optimizer, step,
                             reg_coef, epoch, epoch_step (data position), images_seen
    RUN/best/embedding.keras + best.json   best mean validation accuracy so far
    RUN/embedding.keras      final embedding model
    RUN/logs/                TensorBoard
    RUN/history.jsonl        one JSON line per log / validation event

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
import os
import shutil
import tempfile
from pathlib import Path

from face_recognition_tf import atomic
from face_recognition_tf.errors import CheckpointError, ConfigError, OutputError

CONFIG_FILE = "config.yaml"
BACKBONE_SPEC = "backbone.json"
CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
FINAL_MODEL = "embedding.keras"
HISTORY = "history.jsonl"


def write_json_atomic(path: Path, obj) -> None:
    atomic.write_json(path, obj)


def save_keras_atomic(model, path: Path) -> None:
    """Save a Keras model under a temporary `.keras` name, then rename (readers never see half a file)."""
    path = atomic.make_parent(path)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    try:
        model.save(tmp)
        os.chmod(tmp, atomic.file_mode())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(atomic.describe_os_error(path, exc)) from None


def append_history(run_dir: Path, record: dict) -> None:
    with open(Path(run_dir) / HISTORY, "a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def rewind_history(run_dir: Path, step: int) -> int:
    """Keep the history of updates up to `step` (where a resumed run starts); returns lines dropped.

    A run killed after its last checkpoint logged steps it will redo when resumed, and a kill can
    cut the last line short: both go, so every step appears once and each line is whole JSON.
    """
    path = Path(run_dir) / HISTORY
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
    """Listed checkpoint prefixes, newest first.

    The state file names checkpoints relative to its folder (older TF versions wrote absolute
    paths), and `tf.train.get_checkpoint_state` joins them onto the folder as given, so a relative
    run folder came back as `runs/x/checkpoints/ckpt-5` and joining again doubled it.  Only the file
    name of each entry is used, joined onto the folder where the state file is now: relative
    folders work, and so does a run folder moved after training.
    """
    import tensorflow as tf

    folder = Path(run_dir) / CHECKPOINT_DIR
    state = tf.train.get_checkpoint_state(str(folder)) if folder.is_dir() else None
    if state is None:
        return []
    listed = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    return [folder / Path(p).name for p in reversed(listed) if p]


def has_checkpoint(run_dir: Path) -> bool:
    return bool(checkpoint_paths(run_dir))


def check_resume_compatible(run_dir: Path, backbone_spec: dict, head_spec: dict) -> None:
    """Refuse, before training, to resume a run with another architecture or class count."""
    run_dir = Path(run_dir)
    spec_path = run_dir / BACKBONE_SPEC
    if spec_path.is_file():
        try:
            saved = json.loads(spec_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{spec_path}: not valid JSON ({exc})") from None
        diffs = [k for k in sorted(set(saved) | set(backbone_spec)) if saved.get(k) != backbone_spec.get(k)]
        if diffs:
            detail = "; ".join(f"{k}: run has {saved.get(k)!r}, config asks {backbone_spec.get(k)!r}" for k in diffs)
            raise CheckpointError(f"{spec_path}: the checkpoints in this run belong to another architecture ({detail})")
    head_path = run_dir / "head.json"
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


def _step_of(prefix: Path) -> int:
    return int(Path(prefix).name.rsplit("-", 1)[-1])


class CheckpointStore:
    """CheckpointManager of a run, with a private temporary folder for non-chief workers."""

    def __init__(self, run_dir: Path, checkpoint, *, keep: int, is_chief: bool = True, worker_index: int = 0,
                 companion=None):
        import tensorflow as tf

        self.companion = companion
        self.run_dir = Path(run_dir)
        self.checkpoint = checkpoint
        self.is_chief = is_chief
        self.directory = self.run_dir / CHECKPOINT_DIR
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
            self.companion.cleanup(self.directory, [_step_of(p) for p in checkpoint_paths(self.run_dir)])
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
            if self.companion is not None and not self.companion.complete(self.directory, _step_of(prefix)):
                errors.append(f"{prefix.name}: its class-centre shards are incomplete")
                continue
            self._restore(prefix)
            if self.companion is not None:
                self.companion.restore(self.directory, _step_of(prefix))
            return prefix
        if errors:
            raise CheckpointError(f"{self.directory}: no readable checkpoint ({'; '.join(errors)})")
        return None

    def _restore(self, prefix: Path) -> None:
        import tensorflow as tf

        try:
            status = self.checkpoint.restore(str(prefix))
            status.assert_existing_objects_matched()
        except (ValueError, AssertionError) as exc:
            raise CheckpointError(
                f"{prefix}: checkpoint does not fit the model built from the config "
                f"(another architecture or class count?): {str(exc).splitlines()[0]}"
            ) from None
        except (tf.errors.NotFoundError, tf.errors.DataLossError) as exc:
            raise CheckpointError(f"{prefix}: checkpoint unreadable ({str(exc).splitlines()[0]})") from None

    def cleanup(self) -> None:
        if not self.is_chief:
            shutil.rmtree(self._save_dir, ignore_errors=True)
