"""The run folder: the one place that knows what a training run (or a model folder) holds and where.

Why one owner: the trainer writes these files, and evaluation, calibration, fine-tuning, the demo
and `frtf import` read them; with the names spelled in each of those modules a renamed file was
found by some readers and missed by others.  Every module asks `RunFolder` for a path instead.
No TensorFlow here (the CLI imports it to recognise a folder before deciding to load a model).

    RUN/config.yaml          resolved config (num_classes filled from the manifest)
    RUN/backbone.json        exact build_backbone kwargs: rebuild the embedding model without configs
    RUN/head.json            the head's arguments (class count...): a resume must match them
    RUN/effective.json       per-update values (global batch, scaled lr) this run trained with
    RUN/checkpoints/ckpt-N   tf.train.CheckpointManager prefixes, listed in RUN/checkpoints/checkpoint
    RUN/best/                a model folder: embedding.keras + backbone.json + best.json (best validation)
    RUN/embedding.keras      final embedding model
    RUN/threshold.json       the calibrated threshold (`frtf calibrate`)
    RUN/logs/                TensorBoard
    RUN/history.jsonl        one JSON line per log / validation event

A model folder written by `frtf import` is the same kind of folder with only backbone.json and
embedding.keras; `RUN/best` is one too.
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIG = "config.yaml"
BACKBONE_SPEC = "backbone.json"
HEAD_SPEC = "head.json"
EFFECTIVE = "effective.json"
HISTORY = "history.jsonl"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_STATE = "checkpoint"  # tf.train.CheckpointManager's list of kept checkpoints
BEST_DIR = "best"
BEST_SCORES = "best.json"
FINAL_MODEL = "embedding.keras"
THRESHOLD = "threshold.json"
LOGS_DIR = "logs"

_STATE_LINE = re.compile(r'^\s*(all_model_checkpoint_paths|model_checkpoint_path)\s*:\s*"(.*)"\s*$')


def checkpoint_step(prefix) -> int:
    """N of a checkpoint prefix `.../ckpt-N`."""
    return int(Path(prefix).name.rsplit("-", 1)[-1])


def _step_key(prefix: Path):
    name = prefix.name.rsplit("-", 1)[-1]
    return (int(name), prefix.name) if name.isdigit() else (-1, prefix.name)


class RunFolder:
    """A training run folder, or a model folder (backbone.json + embedding.keras) of the same shape."""

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # --- what it holds -------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def backbone_spec(self) -> Path:
        return self.path / BACKBONE_SPEC

    @property
    def head_spec(self) -> Path:
        return self.path / HEAD_SPEC

    @property
    def effective(self) -> Path:
        return self.path / EFFECTIVE

    @property
    def history(self) -> Path:
        return self.path / HISTORY

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def final_model(self) -> Path:
        return self.path / FINAL_MODEL

    @property
    def threshold(self) -> Path:
        return self.path / THRESHOLD

    @property
    def logs(self) -> Path:
        return self.path / LOGS_DIR

    @property
    def best(self) -> RunFolder:
        """RUN/best: a model folder of its own (embedding.keras, backbone.json, best.json)."""
        return RunFolder(self.path / BEST_DIR)

    @property
    def best_scores(self) -> Path:
        """best.json of a `best` folder: the validation scores of its model."""
        return self.path / BEST_SCORES

    # --- how to find it --------------------------------------------------------------------------
    @staticmethod
    def is_run_folder(path) -> bool:
        """A folder with backbone.json: a run, its best/ folder, or an imported model folder."""
        path = Path(path)
        return path.is_dir() and (path / BACKBONE_SPEC).is_file()

    @staticmethod
    def is_checkpoint_prefix(path) -> bool:
        """RUN/checkpoints/ckpt-N (the prefix of ckpt-N.index and its data files)."""
        return Path(path).parent.name == CHECKPOINT_DIR

    @classmethod
    def of_checkpoint(cls, prefix) -> RunFolder:
        """The run that holds the checkpoint `prefix` (RUN/checkpoints/ckpt-N -> RUN; else its folder)."""
        prefix = Path(prefix)
        return cls(prefix.parent.parent if cls.is_checkpoint_prefix(prefix) else prefix.parent)

    def checkpoints(self, *, newest_first: bool = False) -> list[Path]:
        """The checkpoints the run keeps, as prefixes RUN/checkpoints/ckpt-N, in step order
        (oldest first, or newest first for a resume, which walks back from the newest).

        Only checkpoints listed in the manager's state file count (and whose index is still there):
        TensorFlow lists a checkpoint once it is completely written, so one a killed process left
        half-saved is never picked up.  Without a state file, every `ckpt-N` with an index counts.  The
        state file names them relative to its folder (older TF versions wrote absolute paths); only
        the file name of each entry is used, joined onto the folder where the state file is now, so
        relative run folders work, and so does a run folder moved after training.
        """
        folder = self.checkpoint_dir
        try:
            text = (folder / CHECKPOINT_STATE).read_text()
        except (FileNotFoundError, NotADirectoryError):
            # no state file (a folder copied without it, or written by other code): every checkpoint
            # whose index is on disk; TensorFlow writes the index last, after the data files
            found = sorted({p.with_suffix("") for p in folder.glob("ckpt-*.index")}, key=_step_key)
            return found[::-1] if newest_first else found
        entries: dict[str, list[str]] = {"all_model_checkpoint_paths": [], "model_checkpoint_path": []}
        for line in text.splitlines():
            match = _STATE_LINE.match(line)
            if match:
                entries[match.group(1)].append(match.group(2))
        listed = entries["all_model_checkpoint_paths"] or entries["model_checkpoint_path"][:1]
        prefixes = sorted({folder / Path(p).name for p in listed if p}, key=_step_key)
        prefixes = [p for p in prefixes if p.with_name(p.name + ".index").is_file()]  # listed, then deleted
        return prefixes[::-1] if newest_first else prefixes

    def has_checkpoint(self) -> bool:
        return bool(self.checkpoints())


def list_checkpoints(run_dir, *, newest_first: bool = False) -> list[Path]:
    """`RunFolder(run_dir).checkpoints(...)`: the run's checkpoint prefixes in step order."""
    return RunFolder(run_dir).checkpoints(newest_first=newest_first)
