"""Normalization layers chosen by config: batch norm, batch renormalization, group norm.

Why not use Keras' layers as they are:

* Keras 3 creates BatchNormalization's moving statistics with ``aggregation="none"``.  Under
  ``tf.distribute.experimental.CentralStorageStrategy`` the variables live on one device and every
  replica assigns to them, which TensorFlow refuses for ``"none"`` ("you must specify an
  aggregation method").  Our :class:`BatchNorm` creates every non-trainable statistic (moving
  mean/variance and, with renorm, the moving/renorm stddev and mean) with ``aggregation="mean"``,
  so each replica's update is averaged.  Under Mirrored/MultiWorker strategies this is also the
  right reduction; single-device code is unaffected.
* insightface freezes the scale (gamma) of its final ``features`` BatchNorm1d at 1.0.  Keras has no
  config switch for "gamma exists but is not trained" (``scale=False`` drops the weight and changes
  the parameter count), so both layers here take ``gamma_trainable`` and keep it in their config
  so a reloaded model stays frozen.
* Group norm must divide channels: narrow models (width multiplier 0.25) have fewer channels than
  the 32 groups the literature uses.  :func:`group_count` clamps to the largest divisor, and
  :class:`GroupNorm` groups **channels** (Keras' GroupNormalization does), unlike the original
  project which grouped rows.
"""

from __future__ import annotations

import keras

from face_recognition_tf.model_names import NORMALIZATIONS  # listed TensorFlow-free: configs check it

# The original TF2 project's renorm clipping; Keras' defaults are "no clipping".
DEFAULT_RENORM_CLIPPING = {"rmax": 3.0, "rmin": 1.0 / 3.0, "dmax": 5.0}


@keras.saving.register_keras_serializable(package="face_recognition_tf")
class BatchNorm(keras.layers.BatchNormalization):
    """BatchNormalization whose statistics aggregate by mean across replicas.

    Also carries ``gamma_trainable`` (insightface trains no scale on the embedding BN).  Batch
    renormalization is the same layer with ``renorm=True``.
    """

    def __init__(self, *args, gamma_trainable=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.gamma_trainable = bool(gamma_trainable)

    def add_weight(self, *args, **kwargs):
        # Every weight BN creates without gradients is a statistic updated by assignment in
        # replica context; those must say how replicas combine.
        if not kwargs.get("trainable", True) and kwargs.get("aggregation") in (None, "none"):
            kwargs["aggregation"] = "mean"
        if kwargs.get("name") == "gamma" and not self.gamma_trainable:
            kwargs["trainable"] = False
        return super().add_weight(*args, **kwargs)

    def get_config(self):
        return {**super().get_config(), "gamma_trainable": self.gamma_trainable}


@keras.saving.register_keras_serializable(package="face_recognition_tf")
class GroupNorm(keras.layers.GroupNormalization):
    """GroupNormalization over channel groups with an optional frozen scale."""

    def __init__(self, *args, gamma_trainable=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.gamma_trainable = bool(gamma_trainable)

    def add_weight(self, *args, **kwargs):
        if kwargs.get("name") == "gamma" and not self.gamma_trainable:
            kwargs["trainable"] = False
        return super().add_weight(*args, **kwargs)

    def get_config(self):
        return {**super().get_config(), "gamma_trainable": self.gamma_trainable}


def group_count(channels: int, groups: int) -> int:
    """Largest divisor of ``channels`` not above ``groups`` (at least 1).

    Keeps group norm usable at any width: 16 channels with 32 requested groups gives 16
    (instance-norm-like), 48 channels with 32 gives 24.
    """
    groups = max(1, min(int(groups), int(channels)))
    while channels % groups:
        groups -= 1
    return groups


class NormFactory:
    """Makes the configured normalization layer for a given channel count.

    Built once per backbone from the ``build_backbone`` arguments so every block asks for "a
    norm layer" without knowing which kind; holds no state beyond those arguments.
    """

    def __init__(
        self,
        kind: str = "batch",
        *,
        momentum: float = 0.9,
        epsilon: float = 2e-5,
        renorm_clipping: dict | None = None,
        renorm_momentum: float = 0.99,
        groups: int = 32,
    ):
        if kind not in NORMALIZATIONS:
            from face_recognition_tf.errors import ConfigError

            raise ConfigError(
                f"normalization {kind!r} is not one of {', '.join(NORMALIZATIONS)}"
            )
        self.kind = kind
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        clipping = dict(DEFAULT_RENORM_CLIPPING)
        clipping.update(renorm_clipping or {})
        unknown = sorted(set(clipping) - set(DEFAULT_RENORM_CLIPPING))
        if unknown:
            from face_recognition_tf.errors import ConfigError

            raise ConfigError(
                f"renorm_clipping has unknown keys {unknown}; allowed: rmax, rmin, dmax"
            )
        self.renorm_clipping = {k: float(v) for k, v in clipping.items()}
        self.renorm_momentum = float(renorm_momentum)
        self.groups = int(groups)

    def __call__(self, channels: int, name: str, gamma_trainable: bool = True):
        if self.kind == "group":
            return GroupNorm(
                groups=group_count(channels, self.groups),
                epsilon=self.epsilon,
                gamma_trainable=gamma_trainable,
                name=name,
            )
        renorm = self.kind == "batch_renorm"
        return BatchNorm(
            momentum=self.momentum,
            epsilon=self.epsilon,
            renorm=renorm,
            renorm_clipping=self.renorm_clipping if renorm else None,
            renorm_momentum=self.renorm_momentum,
            gamma_trainable=gamma_trainable,
            name=name,
        )
