"""Checkpoints of partial-FC centre shards: one file set per shard, re-sharded on restore.

Why beside the TensorFlow checkpoint and not in it: a shard is a plain variable of one replica
(models/partial_fc.py).  Under multi-worker training the chief's checkpoint cannot hold the other
workers' shards (and non-chief workers write theirs to a temporary folder that is thrown away), and a
checkpoint keyed by shard would not restore onto another replica count.  So every process writes its
own shards into the run folder, which multi-worker runs already must share:

    RUN/checkpoints/centres-N/shard-00001-of-00002/{weight,momentum,...}.npy + meta.json

written under a temporary name and renamed, then (multi-worker) a barrier, and only then the
TensorFlow checkpoint ckpt-N is listed.  A restore takes the newest listed checkpoint whose shard set
is complete, and rebuilds each of this process's shards from the rows of the saved shards it overlaps
(memory-mapped, so only those rows are read): a run saved on R replicas resumes on any other count.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from face_recognition_tf import atomic
from face_recognition_tf.errors import CheckpointError

PREFIX = "centres-"
META = "meta.json"


def centres_dir(checkpoint_dir: Path, step: int) -> Path:
    return Path(checkpoint_dir) / f"{PREFIX}{int(step)}"


def _shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}"


def read_layout(folder: Path) -> list[dict] | None:
    """The saved shards' meta data in class order, or None when the set is incomplete."""
    metas = []
    for meta_path in sorted(Path(folder).glob(f"shard-*/{META}")):
        try:
            metas.append(json.loads(meta_path.read_text()))
        except (OSError, json.JSONDecodeError):
            return None
    if not metas or len(metas) != int(metas[0]["num_shards"]):
        return None
    metas.sort(key=lambda m: m["start"])
    if metas[0]["start"] != 0 or metas[-1]["end"] != metas[0]["num_classes"]:
        return None
    if any(a["end"] != b["start"] for a, b in zip(metas, metas[1:])):
        return None
    return metas


class CentreCheckpoint:
    """Saves and restores this process's centre shards with the run's checkpoints (CheckpointStore)."""

    def __init__(self, pfc, info):
        self.pfc = pfc
        self.info = info

    def save(self, checkpoint_dir: Path, step: int) -> None:
        folder = centres_dir(checkpoint_dir, step)
        folder.mkdir(parents=True, exist_ok=True)
        layout = f"-of-{self.pfc.num_shards:05d}"
        for stale in folder.glob("shard-*"):  # a killed run on another replica count got this far
            if not stale.name.endswith(layout):
                shutil.rmtree(stale, ignore_errors=True)
        for shard in self.pfc.shards.values():
            final = folder / _shard_name(shard.index, self.pfc.num_shards)
            arrays = {name: var.numpy() for name, var in shard.variables().items()}
            if not all(np.isfinite(a).all() for a in arrays.values()):
                raise CheckpointError(f"step {step}: the class centres of shard {shard.index} are no longer finite; "
                                      "not saved (lower train.lr or set train.clip_norm)")
            meta = {"num_classes": self.pfc.num_classes, "embedding_size": self.pfc.embedding_size,
                    "num_shards": self.pfc.num_shards, "index": shard.index, "start": shard.start,
                    "end": shard.end, "arrays": sorted(arrays)}
            tmp = atomic.temporary_dir_beside(final)
            try:
                for name, value in arrays.items():
                    np.save(tmp / f"{name}.npy", value)
                atomic.write_json(tmp / META, meta)
                atomic.replace_path(tmp, final)  # an old `final` (a run killed after this point) goes afterwards
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        if self.info.name == "multi_worker" and self.info.num_workers > 1:
            # every worker's shards are on disk before the chief lists ckpt-N
            from face_recognition_tf.training.strategy import gather_from_workers

            gather_from_workers(self.info, int(step))

    def complete(self, checkpoint_dir: Path, step: int) -> bool:
        return read_layout(centres_dir(checkpoint_dir, step)) is not None

    def restore(self, checkpoint_dir: Path, step: int) -> None:
        folder = centres_dir(checkpoint_dir, step)
        layout = read_layout(folder)
        if layout is None:
            raise CheckpointError(f"{folder}: the class-centre shards of this checkpoint are incomplete")
        saved = layout[0]
        if saved["num_classes"] != self.pfc.num_classes or saved["embedding_size"] != self.pfc.embedding_size:
            raise CheckpointError(
                f"{folder}: centres of {saved['num_classes']} classes x {saved['embedding_size']} saved, the model "
                f"has {self.pfc.num_classes} x {self.pfc.embedding_size}")
        for shard in self.pfc.shards.values():
            for name, var in shard.variables().items():
                if name not in saved["arrays"]:
                    raise CheckpointError(
                        f"{folder}: no '{name}' centre slot saved (saved: {', '.join(saved['arrays'])}); the "
                        "checkpoint was written with another train.optimizer")
                var.assign(self._rows(folder, layout, name, shard.start, shard.end))

    @staticmethod
    def _rows(folder: Path, layout: list[dict], name: str, start: int, end: int) -> np.ndarray:
        parts = []
        for meta in layout:
            lo, hi = max(start, meta["start"]), min(end, meta["end"])
            if lo >= hi:
                continue
            path = folder / _shard_name(meta["index"], meta["num_shards"]) / f"{name}.npy"
            array = np.load(path, mmap_mode="r")
            parts.append(np.asarray(array[lo - meta["start"]:hi - meta["start"]]))
        return np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]

    def cleanup(self, checkpoint_dir: Path, keep_steps) -> None:
        """Remove the shard sets of checkpoints the manager no longer lists (the chief calls it)."""
        keep = {int(s) for s in keep_steps}
        for folder in Path(checkpoint_dir).glob(f"{PREFIX}*"):
            suffix = folder.name[len(PREFIX):]
            if suffix.isdigit() and int(suffix) not in keep:
                shutil.rmtree(folder, ignore_errors=True)
