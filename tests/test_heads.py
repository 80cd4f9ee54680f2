"""Margin heads: formulas against a float64 numpy reference at the edges, gradients, labels, saving."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from face_recognition_tf.errors import ConfigError
from face_recognition_tf.models import build_head, head_names
from tiny import finite_difference_grad

EMB = 4
CLASSES = 3


def reference_target(name, c, *, m=None, m1=1.0, m2=0.5, m3=0.0, easy_margin=False, lambda_=0.0,
                     gradient="exact"):
    """Target cosine after the margin, straight from the papers / insightface, in float64."""
    c = np.asarray(c, np.float64)
    theta = np.arccos(np.clip(c, -1, 1))
    if gradient == "straight_through":  # today's arcface_torch: the angle moved, no fallback at all
        if name == "arcface":
            return np.cos(theta + (0.5 if m is None else m))
        if name == "combined":
            return np.cos(m1 * theta + m2) - m3
        return reference_target(name, c, m=m)  # cosface: the same value either way
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
    ("arcface", {"gradient": "straight_through"}),
    ("arcface", {"m": 0.3, "gradient": "straight_through"}),
    ("combined", {"m1": 1.0, "m2": 0.3, "m3": 0.2, "gradient": "straight_through"}),
    ("combined", {"m1": 1.0, "m2": 0.0, "m3": 0.4, "gradient": "straight_through"}),
    ("cosface", {"m": 0.4, "gradient": "straight_through"}),
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


@pytest.mark.parametrize("name", [n for n in head_names() if n != "triplet"])  # triplet: no class centres
def test_kernel_name_shape_and_weight_decay(name):
    head = build_head(name, 7, 16, weight_decay=1e-3)
    assert head.kernel.path.endswith("kernel") and tuple(head.kernel.shape) == (16, 7)
    assert len(head.losses) == 1
    np.testing.assert_allclose(
        float(head.losses[0]), 1e-3 * float(np.sum(head.kernel.numpy() ** 2)), rtol=1e-5
    )
    assert build_head(name, 7, 16).losses == []


@pytest.mark.parametrize("name,kw", [("arcface", {"s": 32.0, "m": 0.4, "easy_margin": True}),
                                     ("arcface", {"gradient": "straight_through"}),
                                     ("sphereface", {"m": 3, "lambda_": 2.0}),
                                     ("sphereface", {"sphereface_form": "insightface", "lambda_gamma": 0.5}),
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


# ---- issue 12: ArcFace's two gradients and SphereFace as insightface trained it, against float64 ----------

def _ref_cosines(x, w):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))


def _ref_margin_logits(x, w, labels, target, s, offset=None):
    """s * cos with each target entry replaced by target(cos); straight-through: cos + a frozen offset."""
    c = _ref_cosines(x, w)
    rows = np.arange(len(labels))
    t = c[rows, labels]
    out = c.copy()
    out[rows, labels] = target(t) if offset is None else t + offset
    return s * out


def _ref_sphere_insightface(x, w, labels, m, lam):
    """insightface's MXNet LSoftmax: logits x . w/||w||, target ||x|| (lam cos + psi) / (1 + lam)."""
    f = x @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    norm = np.linalg.norm(x, axis=1)
    rows = np.arange(len(labels))
    t = f[rows, labels] / norm
    theta = np.arccos(np.clip(t, -1, 1))
    k = np.floor(m * theta / math.pi)
    psi = (-1.0) ** k * np.cos(m * theta) - 2 * k
    out = f.copy()
    out[rows, labels] = norm * (lam * t + psi) / (1 + lam)
    return out


def _ref_loss(logits, labels, weights):
    """Cross-entropy plus a weighted sum of the logits, so every logit's own derivative counts."""
    z = logits - logits.max(axis=1, keepdims=True)
    ce = np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(labels)), labels]
    return ce.mean() + (weights * logits).sum()


def _tf_loss_and_grads(head, x, w, labels, weights):
    head.kernel.assign(w.astype(np.float32))
    xv = tf.Variable(x.astype(np.float32))
    with tf.GradientTape() as tape:
        logits = head(xv, labels)
        ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        loss = ce + tf.reduce_sum(weights.astype(np.float32) * logits)
    gx, gw = tape.gradient(loss, [xv, head.kernel])
    return logits.numpy(), gx.numpy(), gw.numpy()


def _setup_with_target_cosines(cosines, seed=7):
    """Random centres and embeddings (random norms) whose cosine with their own centre is `cosines`."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(EMB, CLASSES))
    labels = np.arange(len(cosines)) % CLASSES
    x = np.zeros((len(cosines), EMB))
    for i, (c, y) in enumerate(zip(cosines, labels)):
        centre = w[:, y] / np.linalg.norm(w[:, y])
        u = rng.normal(size=EMB)
        u -= (u @ centre) * centre
        x[i] = (c * centre + math.sqrt(1 - c * c) * u / np.linalg.norm(u)) * rng.uniform(0.5, 3.0)
    weights = rng.normal(scale=0.05, size=(len(cosines), CLASSES))
    return x, w, labels.astype(np.int32), weights


# both sides of insightface's cos(pi - m) edge (-0.878 for m = 0.5), and close to +-1
ARC_COSINES = [-0.95, -0.9, -0.85, -0.3, 0.2, 0.7, 0.93]


def _max_rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("name,kw", [("arcface", {}), ("combined", {"m1": 1.0, "m2": 0.5, "m3": 0.1})])
@pytest.mark.parametrize("gradient", ["exact", "straight_through"])
def test_margin_values_and_gradients_match_float64_reference(name, kw, gradient):
    s, m = 16.0, kw.get("m2", 0.5)
    m3 = kw.get("m3", 0.0)
    head = build_head(name, CLASSES, EMB, s=s, gradient=gradient, **kw)
    x, w, labels, weights = _setup_with_target_cosines(ARC_COSINES)
    if gradient == "exact":
        def target(t):
            return np.where(t > math.cos(math.pi - m), np.cos(np.arccos(t) + m), t - m * math.sin(m)) - m3
        offset = None
    else:  # arcface_torch: forward cos(theta + m), backward the identity, i.e. cos + a constant offset
        def target(t):
            return np.cos(np.arccos(t) + m) - m3
        t0 = _ref_cosines(x, w)[np.arange(len(labels)), labels]
        offset = target(t0) - t0
    expected = _ref_margin_logits(x, w, labels, target, s)
    logits, gx, gw = _tf_loss_and_grads(head, x, w, labels, weights)
    np.testing.assert_allclose(logits / s, expected / s, atol=2e-6)

    def loss_x(xx):
        return _ref_loss(_ref_margin_logits(xx, w, labels, target, s, offset), labels, weights)

    def loss_w(ww):
        return _ref_loss(_ref_margin_logits(x, ww, labels, target, s, offset), labels, weights)

    ref_gx, ref_gw = finite_difference_grad(loss_x, x), finite_difference_grad(loss_w, w)
    assert _max_rel(gx, ref_gx) < 1e-5 and _max_rel(gw, ref_gw) < 1e-5  # float32 round-off: ~2e-7


def test_straight_through_differs_from_exact_only_in_the_gradient_above_the_edge():
    # above cos(pi - m) the values agree and only the backward pass differs; below it the values differ too
    x, w, labels, weights = _setup_with_target_cosines(ARC_COSINES)
    exact = _tf_loss_and_grads(build_head("arcface", CLASSES, EMB, s=16.0), x, w, labels, weights)
    st = _tf_loss_and_grads(build_head("arcface", CLASSES, EMB, s=16.0, gradient="straight_through"),
                            x, w, labels, weights)
    rows = np.arange(len(labels))
    above = np.array(ARC_COSINES) > math.cos(math.pi - 0.5)
    np.testing.assert_allclose(exact[0][rows, labels][above], st[0][rows, labels][above], atol=1e-4)
    assert np.all(np.abs(exact[0][rows, labels][~above] - st[0][rows, labels][~above]) > 0.1)
    assert _max_rel(exact[1], st[1]) > 0.05


def test_straight_through_logit_gradient_is_s_for_every_class():
    # d(sum of logits)/d(cos) = s everywhere, even at cos = +-1 where the exact form's slope is infinite
    head = build_head("arcface", CLASSES, EMB, s=8.0, gradient="straight_through")
    cos = tf.constant(np.linspace(-1, 1, 9).reshape(-1, 1), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(cos)
        target = head.target_logit(cos)
    np.testing.assert_allclose(tape.gradient(target, cos).numpy(), 1.0)


@pytest.mark.parametrize("iteration,lam", [(0, 1000.0), (10, 1000.0 / 2.2), (5000, 5.0)])
def test_sphereface_insightface_form_matches_float64_reference(iteration, lam):
    head = build_head("sphereface", CLASSES, EMB, sphereface_form="insightface")
    head.iteration.assign(iteration)
    assert float(head.current_lambda()) == pytest.approx(lam, rel=1e-6)
    cosines = [-0.9, -0.6, -0.2, 0.1, 0.45, 0.8, 0.97]  # every k of m = 4 (edges at cos(j pi / 4))
    x, w, labels, weights = _setup_with_target_cosines(cosines, seed=11)
    logits, gx, gw = _tf_loss_and_grads(head, x, w, labels, weights)
    expected = _ref_sphere_insightface(x, w, labels, 4, lam)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(head.class_logits(x.astype(np.float32)).numpy(),
                               x @ (w / np.linalg.norm(w, axis=0)), rtol=1e-5, atol=1e-5)
    ref_gx = finite_difference_grad(lambda xx: _ref_loss(_ref_sphere_insightface(xx, w, labels, 4, lam), labels, weights), x)
    ref_gw = finite_difference_grad(lambda ww: _ref_loss(_ref_sphere_insightface(x, ww, labels, 4, lam), labels, weights), w)
    assert _max_rel(gx, ref_gx) < 1e-5 and _max_rel(gw, ref_gw) < 1e-5  # float32 round-off: ~2e-7


def test_sphereface_normalized_form_has_no_iteration_and_a_fixed_lambda():
    head = build_head("sphereface", CLASSES, EMB, lambda_=3.0)
    assert [w.path.split("/")[-1] for w in head.weights] == ["kernel"]
    assert float(head.current_lambda()) == 3.0
    head.advance()  # the trainer calls it for every head that has it: a no-op here


def test_sphereface_iteration_advances_under_mirrored_and_is_checkpointed(tmp_path):
    from face_recognition_tf.training.strategy import make_strategy

    strategy = make_strategy("mirrored", cpu_replicas=2).strategy
    with strategy.scope():
        head = build_head("sphereface", CLASSES, EMB, sphereface_form="insightface")

    @tf.function
    def update():
        lam = strategy.run(head.current_lambda)
        head.advance()  # cross-replica, after the replicas read lambda, as in TrainStep
        return strategy.experimental_local_results(lam)

    first = [float(v) for v in update()]
    second = [float(v) for v in update()]
    assert first == [1000.0, 1000.0] and second == pytest.approx([1000.0 / 1.12] * 2)
    assert [int(v) for v in strategy.experimental_local_results(head.iteration.value)] == [2, 2]
    path = tf.train.Checkpoint(head=head).save(str(tmp_path / "ckpt"))
    fresh = build_head("sphereface", CLASSES, EMB, sphereface_form="insightface")
    tf.train.Checkpoint(head=fresh).restore(path).assert_consumed()
    assert int(fresh.iteration.numpy()) == 2


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("sphereface", {"gradient": "straight_through"}, "no straight-through form"),
        ("softmax", {"gradient": "straight_through"}, "no straight-through form"),
        ("arcface", {"gradient": "bogus"}, "gradient must be one of"),
        ("arcface", {"gradient": "straight_through", "easy_margin": True}, "easy_margin"),
        ("sphereface", {"sphereface_form": "bogus"}, "form must be one of"),
        ("sphereface", {"sphereface_form": "insightface", "lambda_min": -1.0}, "lambda"),
    ],
)
def test_bad_issue12_head_arguments_are_config_errors(name, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_head(name, CLASSES, EMB, **kwargs)
