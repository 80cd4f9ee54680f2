"""Building blocks shared by the backbones (timm's "shared layers in one place").

Choices made to stay weight-compatible with insightface's PyTorch models:

* Strided convolutions use an explicit ``ZeroPadding2D`` and ``"valid"`` padding.  PyTorch pads
  symmetrically (1 pixel each side for a 3x3 kernel); Keras ``"same"`` with stride 2 on an even
  input pads only bottom/right, which samples different pixels, so weights would not map over.
  Stride-1 3x3 convolutions use ``"same"``, which is the same symmetric padding.
* No convolution has a bias (a BN follows each one).
* PReLU has one slope per channel, shared over height and width, initialised to 0.25 (PyTorch).
* Weight decay, when asked for, is an L2 penalty on kernels only (convolution, depthwise and dense
  kernels), as in the original TF2 project; BN, PReLU and biases are not decayed.  insightface's
  SGD decays every parameter; the difference is small and documented in the factory.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf


def l2(weight_decay: float):
    """An L2 regularizer or None, so layers carry no zero-valued losses."""
    return keras.regularizers.L2(weight_decay) if weight_decay and weight_decay > 0 else None


def make_divisible(channels: float, divisor: int = 8, minimum: int | None = None) -> int:
    """Round a scaled channel count to a multiple of ``divisor`` (timm/MobileNet rule).

    Never rounds down by more than 10%, so narrow models keep their shape.
    """
    minimum = divisor if minimum is None else minimum
    rounded = max(minimum, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:
        rounded += divisor
    return rounded


def torch_linear_bias_initializer(fan_in: int):
    """PyTorch's nn.Linear bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    limit = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-limit, limit)


# PyTorch's nn.Linear weight init (kaiming_uniform with a=sqrt(5)) is U(-1/sqrt(fan_in), ...),
# which is Keras' VarianceScaling(scale=1/3, fan_in, uniform).
TORCH_LINEAR_KERNEL = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_in", "distribution": "uniform"},
}


@keras.saving.register_keras_serializable(package="face_recognition_tf")
class GroupedConv2D(keras.layers.Layer):
    """Bias-free grouped convolution computed as a depthwise conv plus a sum.

    TensorFlow's CPU kernel for ``Conv2D(groups=g)`` falls back to a path that was measured here
    at ~75 s for one forward+backward of MobileFaceNet's 64-group layer (batch 16, 56x56x128),
    against 0.04 s for a depthwise conv.  Here each input channel is repeated ``out/groups`` times,
    convolved depthwise (multiplier 1), and each group's ``in/groups`` partial outputs summed: the
    same operator.  A depthwise conv with channel multiplier would skip the repeat and was 2x
    faster without XLA, but XLA's CPU backend took 81 s per step on it (1.1 s for this form), so
    this form is the one that is never pathological.  The kernel keeps Keras' (and, transposed,
    PyTorch's) grouped layout ``(kh, kw, in/groups, out)`` so weights map over unchanged.
    """

    def __init__(self, filters, kernel_size, strides=1, groups=1, padding="valid",
                 kernel_initializer="glorot_uniform", kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = (int(kernel_size),) * 2 if isinstance(kernel_size, int) else tuple(kernel_size)
        self.strides = (int(strides),) * 2 if isinstance(strides, int) else tuple(strides)
        self.groups = int(groups)
        self.padding = padding
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        if self.filters % self.groups:
            raise ValueError(f"filters ({filters}) must be divisible by groups ({groups})")

    def build(self, input_shape):
        channels = int(input_shape[-1])
        if channels % self.groups:
            raise ValueError(f"input channels ({channels}) must be divisible by groups ({self.groups})")
        self.kernel = self.add_weight(
            shape=(*self.kernel_size, channels // self.groups, self.filters),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            name="kernel",
        )

    def call(self, inputs):
        kh, kw, cin_g, cout = self.kernel.shape
        g, cout_g = self.groups, cout // self.groups
        kernel = tf.cast(self.kernel, self.compute_dtype)
        # (kh, kw, cin_g, g, cout_g) -> (kh, kw, g, cin_g, cout_g): input channel g*cin_g + i
        # feeds output g*cout_g + m through its m-th repeat.
        kernel = tf.reshape(kernel, (kh, kw, cin_g, g, cout_g))
        kernel = tf.reshape(tf.transpose(kernel, (0, 1, 3, 2, 4)), (kh, kw, g * cin_g * cout_g, 1))
        repeated = tf.repeat(inputs, cout_g, axis=-1) if cout_g > 1 else inputs
        y = tf.nn.depthwise_conv2d(repeated, kernel, (1, *self.strides, 1), self.padding.upper())
        shape = tf.shape(y)
        y = tf.reshape(y, tf.concat([shape[:-1], [g, cin_g, cout_g]], axis=0))
        y = tf.reduce_sum(y, axis=-2)
        return tf.reshape(y, tf.concat([shape[:-1], [cout]], axis=0))

    def compute_output_shape(self, input_shape):
        def side(n, k, s):
            if n is None:
                return None
            return -(-n // s) if self.padding == "same" else (n - k) // s + 1

        h, w = input_shape[1], input_shape[2]
        return (input_shape[0], side(h, self.kernel_size[0], self.strides[0]),
                side(w, self.kernel_size[1], self.strides[1]), self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "groups": self.groups,
            "padding": self.padding,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
        }


@keras.saving.register_keras_serializable(package="face_recognition_tf")
class SubsampledPointwiseConv2D(keras.layers.Conv2D):
    """A 1x1 convolution with stride s, computed as "take every s-th pixel, then a 1x1 conv".

    Why: oneDNN's CPU kernel for the *weight gradient* of a strided 1x1 convolution (``jit_1x1``
    backward_weights, used by TensorFlow's ``Conv2DBackpropFilter``) corrupts the heap when the layer
    has fewer than 16 input channels and a large enough image: a narrow IR-ResNet's downsample
    shortcut (8 channels at 56x56, width 0.125) crashed training with SIGSEGV / "munmap_chunk():
    invalid pointer" (docs/known-issues.md has the one-op reproducer).  Sampling first is the same
    operator (a 1x1 kernel with "valid" padding only ever reads those pixels), so weights, outputs
    and gradients are unchanged, and the crashing kernel is never called.  The subsample is a
    strided slice, a small copy next to the convolution, on every device, so a model behaves and
    exports the same wherever it was built.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if tuple(self.kernel_size) != (1, 1) or self.padding != "valid" or self.data_format != "channels_last":
            raise ValueError("SubsampledPointwiseConv2D is a 1x1, 'valid', channels-last convolution")
        if tuple(self.dilation_rate) != (1, 1):
            raise ValueError("SubsampledPointwiseConv2D does not dilate")

    def convolution_op(self, inputs, kernel):
        sh, sw = self.strides
        if (sh, sw) != (1, 1):
            inputs = inputs[:, ::sh, ::sw, :]
        return keras.ops.conv(inputs, kernel, strides=1, padding="valid", data_format=self.data_format)


def conv(
    x,
    filters: int,
    kernel_size: int,
    stride: int,
    name: str,
    *,
    weight_decay: float = 0.0,
    initializer="glorot_uniform",
    groups: int = 1,
    padding: int | None = None,
):
    """Bias-free Conv2D with PyTorch-style symmetric padding.

    ``padding`` defaults to ``kernel_size // 2`` (PyTorch's usual choice).  With stride 1 this is
    Keras' ``"same"``; otherwise the padding is explicit.
    """
    pad = kernel_size // 2 if padding is None else padding
    if stride == 1 and pad == kernel_size // 2 and kernel_size % 2 == 1:
        mode = "same"
    else:
        mode = "valid"
        if pad:
            x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    if groups > 1:
        return GroupedConv2D(
            filters,
            kernel_size,
            strides=stride,
            groups=groups,
            padding=mode,
            kernel_initializer=keras.initializers.get(initializer),
            kernel_regularizer=l2(weight_decay),
            name=name,
        )(x)
    # strided 1x1 convolutions (the IR-ResNet downsample shortcut) avoid a crashing oneDNN kernel
    pointwise_strided = kernel_size == 1 and stride > 1 and mode == "valid"
    layer_class = SubsampledPointwiseConv2D if pointwise_strided else keras.layers.Conv2D
    return layer_class(
        filters,
        kernel_size,
        strides=stride,
        padding=mode,
        use_bias=False,
        kernel_initializer=keras.initializers.get(initializer),
        kernel_regularizer=l2(weight_decay),
        name=name,
    )(x)


def depthwise_conv(
    x,
    kernel_size: int,
    stride: int,
    name: str,
    *,
    weight_decay: float = 0.0,
    initializer="glorot_uniform",
    padding: int | None = None,
):
    """Bias-free depthwise conv (PyTorch ``groups == in == out``), same padding rule as :func:`conv`."""
    pad = kernel_size // 2 if padding is None else padding
    if stride == 1 and pad == kernel_size // 2 and kernel_size % 2 == 1:
        mode = "same"
    else:
        mode = "valid"
        if pad:
            x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return keras.layers.DepthwiseConv2D(
        kernel_size,
        strides=stride,
        padding=mode,
        use_bias=False,
        depthwise_initializer=keras.initializers.get(initializer),
        depthwise_regularizer=l2(weight_decay),
        name=name,
    )(x)


def prelu(x, name: str):
    """Per-channel PReLU (slope shared over H and W), PyTorch's 0.25 initial slope."""
    return keras.layers.PReLU(
        alpha_initializer=keras.initializers.Constant(0.25), shared_axes=[1, 2], name=name
    )(x)


def float32_output(x, name: str = "embedding"):
    """Cast the embedding to float32 so mixed-precision models hand float32 to heads and users."""
    return keras.layers.Activation("linear", dtype="float32", name=name)(x)
