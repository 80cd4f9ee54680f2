"""Batch-level, seeded augmentations for face crops.

Everything works on a whole uint8 batch at once with stateless random ops keyed by
(seed, batch index), so one graph op serves 128 images (cheap on a 2-core CPU) and a deterministic
pipeline gives the same augmentations on every run.  Faces are aligned, so geometry changes stay
small: a horizontal flip (on by default, as insightface trains), a few degrees of rotation and a
small zoom-in crop, done together by one projective transform.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import tensorflow as tf

from face_recognition_tf.errors import ConfigError

DEFAULTS = {"flip": True, "color_jitter": 0.0, "grayscale": 0.0, "blur": 0.0, "rotation": 0.0, "crop": 0.0}
_LIMITS = {"color_jitter": (0.0, 1.0), "grayscale": (0.0, 1.0), "blur": (0.0, 1.0), "rotation": (0.0, 45.0),
           "crop": (0.0, 0.5)}


def resolve(augment) -> dict:
    """Validate an `augment` mapping (None = defaults) and fill in defaults; ConfigError if wrong."""
    if augment is None:
        return dict(DEFAULTS)
    if not isinstance(augment, Mapping):
        raise ConfigError(f"augment must be a mapping of {', '.join(DEFAULTS)}, got {type(augment).__name__}")
    unknown = sorted(set(augment) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"augment: unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(DEFAULTS)})")
    out = dict(DEFAULTS)
    for key, value in augment.items():
        if key == "flip":
            if not isinstance(value, bool):
                raise ConfigError(f"augment.flip must be true or false, got {value!r}")
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"augment.{key} must be a number, got {value!r}")
            lo, hi = _LIMITS[key]
            if not lo <= value <= hi:
                raise ConfigError(f"augment.{key} = {value} is outside [{lo}, {hi}]")
            value = float(value)
        out[key] = value
    return out


def _uniform(seed, i, shape, lo=0.0, hi=1.0):
    return tf.random.stateless_uniform(shape, seed=tf.stack([seed[0], seed[1] + i]), minval=lo, maxval=hi)


def needs_float(options: dict) -> bool:
    """Whether an augmentation beyond the flip is on (those run in float, then round back to uint8)."""
    return any(options[key] > 0 for key in ("rotation", "crop", "color_jitter", "grayscale", "blur"))


def flip_mask(seed: tf.Tensor, batch_size, options: dict):
    """(B,) bool: which images of the batch are mirrored (None when flipping is off).

    The decode applies it image by image (pipeline.decode_batch): a whole-batch tf.where over a
    reversed copy cost more than the decode itself (3.5k vs 8.9k images/s on 2 cores,
    `frtf bench-input --stages`), flipping inside the parallel decode is nearly free.
    """
    if not options["flip"]:
        return None
    return _uniform(seed, 0, tf.reshape(batch_size, [1])) < 0.5


def augment_batch(images: tf.Tensor, seed: tf.Tensor, options: dict) -> tf.Tensor:
    """uint8 (B, H, W, 3) batch (already flipped by `flip_mask`) -> augmented uint8 batch.

    seed: int64 (2,), unique per batch.  The pipeline ships uint8 and the model normalises on its
    device (the trainer's TrainStep), so with the default augmentation (the flip) there is no float work
    on the CPU at all and a quarter of float32's bytes go to the device.  Photometric and geometric
    changes, when enabled, run in float and are rounded back to 8 bits, as a JPEG-trained model's
    input always is.
    """
    if not needs_float(options):
        return images
    b = tf.shape(images)[0]
    h, w = images.shape[1], images.shape[2]
    per_image = tf.stack([b, 1, 1, 1])
    images = tf.cast(images, tf.float32)

    if options["rotation"] > 0 or options["crop"] > 0:
        angle = _uniform(seed, 1, [b], -1.0, 1.0) * (options["rotation"] * math.pi / 180.0)
        zoom = 1.0 - _uniform(seed, 2, [b]) * options["crop"]  # <1: sample a smaller area (zoom in)
        shift = (_uniform(seed, 3, [b, 2], -1.0, 1.0) * options["crop"] * 0.5) * tf.constant([w, h], tf.float32)
        cos, sin = tf.cos(angle) * zoom, tf.sin(angle) * zoom
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        # output (x, y) -> input (a0 x + a1 y + a2, b0 x + b1 y + b2): rotate/scale about the centre
        a2 = cx - cos * cx + sin * cy + shift[:, 0]
        b2 = cy - sin * cx - cos * cy + shift[:, 1]
        zeros = tf.zeros_like(cos)
        transforms = tf.stack([cos, -sin, a2, sin, cos, b2, zeros, zeros], axis=1)
        images = tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=transforms, output_shape=tf.constant([h, w]), fill_value=0.0,
            interpolation="BILINEAR", fill_mode="REFLECT")

    if options["color_jitter"] > 0:
        s = options["color_jitter"]
        brightness = _uniform(seed, 4, per_image, -0.4, 0.4) * s * 255.0
        contrast = 1.0 + _uniform(seed, 5, per_image, -0.4, 0.4) * s
        saturation = 1.0 + _uniform(seed, 6, per_image, -0.4, 0.4) * s
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        images = (images - mean) * contrast + mean + brightness
        gray = tf.reduce_mean(images, axis=3, keepdims=True)
        images = gray + (images - gray) * saturation

    if options["grayscale"] > 0:
        gray = tf.tensordot(images, tf.constant([0.299, 0.587, 0.114]), axes=[[3], [0]])[..., None]
        pick = _uniform(seed, 7, per_image) < options["grayscale"]
        images = tf.where(pick, tf.broadcast_to(gray, tf.shape(images)), images)

    if options["blur"] > 0:
        x = tf.range(-2, 3, dtype=tf.float32)
        g = tf.exp(-(x**2) / 2.0)
        g = g / tf.reduce_sum(g)
        kernel = tf.tile((g[:, None] * g[None, :])[:, :, None, None], [1, 1, 3, 1])
        blurred = tf.nn.depthwise_conv2d(images, kernel, [1, 1, 1, 1], "SAME")
        pick = _uniform(seed, 8, per_image) < options["blur"]
        images = tf.where(pick, blurred, images)

    return tf.cast(tf.round(tf.clip_by_value(images, 0.0, 255.0)), tf.uint8)
