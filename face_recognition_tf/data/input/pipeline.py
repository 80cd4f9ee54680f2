"""tf.data training input: converted TFRecord shards -> (images, labels) batches.

Shape of the pipeline, and why:
  shard files (shuffled, split between input pipelines) -> interleave (parallel reads) ->
  shuffle serialized records (cheap to hold; the converter already spread identities over shards
  in a random order, so a modest buffer mixes identities) -> repeat -> batch the serialized
  records (or group them P identities x K images, for triplet mining: pk_sampler.py) -> per batch, in parallel: one vectorised parse, a decode loop (INTEGER_ACCURATE =
  MXNet's decoder), flip/augment as whole-batch ops on uint8 (one op for 128 images instead of
  128 small ones) -> prefetch.  The batches stay uint8: the model normalises on its device.
Randomness comes from stateless ops keyed by (seed, batch index), so `deterministic=True` gives the
same batches on every run, which tests and debugging rely on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from face_recognition_tf.data.input import augment as augment_lib
from face_recognition_tf.data.input.pk_sampler import pk_batches
from face_recognition_tf.data.records.tfrecord import IMAGE_KEY, LABEL_KEY, read_manifest
from face_recognition_tf.errors import ConfigError
from face_recognition_tf.models.input_normalization import MODEL_INPUT_MEAN, MODEL_INPUT_STD

IMAGE_SIZE = (112, 112)
FEATURES = {  # what one serialized training record holds
    IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
    LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
}


def decode_image(jpeg: tf.Tensor, image_size=IMAGE_SIZE) -> tf.Tensor:
    """JPEG bytes -> uint8 (H, W, 3) RGB, decoded bit-identically to MXNet/insightface."""
    image = tf.io.decode_jpeg(jpeg, channels=3, dct_method="INTEGER_ACCURATE")
    return tf.ensure_shape(image, [image_size[0], image_size[1], 3])


def decode_batch(jpegs: tf.Tensor, image_size=IMAGE_SIZE, flip=None) -> tf.Tensor:
    """(B,) JPEG strings -> uint8 (B, H, W, 3), decoded in parallel inside one op of the batch's map;
    `flip` (B,) bool mirrors those images as they are decoded (augment.flip_mask says why here)."""
    spec = tf.TensorSpec([image_size[0], image_size[1], 3], tf.uint8)
    if flip is None:
        return tf.map_fn(lambda j: decode_image(j, image_size), jpegs, parallel_iterations=16, fn_output_signature=spec)

    def one(args):
        image = decode_image(args[0], image_size)
        return tf.cond(args[1], lambda: tf.reverse(image, axis=[1]), lambda: image)

    return tf.map_fn(one, (jpegs, flip), parallel_iterations=16, fn_output_signature=spec)


def normalize_images(images: tf.Tensor) -> tf.Tensor:
    """uint8 (or float in [0, 255]) -> float32 (x - 127.5) / 128, the models' input (a model trained on
    another normalisation converts it itself: models/input_normalization.py, which also holds the
    numpy twin `normalize_pixels` for code that holds numpy arrays)."""
    return (tf.cast(images, tf.float32) - MODEL_INPUT_MEAN) / MODEL_INPUT_STD


def shard_files(data_dir) -> tuple[list[str], dict]:
    """The dataset's shard paths and its manifest."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    files = [str(data_dir / s["file"]) for s in manifest["shards"]]
    return files, manifest


def build_train_dataset(data_dir, batch_size, *, augment=None, shuffle_buffer=None, seed=None,
                        deterministic=False, repeat=True, drop_remainder=True, input_context=None,
                        num_parallel_reads=None, exclude=(), images_per_identity=None) -> tf.data.Dataset:
    """Batches of (uint8 (B, 112, 112, 3) RGB images, int32 (B,) labels) from a converted dataset.

    uint8, not model input: the training step casts and normalises on its device (`normalize_images`,
    the one definition evaluation and inference use too), so the host does no float work and moves a
    quarter of the bytes.

    batch_size is per input pipeline (per replica under a distribution strategy).
    input_context: a tf.distribute.InputContext; each input pipeline reads a disjoint part (whole
    shard files when there are enough, otherwise every n-th record).
    exclude: (shard index in the manifest, record position in the shard) pairs to leave out, e.g.
    the corrupt records `record_check.find_corrupt_records` found.
    images_per_identity: K for identity-balanced batches (data/input/pk_sampler.py): every batch is
    batch_size / K identities with K images each, in that order.  None: plain shuffled batches.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    options = augment_lib.resolve(augment)
    files, manifest = shard_files(data_dir)
    image_size = tuple(manifest["image_size"])
    if seed is None:
        seed = 0 if deterministic else int(np.random.SeedSequence().generate_state(1)[0] >> 1)
    seed = int(seed)

    num_pipelines, pipeline_id = 1, 0
    if input_context is not None:
        num_pipelines, pipeline_id = input_context.num_input_pipelines, input_context.input_pipeline_id
    shard_by_file = num_pipelines > 1 and len(files) >= num_pipelines
    shard_ids = list(range(len(files)))  # positions in the manifest, which exclusions refer to
    if shard_by_file:
        files, shard_ids = files[pipeline_id::num_pipelines], shard_ids[pipeline_id::num_pipelines]
    cycle = int(num_parallel_reads or min(len(files), 16))

    ds = tf.data.Dataset.from_tensor_slices((files, tf.constant(shard_ids, tf.int64)))
    if not deterministic:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        _shard_reader(exclude),
        cycle_length=max(1, min(cycle, len(files))), block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic,
    )
    if num_pipelines > 1 and not shard_by_file:
        ds = ds.shard(num_pipelines, pipeline_id)
    images_here = max(1, manifest["num_images"] // num_pipelines)
    buffer = int(shuffle_buffer) if shuffle_buffer is not None else min(images_here, 16384)
    if buffer > 1:
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if images_per_identity:
        ds = pk_batches(ds, batch_size, int(images_per_identity), drop_remainder=drop_remainder)
    else:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.enumerate()

    def finish(step, records):
        # one vectorised parse per batch and a parallel decode loop that also flips: as fast as a
        # per-record parse + decode map on 2 cores, with one op per batch for everything after it
        # (decode is nearly all of the time: `frtf bench-input DATA --stages`, docs/benchmarks.md)
        parsed = tf.io.parse_example(records, FEATURES)
        batch_seed = tf.stack([tf.constant(seed, tf.int64), step])
        jpegs = parsed[IMAGE_KEY]
        images = decode_batch(jpegs, image_size, augment_lib.flip_mask(batch_seed, tf.shape(jpegs)[0], options))
        images = augment_lib.augment_batch(images, batch_seed, options)
        return images, tf.cast(parsed[LABEL_KEY], tf.int32)

    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    opts = tf.data.Options()
    opts.deterministic = deterministic
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF  # done above
    return ds.with_options(opts)


def _shard_reader(exclude):
    """(shard file, shard index) -> its serialized records, less the excluded positions.

    Without exclusions this is a plain TFRecordDataset (the hot path pays nothing); with them each
    record's position is looked up in a hash table keyed by shard index * 2^32 + position.
    """
    exclude = [(int(s), int(r)) for s, r in exclude]
    if not exclude:
        return lambda path, shard: tf.data.TFRecordDataset(path, buffer_size=1 << 20)
    keys = tf.constant([s * (1 << 32) + r for s, r in exclude], tf.int64)
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, tf.ones_like(keys)), 0)

    def read(path, shard):
        records = tf.data.TFRecordDataset(path, buffer_size=1 << 20).enumerate()
        records = records.filter(lambda position, record: table.lookup(shard * (1 << 32) + position) == 0)
        return records.map(lambda position, record: record)

    return read


def build_eval_images(images_uint8) -> tf.Tensor:
    """Normalised float32 batch from uint8 images already in memory (e.g. from load_bin)."""
    return normalize_images(tf.convert_to_tensor(images_uint8))


def dataset_info(data_dir) -> dict:
    """num_images, num_classes, image_size and files of a converted dataset, for trainers."""
    files, manifest = shard_files(data_dir)
    return {"num_images": manifest["num_images"], "num_classes": manifest["num_classes"],
            "image_size": tuple(manifest["image_size"]), "files": files, "pair_sets": manifest.get("pair_sets", [])}


__all__ = ["build_train_dataset", "decode_image", "normalize_images", "dataset_info", "shard_files",
           "build_eval_images", "IMAGE_SIZE"]
