"""Triplet loss with online mining (FaceNet, Schroff et al. 2015): a head without class centres.

Why it is here: it is the metric-learning baseline the margin-softmax heads replaced, and the loss
comparison (benchmarks/bench_losses.py) needs it trained by the same loop.  It learns from distances
between the batch's own embeddings, so it keeps no ``kernel`` and its size does not grow with the
number of identities; in exchange every batch must hold several images of each identity it shows
(``data.sampler: pk``, data/input/pk_sampler.py), or there is nothing to compare.

Distances are squared Euclidean between L2-normalised embeddings (FaceNet), 2 - 2 cos, in [0, 4].
Triplets are mined inside the batch the head is given, i.e. per replica and per micro-batch:

``batch_hard`` (Hermans et al. 2017)
    per anchor, its farthest positive and nearest negative: max(0, margin + d(a, p*) - d(a, n*)).
``semi_hard`` (FaceNet)
    per (anchor, positive) pair, the nearest negative that is farther than the positive; when the
    batch has none, the farthest negative (the easiest, so the pair adds as little as it can and
    does not drag the model towards the collapse FaceNet warns of).  An anchor's loss is the mean
    over its positives.

``head(embeddings, labels)`` returns one loss per anchor (0 for an anchor with no positive or no
negative in the batch), so the trainer sums them and divides by the global batch as it does for
the softmax heads' cross-entropy.  ``hits`` counts the anchors whose nearest other embedding in the
batch shows the same identity: the logged "accuracy" of a triplet run is that in-batch retrieval
rate, not a classification accuracy.
"""

from __future__ import annotations

import keras
import tensorflow as tf

MINING = ("batch_hard", "semi_hard")
_FAR = 1e4  # stands for "no such sample": farther than any squared distance of unit vectors (<= 4)


def squared_distances(embeddings):
    """(B, B) squared Euclidean distances between the L2-normalised rows, float32, >= 0."""
    x = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=1, epsilon=1e-12)
    return tf.maximum(2.0 - 2.0 * tf.matmul(x, x, transpose_b=True), 0.0)


def _masks(labels):
    labels = tf.reshape(tf.cast(labels, tf.int64), [-1])
    same = tf.equal(labels[:, None], labels[None, :])
    not_self = tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool))
    return tf.logical_and(same, not_self), tf.logical_not(same)


def batch_hard_loss(distances, labels, margin: float):
    positive, negative = _masks(labels)
    hardest_positive = tf.reduce_max(tf.where(positive, distances, 0.0), axis=1)
    hardest_negative = tf.reduce_min(tf.where(negative, distances, _FAR), axis=1)
    valid = tf.reduce_any(positive, axis=1) & tf.reduce_any(negative, axis=1)
    loss = tf.nn.relu(margin + hardest_positive - hardest_negative)
    return tf.where(valid, loss, 0.0)


def semi_hard_loss(distances, labels, margin: float):
    """O(B^2 log B): each anchor's negatives sorted once, each positive's choice found by binary search."""
    positive, negative = _masks(labels)
    negative_d = tf.where(negative, distances, _FAR)
    order = tf.argsort(tf.stop_gradient(negative_d), axis=1)
    sorted_negative = tf.gather(negative_d, order, batch_dims=1)  # ascending; non-negatives (_FAR) last
    count = tf.reduce_sum(tf.cast(negative, tf.int32), axis=1, keepdims=True)
    # entries <= d(a, p): the next one is the nearest negative strictly farther than the positive
    after = tf.searchsorted(tf.stop_gradient(sorted_negative), tf.stop_gradient(distances), side="right")
    pick = tf.maximum(tf.where(after < count, after, count - 1), 0)
    chosen = tf.gather(sorted_negative, pick, batch_dims=1)  # (anchor, positive) -> d(anchor, negative)
    pair_loss = tf.where(positive & (count > 0), tf.nn.relu(margin + distances - chosen), 0.0)
    positives = tf.reduce_sum(tf.cast(positive, tf.float32), axis=1)
    return tf.reduce_sum(pair_loss, axis=1) / tf.maximum(positives, 1.0)


@keras.saving.register_keras_serializable(package="face_recognition_tf")
class TripletHead(keras.layers.Layer):
    """``head(embeddings, labels) -> (B,) per-anchor triplet loss``; no weights."""

    def __init__(self, *, margin=0.5, mining="batch_hard", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if margin < 0:
            raise ValueError(f"triplet margin must be >= 0, got {margin}")
        if mining not in MINING:
            raise ValueError(f"triplet mining must be one of {', '.join(MINING)}, got {mining!r}")
        self.margin = float(margin)
        self.mining = mining
        self.built = True

    def build(self, *args, **kwargs):
        self.built = True

    def call(self, embeddings, labels):
        distances = squared_distances(embeddings)
        mine = batch_hard_loss if self.mining == "batch_hard" else semi_hard_loss
        return mine(distances, labels, self.margin)

    def compute_output_shape(self, embeddings_shape, labels_shape=None):
        return (embeddings_shape[0],)

    def per_example_loss(self, embeddings, labels, training=None):
        return tf.cast(self(embeddings, labels, training=training), tf.float32)

    def hits(self, embeddings, labels):
        """Whether each embedding's nearest other one in the batch has its label (in-batch retrieval)."""
        labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
        distances = squared_distances(embeddings)
        distances += tf.linalg.diag(tf.fill(tf.shape(labels), _FAR))  # never oneself
        nearest = tf.argmin(distances, axis=1, output_type=tf.int32)
        return tf.equal(tf.gather(labels, nearest), labels)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "mining": self.mining}
