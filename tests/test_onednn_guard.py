"""Narrow IR-ResNets must train on oneDNN CPUs (docs/known-issues.md).

oneDNN's weight-gradient kernel for strided 1x1 convolutions corrupts the heap when the layer has
fewer than 16 input channels at 56x56 or larger; a width-0.125 IR-ResNet's downsample shortcuts
hit it and training died with SIGSEGV.  The backbones compute those convolutions as subsample +
1x1 conv instead: the same operator, never the crashing kernel.
"""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from face_recognition_tf.models import build_backbone
from face_recognition_tf.models.layers import SubsampledPointwiseConv2D


def _strided_pointwise_convs(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)
            and tuple(layer.kernel_size) == (1, 1) and tuple(layer.strides) != (1, 1)]


@pytest.mark.parametrize("name", ["r18", "r50", "mobilefacenet"])
def test_no_backbone_hands_onednn_a_strided_pointwise_conv(name):
    model = build_backbone(name, embedding_size=16, width_multiplier=0.125 if name != "mobilefacenet" else 1.0)
    for layer in _strided_pointwise_convs(model):
        assert isinstance(layer, SubsampledPointwiseConv2D), layer.name


@pytest.mark.parametrize("stride,size", [(2, 56), (2, 7), (3, 10)])
def test_subsampled_pointwise_conv_is_the_strided_conv(stride, size):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, size, size, 16)).astype(np.float32))
    ours = SubsampledPointwiseConv2D(24, 1, strides=stride, padding="valid", use_bias=False)
    ours.build(x.shape)
    ours.kernel.assign(rng.normal(size=(1, 1, 16, 24)).astype(np.float32))
    kernel = ours.kernel
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = ours(x)
        reference = tf.nn.conv2d(x, kernel, strides=stride, padding="VALID")
        loss, ref_loss = tf.reduce_sum(y * y), tf.reduce_sum(reference * reference)
    np.testing.assert_allclose(y.numpy(), reference.numpy(), rtol=1e-5, atol=1e-5)
    for a, b in zip(tape.gradient(loss, [x, kernel]), tape.gradient(ref_loss, [x, kernel])):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-3)


def test_subsampled_pointwise_conv_survives_save_and_load(tmp_path):
    inputs = keras.Input((16, 16, 8))
    outputs = SubsampledPointwiseConv2D(4, 1, strides=2, padding="valid", use_bias=False, name="down")(inputs)
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.get_layer("down"), SubsampledPointwiseConv2D)
    x = np.random.default_rng(1).normal(size=(1, 16, 16, 8)).astype(np.float32)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6)


def test_width_0125_iresnet_trains_without_crashing():
    """The user's crash: gradient steps of r18 at width 0.125 (8-channel layers) on 112x112 input.

    Run in a child process: before the fix this died with SIGSEGV/SIGABRT, which would take the test
    session down with it.  MALLOC_CHECK_=3 makes glibc abort on the first heap inconsistency.
    """
    script = textwrap.dedent("""
        import numpy as np, tensorflow as tf
        from face_recognition_tf.models import build_backbone
        model = build_backbone("r18", embedding_size=16, width_multiplier=0.125)
        x = tf.constant(np.random.default_rng(0).normal(size=(8, 112, 112, 3)).astype(np.float32))
        for _ in range(3):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(model(x, training=True) ** 2)
            grads = tape.gradient(loss, model.trainable_variables)
        assert all(np.isfinite(g.numpy()).all() for g in grads)
        print("trained")
    """)
    env = {**__import__("os").environ, "MALLOC_CHECK_": "3", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert "trained" in result.stdout
