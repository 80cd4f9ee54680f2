"""Identity-balanced batches (P identities x K images) for losses that compare samples within a batch.

Why this shape: a triplet loss mines positives and negatives inside a batch; a plain shuffled batch
of 128 from thousands of identities seldom holds two images of one person, so it would have no
positives.  The sampler makes every batch P groups of K images of one identity each (P = batch /
K).  Every dataset element is such a batch, so whichever elements a distribution strategy hands a
replica, and whichever micro-batches gradient accumulation sums, each one holds whole groups.

How, without random access to TFRecords: the records stream in as usual (shards interleaved,
shuffled), and ``group_by_window`` keeps, per identity, the records seen since its last group;
once an identity has K, those K leave as a group, and P consecutive groups make a batch.  Nothing
is read twice and the order is deterministic whenever the input order is.  Costs and limits:

* memory: up to K - 1 pending records per identity (about 7 KB of JPEG each): CASIA-WebFace (10.6k
  identities) with K = 4 holds about 220 MB, MS1M (85k) about 1.8 GB;
* an identity with fewer than K images forms groups only across epochs (the stream repeats), so
  its group repeats images;
* an identity with many images may fill two groups of one batch (rare); batch-wise losses then see
  one larger group, which is still valid.
"""

from __future__ import annotations

from face_recognition_tf.data.records.tfrecord import LABEL_KEY
from face_recognition_tf.errors import ConfigError

_PARSE_CHUNK = 256  # labels are parsed a chunk at a time: one parse op per 256 records, not per record


def check_pk(batch_size: int, images_per_identity: int) -> int:
    """P for a batch of `batch_size` in groups of K; a ConfigError when they do not fit."""
    k = int(images_per_identity)
    if k < 2:
        raise ConfigError(f"images_per_identity must be >= 2 (a group needs a positive pair), got {k}")
    if batch_size % k or batch_size // k < 2:
        raise ConfigError(
            f"the PK sampler needs a per-replica batch that is a multiple of images_per_identity ({k}) holding at "
            f"least 2 identities; train.batch_size is {batch_size}: use {max(2, -(-batch_size // k)) * k}")
    return batch_size // k


def pk_batches(records, batch_size: int, images_per_identity: int, drop_remainder: bool = True):
    """Serialized records -> batches (batch_size,) of serialized records in P groups of K, group by group."""
    import tensorflow as tf  # here, so that config validation (check_pk) does not load TensorFlow

    k = int(images_per_identity)
    p = check_pk(int(batch_size), k)
    label_only = {LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}

    def with_labels(chunk):
        return tf.io.parse_example(chunk, label_only)[LABEL_KEY], chunk

    labelled = records.batch(_PARSE_CHUNK).map(with_labels).unbatch()
    groups = labelled.group_by_window(
        key_func=lambda label, record: label,
        reduce_func=lambda label, window: window.batch(k),
        window_size=k,
    )
    # a finite stream ends with groups short of K: they are not groups
    groups = groups.filter(lambda labels, group: tf.shape(group)[0] == k)
    batches = groups.batch(p, drop_remainder=drop_remainder)
    return batches.map(lambda labels, group: tf.reshape(group, [-1]))
