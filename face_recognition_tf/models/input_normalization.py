"""What a model is fed, in one place: every model here takes ``(x - 127.5) / 128``.

The data pipeline, evaluation, inference, export and the demo all feed ``MODEL_INPUT_MEAN`` /
``MODEL_INPUT_STD`` normalised RGB (the original project's and insightface's MXNet convention).  A model
that was *trained* on another normalisation (arcface_torch's models expect ``(x - 127.5) / 127.5``;
MXNet-converted ONNX graphs expect raw pixels and normalise inside) carries it with it: its first layer,
:class:`InputNormalization`, turns our input into the one its weights were trained on.  So a model
imported from insightface is used correctly by every command, fine-tuned with the same pipeline and
exported with its own normalisation, without any consumer having to know where it came from.  Models
trained here have no such layer (their stored ``backbone.json`` and checkpoints are unchanged).
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

MODEL_INPUT_MEAN = 127.5
MODEL_INPUT_STD = 128.0


def normalize_pixels(images) -> np.ndarray:
    """Pixels (uint8, or float in [0, 255]) -> float32 ``(x - 127.5) / 128``, the models' input, in numpy.

    The numpy twin of ``data.pipeline.normalize_images`` (the TensorFlow one, used inside traced
    functions) for code paths that hold numpy arrays and must not need TensorFlow for it; the numbers
    are the same (``x - 127.5`` is exact in float32 for 0-255 and dividing by 128 is a power of two).
    """
    return (np.asarray(images).astype(np.float32) - MODEL_INPUT_MEAN) / MODEL_INPUT_STD


def pixels_from_normalized(images) -> np.ndarray:
    """The inverse of :func:`normalize_pixels`: model input back to float32 pixels in [0, 255]."""
    return np.asarray(images, np.float32) * MODEL_INPUT_STD + MODEL_INPUT_MEAN


def _per_channel(value, name: str) -> tuple[float, ...]:
    values = np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()
    if values.size not in (1, 3) or not np.all(np.isfinite(values)):
        raise ValueError(f"input {name} must be one number or three (R, G, B), got {value!r}")
    return tuple(float(v) for v in values)


def is_standard(mean, std) -> bool:
    """True when ``(x - mean) / std`` is our own ``(x - 127.5) / 128`` (no conversion layer needed)."""
    means, stds = _per_channel(mean, "mean"), _per_channel(std, "std")
    return all(m == MODEL_INPUT_MEAN for m in means) and all(s == MODEL_INPUT_STD for s in stds)


def describe(mean, std) -> str:
    """``(x - 127.5) / 127.5`` for messages and metadata."""

    def text(values):
        values = _per_channel(values, "value")
        one = values[0] if len(set(values)) == 1 else None
        return f"{one:g}" if one is not None else "(" + ", ".join(f"{v:g}" for v in values) + ")"

    return f"(x - {text(mean)}) / {text(std)}"


@keras.saving.register_keras_serializable(package="face_recognition_tf")
class InputNormalization(keras.layers.Layer):
    """Turns our ``(x - 127.5) / 128`` input into the ``(x - mean) / std`` a model was trained on.

    ``y = (x * 128 + 127.5 - mean) / std``, per channel (RGB order) when ``mean`` / ``std`` have three
    values.  No weights: the source's normalisation is configuration, saved with the model.
    """

    def __init__(self, mean: float | Sequence[float] = MODEL_INPUT_MEAN,
                 std: float | Sequence[float] = MODEL_INPUT_STD, **kwargs):
        super().__init__(**kwargs)
        self.mean = _per_channel(mean, "mean")
        self.std = _per_channel(std, "std")
        if any(s == 0 for s in self.std):
            raise ValueError(f"input std must not be 0, got {std!r}")
        mean_arr, std_arr = np.asarray(self.mean), np.asarray(self.std)
        self._scale = (MODEL_INPUT_STD / std_arr).astype(np.float32)
        self._shift = ((MODEL_INPUT_MEAN - mean_arr) / std_arr).astype(np.float32)

    def call(self, inputs):
        scale = keras.ops.cast(self._scale, inputs.dtype)
        shift = keras.ops.cast(self._shift, inputs.dtype)
        return inputs * scale + shift

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": list(self.mean), "std": list(self.std)}


def image_input(input_shape, input_mean=MODEL_INPUT_MEAN, input_std=MODEL_INPUT_STD):
    """A backbone's ``keras.Input`` and the tensor its first layer reads (after the conversion layer,
    when the model was trained on another normalisation)."""
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    if is_standard(input_mean, input_std):
        return inputs, inputs
    return inputs, InputNormalization(input_mean, input_std, name="input_normalization")(inputs)
