"""tf.data pipeline: shapes, normalisation, determinism, identity mixing, per-replica sharding."""

import json

import cv2
import numpy as np
import pytest
import tensorflow as tf

from face_recognition_tf.data.conversion import convert
from face_recognition_tf.data.input.pipeline import build_train_dataset, decode_image, normalize_images
from face_recognition_tf.data.records import tfrecord
from face_recognition_tf.data.synthetic.rec_layout import write_rec_dataset
from face_recognition_tf.errors import ConfigError

NUM_CLASSES, PER_CLASS = 16, 8


def _jpeg(label, j):
    img = np.zeros((112, 112, 3), np.uint8)
    img[:, :56] = (label * 15, 40, 200 - label * 10)  # left half marks the class: flips are visible
    cv2.putText(img, str(j), (60, 70), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


@pytest.fixture(scope="module")
def items():
    return [(c, _jpeg(c, j)) for c in range(NUM_CLASSES) for j in range(PER_CLASS)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, items):
    root = tmp_path_factory.mktemp("pipe")
    write_rec_dataset(root / "src", items)
    convert.convert_recordio(root / "src", root / "out", num_shards=4, progress=False)
    return root / "out"


@pytest.fixture(scope="module")
def sorted_dir(tmp_path_factory, items):
    """One shard written in identity order, as a naive converter would: the shuffle must mix it."""
    root = tmp_path_factory.mktemp("sorted")
    writer = tfrecord.ShardWriter(root / "train-00000-of-00001.tfrecord")
    for label, jpeg in items:
        writer.add(label, jpeg)
    info = writer.close()
    manifest = {"format_version": 1, "num_images": len(items), "num_classes": NUM_CLASSES, "image_size": [112, 112],
                "shards": [{"file": "train-00000-of-00001.tfrecord", **info}], "sources": [], "skipped": []}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _all(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_shapes_dtypes_and_exact_decode(data_dir, items):
    """The pipeline ships uint8 pixels, every image exactly once, decoded as MXNet does (INTEGER_ACCURATE,
    equal to OpenCV's decode of the same bytes); the model normalises them on its device."""
    ds = build_train_dataset(data_dir, 32, augment={"flip": False}, repeat=False, drop_remainder=False,
                             deterministic=True)
    assert ds.element_spec[0].shape.as_list() == [None, 112, 112, 3]
    assert ds.element_spec[0].dtype == tf.uint8
    images, labels = _all(ds)
    assert images.dtype == np.uint8 and labels.dtype == np.int32 and images.shape == (len(items), 112, 112, 3)
    decoded = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1] for _, j in items]
    assert sorted(im.tobytes() for im in images) == sorted(np.ascontiguousarray(v).tobytes() for v in decoded)
    assert sorted(labels.tolist()) == sorted(c for c, _ in items)


@pytest.mark.parametrize("augment", [{}, {"color_jitter": 0.3, "rotation": 8, "crop": 0.1, "blur": 0.3}])
def test_batches_are_uint8_with_every_augmentation(data_dir, augment):
    images, _ = next(iter(build_train_dataset(data_dir, 16, augment=augment, seed=1, deterministic=True)))
    assert images.dtype == tf.uint8 and images.shape == (16, 112, 112, 3)


def test_training_step_normalises_uint8_on_the_device_as_evaluation_does(data_dir):
    """A uint8 batch through the training step gives the loss and gradients of the same batch fed as
    (x - 127.5) / 128 floats (the pre-issue-14 pipeline's output), so training is unchanged by shipping
    uint8; evaluation (Embedder) normalises uint8 with the same function."""
    from face_recognition_tf.config import load_config
    from face_recognition_tf.training.strategy import make_strategy
    from face_recognition_tf.training.train_step import TrainStep

    cfg = load_config("quickstart", ["model.backbone=mobilefacenet", "model.width_multiplier=0.125", "model.embedding_size=16",
                             "train.batch_size=8", "train.optimizer=sgd", "train.lr=0.1", "train.lr_reference_batch=null"])
    images, labels = next(iter(build_train_dataset(data_dir, 8, augment={"flip": False}, deterministic=True)))
    results = []
    for batch in (images, normalize_images(images)):
        tf.keras.utils.set_random_seed(3)  # the same initial weights for both
        step = TrainStep(cfg, make_strategy("default"), NUM_CLASSES)
        step.finalize()
        grads, ce, _, _ = step._gradients([(batch, labels)])
        results.append((float(ce), [g.numpy() for g in grads if g is not None]))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_array_equal(a, b)


def test_decode_and_normalize_helpers(items):
    img = decode_image(tf.constant(items[0][1]))
    assert img.dtype == tf.uint8 and img.shape == (112, 112, 3)
    bgr = cv2.imdecode(np.frombuffer(items[0][1], np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(img.numpy(), bgr[:, :, ::-1])
    np.testing.assert_allclose(normalize_images(tf.constant([[0, 255, 128]], tf.uint8)).numpy(),
                               [[-127.5 / 128, 127.5 / 128, 0.5 / 128]])


def test_deterministic_mode_is_reproducible_and_flips_half(data_dir):
    aug = {"color_jitter": 0.3, "grayscale": 0.2, "blur": 0.2, "rotation": 8, "crop": 0.1}
    a = [x.numpy() for x, _ in build_train_dataset(data_dir, 16, augment=aug, seed=3, deterministic=True).take(5)]
    b = [x.numpy() for x, _ in build_train_dataset(data_dir, 16, augment=aug, seed=3, deterministic=True).take(5)]
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    c = [x.numpy() for x, _ in build_train_dataset(data_dir, 16, augment=aug, seed=4, deterministic=True).take(5)]
    assert not all(np.array_equal(u, v) for u, v in zip(a, c))
    # flips: the class mark sits on the left half of every source image
    images, _ = _all(build_train_dataset(data_dir, 32, repeat=False, drop_remainder=False, deterministic=True))
    left, right = images[:, :, :40].std(axis=(1, 2, 3)), images[:, :, 72:].std(axis=(1, 2, 3))
    flipped = (right < left).mean()
    assert 0.3 < flipped < 0.7


def test_shuffle_mixes_identities(sorted_dir):
    ds = build_train_dataset(sorted_dir, 32, seed=0)
    _, labels = next(iter(ds))
    assert len(set(labels.numpy().tolist())) >= 10  # unshuffled, 32 records hold only 4 identities
    unshuffled = build_train_dataset(sorted_dir, 32, shuffle_buffer=0, deterministic=True)
    _, labels = next(iter(unshuffled))
    assert len(set(labels.numpy().tolist())) == 4


@pytest.mark.parametrize("pipelines", [2, 3, 8])
def test_input_context_gives_disjoint_parts(data_dir, items, pipelines):
    # 4 shards: whole files for 2 and 3 pipelines; every n-th record for 8 (more pipelines than files)
    parts = []
    for i in range(pipelines):
        ctx = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=i, num_replicas_in_sync=pipelines)
        ds = build_train_dataset(data_dir, 4, augment={"flip": False}, input_context=ctx, repeat=False,
                                 drop_remainder=False, deterministic=True)
        images, _ = _all(ds)
        parts.append({im.tobytes() for im in images})
        assert len(parts[-1]) == len(images)
    assert sum(len(p) for p in parts) == len(items)
    assert len(set().union(*parts)) == len(items)


@pytest.mark.parametrize("augment, message", [
    ({"flip": True, "mixup": 0.2}, "unknown key"),
    ({"rotation": "lots"}, "augment.rotation must be a number"),
    ({"grayscale": 1.5}, r"augment.grayscale = 1.5 is outside"),
    ({"flip": "yes"}, "augment.flip must be true or false"),
    ([("flip", True)], "augment must be a mapping"),
])
def test_bad_augment_config(data_dir, augment, message):
    with pytest.raises(ConfigError, match=message):
        build_train_dataset(data_dir, 8, augment=augment)
