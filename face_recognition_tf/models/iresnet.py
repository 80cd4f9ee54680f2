"""insightface's IR-ResNet ("improved residual" ResNet; r50 is the "modified ResNet50").

Structure follows arcface_torch's ``iresnet.py`` layer for layer, so recipes, parameter counts
and (after transposing tensors) pretrained weights carry over:

* stem: conv3x3 stride 1, 64 -> BN -> PReLU (112x112 stays 112x112);
* four stages of widths 64/128/256/512 with [2,2,2,2] (r18), [3,4,6,3] (r34), [3,4,14,3] (r50),
  [3,13,30,3] (r100), [6,26,60,6] (r200) blocks; **every** stage starts with stride 2 and a 1x1 conv + BN shortcut
  (112 -> 56 -> 28 -> 14 -> 7);
* block: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, added to the shortcut, no
  activation after the add;
* output: BN -> flatten -> dropout -> dense(embedding) -> BN with a frozen scale (insightface's
  ``features``).

Initialisation is insightface's too: conv kernels N(0, 0.1), dense like nn.Linear.  Keras
flattens NHWC while PyTorch flattens NCHW, so mapping the dense kernel from a PyTorch checkpoint
needs its rows permuted.  Layer names are stable (``stageS_blockB_conv1`` ...) so checkpoints stay
readable.
"""

from __future__ import annotations

import keras

from face_recognition_tf.models.layers import (
    TORCH_LINEAR_KERNEL,
    conv,
    float32_output,
    l2,
    make_divisible,
    prelu,
    torch_linear_bias_initializer,
)
from face_recognition_tf.models.input_normalization import MODEL_INPUT_MEAN, MODEL_INPUT_STD, image_input
from face_recognition_tf.models.normalization import NormFactory

IRESNET_LAYERS = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
STAGE_WIDTHS = (64, 128, 256, 512)

# insightface: nn.init.normal_(conv.weight, 0, 0.1)
CONV_INIT = {"class_name": "RandomNormal", "config": {"mean": 0.0, "stddev": 0.1}}


def _block(x, in_channels, channels, stride, name, norm, weight_decay):
    shortcut = x
    y = norm(in_channels, f"{name}_bn1")(x)
    y = conv(y, channels, 3, 1, f"{name}_conv1", weight_decay=weight_decay, initializer=CONV_INIT)
    y = norm(channels, f"{name}_bn2")(y)
    y = prelu(y, f"{name}_prelu")
    y = conv(y, channels, 3, stride, f"{name}_conv2", weight_decay=weight_decay, initializer=CONV_INIT)
    y = norm(channels, f"{name}_bn3")(y)
    if stride != 1 or in_channels != channels:
        shortcut = conv(
            x, channels, 1, stride, f"{name}_downsample_conv",
            weight_decay=weight_decay, initializer=CONV_INIT, padding=0,
        )
        shortcut = norm(channels, f"{name}_downsample_bn")(shortcut)
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def build_iresnet(
    layers,
    embedding_size: int = 512,
    *,
    norm: NormFactory,
    input_shape=(112, 112, 3),
    dropout: float = 0.0,
    width_multiplier: float = 1.0,
    weight_decay: float = 0.0,
    input_mean=MODEL_INPUT_MEAN,
    input_std=MODEL_INPUT_STD,
    name: str = "iresnet",
) -> keras.Model:
    """Functional IR-ResNet mapping normalised RGB images to (B, embedding_size) float32."""
    widths = [make_divisible(w * width_multiplier) for w in STAGE_WIDTHS]
    stem = make_divisible(64 * width_multiplier)

    inputs, x = image_input(input_shape, input_mean, input_std)
    x = conv(x, stem, 3, 1, "stem_conv", weight_decay=weight_decay, initializer=CONV_INIT)
    x = norm(stem, "stem_bn")(x)
    x = prelu(x, "stem_prelu")

    in_channels = stem
    for stage, (blocks, channels) in enumerate(zip(layers, widths), start=1):
        for block in range(1, blocks + 1):
            x = _block(
                x, in_channels, channels, 2 if block == 1 else 1,
                f"stage{stage}_block{block}", norm, weight_decay,
            )
            in_channels = channels

    x = norm(in_channels, "output_bn")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    fan_in = int(x.shape[-1])
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Dense(
        embedding_size,
        kernel_initializer=keras.initializers.get(TORCH_LINEAR_KERNEL),
        bias_initializer=torch_linear_bias_initializer(fan_in),
        kernel_regularizer=l2(weight_decay),
        name="fc",
    )(x)
    x = norm(embedding_size, "features", gamma_trainable=False)(x)
    outputs = float32_output(x)
    return keras.Model(inputs, outputs, name=name)
