"""BN / batch renorm / group norm: training vs inference, channel grouping, distribution strategies."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from face_recognition_tf.errors import ConfigError
from face_recognition_tf.models import BatchNorm, GroupNorm, build_backbone
from face_recognition_tf.models.normalization import NormFactory, group_count

EPS = 2e-5


def batch(seed=0, shape=(6, 5, 5, 4), loc=3.0, scale=2.0):
    return np.random.default_rng(seed).normal(loc, scale, size=shape).astype(np.float32)


def test_batch_norm_updates_statistics_only_in_training():
    layer = BatchNorm(momentum=0.9, epsilon=EPS)
    x = batch()
    out = layer(x, training=False).numpy()
    np.testing.assert_array_equal(layer.moving_mean.numpy(), 0.0)
    np.testing.assert_array_equal(layer.moving_variance.numpy(), 1.0)
    np.testing.assert_allclose(out, x / np.sqrt(1 + EPS), rtol=1e-6)

    out = layer(x, training=True).numpy()
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), 0.9 + 0.1 * var, rtol=1e-5)
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + EPS), atol=1e-4)

    frozen = layer.moving_mean.numpy().copy()
    layer(batch(1), training=False)
    np.testing.assert_array_equal(layer.moving_mean.numpy(), frozen)


def test_batch_renorm_clips_corrections_and_updates_its_statistics():
    clipping = {"rmax": 3.0, "rmin": 1 / 3, "dmax": 5.0}
    layer = BatchNorm(epsilon=EPS, renorm=True, renorm_clipping=clipping, renorm_momentum=0.99)
    x = batch(loc=20.0, scale=10.0, shape=(64, 3, 3, 2))
    layer(x, training=False)
    before = {v.name: v.numpy().copy() for v in layer.non_trainable_weights}
    assert set(before) == {"moving_mean", "moving_variance", "moving_stddev", "renorm_mean",
                           "renorm_stddev"}
    for v in layer.non_trainable_weights:
        np.testing.assert_array_equal(v.numpy(), before[v.name])

    out = layer(x, training=True).numpy()
    mean, std = x.mean(axis=(0, 1, 2)), np.sqrt(x.var(axis=(0, 1, 2)) + EPS)
    # Initial renorm statistics are mean 0, stddev 1, so r = std (~10) clips to rmax = 3 and
    # d = mean (~20) clips to dmax = 5.
    np.testing.assert_allclose(out, (x - mean) / std * 3.0 + 5.0, atol=1e-3)
    for name in ("moving_mean", "moving_stddev", "renorm_mean", "renorm_stddev"):
        assert not np.allclose(layer.non_trainable_weights[[v.name for v in
                               layer.non_trainable_weights].index(name)].numpy(), before[name])


def test_statistics_are_mean_aggregated_and_gamma_can_be_frozen(tmp_path):
    layer = BatchNorm(renorm=True, gamma_trainable=False)
    layer.build((None, 4))
    stats = [v for v in layer.non_trainable_weights if v.name != "gamma"]
    assert len(stats) == 5 and all(v.aggregation == "mean" for v in stats)
    assert layer.gamma in layer.non_trainable_weights and layer.beta in layer.trainable_weights
    clone = BatchNorm.from_config(layer.get_config())
    clone.build((None, 4))
    assert clone.gamma in clone.non_trainable_weights
    frozen = GroupNorm.from_config(GroupNorm(groups=2, gamma_trainable=False).get_config())
    frozen.build((None, 4))
    assert frozen.gamma in frozen.non_trainable_weights


def test_group_norm_groups_channels_not_rows():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 4, 6, 8)).astype(np.float32)
    # Give each pair of channels its own offset and scale, and each row its own too.
    x = x * np.arange(1, 9, dtype=np.float32) + 10 * np.arange(8, dtype=np.float32)
    x = x + 100 * np.arange(4, dtype=np.float32)[None, :, None, None]
    layer = GroupNorm(groups=4, epsilon=EPS)
    out = layer(x, training=True).numpy()

    grouped = x.reshape(2, 4, 6, 4, 2)
    mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
    var = grouped.var(axis=(1, 2, 4), keepdims=True)
    expected = ((grouped - mean) / np.sqrt(var + EPS)).reshape(x.shape)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    # Rows are NOT normalised separately: their offsets survive.
    assert out[:, 3].mean() - out[:, 0].mean() > 1.0
    # No batch statistics: training and inference agree and nothing is tracked.
    np.testing.assert_array_equal(layer(x, training=False).numpy(), out)
    assert layer.non_trainable_weights == []


@pytest.mark.parametrize("channels,groups,expected", [(64, 32, 32), (16, 32, 16), (48, 32, 24),
                                                      (7, 4, 1), (512, 32, 32), (8, 0, 1)])
def test_group_count_is_the_largest_divisor(channels, groups, expected):
    assert group_count(channels, groups) == expected


def test_narrow_group_norm_backbone_divides_every_layer():
    model = build_backbone("r18", 32, "group", width_multiplier=0.25, groups=32)
    norms = [layer for layer in model.layers if isinstance(layer, GroupNorm)]
    assert norms and not any(isinstance(layer, BatchNorm) for layer in model.layers)
    for layer in norms:
        channels = layer.gamma.shape[0]
        assert channels % layer.groups == 0 and layer.groups == min(32, channels)
    x = batch(shape=(2, 112, 112, 3), loc=0.0, scale=1.0)
    np.testing.assert_array_equal(model(x, training=True).numpy(), model(x, training=False).numpy())


@pytest.mark.parametrize("normalization", ["batch", "batch_renorm"])
def test_backbone_trains_its_statistics_only_when_training(normalization):
    model = build_backbone("r18", 16, normalization, width_multiplier=0.25)
    stats = [v for v in model.non_trainable_weights if "moving" in v.path]
    x = batch(shape=(4, 112, 112, 3), loc=0.0, scale=1.0)
    before = [v.numpy().copy() for v in stats]
    model(x, training=False)
    assert all(np.array_equal(v.numpy(), b) for v, b in zip(stats, before))
    tf.function(lambda t: model(t, training=True))(x)
    changed = [not np.allclose(v.numpy(), b) for v, b in zip(stats, before)]
    assert all(changed), [v.path for v, c in zip(stats, changed) if not c]


def test_bad_normalization_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="normalization 'layer'"):
        NormFactory("layer")
    with pytest.raises(ConfigError, match="unknown keys"):
        NormFactory("batch_renorm", renorm_clipping={"rmax": 2, "r_max": 3})
    with pytest.raises(ConfigError, match="rmin <= 1 <= rmax"):
        build_backbone("r18", 8, "batch_renorm", width_multiplier=0.25,
                       renorm_clipping={"rmax": 0.5})


def _tiny_model(normalization):
    norm = NormFactory(normalization, momentum=0.9, epsilon=EPS)
    inputs = keras.Input((6, 6, 3))
    features = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = norm(4, "bn")(features)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2)(x)
    return keras.Model(inputs, outputs), keras.Model(inputs, features)


@pytest.mark.parametrize("strategy_name", ["central_storage", "mirrored"])
@pytest.mark.parametrize("normalization", ["batch", "batch_renorm"])
def test_custom_training_step_under_multi_replica_strategies(strategy_name, normalization):
    devices = ["/cpu:0", "/cpu:1"]
    if strategy_name == "central_storage":
        strategy = tf.distribute.experimental.CentralStorageStrategy(devices)
    else:
        strategy = tf.distribute.MirroredStrategy(devices)
    assert strategy.num_replicas_in_sync == 2
    rng = np.random.default_rng(5)
    halves = [rng.normal(i * 2.0, 1.0, size=(4, 6, 6, 3)).astype(np.float32) for i in range(2)]
    labels = tf.constant([0, 1, 0, 1])
    with strategy.scope():
        model, features = _tiny_model(normalization)
        optimizer = keras.optimizers.SGD(0.01)
        optimizer.build(model.trainable_variables)
    bn = model.get_layer("bn")
    conv_out = features(np.concatenate(halves)).numpy()
    kernel_before = model.get_layer("conv").kernel.numpy().copy()

    @tf.function
    def step(x):
        def replica_step(images):
            with tf.GradientTape() as tape:
                logits = model(images, training=True)
                loss = tf.reduce_sum(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
                ) / 8.0
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        per_replica = strategy.run(replica_step, args=(x,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    inputs = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(halves[ctx.replica_id_in_sync_group])
    )
    loss = step(inputs)
    assert np.isfinite(float(loss))
    assert not np.allclose(model.get_layer("conv").kernel.numpy(), kernel_before)
    moving_mean = bn.moving_mean.numpy()
    if normalization == "batch":
        # Replicas see different halves; mean aggregation makes the update the average of both.
        per_half = [conv_out[:4].mean(axis=(0, 1, 2)), conv_out[4:].mean(axis=(0, 1, 2))]
        np.testing.assert_allclose(moving_mean, 0.1 * (per_half[0] + per_half[1]) / 2, rtol=1e-4,
                                   atol=1e-6)
    else:
        assert np.isfinite(moving_mean).all() and not np.allclose(moving_mean, 0.0)
    # Inference afterwards leaves the statistics alone.
    model(halves[0], training=False)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), moving_mean)
