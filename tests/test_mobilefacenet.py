"""MobileFaceNet: arcface_torch's structure and parameter count, shapes, saving, mixed precision."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from face_recognition_tf.models import build_backbone
from face_recognition_tf.models.layers import GroupedConv2D
from test_iresnet import check_mixed_precision, param_count, producer


def insightface_mbf_param_count(embedding=512, blocks=(1, 4, 6, 2), scale=2):
    """Parameters of arcface_torch's get_mbf(), counted from its module definitions."""
    def conv_block(cin, cout, k=1, groups=1, act=True):
        return cin // groups * cout * k * k + 2 * cout + (cout if act else 0)

    def depthwise(cin, cout, groups):
        return conv_block(cin, groups) + conv_block(groups, groups, 3, groups) + conv_block(
            groups, cout, act=False)

    c64, c128 = 64 * scale, 128 * scale
    total = conv_block(3, c64, 3)
    total += conv_block(c64, c64, 3, groups=64) if blocks[0] == 1 else blocks[0] * depthwise(c64, c64, 128)
    total += depthwise(c64, c64, 128) + blocks[1] * depthwise(c64, c64, 128)
    total += depthwise(c64, c128, 256) + blocks[2] * depthwise(c128, c128, 256)
    total += depthwise(c128, c128, 512) + blocks[3] * depthwise(c128, c128, 256)
    total += conv_block(c128, 512)                                     # conv_sep
    total += conv_block(512, 512, 7, groups=512, act=False)            # GDC depthwise + BN
    total += 512 * embedding + 2 * embedding                           # linear (no bias) + BN1d
    return total


@pytest.fixture(scope="module")
def mbf():
    return build_backbone("mobilefacenet")


def test_parameter_count_matches_arcface_torch(mbf):
    assert param_count(mbf) == insightface_mbf_param_count() == 2_059_520
    assert mbf.output_shape == (None, 512)


def test_structure(mbf):
    stem = mbf.get_layer("stem_conv")
    assert stem.strides == (2, 2) and stem.filters == 128 and stem.padding == "valid"
    assert mbf.get_layer("stem_conv_pad").padding == ((1, 1), (1, 1))
    grouped = mbf.get_layer("stem_grouped_conv")
    assert grouped.groups == 64 and grouped.filters == 128
    residual_adds = [layer for layer in mbf.layers if layer.name.endswith("_add")]
    assert len(residual_adds) == 4 + 6 + 2
    for stage, side in zip((1, 2, 3), (28, 14, 7)):
        down = mbf.get_layer(f"stage{stage}_down_dw_conv")
        assert isinstance(down, keras.layers.DepthwiseConv2D) and down.strides == (2, 2)
        assert mbf.get_layer(f"stage{stage}_down_project_bn").output.shape[1:3] == (side, side)
    # Bottleneck: linear projection (no PReLU) and identity shortcut.
    add = mbf.get_layer("stage2_block3_add")
    assert {producer(t).name for t in add.input} == {"stage2_block2_add", "stage2_block3_project_bn"}
    gdc = mbf.get_layer("gdc_conv")
    assert isinstance(gdc, keras.layers.DepthwiseConv2D) and gdc.kernel_size == (7, 7)
    assert producer(mbf.get_layer("flatten").input).name == "gdc_bn"
    fc = mbf.get_layer("fc")
    assert not fc.use_bias and fc.kernel.shape == (512, 512)
    convs = [layer for layer in mbf.layers if isinstance(layer, keras.layers.Conv2D)]
    assert not any(layer.use_bias for layer in convs)


@pytest.mark.parametrize("normalization", ["batch", "batch_renorm", "group"])
def test_narrow_model_forward_and_round_trip(tmp_path, normalization):
    model = build_backbone("mobilefacenet", 64, normalization, width_multiplier=0.25, dropout=0.1)
    assert model.get_layer("stem_conv").filters == 32
    assert model.get_layer("stem_grouped_conv").groups == 16
    x = np.random.default_rng(0).normal(size=(3, 112, 112, 3)).astype(np.float32)
    model(x, training=True)
    out = model(x, training=False).numpy()
    assert out.shape == (3, 64) and out.dtype == np.float32 and np.isfinite(out).all()
    model.save(tmp_path / "mbf.keras")
    loaded = keras.models.load_model(tmp_path / "mbf.keras")
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), out)


def test_full_width_forward(mbf):
    assert mbf(np.zeros((2, 112, 112, 3), np.float32)).shape == (2, 512)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_outputs_float32(policy):
    check_mixed_precision("mobilefacenet", policy)


@pytest.mark.parametrize("cin,cout,groups,stride,padding", [(8, 8, 4, 1, "same"), (8, 12, 2, 2, "valid"),
                                                           (6, 6, 3, 1, "valid"), (4, 8, 1, 1, "same")])
def test_grouped_conv_equals_keras_grouped_conv(cin, cout, groups, stride, padding):
    # The depthwise-plus-sum form must be the same operator, kernel layout included.
    x = tf.constant(np.random.default_rng(6).normal(size=(2, 9, 9, cin)).astype(np.float32))
    ours = GroupedConv2D(cout, 3, strides=stride, groups=groups, padding=padding)
    reference = keras.layers.Conv2D(cout, 3, strides=stride, groups=groups, padding=padding,
                                    use_bias=False)
    reference(x)
    ours.build(x.shape)
    assert ours.kernel.shape == reference.kernel.shape
    ours.kernel.assign(reference.kernel)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y_ours, y_ref = ours(x), reference(x)
        loss_ours, loss_ref = tf.reduce_sum(y_ours**2), tf.reduce_sum(y_ref**2)
    assert tuple(ours.compute_output_shape(x.shape)) == tuple(y_ref.shape)
    np.testing.assert_allclose(tf.function(ours, jit_compile=True)(x).numpy(), y_ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(y_ours.numpy(), y_ref.numpy(), atol=1e-5)
    for a, b in zip(tape.gradient(loss_ours, [x, ours.kernel]), tape.gradient(loss_ref, [x, reference.kernel])):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
