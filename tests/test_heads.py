"""Margin heads: formulas against a float64 numpy reference at the edges, gradients, labels, saving."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from face_recognition_tf.errors import ConfigError
from face_recognition_tf.models import build_head, head_names

EMB = 4
CLASSES = 3


def reference_target(name, c, *, m=None, m1=1.0, m2=0.5, m3=0.0, easy_margin=False, lambda_=0.0):
    """Target cosine after the margin, straight from the papers / insightface, in float64."""
    c = np.asarray(c, np.float64)
    theta = np.arccos(np.clip(c, -1, 1))
    if name == "arcface":
        m = 0.5 if m is None else m
        if easy_margin:
            return np.where(c > 0, np.cos(theta + m), c)
        return np.where(c > math.cos(math.pi - m), np.cos(theta + m), c - m * math.sin(m))
    if name == "cosface":
        return c - (0.35 if m is None else m)
    if name == "sphereface":
        m = 4 if m is None else m
        k = np.floor(m * theta / math.pi)
        psi = (-1.0) ** k * np.cos(m * theta) - 2 * k
        return (lambda_ * c + psi) / (1 + lambda_)
    if name == "combined":
        if m1 == 1.0:
            angular = reference_target("arcface", c, m=m2, easy_margin=easy_margin) if m2 else c
        else:
            phi = m1 * theta + m2
            k = np.floor(phi / math.pi)
            angular = (-1.0) ** k * np.cos(phi) - 2 * k
        return angular - m3
    raise ValueError(name)


def edge_cosines(m=0.5):
    edge = math.cos(math.pi - m)
    return np.array(
        [-1.0, -0.999999, edge - 1e-3, edge + 1e-3, -0.5, -1e-3, 0.0, 1e-3, 0.5, 0.999999, 1.0]
    )


def unit_setup(head, cosines):
    """Class centres on the axes and embeddings whose cosine with class 0 is exactly ``cosines``."""
    kernel = np.zeros((EMB, CLASSES), np.float32)
    kernel[np.arange(CLASSES), np.arange(CLASSES)] = 1.0
    head.kernel.assign(kernel)
    emb = np.zeros((len(cosines), EMB), np.float64)
    emb[:, 0] = cosines
    emb[:, 1] = np.sqrt(np.clip(1 - cosines**2, 0, 1))
    return emb.astype(np.float32), np.zeros(len(cosines), np.int32)


CASES = [
    ("arcface", {}),
    ("arcface", {"m": 0.3, "easy_margin": True}),
    ("cosface", {}),
    ("cosface", {"m": 0.4}),
    ("sphereface", {}),
    ("sphereface", {"m": 2, "lambda_": 5.0}),
    ("combined", {"m1": 1.0, "m2": 0.5, "m3": 0.0}),
    ("combined", {"m1": 1.0, "m2": 0.3, "m3": 0.2}),
    ("combined", {"m1": 1.35, "m2": 0.0, "m3": 0.0}),
    ("combined", {"m1": 0.9, "m2": 0.4, "m3": 0.15}),
]


@pytest.mark.parametrize("name,kw", CASES)
def test_margin_formula_matches_reference_at_edges(name, kw):
    s = 30.0
    head = build_head(name, CLASSES, EMB, s=s, **kw)
    margin = kw.get("m", kw.get("m2", 0.5)) or 0.5
    cosines = edge_cosines(margin)
    emb, labels = unit_setup(head, cosines)
    logits = head(emb, labels).numpy()
    assert logits.dtype == np.float32 and logits.shape == (len(cosines), CLASSES)
    expected = reference_target(name, cosines, **kw)
    np.testing.assert_allclose(logits[:, 0] / s, expected, atol=1e-3)
    # Non-target classes keep s * cos; class_logits never carries a margin.
    np.testing.assert_allclose(logits[:, 1] / s, np.sqrt(1 - cosines**2), atol=1e-3)
    np.testing.assert_allclose(logits[:, 2], 0.0, atol=1e-5)
    np.testing.assert_allclose(head.class_logits(emb).numpy()[:, 0] / s, cosines, atol=1e-5)


def test_arcface_branches_differ_across_the_edge():
    # Guard that the edge test really distinguishes insightface's two branches.
    m = 0.5
    edge = math.cos(math.pi - m)
    below, above = reference_target("arcface", np.array([edge - 1e-3, edge + 1e-3]), m=m)
    assert abs(below - above) > 0.1


def test_sphereface_psi_is_monotonic_over_the_whole_range():
    head = build_head("sphereface", CLASSES, EMB, s=1.0)
    cosines = np.linspace(-1, 1, 401)
    emb, labels = unit_setup(head, cosines)
    target = head(emb, labels).numpy()[:, 0]
    assert np.all(np.diff(target) >= -1e-4)  # increasing in cos = decreasing in theta


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("name,kw", CASES + [("softmax", {})])
def test_gradients_finite_at_every_edge(name, kw, dtype):
    head = build_head(name, CLASSES, EMB, **kw)
    cosines = edge_cosines(kw.get("m", kw.get("m2", 0.5)) or 0.5)
    emb, labels = unit_setup(head, cosines)
    emb = tf.Variable(tf.cast(emb, dtype))
    with tf.GradientTape() as tape:
        logits = head(emb, labels)
        # Cross-entropy alone sends exactly zero upstream gradient to a saturated target, which
        # was seen to hide an unguarded sqrt (its gradients stayed finite); adding the mean of
        # all logits makes every logit's own derivative count.
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        ) + tf.reduce_mean(logits)
    grad_emb, grad_kernel = tape.gradient(loss, [emb, head.kernel])
    assert logits.dtype == tf.float32
    assert np.isfinite(logits.numpy()).all()
    assert grad_emb.dtype == tf.as_dtype(dtype)
    assert np.isfinite(tf.cast(grad_emb, tf.float32).numpy()).all()
    assert np.isfinite(grad_kernel.numpy()).all()


@pytest.mark.parametrize("name", ["arcface", "softmax", "sphereface"])
@pytest.mark.parametrize("bad", [-1, CLASSES, 1000])
def test_out_of_range_labels_raise_a_clear_error(name, bad):
    head = build_head(name, CLASSES, EMB)
    emb = np.random.default_rng(0).normal(size=(3, EMB)).astype(np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        head(emb, np.array([0, bad, 1]))
    message = str(info.value)
    assert "label out of range" in message and str(bad) in message
    assert f"num_classes is {CLASSES}" in message


def test_out_of_range_labels_raise_inside_tf_function():
    head = build_head("cosface", CLASSES, EMB)
    fn = tf.function(lambda e, y: head(e, y))
    emb = np.ones((2, EMB), np.float32)
    assert fn(emb, np.array([2, 0])).shape == (2, CLASSES)
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_classes is 3"):
        fn(emb, np.array([2, 3]))


@pytest.mark.parametrize("name", ["arcface", "softmax"])
def test_out_of_range_labels_give_nan_logits_under_xla(name):
    # XLA drops assertion ops; the bad sample's logits turn NaN so the loss cannot hide it.
    head = build_head(name, CLASSES, EMB)
    fn = tf.function(lambda e, y: head(e, y), jit_compile=True)
    logits = fn(np.ones((3, EMB), np.float32), np.array([0, CLASSES, 2])).numpy()
    assert np.isnan(logits[1]).all() and np.isfinite(logits[[0, 2]]).all()


def test_empty_batch_is_fine():
    head = build_head("arcface", CLASSES, EMB)
    assert head(np.zeros((0, EMB), np.float32), np.zeros((0,), np.int32)).shape == (0, CLASSES)


def test_labels_of_shape_b_by_1_and_int64_are_accepted():
    head = build_head("arcface", CLASSES, EMB)
    emb = np.random.default_rng(1).normal(size=(4, EMB)).astype(np.float32)
    flat = head(emb, np.array([0, 1, 2, 1], np.int32)).numpy()
    column = head(emb, np.array([[0], [1], [2], [1]], np.int64)).numpy()
    np.testing.assert_array_equal(flat, column)


def test_softmax_is_a_plain_dense_layer():
    head = build_head("softmax", CLASSES, EMB)
    head.bias.assign([0.1, -0.2, 0.3])
    emb = np.random.default_rng(2).normal(size=(5, EMB)).astype(np.float32)
    expected = emb @ head.kernel.numpy() + head.bias.numpy()
    np.testing.assert_allclose(head(emb, np.zeros(5, np.int32)).numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head.class_logits(emb).numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", head_names())
def test_kernel_name_shape_and_weight_decay(name):
    head = build_head(name, 7, 16, weight_decay=1e-3)
    assert head.kernel.path.endswith("kernel") and tuple(head.kernel.shape) == (16, 7)
    assert len(head.losses) == 1
    np.testing.assert_allclose(
        float(head.losses[0]), 1e-3 * float(np.sum(head.kernel.numpy() ** 2)), rtol=1e-5
    )
    assert build_head(name, 7, 16).losses == []


@pytest.mark.parametrize("name,kw", [("arcface", {"s": 32.0, "m": 0.4, "easy_margin": True}),
                                     ("sphereface", {"m": 3, "lambda_": 2.0}),
                                     ("combined", {"m1": 1.1, "m2": 0.3, "m3": 0.1}),
                                     ("cosface", {}), ("softmax", {})])
def test_keras_save_load_round_trip(tmp_path, name, kw):
    head = build_head(name, CLASSES, EMB, **kw)
    emb_in = keras.Input((EMB,), name="embeddings")
    lab_in = keras.Input((), dtype="int32", name="labels")
    model = keras.Model([emb_in, lab_in], head(emb_in, lab_in))
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    emb = np.random.default_rng(3).normal(size=(6, EMB)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2], np.int32)
    np.testing.assert_array_equal(model([emb, labels]).numpy(), loaded([emb, labels]).numpy())
    loaded_head = loaded.layers[-1]
    assert type(loaded_head) is type(head)
    assert loaded_head.get_config() == head.get_config()
    np.testing.assert_array_equal(loaded_head.class_logits(emb).numpy(), head.class_logits(emb).numpy())


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_heads_compute_in_float32_under_mixed_precision(policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        head = build_head("arcface", CLASSES, EMB)
        emb = tf.cast(np.eye(EMB, dtype=np.float32)[:3], keras.config.dtype_policy().compute_dtype)
        logits = head(emb, np.array([0, 1, 2]))
    finally:
        keras.config.set_dtype_policy(previous)
    assert head.compute_dtype == "float32" and head.kernel.dtype == "float32"
    assert logits.dtype == tf.float32


def test_arcface_training_separates_classes():
    # Behaviour, not just shape: a few SGD steps on free embeddings pull them to their centres.
    keras.utils.set_random_seed(4)  # the kernel initializer draws from Keras' global generator
    rng = np.random.default_rng(4)
    head = build_head("arcface", CLASSES, EMB, s=16.0, m=0.3)
    emb = tf.Variable(rng.normal(size=(CLASSES * 4, EMB)).astype(np.float32))
    labels = np.repeat(np.arange(CLASSES), 4)
    opt = keras.optimizers.SGD(0.5)

    def loss_fn():
        logits = head(emb, labels)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))

    first = float(loss_fn())
    for _ in range(150):
        with tf.GradientTape() as tape:
            loss = loss_fn()
        opt.apply_gradients(zip(tape.gradient(loss, [emb, head.kernel]), [emb, head.kernel]))
    assert float(loss_fn()) < 0.5 * first
    predicted = np.argmax(head.class_logits(emb).numpy(), axis=1)
    np.testing.assert_array_equal(predicted, labels)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        (("nope", 3), {}, "unknown head 'nope'"),
        (("arcface", 0), {}, "num_classes"),
        (("arcface", 3), {"s": 0.0}, "scale s"),
        (("sphereface", 3), {"m": 1.5}, "integer margin"),
        (("combined", 3), {"m1": 0.0}, "m1"),
        (("sphereface", 3), {"lambda_": -1.0}, "lambda_"),
        (("arcface", 3), {"bogus": 1}, "bogus"),
    ],
)
def test_bad_head_arguments_are_config_errors(args, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_head(*args, **kwargs)
