"""MobileFaceNet as in insightface's arcface_torch ``mobilefacenet.py`` (``get_mbf``).

Defaults reproduce ``get_mbf(blocks=(1, 4, 6, 2), scale=2)``: a stride-2 stem at ``64 * scale``
channels, then a grouped 3x3 conv (64 groups) when ``blocks[0] == 1`` or ``blocks[0]`` residual
depthwise units otherwise (``get_mbf_large``: blocks (2, 8, 12, 4), scale 4), then three depthwise
stages (bottlenecks: 1x1 expand -> depthwise 3x3 -> linear 1x1, residual when the shape is kept), a 1x1 conv to 512, then the global depthwise conv
(GDC: depthwise 7x7 -> BN -> flatten -> dense without bias -> BN) to the embedding.

``width_multiplier`` scales every channel count (rounded to multiples of 8, the stem's grouped
conv keeping two channels per group).  ``dropout`` (insightface has none) sits before the GDC
dense layer, where the IR-ResNets put theirs.  Initialisation is arcface_torch's:
kaiming-normal, fan-out, for convolutions and the dense layer.  PyTorch counts a depthwise kernel
``(C, 1, kh, kw)``'s fan-out as ``C * kh * kw``; Keras stores it as ``(kh, kw, C, 1)`` and would count
``kh * kw``, a std sqrt(C) (11x for 128 channels) too large, so depthwise kernels scale by 1/C.
"""

from __future__ import annotations

import keras

from face_recognition_tf.models.layers import (
    conv,
    depthwise_conv,
    float32_output,
    l2,
    make_divisible,
    prelu,
)
from face_recognition_tf.models.input_normalization import MODEL_INPUT_MEAN, MODEL_INPUT_STD, image_input
from face_recognition_tf.models.normalization import NormFactory

MBF_BLOCKS = (1, 4, 6, 2)
MBF_SCALE = 2
MBF_LARGE_BLOCKS = (2, 8, 12, 4)
MBF_LARGE_SCALE = 4

# nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")
KAIMING_FAN_OUT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"},
}


def _conv_block(x, filters, kernel, stride, name, norm, wd, *, groups=1, linear=False, padding=None):
    """Conv -> BN (-> PReLU unless linear): arcface_torch's ConvBlock / LinearBlock."""
    in_channels = int(x.shape[-1])
    if groups == in_channels == filters and groups > 1:
        initializer = {"class_name": "VarianceScaling",
                       "config": {**KAIMING_FAN_OUT["config"], "scale": 2.0 / in_channels}}
        x = depthwise_conv(x, kernel, stride, f"{name}_conv", weight_decay=wd,
                           initializer=initializer, padding=padding)
    else:
        x = conv(x, filters, kernel, stride, f"{name}_conv", weight_decay=wd,
                 initializer=KAIMING_FAN_OUT, groups=groups, padding=padding)
    x = norm(filters, f"{name}_bn")(x)
    return x if linear else prelu(x, f"{name}_prelu")


def _depthwise(x, out_channels, expand, stride, name, norm, wd, residual):
    """1x1 expand -> depthwise 3x3 (stride) -> linear 1x1 projection, plus identity if residual."""
    y = _conv_block(x, expand, 1, 1, f"{name}_expand", norm, wd, padding=0)
    y = _conv_block(y, expand, 3, stride, f"{name}_dw", norm, wd, groups=expand)
    y = _conv_block(y, out_channels, 1, 1, f"{name}_project", norm, wd, linear=True, padding=0)
    return keras.layers.Add(name=f"{name}_add")([x, y]) if residual else y


def build_mobilefacenet(
    embedding_size: int = 512,
    *,
    norm: NormFactory,
    input_shape=(112, 112, 3),
    dropout: float = 0.0,
    width_multiplier: float = 1.0,
    weight_decay: float = 0.0,
    blocks=MBF_BLOCKS,
    scale: int = MBF_SCALE,
    input_mean=MODEL_INPUT_MEAN,
    input_std=MODEL_INPUT_STD,
    name: str = "mobilefacenet",
) -> keras.Model:
    """Functional MobileFaceNet mapping normalised RGB images to (B, embedding_size) float32."""
    blocks = tuple(int(b) for b in blocks)
    if len(blocks) != 4 or min(blocks) < 1 or int(scale) < 1:
        raise ValueError(f"MobileFaceNet needs four block counts >= 1 and a scale >= 1, got blocks={blocks}, "
                         f"scale={scale}")
    scale = int(scale)

    def width(channels):
        return make_divisible(channels * width_multiplier)

    c64, c128 = width(64 * scale), width(128 * scale)
    e128, e256, e512 = width(128), width(256), width(512)
    c512 = width(512)
    wd = weight_decay

    inputs, x = image_input(input_shape, input_mean, input_std)
    x = _conv_block(x, c64, 3, 2, "stem", norm, wd)
    if blocks[0] == 1:
        # insightface: 64 groups whatever the scale (so `scale` channels per group)
        x = _conv_block(x, c64, 3, 1, "stem_grouped", norm, wd, groups=max(1, c64 // scale))
    else:
        for i in range(blocks[0]):
            x = _depthwise(x, c64, e128, 1, f"stage0_block{i + 1}", norm, wd, residual=True)

    stages = (
        (c64, e128, blocks[1], e128),   # (out, expand of the stride-2 unit, residual blocks, their expand)
        (c128, e256, blocks[2], e256),
        (c128, e512, blocks[3], e256),
    )
    for s, (out, down_expand, n, expand) in enumerate(stages, start=1):
        x = _depthwise(x, out, down_expand, 2, f"stage{s}_down", norm, wd, residual=False)
        for i in range(n):
            x = _depthwise(x, out, expand, 1, f"stage{s}_block{i + 1}", norm, wd, residual=True)

    x = _conv_block(x, c512, 1, 1, "conv_sep", norm, wd, padding=0)
    # GDC: a 7x7 depthwise conv over the whole 7x7 map replaces global pooling.
    gdc_kernel = int(x.shape[1])
    x = _conv_block(x, c512, gdc_kernel, 1, "gdc", norm, wd, groups=c512, linear=True, padding=0)
    x = keras.layers.Flatten(name="flatten")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Dense(
        embedding_size,
        use_bias=False,
        kernel_initializer=keras.initializers.get(KAIMING_FAN_OUT),
        kernel_regularizer=l2(weight_decay),
        name="fc",
    )(x)
    x = norm(embedding_size, "features")(x)
    outputs = float32_output(x)
    return keras.Model(inputs, outputs, name=name)
