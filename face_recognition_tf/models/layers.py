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
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=stride,
        padding=mode,
        groups=groups,
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
