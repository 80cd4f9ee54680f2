"""Identity-balanced (P x K) batches: whole groups in every batch, replica and micro-batch, deterministically."""

import numpy as np
import pytest
import tensorflow as tf

from face_recognition_tf.config import load_config
from face_recognition_tf.data.conversion import convert
from face_recognition_tf.data.input.pipeline import build_train_dataset
from face_recognition_tf.data.input.pk_sampler import check_pk
from face_recognition_tf.data.synthetic.rec_layout import write_rec_dataset
from face_recognition_tf.errors import ConfigError

K = 4
# identity -> image count: most have plenty, identities 10 and 11 have fewer than K
COUNTS = {c: 9 for c in range(10)} | {10: 2, 11: 3}


def _jpeg(label, j):
    import cv2

    img = np.full((112, 112, 3), (label * 20) % 256, np.uint8)
    img[:8, :8] = j * 25
    return cv2.imencode(".jpg", img)[1].tobytes()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pk")
    items = [(c, _jpeg(c, j)) for c, n in COUNTS.items() for j in range(n)]
    write_rec_dataset(root / "src", items)
    convert.convert_recordio(root / "src", root / "out", num_shards=3, progress=False)
    return root / "out"


def _labels(ds, n):
    return [y.numpy() for _, y in ds.take(n)]


def _assert_groups(labels, k=K):
    groups = np.asarray(labels).reshape(-1, k)
    assert (groups == groups[:, :1]).all(), groups


def test_every_batch_is_p_identities_times_k(data_dir):
    ds = build_train_dataset(data_dir, 12, augment={"flip": False}, deterministic=True, images_per_identity=K)
    batches = list(ds.take(15))
    for images, labels in batches:
        assert images.shape == (12, 112, 112, 3) and labels.shape == (12,)
        _assert_groups(labels.numpy())
    seen = np.concatenate([y.numpy() for _, y in batches])
    assert set(seen) == set(COUNTS)  # identities with fewer than K images still form groups (repeating images)
    # images really belong to their labels (grey level encodes the identity)
    images, labels = batches[0]
    expected = labels.numpy() * 20 % 256
    np.testing.assert_allclose(images.numpy()[:, 50, 50, 0].astype(int), expected, atol=12)  # JPEG's error


def test_deterministic_and_seeded(data_dir):
    def run(seed):
        return _labels(build_train_dataset(data_dir, 8, augment={"flip": False}, deterministic=True, seed=seed,
                                           images_per_identity=K), 6)

    assert all((a == b).all() for a, b in zip(run(1), run(1)))
    assert any((a != b).any() for a, b in zip(run(1), run(2)))


def test_a_finite_stream_keeps_only_whole_groups(data_dir):
    ds = build_train_dataset(data_dir, 8, augment={"flip": False}, deterministic=True, repeat=False,
                             drop_remainder=False, images_per_identity=K)
    labels = np.concatenate(_labels(ds, 100))
    _assert_groups(labels)
    assert len(labels) // K <= sum(n // K for n in COUNTS.values())
    assert not {10, 11} & set(labels)  # two or three images never make a group of four without repeating


def test_each_input_pipeline_gets_whole_groups(data_dir):
    for i in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i, num_replicas_in_sync=2)
        ds = build_train_dataset(data_dir, 8, augment={"flip": False}, deterministic=True, input_context=ctx,
                                 images_per_identity=K)
        for labels in _labels(ds, 4):
            _assert_groups(labels)


def test_every_replica_and_micro_batch_holds_whole_groups(data_dir):
    from face_recognition_tf.training.strategy import make_strategy
    from face_recognition_tf.training.train_data import make_dataset_fn

    cfg = load_config("quickstart", ["train.batch_size=8", "data.sampler=pk", f"data.images_per_identity={K}",
                                     "train.accumulation_steps=2"])
    strategy = make_strategy("mirrored", cpu_replicas=2).strategy
    iterator = iter(strategy.distribute_datasets_from_function(make_dataset_fn(cfg, data_dir, 0, 0)))
    for _ in range(2 * cfg.train.accumulation_steps):  # two updates of two micro-batches
        _, labels = next(iterator)
        per_replica = [t.numpy() for t in strategy.experimental_local_results(labels)]
        assert len(per_replica) == 2
        for replica_labels in per_replica:
            assert replica_labels.shape == (8,)
            _assert_groups(replica_labels)


@pytest.mark.parametrize("batch,k,match", [(6, 4, "use 8"), (4, 4, "at least 2 identities"), (8, 1, ">= 2")])
def test_batches_that_do_not_fit_are_config_errors(batch, k, match):
    with pytest.raises(ConfigError, match=match):
        check_pk(batch, k)
    with pytest.raises(ConfigError, match="data.sampler=pk"):
        load_config("quickstart", ["data.sampler=pk", f"train.batch_size={batch}", f"data.images_per_identity={k}"])


def test_triplet_needs_the_pk_sampler():
    with pytest.raises(ConfigError, match="set data.sampler=pk"):
        load_config("quickstart", ["head.name=triplet"])
    cfg = load_config("quickstart", ["head.name=triplet", "data.sampler=pk", "head.mining=semi_hard"])
    assert cfg.train.batch_size // cfg.data.images_per_identity == 16
