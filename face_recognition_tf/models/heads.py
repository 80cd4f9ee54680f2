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
arcface     cos(theta + m) if cos > cos(pi - m)              s=64, m=0.5,
            else cos - m*sin(m) (insightface's classic       gradient=exact
            rule; ``easy_margin``: cos(theta + m) if
            cos > 0 else cos).  gradient=straight_through:
            today's arcface_torch, cos(theta + m) for every
            theta, d(logit)/d(cos) = s (see margins.py)
cosface     cos - m                                          s=64, m=0.35 (paper)
sphereface  A-Softmax psi(theta) = (-1)^k cos(m theta) - 2k, s=64, m=4 (integer),
            k = floor(m theta / pi) (monotonic extension);   form=normalized
            optional ``lambda_`` blend (lambda cos + psi) /
            (1 + lambda).  form=insightface: as SphereFace
            and insightface's MXNet code trained it, raw
            features (logits ||x|| cos, no s), lambda
            annealed from 1000 towards 5 with the updates
combined    cos(m1 theta + m2) - m3; with m1 == 1 it uses    s=64, m1=1, m2=0.5, m3=0
            arcface's rule for the angular part (what
            insightface's CombinedMarginLoss did), otherwise
            the A-Softmax monotonic extension past pi;
            gradient=straight_through as for arcface
softmax     plain dense layer with bias (no normalisation)   -
=========== ================================================ ==========================

CosFace's margin: the paper's 0.35 is our default (base.yaml keeps it); arcface_torch's CosFace
recipes (Glint360K, WebFace42M: ``margin_list = (1.0, 0.0, 0.4)``) use 0.4, so recipes that follow
arcface_torch set ``head.m: 0.4``.  CosFace's gradient is the same both ways (d(cos - m)/d(cos) = 1),
so it accepts ``gradient`` only so that a recipe can set it for every head alike.

The class-centre store (``kernel`` and the cosines it gives, ``_HeadBase`` / ``MarginHead.cosine``)
and the margin applied to the target cosine (``target_logit``, built from the functions of
margins.py) are separate pieces, arcface_torch-style, so a sampled or sharded centre store can later
supply the cosines.  A head also says how training uses it: ``per_example_loss`` (softmax
cross-entropy of the margin logits here; triplet.py's head has no class centres and computes its
loss from the embeddings) and ``hits`` (what the logged training accuracy counts).

Numerics: whatever the input dtype or mixed-precision policy, heads compute in float32 (the
layer's dtype policy is float32 and inputs are cast), clamp cosines to [-1, 1] and guard every
sqrt/acos so values and gradients stay finite at cos = -1, 1 and at the branch edges.  Labels
outside [0, num_classes) raise ``InvalidArgumentError`` naming the first bad label (a silent
all-zero one-hot would train on garbage).  XLA drops assertion ops, so under ``jit_compile`` a
sample with a bad label gets NaN logits instead: the loss turns NaN, loudly, rather than training
on a wrong target.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from face_recognition_tf.models import margins


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

    def per_example_loss(self, embeddings, labels, training=None):
        """Softmax cross-entropy of the margin logits, one value per example (the trainer sums them)."""
        labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
        logits = tf.cast(self(embeddings, labels, training=training), tf.float32)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)

    def hits(self, embeddings, labels):
        """Whether each example's closest class centre (no margin) is its own: the training accuracy."""
        labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
        predicted = tf.argmax(self.class_logits(tf.cast(embeddings, tf.float32)), axis=-1, output_type=tf.int32)
        return tf.equal(predicted, labels)

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
        logits = margins.replace_target(cos, one_hot, self.target_logit(target))
        return _poison(self.s * logits, bad)

    def class_logits(self, embeddings):
        """Logits without margin (``s * cos``): what accuracy and prediction use."""
        return self.s * self.cosine(embeddings)

    def get_config(self):
        return {**super().get_config(), "s": self.s}


@keras.saving.register_keras_serializable(package="face_recognition_tf")
class ArcFace(MarginHead):
    """Additive angular margin (Deng et al. 2019); ``gradient`` picks insightface's classic form or
    today's arcface_torch (margins.py explains both)."""

    def __init__(self, num_classes, embedding_size=512, *, s=64.0, m=0.5, easy_margin=False,
                 gradient="exact", **kwargs):
        super().__init__(num_classes, embedding_size, s=s, **kwargs)
        self.m = float(m)
        self.easy_margin = bool(easy_margin)
        self.gradient = margins.check_gradient(gradient)
        if self.easy_margin and self.gradient == "straight_through":
            raise ValueError("easy_margin belongs to the exact ArcFace; arcface_torch's straight-through "
                             "form has no fallback to choose (use gradient=exact or easy_margin=false)")

    def target_logit(self, cos):
        if self.gradient == "straight_through":
            return margins.straight_through(cos, margins.angle_plus(cos, 1.0, self.m))
        return margins.arc_margin(cos, self.m, self.easy_margin)

    def get_config(self):
        return {**super().get_config(), "m": self.m, "easy_margin": self.easy_margin, "gradient": self.gradient}


@keras.saving.register_keras_serializable(package="face_recognition_tf")
class CosFace(MarginHead):
    """Additive cosine margin (Wang et al. 2018, LMCL); ``gradient`` is accepted but changes nothing."""

    def __init__(self, num_classes, embedding_size=512, *, s=64.0, m=0.35, gradient="exact", **kwargs):
        super().__init__(num_classes, embedding_size, s=s, **kwargs)
        self.m = float(m)
        self.gradient = margins.check_gradient(gradient)

    def target_logit(self, cos):
        return cos - self.m

    def get_config(self):
        return {**super().get_config(), "m": self.m, "gradient": self.gradient}


SPHEREFACE_FORMS = ("normalized", "insightface")


@keras.saving.register_keras_serializable(package="face_recognition_tf")
class SphereFace(MarginHead):
    """Multiplicative angular margin (A-Softmax, Liu et al. 2017), in one of two forms.

    ``form="normalized"`` (our default since the start): normalised features scaled by s, with a
    fixed ``lambda_`` blend (0 = pure A-Softmax).  Normalising and scaling makes it train like the
    other margin heads, with no annealing to tune.

    ``form="insightface"``: the paper's and insightface's MXNet ``LSoftmax`` form, for reproducing
    them: only the class centres are normalised, every logit is ``||x|| cos`` (no s), and the target
    logit is ``||x|| (lambda cos + psi) / (1 + lambda)`` with lambda annealed by the update count
    (margins.annealed_lambda).  The count lives in the non-trainable weight ``iteration``, which the
    trainer advances after every update and checkpoints with the head, so a resumed run continues
    the annealing where it stopped.
    """

    def __init__(self, num_classes, embedding_size=512, *, s=64.0, m=4, lambda_=0.0, form="normalized",
                 lambda_base=1000.0, lambda_gamma=0.12, lambda_power=1.0, lambda_min=5.0, **kwargs):
        super().__init__(num_classes, embedding_size, s=s, **kwargs)
        if int(m) != m or m < 1:
            raise ValueError(f"SphereFace needs a positive integer margin m, got {m}")
        if lambda_ < 0:
            raise ValueError(f"SphereFace lambda_ must be >= 0, got {lambda_}")
        if form not in SPHEREFACE_FORMS:
            raise ValueError(f"SphereFace form must be one of {', '.join(SPHEREFACE_FORMS)}, got {form!r}")
        if min(lambda_base, lambda_gamma, lambda_power, lambda_min) < 0:
            raise ValueError("SphereFace's lambda schedule (lambda_base, lambda_gamma, lambda_power, lambda_min) "
                             "must be >= 0")
        self.m = int(m)
        self.lambda_ = float(lambda_)
        self.form = form
        self.schedule = {"lambda_base": float(lambda_base), "lambda_gamma": float(lambda_gamma),
                         "lambda_power": float(lambda_power), "lambda_min": float(lambda_min)}
        if form == "insightface":
            self.iteration = self.add_weight(shape=(), dtype="int64", initializer="zeros", trainable=False,
                                             name="iteration")

    def current_lambda(self):
        """The softmax weight of the blend for the next update."""
        if self.form != "insightface":
            return tf.constant(self.lambda_, tf.float32)
        s = self.schedule
        return margins.annealed_lambda(self.iteration, s["lambda_base"], s["lambda_gamma"], s["lambda_power"],
                                       s["lambda_min"])

    def advance(self):
        """Called by the trainer once per optimizer update (cross-replica context)."""
        if self.form == "insightface":
            self.iteration.assign_add(1)

    def target_logit(self, cos):
        lam = self.current_lambda()
        return (lam * cos + margins.a_softmax_psi(cos, self.m)) / (1.0 + lam)

    def _unnormalized(self, embeddings):
        """(x . w/||w||, ||x||): logits without margin and the feature norms (insightface form)."""
        x = tf.cast(embeddings, tf.float32)
        w = tf.math.l2_normalize(tf.cast(self.kernel, tf.float32), axis=0, epsilon=1e-12)
        # floored so the norm's gradient stays finite for an all-zero feature
        norm = tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(x), axis=1, keepdims=True), 1e-12))
        return tf.matmul(x, w), norm

    def call(self, embeddings, labels):
        if self.form != "insightface":
            return super().call(embeddings, labels)
        labels, bad = _labels_and_bad(labels, self.num_classes)
        logits, norm = self._unnormalized(embeddings)
        one_hot = tf.one_hot(labels, self.num_classes, dtype=tf.float32)
        target = tf.reduce_sum(logits * one_hot, axis=1, keepdims=True)
        cos = tf.clip_by_value(target / norm, -1.0, 1.0)
        return _poison(margins.replace_target(logits, one_hot, norm * self.target_logit(cos)), bad)

    def class_logits(self, embeddings):
        if self.form != "insightface":
            return super().class_logits(embeddings)
        return self._unnormalized(embeddings)[0]

    def get_config(self):
        return {**super().get_config(), "m": self.m, "lambda_": self.lambda_, "form": self.form, **self.schedule}


@keras.saving.register_keras_serializable(package="face_recognition_tf")
class CombinedMargin(MarginHead):
    """insightface's combined margin cos(m1 theta + m2) - m3 (covers the three above).

    ``gradient="straight_through"`` gives cos(m1 theta + m2) - m3 for every theta with
    d(logit)/d(cos) = s.  arcface_torch's own CombinedMarginLoss has two cases: m1 == 1, m3 == 0
    (straight-through ArcFace, as here) and m3 > 0, where it computes cos - m3 with its gradient and
    ignores m1 and m2 (here the same only when m1 == 1 and m2 == 0, which is what its CosFace
    recipes set); any other combination raises there.
    """

    _ACOS_LIMIT = 1.0 - 1e-7  # acos' derivative is infinite at +-1; stay inside

    def __init__(self, num_classes, embedding_size=512, *, s=64.0, m1=1.0, m2=0.5, m3=0.0,
                 easy_margin=False, gradient="exact", **kwargs):
        super().__init__(num_classes, embedding_size, s=s, **kwargs)
        if m1 <= 0:
            raise ValueError(f"combined margin m1 must be > 0, got {m1}")
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)
        self.easy_margin = bool(easy_margin)
        self.gradient = margins.check_gradient(gradient)
        if self.easy_margin and self.gradient == "straight_through":
            raise ValueError("easy_margin belongs to the exact combined margin; the straight-through form has "
                             "no fallback to choose (use gradient=exact or easy_margin=false)")

    def target_logit(self, cos):
        if self.gradient == "straight_through":
            if self.m1 == 1.0 and self.m2 == 0.0:
                return cos - self.m3  # no angle to compute: the exact gradient is already 1
            return margins.straight_through(cos, margins.angle_plus(cos, self.m1, self.m2) - self.m3)
        if self.m1 == 1.0:
            angular = margins.arc_margin(cos, self.m2, self.easy_margin) if self.m2 else cos
        else:
            theta = tf.acos(tf.clip_by_value(cos, -self._ACOS_LIMIT, self._ACOS_LIMIT))
            angular = margins.monotonic_cos(self.m1 * theta + self.m2)
        return angular - self.m3

    def get_config(self):
        return {
            **super().get_config(),
            "m1": self.m1, "m2": self.m2, "m3": self.m3, "easy_margin": self.easy_margin,
            "gradient": self.gradient,
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
