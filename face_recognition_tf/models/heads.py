"""Classification heads used only for training: margin-based softmax variants and plain softmax.

Every head is a Keras layer called as ``head(embeddings, labels)`` and returns float32 logits of
shape (B, num_classes) **with the margin applied to each sample's target class**: feed them to a
sparse softmax cross-entropy.  ``head.class_logits(embeddings)`` gives the logits without margin
(``s * cos`` for margin heads), which is what training accuracy should be measured on.

Margin heads L2-normalise embeddings and class centres (``kernel``, (embedding_size,
num_classes)), so ``cos`` is the cosine between a sample and each centre, then modify the target
class's cosine:

=========== ================================================ ==========================
head        target logit / s                                 defaults
=========== ================================================ ==========================
arcface     cos(theta + m) if cos > cos(pi - m)              s=64, m=0.5
            else cos - m*sin(m) (insightface's classic rule;
            ``easy_margin``: cos(theta + m) if cos > 0 else
            cos)
cosface     cos - m                                          s=64, m=0.35 (paper)
sphereface  A-Softmax psi(theta) = (-1)^k cos(m theta) - 2k, s=64, m=4 (integer)
            k = floor(m theta / pi) (monotonic extension);
            optional ``lambda_`` blend (lambda cos + psi)/(1 + lambda)
combined    cos(m1 theta + m2) - m3; with m1 == 1 it uses    s=64, m1=1, m2=0.5, m3=0
            arcface's rule for the angular part (what
            insightface's CombinedMarginLoss does), otherwise
            the A-Softmax monotonic extension past pi
softmax     plain dense layer with bias (no normalisation)   -
=========== ================================================ ==========================

Numerics: whatever the input dtype or mixed-precision policy, heads compute in float32 (the
layer's dtype policy is float32 and inputs are cast), clamp cosines to [-1, 1] and guard every
sqrt/acos so values and gradients stay finite at cos = -1, 1 and at the branch edges.  Labels
outside [0, num_classes) raise ``InvalidArgumentError`` naming the first bad label (a silent
all-zero one-hot would train on garbage).  XLA drops assertion ops, so under ``jit_compile`` a
sample with a bad label gets NaN logits instead: the loss turns NaN, loudly, rather than training
on a wrong target.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

_SQRT_FLOOR = 1e-12  # below any positive 1 - cos^2 float32 can represent near |cos| = 1


def _float32_kwargs(kwargs):
    # Heads always compute in float32, whatever the global mixed-precision policy is.
    kwargs.setdefault("dtype", "float32")
    return kwargs


def check_labels(labels, num_classes: int):
    """Return labels as int32 (B,), raising a clear error for any label outside [0, num_classes)."""
    labels, _ = _labels_and_bad(labels, num_classes)
    return labels


def _poison(logits, bad):
    # Where the assertion cannot run (XLA), make bad rows NaN rather than silently wrong.
    return logits + tf.where(bad, float("nan"), 0.0)[:, None]


def _labels_and_bad(labels, num_classes: int):
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    bad = tf.logical_or(labels < 0, labels >= num_classes)
    first_bad = tf.boolean_mask(labels, bad)[:3]  # safe for an empty (per-replica) batch
    with tf.control_dependencies(
        [
            tf.debugging.Assert(
                tf.logical_not(tf.reduce_any(bad)),
                [
                    "label out of range: got labels",
                    first_bad,
                    f"but num_classes is {num_classes} (labels must be in [0, {num_classes}))",
                ],
            )
        ]
    ):
        return tf.identity(labels), bad


class _HeadBase(keras.layers.Layer):
    """Owns the class-centre ``kernel`` (created eagerly: shapes are known from the config)."""

    use_bias = False
    kernel_init = {"class_name": "RandomNormal", "config": {"mean": 0.0, "stddev": 0.01}}

    def __init__(self, num_classes, embedding_size=512, *, weight_decay=0.0, **kwargs):
        super().__init__(**_float32_kwargs(kwargs))
        if int(num_classes) < 1 or int(embedding_size) < 1:
            raise ValueError(
                f"num_classes ({num_classes}) and embedding_size ({embedding_size}) must be >= 1"
            )
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.weight_decay = float(weight_decay)
        self.kernel = self.add_weight(
            shape=(self.embedding_size, self.num_classes),
            initializer=keras.initializers.get(self.kernel_init),
            regularizer=keras.regularizers.L2(self.weight_decay) if self.weight_decay > 0 else None,
            name="kernel",
        )
        if self.use_bias:
            self.bias = self.add_weight(shape=(self.num_classes,), initializer="zeros", name="bias")
        self.built = True

    def build(self, *args, **kwargs):
        # Weights already exist; accept whatever shapes Keras passes when (re)building.
        self.built = True

    def compute_output_shape(self, embeddings_shape, labels_shape=None):
        return (embeddings_shape[0], self.num_classes)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "embedding_size": self.embedding_size,
            "weight_decay": self.weight_decay,
        }


class MarginHead(_HeadBase):
    """Base of the normalised-softmax heads: ``s * cos`` with the target cosine modified."""

    def __init__(self, num_classes, embedding_size=512, *, s=64.0, **kwargs):
        super().__init__(num_classes, embedding_size, **kwargs)
        self.s = float(s)

    def cosine(self, embeddings):
        """Cosine between each embedding and each class centre, float32, clipped to [-1, 1]."""
        x = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=1, epsilon=1e-12)
        w = tf.math.l2_normalize(tf.cast(self.kernel, tf.float32), axis=0, epsilon=1e-12)
        return tf.clip_by_value(tf.matmul(x, w), -1.0, 1.0)

    def target_logit(self, cos):
        """Margin-modified target cosine (divided by s) for the target cosines ``cos``."""
        raise NotImplementedError

    def call(self, embeddings, labels):
        labels, bad = _labels_and_bad(labels, self.num_classes)
        cos = self.cosine(embeddings)
        one_hot = tf.one_hot(labels, self.num_classes, dtype=tf.float32)
        target = tf.reduce_sum(cos * one_hot, axis=1, keepdims=True)
        logits = cos + one_hot * (self.target_logit(target) - target)
        return _poison(self.s * logits, bad)

    def class_logits(self, embeddings):
        """Logits without margin (``s * cos``): what accuracy and prediction use."""
        return self.s * self.cosine(embeddings)

    def get_config(self):
        return {**super().get_config(), "s": self.s}


def _sin_from_cos(cos):
    # tf.maximum routes the gradient to the constant floor when 1 - cos^2 == 0, so d/dcos is 0
    # instead of inf * 0 = NaN at |cos| = 1.
    return tf.sqrt(tf.maximum(1.0 - tf.square(cos), _SQRT_FLOOR))


def _arc_margin(cos, m, easy_margin):
    """insightface's ArcFace target: cos(theta + m) with its fallback past theta = pi - m."""
    cos_theta_m = cos * math.cos(m) - _sin_from_cos(cos) * math.sin(m)
    if easy_margin:
        return tf.where(cos > 0.0, cos_theta_m, cos)
    return tf.where(cos > math.cos(math.pi - m), cos_theta_m, cos - m * math.sin(m))


def _monotonic_cos(phi):
    """(-1)^k cos(phi) - 2k with k = floor(phi / pi): decreasing in phi for all phi >= 0."""
    k = tf.floor(phi / math.pi)
    sign = 1.0 - 2.0 * tf.math.floormod(k, 2.0)
    return sign * tf.cos(phi) - 2.0 * k


@keras.saving.register_keras_serializable(package="face_recognition_tf")
class ArcFace(MarginHead):
    """Additive angular margin (Deng et al. 2019), insightface's classic implementation."""

    def __init__(self, num_classes, embedding_size=512, *, s=64.0, m=0.5, easy_margin=False, **kwargs):
        super().__init__(num_classes, embedding_size, s=s, **kwargs)
        self.m = float(m)
        self.easy_margin = bool(easy_margin)

    def target_logit(self, cos):
        return _arc_margin(cos, self.m, self.easy_margin)

    def get_config(self):
        return {**super().get_config(), "m": self.m, "easy_margin": self.easy_margin}


@keras.saving.register_keras_serializable(package="face_recognition_tf")
class CosFace(MarginHead):
    """Additive cosine margin (Wang et al. 2018, LMCL)."""

    def __init__(self, num_classes, embedding_size=512, *, s=64.0, m=0.35, **kwargs):
        super().__init__(num_classes, embedding_size, s=s, **kwargs)
        self.m = float(m)

    def target_logit(self, cos):
        return cos - self.m

    def get_config(self):
        return {**super().get_config(), "m": self.m}


@keras.saving.register_keras_serializable(package="face_recognition_tf")
class SphereFace(MarginHead):
    """Multiplicative angular margin (A-Softmax, Liu et al. 2017) on normalised features.

    cos(m theta) is the Chebyshev polynomial T_m(cos), so no acos (and no infinite derivative at
    |cos| = 1) is involved; k is found by comparing cos with cos(j pi / m).  ``lambda_`` blends in
    the plain cosine as the paper's annealing does: pass a fixed value (0 = pure A-Softmax).
    """

    def __init__(self, num_classes, embedding_size=512, *, s=64.0, m=4, lambda_=0.0, **kwargs):
        super().__init__(num_classes, embedding_size, s=s, **kwargs)
        if int(m) != m or m < 1:
            raise ValueError(f"SphereFace needs a positive integer margin m, got {m}")
        if lambda_ < 0:
            raise ValueError(f"SphereFace lambda_ must be >= 0, got {lambda_}")
        self.m = int(m)
        self.lambda_ = float(lambda_)

    def target_logit(self, cos):
        t_prev, t = tf.ones_like(cos), cos
        for _ in range(1, self.m):
            t_prev, t = t, 2.0 * cos * t - t_prev
        cos_m_theta = t  # T_m(cos) = cos(m theta)
        k = tf.zeros_like(cos)
        for j in range(1, self.m + 1):
            k += tf.cast(cos <= math.cos(j * math.pi / self.m), tf.float32)
        sign = 1.0 - 2.0 * tf.math.floormod(k, 2.0)
        psi = sign * cos_m_theta - 2.0 * k
        return (self.lambda_ * cos + psi) / (1.0 + self.lambda_)

    def get_config(self):
        return {**super().get_config(), "m": self.m, "lambda_": self.lambda_}


@keras.saving.register_keras_serializable(package="face_recognition_tf")
class CombinedMargin(MarginHead):
    """insightface's combined margin cos(m1 theta + m2) - m3 (covers the three above)."""

    _ACOS_LIMIT = 1.0 - 1e-7  # acos' derivative is infinite at +-1; stay inside

    def __init__(self, num_classes, embedding_size=512, *, s=64.0, m1=1.0, m2=0.5, m3=0.0,
                 easy_margin=False, **kwargs):
        super().__init__(num_classes, embedding_size, s=s, **kwargs)
        if m1 <= 0:
            raise ValueError(f"combined margin m1 must be > 0, got {m1}")
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)
        self.easy_margin = bool(easy_margin)

    def target_logit(self, cos):
        if self.m1 == 1.0:
            angular = _arc_margin(cos, self.m2, self.easy_margin) if self.m2 else cos
        else:
            theta = tf.acos(tf.clip_by_value(cos, -self._ACOS_LIMIT, self._ACOS_LIMIT))
            angular = _monotonic_cos(self.m1 * theta + self.m2)
        return angular - self.m3

    def get_config(self):
        return {
            **super().get_config(),
            "m1": self.m1, "m2": self.m2, "m3": self.m3, "easy_margin": self.easy_margin,
        }


@keras.saving.register_keras_serializable(package="face_recognition_tf")
class SoftmaxHead(_HeadBase):
    """Plain softmax classifier (dense with bias) as a baseline; labels are only validated."""

    use_bias = True
    kernel_init = "glorot_uniform"

    def call(self, embeddings, labels):
        labels, bad = _labels_and_bad(labels, self.num_classes)
        return _poison(self.class_logits(embeddings), bad)

    def class_logits(self, embeddings):
        return tf.matmul(tf.cast(embeddings, tf.float32), self.kernel) + self.bias
