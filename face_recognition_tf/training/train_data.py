"""The training data as the loop sees it: checked against the config, read one epoch at a time.

Everything here can fail on the user's data, so `Trainer.prepare()` runs the checks before the first
update (class count, image size and label range from the manifest; augmentation keys; with
data.skip_corrupt, the records whose JPEG does not decode), and a bad record met during training is
reported as a one-line DatasetError that names it instead of TensorFlow's error.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf
from omegaconf import DictConfig

from face_recognition_tf.errors import ConfigError, DatasetError, FaceRecognitionError
from face_recognition_tf.training.run_log import tqdm_write


def check_data(cfg: DictConfig, data_dir: Path, manifest: dict) -> int:
    """The dataset's class count, after checking the manifest against the config (class count, image
    size, label range) and the augmentation keys, so a mismatch fails now and not at the first batch."""
    num_classes = int(manifest["num_classes"])
    if cfg.data.num_classes is not None and int(cfg.data.num_classes) != num_classes:
        raise ConfigError(
            f"data.num_classes is {cfg.data.num_classes} but {data_dir}/manifest.json says {num_classes}; "
            "remove data.num_classes (it is read from the manifest)"
        )
    size = manifest.get("image_size")
    side = size[0] if isinstance(size, (list, tuple)) else size
    if side is not None and int(side) != int(cfg.model.input_size):
        raise ConfigError(
            f"{data_dir}/manifest.json: images are {side}px but model.input_size is {cfg.model.input_size}"
        )
    from face_recognition_tf.data.input.augment import resolve

    resolve(augment_options(cfg))  # unknown augmentation keys fail now, not at the first batch
    _check_label_range(manifest, data_dir, num_classes)
    return num_classes


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
    from face_recognition_tf.data.input.pipeline import build_train_dataset

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


def scan_corrupt(data_dir: Path, num_images: int, *, progress: bool, is_chief: bool) -> list[tuple[int, int]]:
    """data.skip_corrupt: find the records whose JPEG does not decode, say how many; returns them as
    (shard index, record) pairs for the input pipeline to leave out."""
    from face_recognition_tf.data.conversion.record_check import describe_records, find_corrupt_records

    found = find_corrupt_records(data_dir, progress=progress and is_chief)
    if found and is_chief:
        tqdm_write(f"data.skip_corrupt: leaving out {len(found)} record(s) of {num_images} whose image "
                   f"does not decode: {describe_records(found)}")
    return [(r["shard_index"], r["record"]) for r in found]


def data_error(exc: tf.errors.InvalidArgumentError, data_dir: Path, num_classes) -> FaceRecognitionError | None:
    """Turn TensorFlow's error about a bad record into a one-line error that names it."""
    message = str(exc.message if hasattr(exc, "message") else exc)
    if "label out of range" in message:
        detail = next((line.strip() for line in message.splitlines() if "label out of range" in line), message)
        detail = detail[detail.index("label out of range"):]
        return DatasetError(f"{data_dir}: a training record's label is outside the dataset's "
                            f"{num_classes} classes ({detail.rstrip('.]')}); the manifest's "
                            "num_classes does not match the records: convert the dataset again")
    if any(word in message for word in ("JPEG", "jpeg", "DecodeJpeg", "EnsureShape")):
        from face_recognition_tf.data.conversion.record_check import describe_records, find_corrupt_records

        tqdm_write(f"an image failed to decode; scanning {data_dir} for the record...")
        found = find_corrupt_records(data_dir, limit=3)
        where = describe_records(found) if found else "the scan found no bad image; " + message.splitlines()[0]
        return DatasetError(f"{data_dir}: training data holds an image that does not decode: {where}. "
                            "Convert again with `frtf convert --verify` (or --skip-corrupt), or set "
                            "data.skip_corrupt=true to leave such records out")
    return None  # not the data's fault: keep TensorFlow's error and its traceback
