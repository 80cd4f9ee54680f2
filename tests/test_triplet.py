"""Triplet head: mining against a brute-force float64 reference, and training with it under the trainer.

The reference enumerates every (anchor, positive, negative) with Python loops, as FaceNet and
Hermans et al. define the mining; gradients are central differences of that reference in float64.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from face_recognition_tf.models import build_head
from face_recognition_tf.models.triplet import TripletHead
from tiny import finite_difference_grad


def ref_distances(x):
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    return ((xn[:, None, :] - xn[None, :, :]) ** 2).sum(-1)


def ref_triplet(x, labels, margin, mining):
    """(per-anchor losses, how many (anchor, positive) pairs fell back to the farthest negative)."""
    d = ref_distances(x)
    n = len(labels)
    out, fallbacks = np.zeros(n), 0
    for a in range(n):
        pos = [p for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [q for q in range(n) if labels[q] != labels[a]]
        if not pos or not neg:
            continue
        if mining == "batch_hard":
            out[a] = max(0.0, margin + max(d[a, p] for p in pos) - min(d[a, q] for q in neg))
            continue
        losses = []
        for p in pos:
            farther = [d[a, q] for q in neg if d[a, q] > d[a, p]]
            if not farther:
                fallbacks += 1
            d_an = min(farther) if farther else max(d[a, q] for q in neg)
            losses.append(max(0.0, margin + d[a, p] - d_an))
        out[a] = np.mean(losses)
    return out, fallbacks


def _batch(seed=0, spread=0.8):
    """3 identities x 3 images around their own direction, plus one identity seen once (no positive)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 6))
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3], np.int32)
    x = centres[labels] + spread * rng.normal(size=(len(labels), 6))
    return x, labels


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard"])
@pytest.mark.parametrize("seed", [0, 1])
def test_values_and_gradients_match_brute_force_float64(mining, seed):
    x, labels = _batch(seed)
    margin = 0.5
    head = build_head("triplet", 4, 6, m=margin, mining=mining)
    expected, fallbacks = ref_triplet(x, labels, margin, mining)
    weights = np.random.default_rng(seed + 10).uniform(0.5, 1.5, size=len(labels))
    xv = tf.Variable(x.astype(np.float32))
    with tf.GradientTape() as tape:
        losses = head(xv, labels)
        total = tf.reduce_sum(weights.astype(np.float32) * losses)
    grad = tape.gradient(total, xv).numpy()
    np.testing.assert_allclose(losses.numpy(), expected, atol=2e-6)
    assert losses.numpy()[-1] == 0.0 and (expected[:-1] > 0).sum() >= 6  # no positive -> 0; most active

    def f(xx):
        return float(np.sum(weights * ref_triplet(xx, labels, margin, mining)[0]))

    ref_grad = finite_difference_grad(f, x)
    assert np.max(np.abs(grad - ref_grad)) / np.max(np.abs(ref_grad)) < 1e-5  # float32 round-off: ~2e-7
    if mining == "semi_hard" and seed == 0:
        assert fallbacks == 0  # a batch where every pair has a farther negative


def test_semi_hard_falls_back_to_the_farthest_negative():
    # the positive is far away, every negative close: no negative is farther than the positive
    x = np.array([[1.0, 0.0], [-1.0, 0.1], [0.9, 0.3], [0.9, -0.3]])
    labels = np.array([0, 0, 1, 1], np.int32)
    expected, fallbacks = ref_triplet(x, labels, 0.5, "semi_hard")
    assert fallbacks >= 2
    got = build_head("triplet", 2, 2, mining="semi_hard")(x.astype(np.float32), labels).numpy()
    np.testing.assert_allclose(got, expected, atol=2e-6)


def test_no_negative_or_no_positive_gives_zero_loss_and_no_nan():
    head = build_head("triplet", 2, 3)
    x = tf.Variable(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32))
    for labels in (np.zeros(4, np.int32), np.arange(4, dtype=np.int32)):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(head(x, labels))
        assert float(loss) == 0.0 and np.isfinite(tape.gradient(loss, x).numpy()).all()
    assert head(np.zeros((1, 3), np.float32), np.zeros(1, np.int32)).shape == (1,)


def test_hits_is_in_batch_nearest_neighbour_retrieval():
    x = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99], [0.95, -0.2]], np.float32)
    labels = np.array([0, 0, 1, 1, 1], np.int32)
    np.testing.assert_array_equal(build_head("triplet", 2, 2).hits(x, labels).numpy(),
                                  [True, True, True, True, False])


def test_serialisation_round_trip():
    head = build_head("triplet", 5, 8, m=0.3, mining="semi_hard")
    again = keras.layers.deserialize(keras.layers.serialize(head))
    assert type(again) is TripletHead and again.get_config() == head.get_config()
    with pytest.raises(ValueError, match="mining"):
        TripletHead(mining="hardest")


# ---- training with it ------------------------------------------------------------------------------------
# These tests are about the triplet plumbing (loss on embeddings, pk batches, strategies, resume), so r18 is
# swapped for a three-layer model: tracing a real backbone's update costs ~15 s per run on 2 cores, and
# test_trainer.py / test_strategies.py already train the real ones.

def _tiny_backbone(embedding_size, *, norm, input_shape, dropout, width_multiplier, weight_decay, name, **options):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, strides=4, use_bias=False, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(norm(8, "bn")(x))
    return keras.Model(inputs, keras.layers.Dense(embedding_size, name="fc")(x), name=name or "tiny")


@pytest.fixture
def tiny_r18(monkeypatch):
    from face_recognition_tf.models import factory

    monkeypatch.setitem(factory._BACKBONES, "r18", _tiny_backbone)


def _step_trajectory(strategy_name, per_replica, accumulation, steps=3):
    """Losses of a few triplet updates on in-memory 32x32 data whose every batch of 4 is 2 identities x 2."""
    from face_recognition_tf.config import load_config
    from face_recognition_tf.training.strategy import make_strategy
    from face_recognition_tf.training.train_step import TrainStep

    cfg = load_config("quickstart", [
        "model.embedding_size=16", "model.input_size=32", "model.width_multiplier=0.125",
        f"train.batch_size={per_replica}", f"train.accumulation_steps={accumulation}", "train.max_steps=100",
        "train.optimizer=sgd", "train.lr=0.05", "train.lr_reference_batch=null", "train.schedule.name=constant",
        "train.schedule.warmup_steps=0", "head.name=triplet", "head.m=0.5", "data.sampler=pk",
        "data.images_per_identity=2",
    ])
    info = make_strategy(strategy_name, cpu_replicas=None if strategy_name == "default" else 2)
    step = TrainStep(cfg, info, 6)
    step.finalize()
    rng = np.random.default_rng(3)
    y = np.array([[a, a, b, b] for a, b in rng.integers(0, 6, size=(4 * steps, 2)) if a != b][: 2 * steps]).reshape(-1)
    centres = rng.normal(size=(6, 32, 32, 3))
    x = (0.3 * centres[y] + rng.normal(size=(len(y), 32, 32, 3))).astype("float32")  # hard: losses stay > 0

    def dataset_fn(ctx):
        return tf.data.Dataset.from_tensor_slices((x, y.astype("int32"))).batch(4).repeat()

    iterator = iter(info.strategy.distribute_datasets_from_function(dataset_fn))
    return np.array([step(iterator).loss for _ in range(steps)])


def test_mirrored_replicas_equal_accumulated_micro_batches(tiny_r18):
    # Two replicas of 4 and two accumulated micro-batches of 4 mine the same groups (and batch-normalise
    # the same samples together), so the summed gradients and the whole trajectory must agree.
    accumulated = _step_trajectory("default", 4, 2)
    mirrored = _step_trajectory("mirrored", 4, 1)
    assert np.isfinite(accumulated).all() and accumulated.min() > 0
    np.testing.assert_allclose(mirrored, accumulated, rtol=1e-4)


def test_triplet_run_checkpoints_resumes_and_validates(data, tmp_path, tiny_r18):
    from face_recognition_tf.config import load_config
    from face_recognition_tf.training import checkpoints as ck
    from face_recognition_tf.training.strategy import make_strategy
    from face_recognition_tf.training.trainer import Trainer

    run = tmp_path / "run"
    overrides = ["model.width_multiplier=0.125", "model.embedding_size=16", "train.batch_size=8",
                 "train.schedule.warmup_steps=0", "log.every_steps=1", "validation.every_steps=3",
                 "checkpoint.every_steps=2", "head.name=triplet", "head.m=0.5", "head.mining=semi_hard",
                 "data.sampler=pk", "data.images_per_identity=4"]
    first = Trainer(load_config("quickstart", overrides + ["train.max_steps=4"]), make_strategy("default"),
                    data_dir=data, run_dir=run, progress=False, max_steps=2).prepare().train()
    assert first["step"] == 2 and [p.name for p in ck.checkpoint_paths(run)] == ["ckpt-2"]
    cfg = load_config(run / "config.yaml", ["train.max_steps=4"])
    second = Trainer(cfg, make_strategy("default"), data_dir=data, run_dir=run, progress=False).prepare().train()
    assert second["resumed_from"].endswith("ckpt-2") and second["step"] == 4 and second["steps_this_run"] == 2
    history = [json.loads(line) for line in (run / ck.HISTORY).read_text().splitlines()]
    train = [r for r in history if r["event"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and 0.0 <= r["accuracy"] <= 1.0 for r in train)
    assert {r["step"] for r in history if r["event"] == "validation"} >= {3, 4}
    assert set(second["validation"]) >= {"lfw", "cfp_fp", "agedb_30", "mean"}
    assert json.loads((run / "head.json").read_text())["mining"] == "semi_hard"
    keys = tf.train.load_checkpoint(str(ck.checkpoint_paths(run)[0])).get_variable_to_shape_map()
    assert not any(k.startswith("head/") for k in keys)  # a head without class centres stores nothing
    assert (run / "best" / "embedding.keras").is_file()
