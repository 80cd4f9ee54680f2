"""IR-ResNet: insightface's structure and parameter counts, shapes, saving, mixed precision."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from face_recognition_tf.models import BatchNorm, build_backbone
from face_recognition_tf.models.iresnet import IRESNET_LAYERS

R50_INSIGHTFACE_PARAMS = 43_590_848  # sum(p.numel() for p in iresnet50().parameters())


def insightface_param_count(layers, embedding=512, widths=(64, 128, 256, 512), fc_hw=49):
    """Parameters of arcface_torch's IResNet, counted from its module definitions (no BN stats)."""
    bn = lambda c: 2 * c  # noqa: E731  weight + bias
    total = 3 * 64 * 9 + bn(64) + 64  # conv1, bn1, prelu
    inplanes = 64
    for blocks, planes in zip(layers, widths):
        for b in range(blocks):
            total += bn(inplanes) + inplanes * planes * 9 + bn(planes) + planes
            total += planes * planes * 9 + bn(planes)
            if b == 0:  # every stage starts with stride 2: 1x1 conv + BN shortcut
                total += inplanes * planes + bn(planes)
            inplanes = planes
    total += bn(512) + 512 * fc_hw * embedding + embedding + bn(embedding)
    return total


def param_count(model):
    return sum(int(np.prod(v.shape)) for v in model.weights if "moving" not in v.path)


def producer(tensor):
    return tensor._keras_history.operation


@pytest.fixture(scope="module")
def r50():
    return build_backbone("r50")


def test_r50_has_insightfaces_parameter_count(r50):
    assert insightface_param_count(IRESNET_LAYERS["r50"]) == R50_INSIGHTFACE_PARAMS
    assert param_count(r50) == R50_INSIGHTFACE_PARAMS
    assert r50.input_shape == (None, 112, 112, 3) and r50.output_shape == (None, 512)


@pytest.mark.parametrize("name", ["r18", "r34", "r100"])
def test_other_depths_match_insightfaces_definition(name):
    # r100 (65M parameters) only takes a few seconds to build; it is not run.
    model = build_backbone(name)
    assert param_count(model) == insightface_param_count(IRESNET_LAYERS[name])
    assert model.output_shape == (None, 512)
    adds = [layer for layer in model.layers if layer.name.endswith("_add")]
    assert len(adds) == sum(IRESNET_LAYERS[name])


def test_r50_stage_and_block_structure(r50):
    for stage, blocks in enumerate(IRESNET_LAYERS["r50"], start=1):
        names = {layer.name for layer in r50.layers if layer.name.startswith(f"stage{stage}_")}
        assert f"stage{stage}_block{blocks}_add" in names
        assert f"stage{stage}_block{blocks + 1}_add" not in names
        # Only the first block of each stage has (and needs) the 1x1 conv + BN shortcut.
        assert {n for n in names if "downsample" in n} == {
            f"stage{stage}_block1_downsample_conv", f"stage{stage}_block1_downsample_bn"
        }
        first = r50.get_layer(f"stage{stage}_block1_downsample_conv")
        assert first.kernel_size == (1, 1) and first.strides == (2, 2) and first.padding == "valid"
        # Spatial size halves at every stage: 112 -> 56 -> 28 -> 14 -> 7.
        side = 112 // 2**stage
        assert r50.get_layer(f"stage{stage}_block1_add").output.shape[1:3] == (side, side)


def test_r50_block_order_and_no_activation_after_add(r50):
    name = "stage3_block1"
    chain = ["bn1", "conv1", "bn2", "prelu", "conv2_pad", "conv2", "bn3"]
    for before, after in zip(chain, chain[1:]):
        assert producer(r50.get_layer(f"{name}_{after}").input).name == f"{name}_{before}"
    add = r50.get_layer(f"{name}_add")
    assert {producer(t).name for t in add.input} == {f"{name}_bn3", f"{name}_downsample_bn"}
    conv2 = r50.get_layer(f"{name}_conv2")
    assert conv2.strides == (2, 2) and conv2.padding == "valid"
    assert r50.get_layer(f"{name}_conv2_pad").padding == ((1, 1), (1, 1))  # PyTorch's padding=1
    assert r50.get_layer(f"{name}_conv1").padding == "same"
    for layer in r50.layers:
        inputs = layer.input if isinstance(layer.input, list) else [layer.input]
        if any(isinstance(producer(t), keras.layers.Add) for t in inputs):
            # the next block: its BN, its 1x1 shortcut conv, or its add (identity shortcut)
            assert isinstance(layer, (BatchNorm, keras.layers.Conv2D, keras.layers.Add)), layer.name


def test_r50_layers_follow_insightface(r50):
    convs = [layer for layer in r50.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and not any(layer.use_bias for layer in convs)
    stem = r50.get_layer("stem_conv")
    assert stem.strides == (1, 1) and stem.filters == 64 and stem.kernel_size == (3, 3)
    for layer in r50.layers:
        if isinstance(layer, keras.layers.PReLU):  # one slope per channel, shared over H, W
            assert layer.alpha.shape[:2] == (1, 1) and layer.alpha.shape[2] > 1
            np.testing.assert_allclose(layer.alpha.numpy(), 0.25)
    # insightface initialises conv kernels from N(0, 0.1).
    assert abs(float(np.std(r50.get_layer("stage4_block2_conv1").kernel.numpy())) - 0.1) < 0.002
    tail = ["output_bn", "flatten", "fc", "features", "embedding"]
    for before, after in zip(tail, tail[1:]):
        assert producer(r50.get_layer(after).input).name == before
    features = r50.get_layer("features")
    assert features.gamma in features.non_trainable_weights  # frozen at 1 like insightface
    assert r50.get_layer("fc").kernel.shape == (7 * 7 * 512, 512)


def test_forward_shapes_dropout_and_narrow_widths():
    model = build_backbone("r18", 128, width_multiplier=0.25, dropout=0.4)
    assert [model.get_layer(f"stage{s}_block1_conv1").filters for s in range(1, 5)] == [16, 32, 64, 128]
    assert model.get_layer("dropout").rate == 0.4
    x = np.random.default_rng(0).normal(size=(3, 112, 112, 3)).astype(np.float32)
    out = model(x, training=False)
    assert out.shape == (3, 128) and out.dtype == tf.float32 and np.isfinite(out.numpy()).all()
    other = build_backbone("r18", 64, width_multiplier=0.25, input_shape=(96, 80, 3))
    assert other(x[:, :96, :80]).shape == (3, 64)


def test_full_width_r18_runs():
    out = build_backbone("r18")(np.zeros((1, 112, 112, 3), np.float32))
    assert out.shape == (1, 512)


def test_weight_decay_is_an_l2_penalty_on_kernels_only():
    model = build_backbone("r18", 32, width_multiplier=0.25, weight_decay=5e-4)
    kernels = [layer.kernel for layer in model.layers
               if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    assert len(model.losses) == len(kernels)
    expected = sum(5e-4 * float(np.sum(k.numpy() ** 2)) for k in kernels)
    np.testing.assert_allclose(float(tf.add_n(model.losses)), expected, rtol=1e-4)
    assert build_backbone("r18", 32, width_multiplier=0.25).losses == []


@pytest.mark.parametrize("normalization", ["batch", "batch_renorm", "group"])
def test_keras_save_load_round_trip(tmp_path, normalization):
    model = build_backbone("r18", 32, normalization, width_multiplier=0.25, dropout=0.2,
                           weight_decay=1e-4, model_name="narrow")
    x = np.random.default_rng(1).normal(size=(2, 112, 112, 3)).astype(np.float32)
    model(x, training=True)  # move the statistics away from their initial values
    path = tmp_path / "backbone.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.name == "narrow" and len(loaded.losses) == len(model.losses)
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), model(x, training=False).numpy())
    assert loaded.get_layer("features").gamma in loaded.get_layer("features").non_trainable_weights


def test_exports_to_a_saved_model(tmp_path):
    model = build_backbone("r18", 32, width_multiplier=0.25)
    model.export(str(tmp_path / "saved"), verbose=False)
    restored = tf.saved_model.load(str(tmp_path / "saved"))
    x = np.random.default_rng(2).normal(size=(2, 112, 112, 3)).astype(np.float32)
    np.testing.assert_allclose(restored.serve(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)


def check_mixed_precision(name, policy):
    """Build under ``policy``: float16/bfloat16 compute, float32 variables, float32 embeddings."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = build_backbone(name, 16, width_multiplier=0.25)
    finally:
        keras.config.set_dtype_policy(previous)
    compute = policy.split("_")[1]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(layer.compute_dtype == compute and layer.kernel.dtype == "float32" for layer in convs)
    x = tf.constant(np.random.default_rng(3).normal(size=(2, 112, 112, 3)).astype(np.float32))
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss = tf.reduce_sum(tf.square(out))
    grads = tape.gradient(loss, model.trainable_variables)
    assert out.dtype == tf.float32 and np.isfinite(out.numpy()).all()
    assert all(g.dtype == tf.float32 and np.isfinite(g.numpy()).all() for g in grads)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_outputs_float32(policy):
    check_mixed_precision("r18", policy)
